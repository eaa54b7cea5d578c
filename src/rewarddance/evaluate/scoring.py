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
            chunk = todo[i:i + batch_size]
            rows = score_records(rm, chunk, task=task, batch_size=batch_size, strict=strict)
            for row in rows:
                emit(row)
                if "error" in row:
                    print(f"error: {row['error']}", file=sys.stderr)
            n_bad = sum("error" in r for r in rows)
            ok, failed = ok + len(rows) - n_bad, failed + n_bad
            bar.update(len(rows))
            if strict and n_bad:
                break
    return ok, failed


def score_records(rm: RewardModel, records: list[Any], *, task: str | None = None, batch_size: int = 16,
                  strict: bool = False) -> list[dict[str, Any]]:
    """One result row per record, in order: `p_b_better` (pairwise rows: P(image_b better than image_a)),
    `reward` (single-image rows) or `error` (a RecordError, or media that failed to load). With
    `strict`, rows after the first bad one are not scored (rows before it are)."""
    built, errors = [], {}
    for rec in records:
        try:
            if isinstance(rec, RecordError):
                raise rec
            built.append((rec, *_record_items(rm, rec, task)))
        except (MediaError, ValueError) as e:
            errors[id(rec)] = {"key": getattr(rec, "key", ""), "line": rec.line, "error": str(e)}
            if strict:
                break
    scored = {}
    for (rec, _, _), r in zip(built, _score_built(rm, built, batch_size)):
        row = {"key": rec.key, "line": rec.line}
        if "id" in rec.raw:
            row["id"] = rec.raw["id"]
        if rec.kind == "pairwise":
            row["p_b_better"] = rm.pair_probability(r)  # items were built for (b, a)
        else:
            row["reward"] = r[0]
        scored[id(rec)] = row
    return [scored.get(id(r)) or errors[id(r)] for r in records if id(r) in scored or id(r) in errors]


def pairwise_accuracy(rows: list[dict[str, Any]], records: list[Any], by: tuple[str, ...] = ("split",)
                      ) -> dict[str, Any]:
    """Accuracy of `p_b_better` rows against the records' labels over non-tied pairs (0.5 counts as
    wrong): `accuracy` overall, `accuracy_<value>` per value of each record field in `by`
    (`accuracy_id`, `accuracy_ood` for splits), and their counts `n`, `n_<value>`."""
    by_key = {r.key: r for r in records if not isinstance(r, RecordError)}
    hits: dict[str, list[bool]] = {}
    for row in rows:
        rec = by_key.get(row.get("key"))
        if rec is None or "p_b_better" not in row or rec.label not in ("a", "b"):
            continue
        p = row["p_b_better"]
        ok = (p > 0.5) if rec.label == "b" else (p < 0.5)
        hits.setdefault("", []).append(ok)
        for field in by:
            if rec.raw.get(field) is not None:
                hits.setdefault(f"_{rec.raw[field]}", []).append(ok)
    out: dict[str, Any] = {}
    for name, h in sorted(hits.items()):
        out[f"accuracy{name}"], out[f"n{name}"] = sum(h) / len(h), len(h)
    return out


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
