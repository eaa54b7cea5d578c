"""Training examples: manifest records -> the sequences a judge is trained on, with their targets.

Each record becomes one or two `Sequence`s (a context, its target text and the probability
that its answer is "yes") and, for Bradley-Terry objectives, a pair (i, j, P(i better than j)):

- `generative-pairwise`: a pair record gives both orders, (reference a, candidate b) with
  target P(b better) and (reference b, candidate a) with 1 - that, so no position bias can
  be learned. CoT rationales saying "image A"/"image B" are rewritten to the layout's
  "image 1"/"image 2" for each order.
- `generative-pointwise`, `regressive-bt`, `clip-bt`: a pair record gives the two images in
  the pointwise layout and one BT pair; a pointwise record (image, yes/no) one sequence.
- `next-token` (pretraining): a ShapeWorld pretrain row gives a caption and question/answer
  sequences whose targets are learned token by token.

Example:
    >>> from rewarddance.data.training import map_rationale
    >>> map_rationale("Image A shows a red circle. So image B is better.", image1="b")
    'Image 2 shows a red circle. So image 1 is better.'
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from ..context import Context, build_context, format_target, get_task
from ..media import load_image, load_media
from .records import Record, RecordError, read_jsonl, read_manifest

PAIRWISE, POINTWISE_OBJECTIVES = "generative-pairwise", ("generative-pointwise", "regressive-bt", "clip-bt")
NEXT_TOKEN = "next-token"
_IMAGE_AB = re.compile(r"\b([Ii]mage|[Vv]ideo) ([AB])\b")


class ExampleError(ValueError):
    """A row that cannot train this objective (wrong media kind, no label, missing condition image...)."""


def map_rationale(text: str, *, image1: str) -> str:
    """Rename "image A"/"image B" to the layout's "image 1"/"image 2" when `image1` ("a" or "b") is image 1."""
    order = {"A": "1", "B": "2"} if image1 == "a" else {"A": "2", "B": "1"}
    return _IMAGE_AB.sub(lambda m: f"{m.group(1)} {order[m.group(2)]}", text)


@dataclass
class Sequence:
    """One training sequence: its context; `target` the assistant text after the generation prompt
    (None: the judgment token alone); `p_yes` the judgment's target probability (None: no judgment
    cross-entropy, e.g. a tie in a pointwise objective or a pretraining sequence)."""

    context: Context
    target: str | None = None
    judgment: str | None = None
    p_yes: float | None = None


@dataclass
class Example:
    """What one record contributes: its sequences and Bradley-Terry pairs (local indices)."""

    sequences: list[Sequence]
    pairs: list[tuple[int, int, float]] = field(default_factory=list)  # (i, j, P(i better than j))


@dataclass
class Batch:
    """Examples concatenated: pair indices offset into the joined sequence list."""

    sequences: list[Sequence]
    pairs: list[tuple[int, int, float]]
    n_records: int

    @classmethod
    def join(cls, examples: list[Example]) -> "Batch":
        seqs, pairs = [], []
        for ex in examples:
            pairs += [(i + len(seqs), j + len(seqs), p) for i, j, p in ex.pairs]
            seqs += ex.sequences
        return cls(seqs, pairs, len(examples))


def _p_second_better(label: str) -> float:
    return {"b": 1.0, "a": 0.0, "tie": 0.5}[label]


def make_example(rec: Record, objective: str, *, task: str, cot: bool = True, cot_order: str = "judgment-first",
                 num_frames: int = 4) -> Example:
    """The sequences and pairs record `rec` contributes under `objective` (loads its media)."""
    try:
        task_obj = get_task(rec.task or task)
    except ValueError as e:  # get_task's only error: an unknown task name in this row
        raise ExampleError(f"row {rec.key}: {e}") from None
    if task_obj.is_video != rec.video:
        raise ExampleError(f"row {rec.key}: task {task_obj.name!r} is for {task_obj.media}s but the row has "
                         f"{'videos' if rec.video else 'images'}")
    if task_obj.needs_condition and rec.media.get("condition") is None:
        raise ExampleError(f"row {rec.key}: task {task_obj.name!r} needs a 'condition_image'")
    media = {k: (load_image(v) if k == "condition" else load_media(v, video=rec.video, num_frames=num_frames))
             for k, v in rec.media.items() if v is not None}
    cond = media.get("condition")
    if rec.label is None:
        raise ExampleError(f"row {rec.key}: no 'label' to train on")
    if rec.kind == "pairwise":
        p_b = _p_second_better(rec.label)
        rationale = rec.raw.get("rationale") if cot else None
        if rationale is not None and not isinstance(rationale, str):
            raise ExampleError(f"row {rec.key}: 'rationale' must be a string, got {type(rationale).__name__}")
        if objective == PAIRWISE:
            seqs = []
            for ref, cand, p_yes in (("a", "b", p_b), ("b", "a", 1.0 - p_b)):
                judgment = "yes" if p_yes > 0.5 else "no"
                ctx = build_context(task_obj, "pairwise", rec.prompt, media[cand], reference=media[ref],
                                    condition=cond)
                why = map_rationale(rationale, image1=ref) if rationale else None
                target = format_target(judgment, why, order=cot_order) if why else None
                seqs.append(Sequence(ctx, target, judgment, p_yes))
            return Example(seqs)
        if objective in POINTWISE_OBJECTIVES:
            seqs = []
            for side, p_yes in (("a", 1.0 - p_b), ("b", p_b)):
                ctx = build_context(task_obj, "pointwise", rec.prompt, media[side], condition=cond)
                # the preferred image is a "yes", the rejected one a "no"; a tie teaches no judgment
                seqs.append(Sequence(ctx, None, None, None if rec.label == "tie" else p_yes))
            return Example(seqs, [(0, 1, 1.0 - p_b)])
    elif objective in POINTWISE_OBJECTIVES:
        ctx = build_context(task_obj, "pointwise", rec.prompt, media["candidate"], condition=cond)
        return Example([Sequence(ctx, None, rec.label, 1.0 if rec.label == "yes" else 0.0)])
    raise ExampleError(f"row {rec.key}: a {rec.kind} row cannot train a {objective} judge"
                     + (" (it needs pairs: image_a, image_b, label)" if objective == PAIRWISE else ""))


# ------------------------------------------------------------------ pretraining rows (ShapeWorld pretrain.jsonl)
CAPTION_QUESTION = "Describe the image."


@dataclass
class PretrainRow:
    key: str
    line: int
    image: Path
    pairs: list[tuple[str, str]]  # (question, answer); the first is the caption


def read_pretrain(path: str | Path) -> Iterator[PretrainRow | RecordError]:
    """Rows of a ShapeWorld pretrain.jsonl ({"image", "caption", "qa": [{question, answer}]}), or a
    RecordError naming the line for each bad one."""
    path = Path(path)
    for item in read_jsonl(path):
        if isinstance(item, RecordError):
            yield item
            continue
        line_no, row = item
        where, key = f"{path}:{line_no}", f"line {line_no}"
        if not isinstance(row, dict) or not isinstance(row.get("image"), str) or not row.get("caption"):
            yield RecordError(f"{where}: a pretrain row needs 'image' and 'caption'", line=line_no, key=key)
            continue
        qa = row.get("qa") or []
        if not all(isinstance(q, dict) and q.get("question") and q.get("answer") for q in qa):
            yield RecordError(f"{where}: every 'qa' item needs 'question' and 'answer'", line=line_no, key=key)
            continue
        image = Path(row["image"])
        yield PretrainRow(str(row.get("id", key)), line_no, image if image.is_absolute() else path.parent / image,
                          [(CAPTION_QUESTION, row["caption"])] + [(q["question"], q["answer"]) for q in qa])


def question_context(question: str, image: torch.Tensor, *, question_first: bool = False) -> Context:
    """A plain visual question: the image, then the question (or the question first). Pretraining
    uses both orders: the judge's templates (context/tasks.yaml) put the question before the
    candidate image, and a backbone pretrained on one order alone does not transfer to the other
    (measured on the committed tiny preset, pretrained image-first only: "is there a <colour>
    <shape>?" decided 200 wrong-colour pairs 82% of the time with the image first, 50% with the same
    question before the image)."""
    content = [{"type": "image"}, {"type": "text", "text": question}]
    if question_first:
        content.reverse()
    return Context([{"role": "user", "content": content}], [image], question)


def make_pretrain_example(row: PretrainRow) -> Example:
    """A scene's caption and questions as single-turn sequences, alternating image-first and
    question-first (the caption image-first)."""
    image = load_image(row.image)
    return Example([Sequence(question_context(q, image, question_first=i % 2 == 1), a)
                    for i, (q, a) in enumerate(row.pairs)])


def read_examples_source(path: str | Path, objective: str) -> Iterator[Any]:
    """Records (or RecordErrors) of a training file: pretrain rows for next-token, else manifest records."""
    return read_pretrain(path) if objective == NEXT_TOKEN else read_manifest(path)
