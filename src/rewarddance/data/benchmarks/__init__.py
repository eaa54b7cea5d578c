"""Readers for public reward-model benchmarks, in the formats their authors publish (local files only).

Each format has its own module, whose docstring cites the authors' repository and path it was read
from: `imagereward` (THUDM/ImageReward data/test.json), `hpdv2` (tgxs002/HPSv2 test.json),
`pickapic` (Pick-a-Pic v2 parquet shards, yuvalkirstain/PickScore), `genai_bench`
(TIGER-AI-Lab/GenAI-Bench) and `videogen_rewardbench` (KwaiVGI/VideoAlign). Every reader turns
the file into this project's pairwise Records (label "a" = A preferred, "b", or "tie"), built with
`validate_record` from rows in the manifest schema, so the same data can be scored, evaluated
(`rewarddance.evaluate.headline` computes each benchmark's own headline metric) and, through
`convert`, trained on. A bad row becomes a RecordError naming the file and row; only a missing or
unreadable file, or an unknown format, raises.

Example:
    >>> from rewarddance.data.benchmarks import detect_format, read_benchmark, convert
    >>> detect_format("data/test.json")                                  # doctest: +SKIP
    'imagereward'
    >>> bench = read_benchmark("data/test.json", images="data/test_images")   # doctest: +SKIP
    >>> bench.name, bench.metric, len(bench.records)                     # doctest: +SKIP
    ('imagereward', 'pooled_pair_accuracy', 6399)
    >>> convert(None, "data/test.json", "out/ir", images="data/test_images")   # doctest: +SKIP
    {'out/ir/imagereward.jsonl': 6399}
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ...train.engine import atomic_write_text
from ..records import Record, RecordError
from . import genai_bench, hpdv2, imagereward, pickapic, videogen_rewardbench
from ._common import parquet_columns, read_json, require_file

FORMATS = ("imagereward", "hpdv2", "pickapic", "genai-bench", "videogen-rewardbench")
_MODULES = {"imagereward": imagereward, "hpdv2": hpdv2, "pickapic": pickapic, "genai-bench": genai_bench,
            "videogen-rewardbench": videogen_rewardbench}

__all__ = ["FORMATS", "Benchmark", "convert", "detect_format", "read_benchmark"]


@dataclass
class Benchmark:
    """A benchmark read into pairwise Records.

    name: one of FORMATS; records: Records and RecordErrors in file order (keys unique);
    metric: the name of the headline metric `rewarddance.evaluate.headline` computes;
    task: the judge task that fits the data ("t2i-overall" / "t2v-overall"), for callers without one;
    skipped: rows left out on purpose, by reason (e.g. Pick-a-Pic's {"has_label false": 12}).
    """

    name: str
    records: list[Record | RecordError]
    metric: str
    task: str | None = None
    skipped: dict[str, int] = field(default_factory=dict)


def _first_jsonl_object(path: Path) -> object:
    with path.open(encoding="utf-8") as f:
        for text in f:
            if text.strip():
                try:
                    return json.loads(text)
                except json.JSONDecodeError:
                    return None
    return None


def detect_format(path: str | os.PathLike) -> str | None:
    """The benchmark format of a file (or, for Pick-a-Pic, a folder of parquet shards), from its
    extension and content; None when it is none of FORMATS (this project's own JSONL manifests
    included). Raises FileNotFoundError for a missing path, ValueError for an unreadable file.

    Example:
        >>> detect_format("VideoGen-RewardBench/videogen-rewardbench.csv")   # doctest: +SKIP
        'videogen-rewardbench'
    """
    path = require_file(path)
    if path.is_dir():
        shards = sorted(path.rglob("*.parquet"))
        return "pickapic" if shards and pickapic.looks_like(parquet_columns(shards[0])) else None
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        columns = parquet_columns(path)
        return "pickapic" if pickapic.looks_like(columns) else "genai-bench" if genai_bench.looks_like(columns) else None
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig", errors="replace") as f:
            header = next(csv.reader(f), [])
        return "videogen-rewardbench" if videogen_rewardbench.looks_like(header) else None
    if suffix == ".json":
        data = read_json(path) if path.stat().st_size else None
        first = next((x for x in data if isinstance(x, dict)), None) if isinstance(data, list) else None
        for name in ("imagereward", "hpdv2"):
            if _MODULES[name].looks_like(first):
                return name
        return "genai-bench" if isinstance(first, dict) and genai_bench.looks_like(first) else None
    if suffix == ".jsonl":
        first = _first_jsonl_object(path)
        return "genai-bench" if isinstance(first, dict) and genai_bench.looks_like(first) else None
    return None


def read_benchmark(path: str | os.PathLike, format: str | None = None, *,
                   images: str | os.PathLike | None = None) -> Benchmark:
    """Read a benchmark file in its published format (detected when `format` is None).

    `images` is the root that relative media paths resolve against (default: the file's folder),
    and where Pick-a-Pic / GenAI-Bench image bytes are extracted to (default: `<stem>-images/`
    beside the file). Bad rows come back as RecordError in `records`; a missing path, an unreadable
    file or an unknown format raises (FileNotFoundError / ValueError / PermissionError).

    Example:
        >>> bench = read_benchmark("HPD/test.json", "hpdv2", images="HPD/test")   # doctest: +SKIP
        >>> bench.records[0].key, bench.records[0].label                           # doctest: +SKIP
        ('1:0-1', 'b')
    """
    path = require_file(path)
    if format is None:
        format = detect_format(path)
        if format is None:
            raise ValueError(f"{path}: not a benchmark file this project can read; give the format "
                             f"(one of {', '.join(FORMATS)}), or use it as a manifest if it is one")
    if format not in FORMATS:
        raise ValueError(f"unknown benchmark format {format!r}: expected one of {', '.join(FORMATS)}")
    if path.is_dir() and format != "pickapic":
        raise ValueError(f"{path}: is a folder; the {format} reader takes one file")
    module = _MODULES[format]
    skipped: dict[str, int] = {}
    if format == "pickapic":
        records = pickapic.read(path, images=images, skipped=skipped)
    else:
        records = module.read(path, images=images)
    if format == "genai-bench":  # one file holds image or video votes: the rows tell which
        task = "t2v-overall" if any(isinstance(r, Record) and r.video for r in records) else "t2i-overall"
    else:
        task = module.TASK
    return Benchmark(format, _unique_keys(records), module.METRIC, task=task, skipped=skipped)


def _unique_keys(records: list[Record | RecordError]) -> list[Record | RecordError]:
    """Scores are joined back to rows by key, so a repeated key (two items with one id) gets the
    row number appended; the first keeps its key."""
    seen: set[str] = set()
    for r in records:
        if r.key in seen:
            base, k = f"{r.key}@{r.line}", 2
            new = base
            while new in seen:
                new, k = f"{base}.{k}", k + 1
            r.key = new
            if isinstance(r, Record):
                r.raw = {**r.raw, "id": new}
        seen.add(r.key)
    return records


def _manifest_row(rec: Record, out_dir: Path) -> dict:
    """The record's row with its media paths made relative to `out_dir` (read_manifest resolves
    them against the manifest's folder)."""
    row = dict(rec.raw)
    kind = "video" if rec.video else "image"
    names = {"a": f"{kind}_a", "b": f"{kind}_b", "condition": "condition_image", "reference": "reference"}
    for k, p in rec.media.items():
        if p is not None:
            row[names[k]] = os.path.relpath(os.path.abspath(p), os.path.abspath(out_dir))
    row["id"] = rec.key
    return row


def convert(format: str | None, path: str | os.PathLike, out_dir: str | os.PathLike, *,
            images: str | os.PathLike | None = None) -> dict[str, int]:
    """Write a benchmark as this project's JSONL manifest(s) in `out_dir`, so the same data can be
    scored, evaluated or trained on; returns {file written: rows}.

    One manifest per split where the source has splits (`<format>-<split>.jsonl`, e.g.
    pickapic-validation_unique.jsonl), else `<format>.jsonl`; rows keep the benchmark's extra
    fields (group, split, vote_type, dimensions ...), media paths are relative to `out_dir`. Bad
    rows are not written to a manifest: their messages go to `<format>-errors.txt`.

    Example:
        >>> convert("pickapic", "pickapic_v2/data", "out/pap", images="out/pap/img")   # doctest: +SKIP
        {'out/pap/pickapic-test_unique.jsonl': 500, 'out/pap/pickapic-validation_unique.jsonl': 500}
    """
    bench = read_benchmark(path, format, images=images)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[Path, list[str]] = {}
    errors: list[str] = []
    for rec in bench.records:
        if isinstance(rec, RecordError):
            errors.append(str(rec).replace("\n", " "))
            continue
        parts = [bench.name] + [str(rec.raw[k]) for k in ("genai_task", "split") if rec.raw.get(k)]
        files.setdefault(out_dir / ("-".join(parts) + ".jsonl"), []).append(json.dumps(_manifest_row(rec, out_dir)))
    if errors:
        files[out_dir / f"{bench.name}-errors.txt"] = errors
    counts = {}
    for target, lines in files.items():
        atomic_write_text(target, "".join(line + "\n" for line in lines))  # never half a manifest
        counts[str(target)] = len(lines)
    return counts
