"""Helpers the benchmark readers share: row -> Record (or RecordError naming file and row),
existence checks on media, parquet row iteration, and content-addressed extraction of image bytes.

Row numbers are 1-based everywhere: the N-th item of a JSON list, the N-th data row of a CSV
(the header is not counted), the N-th row of a parquet file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..records import Record, RecordError, validate_record

MEDIA_KEYS = ("image_a", "image_b", "video_a", "video_b", "condition_image")


def bad(path: Path, row: int, message: str, key: str | None = None) -> RecordError:
    """A RecordError whose message names the file and the row (and the row's id when it has one)."""
    where = f"{path}: row {row}" + (f" ({key})" if key else "")
    return RecordError(f"{where}: {message}", key=key or f"row {row}", line=row)


def make_record(row: dict[str, Any], *, base: Path, path: Path, n: int, hint: str = "") -> Record | RecordError:
    """Validate `row` (our manifest schema) with `validate_record`, after checking that every media
    file it names exists under `base`: a benchmark whose images are elsewhere is reported per row,
    with the fix (`images=ROOT`) in the message, instead of failing later inside a model."""
    key = str(row["id"]) if "id" in row else None
    for k in MEDIA_KEYS:
        if k not in row:
            continue
        v = row[k]
        if not isinstance(v, str) or not v.strip():
            return bad(path, n, f"missing or empty path for {k}", key)
        p = Path(v) if Path(v).is_absolute() else base / v
        if not p.is_file():
            return bad(path, n, f"{k} {v!r}: file not found at {p}{hint or ' (pass images=ROOT / --images ROOT if the media live elsewhere)'}", key)
    try:
        return validate_record(row, base=base, line=n, source=str(path))
    except RecordError as e:  # validate_record leaves key/line unset: fill them for the scorer
        return RecordError(str(e), key=key or f"row {n}", line=n)


def first_is_path(media: Any) -> bool:
    """Whether a media list starts with a usable path (the layout hint looks at it)."""
    return isinstance(media, list) and bool(media) and isinstance(media[0], str) and bool(media[0])


def pair_label(rank_i: float, rank_j: float) -> str:
    """Lower rank is better (ImageReward and HPDv2 alike)."""
    return "a" if rank_i < rank_j else "b" if rank_i > rank_j else "tie"


def ranking_records(path: Path, n: int, key: str | None, prompt: Any, media: Any, ranks: Any, *, root: Path,
                    fields: tuple[str, str, str], hint: str) -> list[Record | RecordError]:
    """All pairs i < j of one N-way ranked item (ImageReward, HPDv2; lower rank is better), or one
    RecordError naming the problem. `fields`: the format's names for the media list, its ranks and
    one medium ("generations", "ranking", "generations" / "image_path", "rank", "images")."""
    media_field, rank_field, noun = fields
    if not isinstance(prompt, str) or not prompt.strip():
        return [bad(path, n, "missing or empty 'prompt'", key)]
    if not isinstance(media, list) or not all(isinstance(m, str) and m for m in media):
        return [bad(path, n, f"'{media_field}' must be a list of image paths", key)]
    if not isinstance(ranks, list) or not all(is_number(r) for r in ranks):
        return [bad(path, n, f"'{rank_field}' must be a list of numbers", key)]
    if len(media) != len(ranks):
        return [bad(path, n, f"{len(media)} {noun} but {len(ranks)} ranks", key)]
    if len(media) < 2:
        return [bad(path, n, f"fewer than two {noun}: no pair to compare", key)]
    group = key if key is not None else str(n)
    out: list[Record | RecordError] = []
    for i in range(len(media)):
        for j in range(i + 1, len(media)):
            row = {"id": f"{group}:{i}-{j}", "prompt": prompt, "image_a": media[i], "image_b": media[j],
                   "label": pair_label(ranks[i], ranks[j]), "group": group, "pair": [i, j],
                   "rank_a": ranks[i], "rank_b": ranks[j]}
            out.append(make_record(row, base=root, path=path, n=n, hint=hint))
    return out


def layout_hint(root: Path, first: str, sub: str) -> str:
    """When the authors' layout keeps the images in `sub/` beside the annotation file and the first
    image is found there, the per-row message says which `images=` to pass."""
    alt = root / sub
    if (alt / first).is_file():
        return f" (found under {alt}: pass images={alt} / --images {alt})"
    return ""


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and not math.isnan(x)  # NaN is no rank


def require_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    return path


def read_json(path: Path) -> Any:
    """The whole JSON document; a file that is not JSON is the top-level file's fault (ValueError)."""
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file ({e.reason})") from None


def json_list(path: Path) -> list[Any]:
    data = read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of objects at the top level, got {type(data).__name__}")
    return data


# ------------------------------------------------------------------ parquet
def pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:  # an optional dependency: only the parquet readers need it
        raise ImportError("reading parquet needs pyarrow: pip install 'rewarddance[eval]'") from None
    return pq


def parquet_columns(path: Path) -> list[str]:
    pq = pyarrow_parquet()
    try:
        return list(pq.read_schema(path).names)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise ValueError(f"{path}: not a readable parquet file ({e})") from None


def parquet_rows(path: Path, columns: list[str], batch_size: int = 64) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, {column: value}) for each row, read a batch at a time: a Pick-a-Pic shard is
    ~500 MB of JPEG bytes and need not be in memory at once."""
    pq = pyarrow_parquet()
    try:
        f = pq.ParquetFile(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable parquet file ({e})") from None
    n = 0
    for batch in f.iter_batches(batch_size=batch_size, columns=columns):
        for row in batch.to_pylist():
            n += 1
            yield n, row


def split_of(path: Path) -> str:
    """The split a Hugging Face parquet shard belongs to, from its name: `data/<split>-00000-of-00003-<hash>.parquet`
    (uploads with huggingface_hub) or `<config>/<split>/0000.parquet` (the Hub's parquet converter);
    otherwise the file's stem."""
    m = re.match(r"^(?P<split>.+?)-\d{5}-of-\d{5}", path.name)
    if m:
        return m.group("split")
    if re.fullmatch(r"\d+", path.stem) and path.parent.name:
        return path.parent.name
    return path.stem


# ------------------------------------------------------------------ image bytes -> files
_MAGIC = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG\r\n\x1a\n", ".png"), (b"GIF87a", ".gif"), (b"GIF89a", ".gif"),
          (b"BM", ".bmp"))


def _suffix(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    for magic, suffix in _MAGIC:
        if data.startswith(magic):
            return suffix
    return ".jpg"  # unknown bytes keep a readable suffix; media.py then reports what they really are


def writable_folder(folder: Path, source: Path) -> Path:
    """Create `folder` and prove it can be written, or say how to put the images elsewhere."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise PermissionError(f"{folder}: cannot write the images extracted from {source} there ({e.strerror or e}); "
                              f"pass images=DIR (--images DIR) to extract them elsewhere") from None
    return folder


def extract(data: bytes, folder: Path) -> str:
    """Write `data` to `folder/<sha256 prefix><suffix>` unless that file is already there (same bytes
    -> same name, so reading a shard twice writes nothing the second time); returns the file name."""
    name = hashlib.sha256(data).hexdigest()[:32] + _suffix(data)
    target = folder / name
    if not (target.is_file() and target.stat().st_size == len(data)):
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, target)  # atomic: a crash never leaves a half-written image under the final name
    return name


def image_bytes(value: Any) -> bytes | str | None:
    """Bytes of an image cell: raw `binary` (Pick-a-Pic's jpg_0/jpg_1) or a Hugging Face `Image`
    struct {"bytes", "path"} (GenAI-Bench); a struct with only a path gives that path (str)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        if isinstance(value.get("path"), str) and value["path"]:
            return value["path"]
    if isinstance(value, str) and value:
        return value
    return None
