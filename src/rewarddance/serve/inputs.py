"""Request fields -> (task, items) ready for the batcher, every user error a 422 naming its field.

Everything here runs before a request enters the queue: counts and layout first (cheap), then
media decoding, then `RewardModel.load_items`, so nothing that reaches a batch is a user error.
Tasks are chosen by name among the built-in ones and the model's own: `get_task` also reads task
files from paths, and the server reads no paths named in a request.

Example:
    >>> task, items = prepare_score(rm, ServeConfig(), prompts=["a red circle"], images=[b64])  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from ..context import Task, builtin_tasks, get_task
from ..media import MediaError, validate_prompt
from ..models.reward_model import RewardModel
from .config import ServeConfig, bad_input
from .decode import Media, decode_image, decode_video
from .schemas import ChatCompletion, ChatRequest, Choice, ChoiceLogprobs, TokenLogprob, TopLogprob

# OpenAI's value for a token it gives no probability to; JSON has no -inf
LOGPROB_FLOOR = -9999.0


def resolve_task(rm: RewardModel, name: str | None) -> Task:
    """The model's own task (default), or a built-in task by name."""
    own = get_task(rm.task)
    if name is None or name in (own.name, rm.task):
        return own
    if name in builtin_tasks():
        return builtin_tasks()[name]
    offered = ", ".join(sorted({own.name, *builtin_tasks()}))
    raise bad_input(f"task: unknown task {name!r}; this server offers: {offered}", "task")


def _prompt(value: Any, field: str) -> str:
    try:
        return validate_prompt(value)
    except MediaError:
        raise bad_input(f"{field}: empty prompt (a non-empty string is required)", field) from None


def decode_one(value: Media | list[Media], field: str, task: Task, rm: RewardModel,
               config: ServeConfig) -> torch.Tensor:
    """One image, or one video when the task judges videos."""
    if task.is_video:
        return decode_video(value, field, config, rm.num_frames)
    if isinstance(value, list):
        raise bad_input(f"{field}: a list of frames is a video, and task {task.name!r} judges images", field)
    return decode_image(value, field, config)


def _decode_all(values: Sequence[Any], field: str, task: Task, rm: RewardModel, config: ServeConfig) -> list:
    return [decode_one(v, f"{field}[{i}]", task, rm, config) for i, v in enumerate(values)]


def prepare_score(rm: RewardModel, config: ServeConfig, *, prompts: Sequence[str], images: Sequence[Any] | None = None,
                  videos: Sequence[Any] | None = None, references: Sequence[Any] | None = None,
                  conditions: Sequence[Any] | None = None, task: str | None = None) -> tuple[Task, list[tuple]]:
    """Check and decode a score request: (task, items) for `Batcher.score`."""
    task_obj = resolve_task(rm, task)
    field, other = ("videos", "images") if task_obj.is_video else ("images", "videos")
    cands = videos if task_obj.is_video else images
    if (images if task_obj.is_video else videos):
        raise bad_input(f"{other}: task {task_obj.name!r} judges {task_obj.media}s: send them in {field!r}", other)
    if not cands:
        raise bad_input(f"{field}: required (at least one {task_obj.media})", field)
    n = len(cands)
    for name, values in ((field, cands), ("references", references), ("conditions", conditions)):
        if values is not None and len(values) > config.max_images:
            raise bad_input(f"{name}: {len(values)} items, over this server's limit of {config.max_images} per "
                            "request", name)
    for name, values in (("prompts", prompts), ("references", references), ("conditions", conditions)):
        if values is not None and len(values) not in (1, n):
            raise bad_input(f"{name}: {len(values)} values for {n} {field} (give one, or one per item)", name)
    prompts = [_prompt(p, f"prompts[{i}]") for i, p in enumerate(prompts)]
    if rm.layout == "pairwise" and not references:
        raise bad_input("references: this is a pairwise reward model: references (image 1 of each comparison) "
                        "are required", "references")
    if rm.layout == "pointwise" and references:
        raise bad_input("references: this is a pointwise reward model; it takes no references", "references")
    if task_obj.needs_condition and not conditions:
        raise bad_input(f"conditions: task {task_obj.name!r} needs the condition image each video starts from",
                        "conditions")
    cand_t = _decode_all(cands, field, task_obj, rm, config)
    ref_t = _decode_all(references, "references", task_obj, rm, config) if references else None
    cond_t = [decode_image(c, f"conditions[{i}]", config) for i, c in enumerate(conditions)] if conditions else None
    return _load_items(rm, prompts, cand_t, ref_t, cond_t, task_obj)


def _load_items(rm: RewardModel, prompts: Any, cands: list, refs: Any, conds: Any, task: Task) -> tuple[Task, list]:
    try:
        return rm.load_items(prompts, cands, references=refs, conditions=conds, task=task)
    except ValueError as e:  # MediaError included; the checks above leave little that gets here
        raise bad_input(str(e)) from None


def prepare_compare(rm: RewardModel, config: ServeConfig, req: Any) -> tuple[Task, list[tuple]]:
    """(task, items) whose rewards `rm.pair_probability` turns into P(image_a better than image_b)."""
    task_obj = resolve_task(rm, req.task)
    prompt = _prompt(req.prompt, "prompt")
    a = decode_one(req.image_a, "image_a", task_obj, rm, config)
    b = decode_one(req.image_b, "image_b", task_obj, rm, config)
    cond = decode_image(req.condition, "condition", config) if req.condition else None
    if task_obj.needs_condition and cond is None:
        raise bad_input(f"condition: task {task_obj.name!r} needs the condition image", "condition")
    cands, refs = rm.pair_candidates(a, b, req.symmetric)
    return _load_items(rm, prompt, cands, refs, cond, task_obj)


def prepare_rank(rm: RewardModel, config: ServeConfig, req: Any) -> tuple[Task, str, list, Any]:
    """(task, prompt, decoded images, condition) for `rm.rank`."""
    task_obj = resolve_task(rm, req.task)
    field = "videos" if task_obj.is_video else "images"
    values = req.videos if task_obj.is_video else req.images
    if not values:
        raise bad_input(f"{field}: required (at least one {task_obj.media})", field)
    limit = config.max_rank_images if rm.layout == "pairwise" else config.max_images
    if len(values) > limit:
        raise bad_input(f"{field}: {len(values)} items, over this server's limit of {limit} for rank "
                        f"({rm.layout} model)", field)
    prompt = _prompt(req.prompt, "prompt")
    cond = decode_image(req.condition, "condition", config) if req.condition else None
    if task_obj.needs_condition and cond is None:
        raise bad_input(f"condition: task {task_obj.name!r} needs the condition image", "condition")
    return task_obj, prompt, _decode_all(values, field, task_obj, rm, config), cond


# ------------------------------------------------------------------ OpenAI-compatible chat
def prepare_chat(rm: RewardModel, config: ServeConfig, req: ChatRequest) -> tuple[Task, list[tuple]]:
    """The last user message -> one judge item. Its text parts (joined) are the prompt, put into the
    task's template; its image_url parts (data URLs) are the candidate, or for a pairwise model the
    reference then the candidate (image 1, image 2)."""
    if req.stream:
        raise bad_input("stream: streaming is not supported (the answer is one token)", "stream")
    if req.n != 1:
        raise bad_input("n: only n=1 is supported (the answer is the judgment, not a sample)", "n")
    task_obj = resolve_task(rm, req.task)
    if task_obj.is_video:
        raise bad_input(f"task: the chat endpoint judges images; {task_obj.name!r} is a video task", "task")
    users = [i for i, m in enumerate(req.messages) if m.role == "user"]
    if not users:
        raise bad_input("messages: no user message", "messages")
    field = f"messages[{users[-1]}].content"
    content = req.messages[users[-1]].content
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
    texts, images = [], []
    for j, part in enumerate(parts):
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"].strip())
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str) or not url.startswith("data:"):
                raise bad_input(f"{field}[{j}]: images must be data: URLs (data:image/png;base64,...); the server "
                                "fetches no URLs and reads no paths", f"{field}[{j}]")
            images.append(decode_image(url, f"{field}[{j}]", config))
        else:
            raise bad_input(f"{field}[{j}]: unsupported content part {kind!r} (text and image_url are)",
                            f"{field}[{j}]")
    want = 2 if rm.layout == "pairwise" else 1
    if len(images) != want:
        what = "the reference, then the candidate" if want == 2 else "the candidate"
        raise bad_input(f"{field}: this {rm.layout} judge takes {want} image(s) ({what}), got {len(images)}", field)
    prompt = _prompt("\n".join(t for t in texts if t), field)
    refs = images[:1] if want == 2 else None
    return _load_items(rm, prompt, images[-1:], refs, None, task_obj)


def _logprob(p: float) -> float:
    return math.log(p) if p > 0 else LOGPROB_FLOOR


def chat_completion(req: ChatRequest, reward: float, request_id: str, created: int) -> ChatCompletion:
    """The judgment as an OpenAI chat completion: "yes" or "no" (the likelier), with log P over the
    two answers as the reward defines them: exp(logprob of "yes") is the reward."""
    logprobs = {"yes": _logprob(reward), "no": _logprob(1.0 - reward)}
    answer = "yes" if reward >= 0.5 else "no"
    top = sorted(logprobs, key=logprobs.get, reverse=True)[:req.top_logprobs or 0]
    content = None
    if req.logprobs:
        content = ChoiceLogprobs(content=[TokenLogprob(
            token=answer, logprob=logprobs[answer], bytes=list(answer.encode()),
            top_logprobs=[TopLogprob(token=t, logprob=logprobs[t], bytes=list(t.encode())) for t in top])])
    return ChatCompletion(id=f"chatcmpl-{request_id}", created=created, model=req.model,
                          choices=[Choice(index=0, message={"content": answer}, logprobs=content)])
