"""WHAT the judge is asked: task instructions, pointwise / pairwise layouts, CoT targets.

`build_context` turns (task, layout, prompt, candidate, reference, condition image,
in-context examples) into the chat messages a backbone's processor renders, plus the
images in the order their placeholders appear. Videos are given to every family as
their frames, one image placeholder per frame (every family supports many images; not
all support native video tokens).

Example:
    >>> import torch
    >>> from rewarddance.context import build_context
    >>> ctx = build_context("t2i-alignment", "pairwise", "a red circle",
    ...                     candidate=torch.rand(3, 32, 32), reference=torch.rand(3, 32, 32))
    >>> len(ctx.images), ctx.messages[0]["role"]
    (2, 'user')
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
import yaml

from ..media import validate_prompt

LAYOUTS = ("pointwise", "pairwise")
ANSWERS = ("yes", "no")
_PLACEHOLDER = re.compile(r"\{(image|image1|image2|video|video1|video2|condition)\}")


@dataclass(frozen=True)
class Task:
    """A judging task: one template per layout, with named placeholders, and its criteria."""

    name: str
    media: str  # "image" | "video"
    pointwise: str
    pairwise: str
    criteria: tuple[str, ...] = ()

    def template(self, layout: str) -> str:
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
        return getattr(self, layout)

    @property
    def is_video(self) -> bool:
        return self.media == "video"

    @property
    def needs_condition(self) -> bool:
        return "{condition}" in self.pointwise


def _task_from_dict(name: str, d: dict) -> Task:
    missing = {"pointwise", "pairwise"} - set(d)
    if missing:
        raise ValueError(f"task {name!r}: missing keys {sorted(missing)}")
    media = d.get("media", "image")
    if media not in ("image", "video"):
        raise ValueError(f"task {name!r}: media must be 'image' or 'video', got {media!r}")
    return Task(name, media, d["pointwise"], d["pairwise"], tuple(d.get("criteria") or ()))


@cache
def builtin_tasks() -> dict[str, Task]:
    """The built-in tasks of tasks.yaml, by name."""
    table = yaml.safe_load((Path(__file__).parent / "tasks.yaml").read_text())
    return {name: _task_from_dict(name, d) for name, d in table.items()}


def get_task(task: str | os.PathLike | Task) -> Task:
    """A built-in task by name, a custom task from a YAML file, or a Task passed through."""
    if isinstance(task, Task):
        return task
    if str(task) in builtin_tasks():
        return builtin_tasks()[str(task)]
    path = Path(task)
    if path.suffix in (".yaml", ".yml") and path.exists():
        d = yaml.safe_load(path.read_text())
        if not isinstance(d, dict):
            raise ValueError(f"{path}: a task file must be a mapping with pointwise/pairwise templates")
        return _task_from_dict(d.get("name", path.stem), d)
    raise ValueError(f"unknown task {str(task)!r}; built-in tasks: {', '.join(builtin_tasks())}, or a .yaml file")


@dataclass
class Context:
    """Chat messages for the processor's chat template, and the images they refer to, in order.

    `prompt` is the generation prompt itself (a dual-encoder judge such as CLIP reads only it
    and the last image, the candidate)."""

    messages: list[dict[str, Any]]
    images: list[torch.Tensor] = field(default_factory=list)
    prompt: str = ""


def _frames(x: torch.Tensor) -> list[torch.Tensor]:
    return list(x) if x.ndim == 4 else [x]


def _render_turn(task: Task, layout: str, prompt: str, media: dict[str, torch.Tensor | None],
                 criteria: tuple[str, ...]) -> tuple[list[dict], list[torch.Tensor]]:
    text = task.template(layout)
    text = text.replace("{prompt}", validate_prompt(prompt)).replace(
        "{criteria}", "\n".join(f"- {c}" for c in criteria))
    content: list[dict] = []
    images: list[torch.Tensor] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(text):
        if m.start() > pos:
            content.append({"type": "text", "text": text[pos:m.start()]})
        slot = m.group(1).replace("video", "image")
        item = media.get(slot)
        if item is None:
            raise ValueError(f"task {task.name!r} ({layout}) needs {m.group(0)} but none was given")
        for frame in _frames(item):
            content.append({"type": "image"})
            images.append(frame)
        pos = m.end()
    if pos < len(text):
        content.append({"type": "text", "text": text[pos:]})
    return content, images


def build_context(
    task: str | Task,
    layout: str,
    prompt: str,
    candidate: torch.Tensor,
    *,
    reference: torch.Tensor | None = None,
    condition: torch.Tensor | None = None,
    examples: list[dict[str, Any]] = (),
    criteria: list[str] | None = None,
    target: str | None = None,
) -> Context:
    """Messages asking the judge about `candidate` (3×H×W image or T×3×H×W video).

    Pairwise: `reference` is image 1, `candidate` image 2 ("is image 2 better?").
    `examples`: in-context judged examples, each a dict with prompt, candidate,
    optional reference/condition, and answer ("yes"/"no", optionally with a rationale);
    they become earlier user/assistant turns. `target`: the assistant's answer, for training.
    """
    task = get_task(task)
    crit = tuple(criteria) if criteria is not None else task.criteria
    messages: list[dict] = []
    images: list[torch.Tensor] = []
    turns = [*examples, {"prompt": prompt, "candidate": candidate, "reference": reference,
                         "condition": condition, "answer": target}]
    for i, ex in enumerate(turns):
        media = {"image": ex["candidate"], "image2": ex["candidate"], "image1": ex.get("reference"),
                 "condition": ex.get("condition")}
        content, imgs = _render_turn(task, layout, ex["prompt"], media, crit)
        messages.append({"role": "user", "content": content})
        images += imgs
        answer = ex.get("answer")
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        elif i < len(turns) - 1:
            raise ValueError(f"in-context example {i} has no answer")
    return Context(messages, images, validate_prompt(prompt))


def format_target(judgment: str, rationale: str | None = None, *, order: str = "judgment-first") -> str:
    """The training target: the judgment token, then (CoT) the rationale; or the reverse.

    Judgment first keeps reward time at one forward pass: the answer token is the first
    token the model writes, and the rationale is only generated on demand.

        >>> format_target("yes", "image 2 has the red circle the prompt asks for")
        'yes\\nReason: image 2 has the red circle the prompt asks for'
    """
    if judgment not in ANSWERS:
        raise ValueError(f"judgment must be one of {ANSWERS}, got {judgment!r}")
    if not rationale:
        return judgment
    if order == "judgment-first":
        return f"{judgment}\nReason: {rationale}"
    if order == "rationale-first":
        return f"Reason: {rationale}\nAnswer: {judgment}"
    raise ValueError(f"order must be 'judgment-first' or 'rationale-first', got {order!r}")
