"""GenAI-Bench (Jiang et al. 2024, the GenAI-Arena votes): image generation, video generation and
image editing preference votes.

Format, read from TIGER-AI-Lab/GenAI-Bench `inference.py` (run_pairwise_example, parse_response),
`inference_configs.json` (the columns per task) and `genaibench/utils.py` (videos given as URLs
or paths), commit f0b0334; the dataset is the parquet of the Hugging Face dataset
TIGER-Lab/GenAI-Bench, config per task, split test_v1 (`<task>/test_v1-00000-of-00001.parquet`):

    image_generation: prompt, left_image, right_image (HF Image: {"bytes", "path"}), vote_type
    video_generation: prompt, left_video, right_video (str: URL or path), vote_type
    image_edition:    source_prompt, target_prompt, instruct_prompt, source_image,
                      left_output_image, right_output_image, vote_type
    (left_model, right_model alongside)
    vote_type: "leftvote" | "rightvote" | "tievote" | "bothbad_vote"

The same columns are also read from a JSON list or a JSONL file (one object per line), where
media are path strings. Rows become pairwise Records: A = left, B = right, label "a" (leftvote),
"b" (rightvote) or "tie" (tievote and bothbad_vote alike; the vote itself stays in "vote_type").
An unknown vote is a bad row. Keys are the 1-based row numbers (JSONL: line numbers) as strings.
Image-editing rows carry the source image as "condition_image" and instruct_prompt as the prompt.

Media: image bytes are written once, content-addressed, to `images` if given, else to
`<file stem>-images/` beside the file. Path strings resolve relative to `images` if given, else
the file's folder. A video URL is never fetched (nothing is downloaded at run time): it is
looked for as its file name under `images` (or the file's folder), so download the videos first
into one folder and pass `images=DIR`.

Headline metric ("accuracy_without_ties", `rewarddance.evaluate.headline`): pairwise accuracy
with tie and both-bad votes dropped, plus accuracy with ties (tie calibration) alongside. Note
that the GenAI-Bench authors' own leaderboard (inference.py parse_response) scores a generative
judge's four-way verdict ([[A>B]], [[B>A]], [[A=B=Good]], [[A=B=Bad]]) against all votes; a
P(A better) reward model cannot say "both bad", so that four-way number is not computed here.
Not verified here: that the with-ties variant other papers report (e.g. VideoAlign's GenAI-Bench
column) treats both-bad votes as ties exactly like this.

Example:
    >>> from rewarddance.data.benchmarks import read_benchmark
    >>> bench = read_benchmark("image_generation/test_v1-00000-of-00001.parquet")   # doctest: +SKIP
    >>> bench.name, bench.records[0].raw["vote_type"]                               # doctest: +SKIP
    ('genai-bench', 'leftvote')
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from ..records import Record, RecordError, read_jsonl
from ._common import (
    bad,
    extract,
    image_bytes,
    json_list,
    make_record,
    parquet_columns,
    parquet_rows,
    split_of,
    writable_folder,
)

NAME = "genai-bench"
METRIC = "accuracy_without_ties"
VOTES = {"leftvote": "a", "rightvote": "b", "tievote": "tie", "bothbad_vote": "tie"}
# (media columns left/right, our keys, kind) per task, as inference_configs.json names them
TASKS = {
    "video_generation": (("left_video", "right_video"), ("video_a", "video_b"), "video"),
    "image_edition": (("left_output_image", "right_output_image"), ("image_a", "image_b"), "image"),
    "image_generation": (("left_image", "right_image"), ("image_a", "image_b"), "image"),
}


def looks_like(columns: list[str] | dict) -> bool:
    return "vote_type" in columns and any(all(c in columns for c in cols) for cols, _, _ in TASKS.values())


def task_of(columns: list[str] | dict) -> str:
    for name, (cols, _, _) in TASKS.items():
        if all(c in columns for c in cols):
            return name
    return "image_generation"


def _rows(path: Path) -> Iterator[tuple[int, Any] | RecordError]:
    if path.suffix.lower() == ".parquet":
        yield from parquet_rows(path, parquet_columns(path))
    elif path.suffix.lower() == ".jsonl":
        yield from read_jsonl(path)  # a malformed line is a RecordError naming the line
    else:
        yield from enumerate(json_list(path), start=1)


def _video_path(value: str, root: Path) -> str:
    """A local path for a video cell: a URL maps to its file name under `root` (never fetched)."""
    if value.startswith(("http://", "https://")):
        return str(root / unquote(Path(urlparse(value).path).name))
    return value if Path(value).is_absolute() else str(root / value)


def read(path: Path, *, images: str | Path | None = None) -> list[Record | RecordError]:
    """Pairwise Records (and RecordErrors for bad rows) of one GenAI-Bench file, in file order."""
    root = (Path(images) if images is not None else path.parent).absolute()
    folder: Path | None = None  # created on the first image bytes only: path-only files need none
    split = split_of(path) if path.suffix.lower() == ".parquet" else None
    out: list[Record | RecordError] = []
    for item in _rows(path):
        if isinstance(item, RecordError):
            out.append(item)
            continue
        n, cell = item
        if not isinstance(cell, dict):
            out.append(bad(path, n, f"expected an object, got {type(cell).__name__}"))
            continue
        task = task_of(cell)
        cols, keys, kind = TASKS[task]
        if task == "image_edition":
            prompt = cell.get("instruct_prompt") or cell.get("target_prompt")
        else:
            prompt = cell.get("prompt")
        vote = cell.get("vote_type")
        if not isinstance(prompt, str) or not prompt.strip():
            out.append(bad(path, n, "missing or empty prompt", str(n)))
            continue
        if not isinstance(vote, str) or vote not in VOTES:
            out.append(bad(path, n, f"unknown vote_type {vote!r} (expected one of {', '.join(VOTES)})", str(n)))
            continue
        row: dict[str, Any] = {"id": str(n), "prompt": prompt, "label": VOTES[vote], "vote_type": vote,
                               "genai_task": task, "group": str(n)}
        if split:
            row["split"] = split
        media_cols = list(zip(cols, keys)) + ([("source_image", "condition_image")] if task == "image_edition" else [])
        problem = None
        for col, key in media_cols:
            value = cell.get(col)
            if kind == "video" and key != "condition_image":
                if not isinstance(value, str) or not value.strip():
                    problem = f"missing or empty {col}"
                    break
                row[key] = _video_path(value.strip(), root)
                continue
            data = image_bytes(value)
            if data is None:
                problem = f"missing or empty {col}"
                break
            if isinstance(data, str):
                row[key] = data if Path(data).is_absolute() else str(root / data)
            else:
                if folder is None:
                    folder = Path(images) if images is not None else path.parent / f"{path.stem}-images"
                    folder = writable_folder(folder.absolute(), path)
                row[key] = str(folder / extract(data, folder))
        if problem:
            out.append(bad(path, n, problem, str(n)))
            continue
        for extra, name in (("left_model", "model_a"), ("right_model", "model_b")):
            if isinstance(cell.get(extra), str):
                row[name] = cell[extra]
        out.append(make_record(row, base=root, path=path, n=n))
    return out
