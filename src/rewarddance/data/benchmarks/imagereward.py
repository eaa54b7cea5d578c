"""The ImageReward test set (Xu et al. 2023), as its authors publish it.

Format, read from THUDM/ImageReward `data/test.json` and `test.py` (commit c1392c6): one JSON list,
each item

    {"id": "005658-0040", "prompt": "...",
     "generations": ["part-005658/images/0040/45b0....webp", ...],   # 4-9 images per prompt
     "ranking": [1, 2, 5, 3]}                                       # lower is better; ties and gaps occur

Every pair i < j of an item becomes one pairwise Record: image_a = generations[i],
image_b = generations[j], label "a" when ranking[i] < ranking[j], "b" when greater, "tie" when
equal. Keys are f"{id}:{i}-{j}" (0-based positions in `generations`); `group` is the item's id.

Image paths resolve relative to the JSON file's folder unless `images=ROOT` is given. Note that the
authors' own `test.py` joins them with `--img_prefix data/test_images` (the unzipped
test_images.zip beside data/test.json), so with their layout pass `images=data/test_images`; a row
whose image is missing says so, and points at `test_images/` when the file is found there.

Headline metric ("pooled_pair_accuracy", `rewarddance.evaluate.headline`): the `acc` of the authors'
`test.py`: all pairs i < j of every prompt pooled into one count; pairs the human ranking ties are
skipped; a pair counts as right only when the model orders it strictly right (a model tie is wrong).

Example:
    >>> from rewarddance.data.benchmarks import read_benchmark
    >>> bench = read_benchmark("data/test.json", "imagereward", images="data/test_images")  # doctest: +SKIP
    >>> bench.records[0].key, bench.records[0].label                                         # doctest: +SKIP
    ('005658-0040:0-1', 'a')
"""

from __future__ import annotations

from pathlib import Path

from ..records import Record, RecordError
from ._common import bad, first_is_path, json_list, layout_hint, ranking_records

NAME = "imagereward"
METRIC = "pooled_pair_accuracy"
TASK = "t2i-overall"


def looks_like(item: object) -> bool:
    return isinstance(item, dict) and "generations" in item and "ranking" in item


def read(path: Path, *, images: str | Path | None = None) -> list[Record | RecordError]:
    """Pairwise Records (and RecordErrors for bad items) of an ImageReward test.json, in file order."""
    root = Path(images) if images is not None else path.parent
    out: list[Record | RecordError] = []
    for n, item in enumerate(json_list(path), start=1):
        if not isinstance(item, dict):
            out.append(bad(path, n, f"expected a JSON object, got {type(item).__name__}"))
            continue
        key = str(item["id"]) if isinstance(item.get("id"), (str, int)) and str(item["id"]) else f"row{n}"
        gens = item.get("generations")
        # the authors' layout is data/test.json + data/test_images/<path> (test.py --img_prefix)
        hint = layout_hint(root, gens[0], "test_images") if images is None and first_is_path(gens) else ""
        out += ranking_records(path, n, key, item.get("prompt"), gens, item.get("ranking"), root=root,
                               fields=("generations", "ranking", "generations"), hint=hint)
    return out
