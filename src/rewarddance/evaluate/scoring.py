"""Scoring records (design.md's manifests, or a public benchmark's pairs) with a reward model:
resumable, row errors kept, data-parallel under torchrun.

Used by `rewarddance score --input`, `rewarddance eval`, the demo and the training recipe's
held-out check, as functions.

Example:
    >>> import rewarddance as rd
    >>> from rewarddance.evaluate import score_manifest
    >>> score_manifest(rd.load("qwen2_5_vl-tiny"), "pairs.jsonl", "scores.jsonl")   # doctest: +SKIP
    (12, 0)

Output rows (JSONL, input order): `key`, `line`, `id` (when the row has one), `model` (the
fingerprint of the weights, dtype and scoring settings that wrote the row), and
- pairwise rows: `p_b_better` = P(image_b better than image_a) and `p_b_better_orders`, the two
  readings it averages (B as image 2, then B as image 1 with the answer flipped: a pairwise
  judge's position bias shows as their disagreement);
- single-image rows: `reward`;
- rows that failed: `error` (one line naming the row and the problem); a re-run retries them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterable

import torch
from tqdm import tqdm

from ..context import Task, get_task
from ..data import Record, RecordError, read_manifest
from ..media import MediaError
from ..models.reward_model import RewardModel
from ..train.engine import atomic_write_text, read_appended_rows
from .metrics import accuracy

log = logging.getLogger(__name__)

# What a processor or the model raises for one bad input that loaded fine (a size the processor
# refuses, a tensor shape the model cannot take): the batch is re-scored row by row, so only the
# bad row fails. Anything else (KeyboardInterrupt, MemoryError) stops the job.
ROW_ERRORS = (MediaError, ValueError, RuntimeError, TypeError, IndexError)


class ScoreFileMismatch(ValueError):
    """An output file written by another model (or dtype / task): resuming into it would mix scores."""


# ------------------------------------------------------------------ model fingerprint
_FINGERPRINTS: dict[tuple, str] = {}


def model_fingerprint(rm: RewardModel, task: str | None = None) -> str:
    """A short hash of everything a score depends on: the weights' bytes, their dtype, the judge's
    kind (objective, layout, normalize), the frames it samples from a video and the task it is asked (its
    templates, not its name: a task file edited in place is another task). Cached per weights state."""
    judge = rm.judge
    settings = (rm.config.objective, rm.layout, rm.config.normalize, get_task(task or rm.task), rm.num_frames,
                str(rm.dtype))
    key = (id(judge), judge.state(), settings)
    if key not in _FINGERPRINTS:
        h = hashlib.blake2b(repr(settings).encode(), digest_size=8)
        for name, p in judge.state_dict().items():
            t = p.detach().to("cpu").contiguous()
            h.update(name.encode())
            h.update((t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes())
        _FINGERPRINTS[key] = h.hexdigest()
    return _FINGERPRINTS[key]


# ------------------------------------------------------------------ data parallel
def shard_info() -> tuple[int, int]:
    """(rank, world size) under torchrun (joining its gloo/nccl group), else (0, 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def close_distributed() -> None:
    """Leave the process group together: every rank waits for the others, then destroys it. A rank that
    ends while its gloo group is alive (e.g. a non-main rank returning while rank 0 still saves) can
    abort at interpreter exit ("terminate called without an active exception"), failing the launch."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(world: int) -> None:
    """Wait for every rank (nothing with one process)."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _part_path(output: Path, rank: int) -> Path:
    return output.with_name(f"{output.name}.rank{rank}")


def read_rows(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Rows of earlier runs (a line cut off by a crash is skipped: that row is scored again)."""
    return [row for path in paths if path.exists() for row in read_appended_rows(path)]


def _finished(rows: list[dict[str, Any]], fingerprint: str, output: Path) -> dict[str, dict]:
    """Rows that succeeded, by key; refuses rows another model wrote."""
    done = {}
    for row in rows:
        if "key" not in row or "error" in row:
            continue  # failed rows are retried
        if row.get("model") != fingerprint:
            raise ScoreFileMismatch(
                f"{output}: row {row['key']!r} was scored by another model or setting (fingerprint "
                f"{row.get('model', 'none')}, this model {fingerprint}); refusing to resume into it. Use another "
                f"--output, or delete the file to score again")
        done[row["key"]] = row
    return done


# ------------------------------------------------------------------ scoring to a file
def score_manifest(rm: RewardModel, input: str | os.PathLike, output: str | os.PathLike, *, task: str | None = None,
                   strict: bool = False, batch_size: int = 16, progress: bool = True) -> tuple[int, int]:
    """Score every row of a manifest into `output`; see `score_to_file`. Returns (rows ok, rows failed)."""
    input = Path(input)
    if not input.exists():
        raise FileNotFoundError(f"{input}: manifest not found")
    return score_to_file(rm, list(read_manifest(input)), output, task=task, strict=strict, batch_size=batch_size,
                         progress=progress)


def score_to_file(rm: RewardModel, records: list[Record | RecordError], output: str | os.PathLike, *,
                  task: str | None = None, strict: bool = False, batch_size: int = 16, progress: bool = True
                  ) -> tuple[int, int]:
    """Score `records` into `output` (JSONL, one row per record, in input order at the end).

    Resumable: rows already in `output` (or in the per-rank files `output.rankN` a data-parallel
    run left behind) are kept if they succeeded and the same model wrote them; the rest are scored.
    Rows are written and flushed batch by batch, so a crash loses at most one batch.
    Under torchrun each rank scores every world-size-th remaining row into its own file; rank 0
    merges them in input order. Returns (rows ok, rows failed) over all records.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fingerprint = model_fingerprint(rm, task)
    rank, world = shard_info()
    parts = sorted(output.parent.glob(f"{output.name}.rank*"))
    done = _finished(read_rows([output, *parts]), fingerprint, output)
    barrier(world)  # every rank has read the same finished rows before anyone writes
    todo = [r for r in records if r.key not in done][rank::world]
    mine = output if world == 1 else _part_path(output, rank)
    if world == 1 and output.exists():  # keep only finished rows, atomically, then append
        _atomic_write(output, done.values())
    n_bad = 0
    with mine.open("a") as out, tqdm(total=len(todo), desc="scoring" if world == 1 else f"scoring (rank {rank})",
                                     unit="row", disable=not progress or rank != 0, file=sys.stderr) as bar:
        for i in range(0, len(todo), batch_size):
            rows = score_records(rm, todo[i:i + batch_size], task=task, batch_size=batch_size, strict=strict,
                                 fingerprint=fingerprint)
            for row in rows:
                out.write(json.dumps(row) + "\n")
                if "error" in row:
                    print(f"error: {row['error']}", file=sys.stderr)
            out.flush()
            n_bad += sum("error" in r for r in rows)
            bar.update(len(rows))
            if strict and n_bad:
                break
    if world > 1:
        print(f"rank {rank}/{world}: scored {len(todo)} rows ({n_bad} failed)", file=sys.stderr)
    barrier(world)
    if rank == 0:
        _merge(records, output, fingerprint)
    barrier(world)
    rows = read_rows([output])
    failed = sum("error" in r for r in rows)
    return len(rows) - failed, failed


def _atomic_write(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _merge(records: list[Record | RecordError], output: Path, fingerprint: str) -> None:
    """All rows of `output` and the per-rank files, one per record (a success wins over an error),
    in input order, written atomically; the per-rank files are removed after."""
    parts = sorted(output.parent.glob(f"{output.name}.rank*"))
    best: dict[str, dict] = {}
    for row in read_rows([output, *parts]):
        key = row.get("key")
        if key is not None and (key not in best or "error" in best[key]):
            best[key] = row
    _finished(list(best.values()), fingerprint, output)  # never merge another model's rows
    _atomic_write(output, (best[r.key] for r in records if r.key in best))
    for p in parts:
        p.unlink()


# ------------------------------------------------------------------ scoring in memory
def score_records(rm: RewardModel, records: list[Any], *, task: str | None = None, batch_size: int = 16,
                  strict: bool = False, fingerprint: str | None = None) -> list[dict[str, Any]]:
    """One result row per record, in order (see the module docstring for the fields). A record that
    cannot be loaded gets an `error` row; if scoring a batch fails, its rows are scored one by one
    so that only the bad ones fail. With `strict`, rows after the first bad one are not scored."""
    built, errors = [], {}
    for rec in records:
        try:
            if isinstance(rec, RecordError):
                raise rec
            built.append((rec, *_record_items(rm, rec, task)))
        except (MediaError, ValueError) as e:
            errors[id(rec)] = _error_row(rec, e)
            if strict:
                break
    scored = {}
    try:
        results = _score_built(rm, built, batch_size)
    except ROW_ERRORS as batch_error:
        log.warning("a batch of %d rows failed (%s); scoring its rows one by one", len(built), batch_error)
        results = []
        for b in built:
            try:
                results.append(_score_built(rm, [b], batch_size)[0])
            except ROW_ERRORS as e:
                results.append(e)
    for (rec, _, _), r in zip(built, results):
        if isinstance(r, Exception):
            errors[id(rec)] = _error_row(rec, r)
            continue
        row = {"key": rec.key, "line": rec.line}
        if "id" in rec.raw:
            row["id"] = rec.raw["id"]
        if fingerprint:
            row["model"] = fingerprint
        if rec.kind == "pairwise":
            row["p_b_better"] = rm.pair_probability(r)  # items were built for (b, a)
            row["p_b_better_orders"] = _order_readings(rm, r)
        else:
            row["reward"] = r[0]
        scored[id(rec)] = row
    return [scored.get(id(r)) or errors[id(r)] for r in records if id(r) in scored or id(r) in errors]


def _error_row(rec: Any, e: Exception) -> dict[str, Any]:
    message = str(e)
    where = f"{getattr(rec, 'key', '')} (line {rec.line})"
    return {"key": getattr(rec, "key", ""), "line": rec.line,
            "error": message if isinstance(e, RecordError) else f"{where}: {type(e).__name__}: {message}"}


def _order_readings(rm: RewardModel, rewards: list[float]) -> list[float]:
    """P(B better) read in each order: [B as image 2, B as image 1]. A pointwise judge has no order."""
    if rm.layout == "pointwise":
        p = rm.pair_probability(rewards)
        return [p, p]
    return [rewards[0], 1.0 - rewards[1]]


def pairwise_accuracy(rows: list[dict[str, Any]], records: list[Any], by: tuple[str, ...] = ("split",)
                      ) -> dict[str, Any]:
    """Accuracy of `p_b_better` rows against the records' labels over non-tied pairs (0.5 counts as
    wrong): `accuracy` overall, `accuracy_<value>` per value of each record field in `by`
    (`accuracy_id`, `accuracy_ood` for splits), and their counts `n`, `n_<value>`."""
    by_key = {r.key: r for r in records if not isinstance(r, RecordError)}
    groups: dict[str, tuple[list[float], list[str]]] = {}
    for row in rows:
        rec = by_key.get(row.get("key"))
        if rec is None or "p_b_better" not in row or rec.label not in ("a", "b"):
            continue
        names = [""] + [f"_{rec.raw[f]}" for f in by if rec.raw.get(f) is not None]
        for name in names:
            p, labels = groups.setdefault(name, ([], []))
            p.append(1.0 - row["p_b_better"])
            labels.append(rec.label)
    out: dict[str, Any] = {}
    for name, (p, labels) in sorted(groups.items()):
        out[f"accuracy{name}"], out[f"n{name}"] = accuracy(p, labels)
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
    by_task: dict[Task, list[int]] = {}  # by the task itself: two custom tasks may share a name
    for j, (_, task_obj, _) in enumerate(built):
        by_task.setdefault(task_obj, []).append(j)
    out: list[list[float]] = [[] for _ in built]
    with torch.inference_mode():
        for task_obj, idx in by_task.items():
            items = [item for j in idx for item in built[j][2]]
            rewards = rm.score_items(task_obj, items, batch_size=batch_size)
            pos = 0
            for j in idx:
                out[j] = rewards[pos:pos + len(built[j][2])]
                pos += len(built[j][2])
    return out
