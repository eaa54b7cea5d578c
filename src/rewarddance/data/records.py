"""The manifest schema (design.md): one JSON object per line, media paths relative to the file.

    pairwise:  {"id", "task", "prompt", "image_a", "image_b", "label": "a"|"b"|"tie", ...}
    pointwise: {"id", "task", "prompt", "image", "label": "yes"|"no"}
    video:     "video_a"/"video_b"/"video"; image-to-video adds "condition_image".
    optional:  "reference" (pointwise rows scored by a pairwise model), "rationale",
               "category", "split".

Example:
    >>> from rewarddance.data import validate_record
    >>> validate_record({"prompt": "a red circle", "image": "x.png"}, base=".", line=1).kind
    'pointwise'
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

LABELS = {"pairwise": ("a", "b", "tie"), "pointwise": ("yes", "no")}


class RecordError(ValueError):
    """A bad manifest row; the message names the file and line. `key` is the row's id or "line N"."""

    def __init__(self, message: str, *, key: str = "", line: int = 0) -> None:
        super().__init__(message)
        self.key, self.line = key, line


@dataclass
class Record:
    key: str  # the row's id, or "line N"
    line: int
    kind: str  # "pairwise" | "pointwise"
    prompt: str
    media: dict[str, Path | None]  # a, b (pairwise) or candidate (pointwise); reference; condition
    video: bool
    label: str | None = None
    task: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


def _path(base: Path, value: Any, key: str, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise RecordError(f"{where}: {key!r} must be a non-empty path string")
    p = Path(value)
    return p if p.is_absolute() else base / p


def validate_record(rec: Any, *, base: str | Path, line: int, source: str = "manifest") -> Record:
    """Check one parsed row against the schema; RecordError names the file, line and problem."""
    where = f"{source}:{line}"
    if not isinstance(rec, dict):
        raise RecordError(f"{where}: a row must be a JSON object, got {type(rec).__name__}")
    base = Path(base)
    key = str(rec["id"]) if "id" in rec else f"line {line}"
    where = f"{source}:{line} ({key})" if "id" in rec else where
    prompt = rec.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RecordError(f"{where}: missing or empty 'prompt'")
    video = any(k in rec for k in ("video", "video_a", "video_b"))
    m = "video" if video else "image"
    if f"{m}_a" in rec or f"{m}_b" in rec:
        kind = "pairwise"
        media = {"a": _path(base, rec.get(f"{m}_a"), f"{m}_a", where),
                 "b": _path(base, rec.get(f"{m}_b"), f"{m}_b", where)}
    elif m in rec:
        kind = "pointwise"
        media = {"candidate": _path(base, rec[m], m, where)}
    else:
        raise RecordError(f"{where}: no media: expected '{m}' or '{m}_a' and '{m}_b'")
    media["reference"] = _path(base, rec["reference"], "reference", where) if "reference" in rec else None
    media["condition"] = (_path(base, rec["condition_image"], "condition_image", where)
                          if "condition_image" in rec else None)
    label = rec.get("label")
    if label is not None and label not in LABELS[kind]:
        raise RecordError(f"{where}: label {label!r} is not one of {LABELS[kind]} for a {kind} row")
    task = rec.get("task")
    if task is not None and not isinstance(task, str):
        raise RecordError(f"{where}: 'task' must be a string")
    return Record(key, line, kind, prompt.strip(), media, video, label, task, rec)


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Any] | RecordError]:
    """(line number, parsed value) for each non-blank line of a JSONL file, or a RecordError naming
    the line for one that is not valid JSON (never raises on content)."""
    path = Path(path)
    with path.open() as f:
        for line_no, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                yield line_no, json.loads(text)
            except json.JSONDecodeError as e:
                yield RecordError(f"{path}:{line_no}: malformed JSON ({e.msg} at column {e.colno})",
                                  key=f"line {line_no}", line=line_no)


def read_manifest(path: str | Path) -> Iterator[Record | RecordError]:
    """Yield each row of a JSONL manifest as a Record, or a RecordError for a bad row (never raises)."""
    path = Path(path)
    for item in read_jsonl(path):
        if isinstance(item, RecordError):
            yield item
            continue
        line_no, rec = item
        try:
            yield validate_record(rec, base=path.parent, line=line_no, source=str(path))
        except RecordError as e:
            key = str(rec["id"]) if isinstance(rec, dict) and "id" in rec else f"line {line_no}"
            yield RecordError(str(e), key=key, line=line_no)
