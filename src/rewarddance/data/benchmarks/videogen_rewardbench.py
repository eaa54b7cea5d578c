"""VideoGen-RewardBench (Liu et al. 2025, "Improving Video Generation with Human Feedback").

Format, read from KwaiVGI/VideoAlign `eval_videogen_rewardbench.py` (reads
`datasets/eval/videogen-rewardbench.csv`, joins each path with the CSV's folder `datasets/eval`,
maps each dimension's label with {'A': 1, 'B': -1, 'same': 0}) and `datasets/train/README.md`
(the column meanings), commit 219ab9d. One CSV with a header; the columns used here:

    path_A, path_B           video paths, relative to the CSV's folder
    prompt                   the text prompt
    VQ, MQ, TA, Overall      "A" | "B" | "same": visual quality, motion quality, text alignment, overall
    (A_model, B_model, fps_A, num_frames_A, fps_B, num_frames_B alongside)

Each data row becomes one pairwise video Record: video_a = path_A, video_b = path_B, label from
Overall ("A" -> "a", "B" -> "b", "same" -> "tie"); the per-dimension labels are kept in the row
as "dimensions" ({"VQ": "a", ...}). Keys are the 1-based data-row numbers (header not counted);
`group` is the prompt. `images=ROOT` replaces the CSV's folder as the root of relative paths.

Headline metric ("accuracy_without_ties", `rewarddance.evaluate.headline`): VideoAlign's
`calc_accuracy.py`: accuracy without ties = C / (C + D) over pairs the humans did not tie (a
model tie counts as discordant), and accuracy with ties by tie calibration (Deutsch et al. 2023)
alongside, for Overall and for each dimension.

Example:
    >>> from rewarddance.data.benchmarks import read_benchmark
    >>> bench = read_benchmark("VideoGen-RewardBench/videogen-rewardbench.csv")   # doctest: +SKIP
    >>> bench.records[0].raw["dimensions"]                                      # doctest: +SKIP
    {'VQ': 'a', 'MQ': 'a', 'TA': 'tie', 'Overall': 'a'}
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..records import Record, RecordError
from ._common import bad, make_record

NAME = "videogen-rewardbench"
METRIC = "accuracy_without_ties"
TASK = "t2v-overall"
LABELS = {"A": "a", "B": "b", "same": "tie"}
DIMENSIONS = ("VQ", "MQ", "TA", "Overall")
REQUIRED = ("path_A", "path_B", "prompt", "Overall")


def looks_like(header: list[str]) -> bool:
    return "path_A" in header and "path_B" in header


def read(path: Path, *, images: str | Path | None = None) -> list[Record | RecordError]:
    """Pairwise video Records (and RecordErrors for bad rows) of a VideoGen-RewardBench CSV."""
    root = Path(images) if images is not None else path.parent
    out: list[Record | RecordError] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: a BOM from Excel is not part of "path_A"
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in REQUIRED if c not in header]
            if missing:
                raise ValueError(f"{path}: not a VideoGen-RewardBench CSV: no column(s) {', '.join(missing)}")
            for n, cell in enumerate(reader, start=1):
                key = str(n)
                if None in cell:  # csv puts surplus fields under the key None
                    out.append(bad(path, n, f"{len(header) + len(cell[None])} fields but {len(header)} columns", key))
                    continue
                labels = {d: LABELS.get((cell.get(d) or "").strip()) for d in DIMENSIONS if d in header}
                if labels["Overall"] is None:
                    out.append(bad(path, n, f"Overall label {cell.get('Overall')!r} is not one of A, B, same", key))
                    continue
                row = {"id": key, "prompt": cell.get("prompt") or "", "video_a": (cell.get("path_A") or "").strip(),
                       "video_b": (cell.get("path_B") or "").strip(), "label": labels["Overall"],
                       "dimensions": {d: v for d, v in labels.items() if v is not None}, "group": cell.get("prompt")}
                for extra, name in (("A_model", "model_a"), ("B_model", "model_b")):
                    if cell.get(extra):
                        row[name] = cell[extra]
                if not row["prompt"].strip():
                    out.append(bad(path, n, "missing or empty 'prompt'", key))
                    continue
                out.append(make_record(row, base=root, path=path, n=n))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file ({e.reason})") from None
    return out
