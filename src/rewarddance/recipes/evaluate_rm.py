"""The evaluation recipe: `rewarddance eval --model M --data F [--data G ...] [--format FMT] [--json OUT]`.

Reads each data file (this project's manifest, or a public benchmark's own format), scores it
(resumable, data-parallel under torchrun, bad rows reported and skipped), and computes:
- pairwise records: accuracy over non-tied pairs (a model tie is wrong), accuracy with ties at a
  tie band calibrated on the data (its threshold reported), position consistency, ECE of
  P(A better), overall / per `split` / per `category`, and the benchmark's own headline metric;
- pointwise records (`image`, `label` yes/no): accuracy, AUROC, ECE.
Writes OUT (JSON), OUT's .md (the table) and a reliability diagram (PNG) beside it, and prints
the table.

Example:
    >>> import rewarddance as rd
    >>> from rewarddance.recipes.evaluate_rm import evaluate
    >>> result = evaluate(rd.load("qwen2_5_vl-tiny-shapeworld"), ["test.jsonl"], json_out="eval.json")  # doctest: +SKIP
    >>> result["overall"]["accuracy"]                                                                  # doctest: +SKIP
    0.52
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data import Record, RecordError, read_manifest
from ..evaluate import metrics
from ..evaluate.report import markdown_table, reliability_diagram
from ..evaluate.scoring import read_rows, score_to_file, shard_info
from ..models.reward_model import RewardModel


class StrictStop(RuntimeError):
    """--strict and a bad row: the evaluation stopped (the row is named)."""


def read_data(path: str | os.PathLike, format: str | None = None, *, images: str | None = None
              ) -> tuple[list[Record | RecordError], Any]:
    """(records, benchmark or None): a public benchmark's file (its format given or detected) or
    this project's JSONL manifest."""
    from ..data.benchmarks import detect_format, read_benchmark

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: data file not found")
    fmt = format or detect_format(path)
    if fmt is None:
        return list(read_manifest(path)), None
    bench = read_benchmark(path, fmt, images=images)
    return bench.records, bench


def evaluate(rm: RewardModel, data: Sequence[str | os.PathLike], *, format: str | None = None,
             images: str | None = None, json_out: str | os.PathLike | None = None, strict: bool = False,
             batch_size: int = 16, task: str | None = None, progress: bool = True,
             calibration_split: str | None = None, model_name: str | None = None) -> dict[str, Any] | None:
    """Evaluate `rm` on each data file; returns the result dict (see the module docstring and
    the issue's contract), or None on the non-zero ranks of a data-parallel run.

    Scores go to `<OUT stem>-scores/` beside `json_out` (a re-run resumes from them), or to a
    temporary folder when there is no `json_out`. With several files, `overall`/`splits`/
    `by_category` pool them and `datasets` holds each file's own result.
    """
    rank, _ = shard_info()
    out = Path(json_out) if json_out else None
    tmp = None
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="rd-eval-")
        score_dir = Path(tmp.name)
    else:
        score_dir = out.with_name(out.stem + "-scores")
    per_file, pooled_rows, pooled_records = {}, [], []
    failed = 0
    for i, path in enumerate(data):
        records, bench = read_data(path, format, images=images)
        bad = [r for r in records if isinstance(r, RecordError)]
        if bad and strict:
            raise StrictStop(f"{bad[0]} (--strict)")
        records = [r for r in records if not isinstance(r, RecordError)]
        for r in bad:
            if rank == 0:
                print(f"skipped: {r}", file=sys.stderr)
        scores = score_dir / f"{i}-{Path(path).stem}.jsonl"
        file_task = task or (bench.task if bench is not None else None)  # a benchmark names the task it fits
        _, n_failed = score_to_file(rm, records, scores, task=file_task, strict=strict, batch_size=batch_size,
                                     progress=progress)
        if strict and n_failed:
            raise StrictStop(f"{scores}: {n_failed} rows failed (--strict); see the errors above")
        failed += n_failed + len(bad)
        if rank != 0:
            continue
        rows = read_rows([scores])
        result = file_metrics(records, rows)
        if bench is not None:
            from ..evaluate.headline import headline

            p_a = {r["key"]: 1.0 - r["p_b_better"] for r in rows if "p_b_better" in r}
            result["benchmark"] = headline(bench, p_a, calibration_split=calibration_split)
        result["n_rows_failed"] = n_failed + len(bad)
        per_file[str(path)] = result
        pooled_rows += rows
        pooled_records += records
    if tmp is not None:
        tmp.cleanup()
    if rank != 0:
        return None
    result = per_file[str(data[0])] if len(data) == 1 else {
        **file_metrics(pooled_records, pooled_rows), "datasets": per_file, "n_rows_failed": failed}
    if len(data) > 1:
        benches = [r["benchmark"] for r in per_file.values() if "benchmark" in r]
        if len(benches) == 1:
            result["benchmark"] = benches[0]
    result["model"] = model_name
    if out is not None:
        write_outputs(result, pooled_records, pooled_rows, out)
    return result


def _pairs(records: list[Record], rows: list[dict]) -> list[tuple[Record, dict]]:
    by_key = {r["key"]: r for r in rows if "error" not in r}
    return [(rec, by_key[rec.key]) for rec in records if rec.key in by_key and rec.kind == "pairwise"
            and rec.label in ("a", "b", "tie") and "p_b_better" in by_key[rec.key]]


def file_metrics(records: list[Record], rows: list[dict]) -> dict[str, Any]:
    """Metrics of one set of records and their score rows (see the module docstring)."""
    pairs = _pairs(records, rows)
    result: dict[str, Any] = {"overall": {}, "splits": {}, "by_category": {}}
    if pairs:
        overall = _pair_metrics(pairs)
        result["overall"] = overall
        threshold = overall["tie_threshold"]  # calibrated once, on all pairs; subsets use it as it is
        for field, name in (("split", "splits"), ("category", "by_category")):
            values = sorted({str(rec.raw[field]) for rec, _ in pairs if rec.raw.get(field) is not None})
            for v in values:
                subset = [(rec, row) for rec, row in pairs if str(rec.raw.get(field)) == v]
                result[name][v] = _pair_metrics(subset, threshold)
    by_key = {r["key"]: r for r in rows if "error" not in r}
    points = [(rec, by_key[rec.key]) for rec in records
              if rec.kind == "pointwise" and rec.label in ("yes", "no") and "reward" in by_key.get(rec.key, {})]
    if points:
        pw = metrics.pointwise_metrics([row["reward"] for _, row in points], [rec.label for rec, _ in points])
        if pairs:
            result["pointwise"] = pw
        else:
            result["overall"] = pw
    return result


def _pair_metrics(pairs: list[tuple[Record, dict]], threshold: float | None = None) -> dict[str, Any]:
    p_a = [1.0 - row["p_b_better"] for _, row in pairs]
    orders = [row.get("p_b_better_orders") for _, row in pairs]
    have_orders = all(o is not None for o in orders)
    return metrics.pairwise_metrics(
        p_a, [rec.label for rec, _ in pairs], threshold=threshold,
        p_b_first=[o[0] for o in orders] if have_orders else None,
        p_b_swapped=[o[1] for o in orders] if have_orders else None)


def write_outputs(result: dict[str, Any], records: list[Record], rows: list[dict], out: Path) -> None:
    """OUT (JSON), OUT's .md and OUT's -reliability.png."""
    out.parent.mkdir(parents=True, exist_ok=True)
    pairs = _pairs(records, rows)
    decided = [(rec, row) for rec, row in pairs if rec.label in ("a", "b")]
    if decided:
        p = np.array([1.0 - row["p_b_better"] for _, row in decided])
        y = np.array([rec.label == "a" for rec, _ in decided], dtype=float)
        bins, xlabel = metrics.calibration_bins(p, y), "predicted P(A better)"
    else:
        by_key = {r["key"]: r for r in rows if "reward" in r}
        pts = [(by_key[rec.key]["reward"], rec.label == "yes") for rec in records
               if rec.kind == "pointwise" and rec.key in by_key and rec.label in ("yes", "no")]
        bins = metrics.calibration_bins([p for p, _ in pts], [float(y) for _, y in pts])
        xlabel = "predicted P(yes)"
    if bins:
        png = reliability_diagram(bins, out.with_name(out.stem + "-reliability.png"),
                                  title="reliability", xlabel=xlabel)
        result["reliability_diagram"] = png.name
    result["calibration_bins"] = bins
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown_table(result) + "\n")
