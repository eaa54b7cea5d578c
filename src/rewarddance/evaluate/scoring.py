"""Scoring a manifest (design.md's JSONL records) with a reward model, resumably, row errors kept.

Used by `rewarddance score --input`, the demo and the evaluator, as a function.

Example:
    >>> import rewarddance as rd
    >>> from rewarddance.evaluate import score_manifest
    >>> score_manifest(rd.load("qwen2_5_vl-tiny"), "pairs.jsonl", "scores.jsonl")   # doctest: +SKIP
    (12, 0)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..data import RecordError, read_manifest
from ..media import MediaError
from ..models.reward_model import RewardModel


def _done_keys(output: Path) -> dict[str, str]:
    """Rows of an earlier run that succeeded, by key (rows with an error are retried)."""
    done: dict[str, str] = {}
    if output.exists():
        for text in output.read_text().splitlines():
            try:
                row = json.loads(text)
            except json.JSONDecodeError:
                continue  # a line cut off by a crash: that row is scored again
            if "error" not in row and "key" in row:
                done[row["key"]] = text
    return done


def score_manifest(rm: RewardModel, input: str | os.PathLike, output: str | os.PathLike, *, task: str | None = None, strict: bool = False,
                   batch_size: int = 16, progress: bool = True) -> tuple[int, int]:
    """Score every row of a manifest into `output` (JSONL, one line per input row, written as it goes).

    Pairwise rows get `p_b_better` = P(image_b better than image_a); pointwise rows `reward`.
    A re-run keeps finished rows and scores the rest. Returns (rows ok, rows failed).
    """
    input, output = Path(input), Path(output)
    if not input.exists():
        raise FileNotFoundError(f"{input}: manifest not found")
    done = _done_keys(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(output.suffix + ".tmp")
    tmp.write_text("".join(t + "\n" for t in done.values()))
    os.replace(tmp, output)  # keep only finished rows, atomically
    records = list(read_manifest(input))
    ok, failed = len([r for r in records if getattr(r, "key", None) in done]), 0
    todo = [r for r in records if getattr(r, "key", None) not in done]
    with output.open("a") as out, tqdm(total=len(todo), desc="scoring", unit="row", disable=not progress,
                                      file=sys.stderr) as bar:
        def emit(row: dict[str, Any]) -> None:
            out.write(json.dumps(row) + "\n")
            out.flush()

        for i in range(0, len(todo), batch_size):
            built, errors = [], []
            for rec in todo[i:i + batch_size]:
                try:
                    if isinstance(rec, RecordError):
                        raise rec
                    built.append((rec, *_record_items(rm, rec, task)))
                except (MediaError, ValueError) as e:
                    errors.append({"key": getattr(rec, "key", ""), "line": rec.line, "error": str(e)})
                    if strict:
                        break  # rows read before the bad one are still scored and kept
            rewards = _score_built(rm, built, batch_size)
            for (rec, _, _), r in zip(built, rewards):
                row = {"key": rec.key, "line": rec.line}
                if "id" in rec.raw:
                    row["id"] = rec.raw["id"]
                if rec.kind == "pairwise":
                    row["p_b_better"] = rm.pair_probability(r)  # items were built for (b, a)
                else:
                    row["reward"] = r[0]
                emit(row)
            for row in errors:
                emit(row)
                print(f"error: {row['error']}", file=sys.stderr)
            ok, failed = ok + len(built), failed + len(errors)
            bar.update(len(built) + len(errors))
            if strict and errors:
                break
    return ok, failed


def _record_items(rm: RewardModel, rec: Any, task: str | None) -> tuple[Any, list[tuple]]:
    """(task, loaded items) for one record: pointwise -> its reward; pairwise -> P(b better than a)."""
    task = rec.task or task
    cond = rec.media.get("condition")
    if rec.kind == "pairwise":
        cands, refs = rm.pair_candidates(rec.media["b"], rec.media["a"])
        return rm.load_items(rec.prompt, cands, references=refs, conditions=cond, task=task)
    ref = rec.media.get("reference")
    if rm.layout == "pairwise" and ref is None:
        raise ValueError(f"row {rec.key}: a pairwise model needs a 'reference' for a single-image row")
    return rm.load_items(rec.prompt, [rec.media["candidate"]], references=[ref] if ref else None,
                         conditions=cond, task=task)


def _score_built(rm: RewardModel, built: list[tuple], batch_size: int) -> list[list[float]]:
    """Rewards for each (record, task, items), scoring rows of one task together (shared prefixes)."""
    by_task: dict[str, list[int]] = {}
    for j, (_, task_obj, _) in enumerate(built):
        by_task.setdefault(task_obj.name, []).append(j)
    out: list[list[float]] = [[] for _ in built]
    with torch.inference_mode():
        for idx in by_task.values():
            items = [item for j in idx for item in built[j][2]]
            rewards = rm.score_items(built[idx[0]][1], items, batch_size=batch_size)
            pos = 0
            for j in idx:
                out[j] = rewards[pos:pos + len(built[j][2])]
                pos += len(built[j][2])
    return out
