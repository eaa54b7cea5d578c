"""Pick-a-Pic v2 (Kirstain et al. 2023), read from the parquet shards of its Hugging Face dataset.

Format: the columns the authors' own code reads, from yuvalkirstain/PickScore
`trainer/datasetss/clip_hf_dataset.py` (CLIPHFDatasetConfig: caption, jpg_0, jpg_1, label_0,
label_1, are_different, has_label) and `trainer/scripts/eval_preference_predictor.py` (get_label:
label_0 == 0.5 is a tie, 1 means image 0 won; images are bytes opened with PIL). One row per
comparison:

    caption: str, jpg_0: binary (JPEG bytes), jpg_1: binary, label_0: float, label_1: float,
    has_label: bool, are_different: bool, (ranking_id, model_0, model_1, image_0_uid, ...)

Shards are named `<split>-00000-of-000NN-<hash>.parquet` (the `data/` folder of the dataset) or
`<split>/0000.parquet` (the Hub's parquet conversion); the split (e.g. validation_unique,
test_unique) comes from that name and goes into each row's "split". `path` may be one shard or a
folder of them (all `*.parquet` below it, sorted).

Rows become pairwise Records: image_a = jpg_0, image_b = jpg_1, label "a" for (1, 0), "b" for
(0, 1), "tie" for (0.5, 0.5); any other pair of labels is a bad row. Rows with has_label false
are skipped (not errors; counted in `Benchmark.skipped`), as the authors' dataset class does for
every split but train (keep_only_with_label_in_non_train); eval_preference_predictor.py itself
does not filter, and whether the *_unique splits hold unlabelled rows at all was not verified
here. Keys are f"{split}:{shard}:{row}". Not verified here: whether jpg_0/jpg_1 are stored as
plain `binary` (what the authors' open_image expects) or as Image structs; both are read.

Images are bytes: each is written once to `images` if given, else to `<shard stem>-images/` beside
the shard, named by a hash of its bytes, so reading a shard again writes nothing new. A folder
that cannot be written is a PermissionError that says to pass `images=DIR`.

Headline metric ("pickscore_accuracy", `rewarddance.evaluate.headline`): PickScore's protocol from
eval_preference_predictor.py: with prob_0 = P(A better) and prob_1 = 1 - prob_0 (their two-way
softmax), predict a tie when |prob_1 - prob_0| <= t; score 1 for an exact match, 0.5 when either
the prediction or the label is a tie, 0 otherwise; t from their grid 0, 0.1, ..., 1 maximising the
score on the calibration split (validation_unique), reported on the other (test_unique).

Example:
    >>> from rewarddance.data.benchmarks import read_benchmark
    >>> bench = read_benchmark("pickapic_v2/data", "pickapic", images="/tmp/pap")   # doctest: +SKIP
    >>> sorted({r.raw["split"] for r in bench.records})                           # doctest: +SKIP
    ['test_unique', 'validation_unique']
"""

from __future__ import annotations

import re
from pathlib import Path

from ..records import Record, RecordError
from ._common import (
    bad,
    extract,
    image_bytes,
    make_record,
    parquet_columns,
    parquet_rows,
    split_of,
    writable_folder,
)

NAME = "pickapic"
METRIC = "pickscore_accuracy"
TASK = "t2i-overall"
REQUIRED = ("caption", "jpg_0", "jpg_1", "label_0", "label_1")
OPTIONAL = ("has_label", "are_different", "ranking_id", "model_0", "model_1")


def looks_like(columns: list[str]) -> bool:
    return all(c in columns for c in REQUIRED)


def shards(path: Path) -> list[Path]:
    """The parquet files to read: `path` itself, or every *.parquet below a folder, sorted."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
        if not files:
            raise ValueError(f"{path}: no *.parquet files in this folder")
        return files
    return [path]


def _label(l0: object, l1: object) -> str | None:
    pair = (l0, l1)
    return {(1.0, 0.0): "a", (0.0, 1.0): "b", (0.5, 0.5): "tie"}.get(pair) if all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in pair) else None


def _shard_id(path: Path) -> str:
    m = re.match(r"^.+?-(\d{5})-of-\d{5}", path.name)
    return m.group(1) if m else path.stem


def read(path: Path, *, images: str | Path | None = None,
         skipped: dict[str, int] | None = None) -> list[Record | RecordError]:
    """Pairwise Records of one shard or a folder of shards; `skipped` (if given) counts the rows
    left out on purpose, under "has_label false"."""
    out: list[Record | RecordError] = []
    for shard in shards(path):
        columns = parquet_columns(shard)
        missing = [c for c in REQUIRED if c not in columns]
        if missing:
            raise ValueError(f"{shard}: not a Pick-a-Pic shard: no column(s) {', '.join(missing)}")
        folder = Path(images) if images is not None else shard.parent / f"{shard.stem}-images"
        folder = writable_folder(folder.absolute(), shard)
        split, sid = split_of(shard), _shard_id(shard)
        wanted = list(REQUIRED) + [c for c in OPTIONAL if c in columns]
        for n, cell in parquet_rows(shard, wanted):
            key = f"{split}:{sid}:{n}"
            if cell.get("has_label") is False:
                if skipped is not None:
                    skipped["has_label false"] = skipped.get("has_label false", 0) + 1
                continue
            caption = cell["caption"]
            if not isinstance(caption, str) or not caption.strip():
                out.append(bad(shard, n, "missing or empty 'caption'", key))
                continue
            label = _label(cell["label_0"], cell["label_1"])
            if label is None:
                out.append(bad(shard, n, f"labels (label_0, label_1) = ({cell['label_0']!r}, {cell['label_1']!r}) "
                                         f"are none of (1, 0), (0, 1), (0.5, 0.5)", key))
                continue
            media = {}
            for col, field in (("jpg_0", "image_a"), ("jpg_1", "image_b")):
                data = image_bytes(cell[col])
                if data is None:
                    break
                if isinstance(data, str):  # an Image struct holding only a path: relative to the shard
                    media[field] = data if Path(data).is_absolute() else str(shard.parent / data)
                else:
                    media[field] = str(folder / extract(data, folder))
            if len(media) < 2:
                out.append(bad(shard, n, f"no image bytes in {col}", key))
                continue
            row = {"id": key, "prompt": caption, **media, "label": label, "split": split,
                   "group": str(cell.get("ranking_id", key)), "label_0": cell["label_0"], "label_1": cell["label_1"]}
            for extra, name in (("are_different", "are_different"), ("model_0", "model_a"), ("model_1", "model_b")):
                if extra in cell:
                    row[name] = cell[extra]
            out.append(make_record(row, base=shard.parent, path=shard, n=n))
    return out
