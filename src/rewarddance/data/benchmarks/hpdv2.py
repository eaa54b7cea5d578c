"""The HPDv2 test set (Human Preference Dataset v2, Wu et al. 2023), as its authors publish it.

Format, read from tgxs002/HPSv2 `README.md` ("The annotation file, `test.json`, is organized as")
and `hpsv2/src/training/data.py` (`RankingDataset`, commit 866735e): one JSON list, each item

    {"prompt": "...",
     "image_path": ["00001.jpg", ...],        # the images of one prompt
     "rank": [2, 1, 4, 3],                    # averaged ranking, same index as image_path; lower is better
     "raw_annotations": [{"rank": [...], "user_hash": "..."}, ...]}   # per annotator; not used here

Every pair i < j of an item becomes one pairwise Record (image_a = image_path[i], image_b =
image_path[j], label from `rank`, "tie" on equal ranks). Items have no id, so keys are
f"{row}:{i}-{j}" (row = 1-based item number, i/j = 0-based positions) and `group` is the row.

Image paths resolve relative to the JSON file's folder unless `images=ROOT` is given. The authors'
`evaluate_rank` (hpsv2/evaluation.py) joins them with `--image-path`, the unpacked `test/` folder
of the dataset (README: HPD/test.json beside HPD/test/), so with that layout pass `images=HPD/test`.
Not verified here: whether the published test.json's `image_path` entries already carry a folder
prefix (the file itself could not be read from this machine).

Headline metric ("inversion_score", `rewarddance.evaluate.headline`): `inversion_score` of
hpsv2/src/training/train.py, 1 - discordant pairs / C(n, 2) per prompt, averaged over prompts
(evaluate_rank divides the sum by the number of prompts). Unlike ImageReward's pooled accuracy,
every prompt weighs the same whatever its number of images, and a pair the humans tie can never be
discordant, so it counts as right.

Example:
    >>> from rewarddance.data.benchmarks import read_benchmark
    >>> bench = read_benchmark("HPD/test.json", "hpdv2", images="HPD/test")   # doctest: +SKIP
    >>> bench.metric
    'inversion_score'
"""

from __future__ import annotations

from pathlib import Path

from ..records import Record, RecordError
from ._common import bad, first_is_path, json_list, layout_hint, ranking_records

NAME = "hpdv2"
METRIC = "inversion_score"
TASK = "t2i-overall"


def looks_like(item: object) -> bool:
    return isinstance(item, dict) and "image_path" in item and "rank" in item


def read(path: Path, *, images: str | Path | None = None) -> list[Record | RecordError]:
    """Pairwise Records (and RecordErrors for bad items) of an HPDv2 test.json, in file order."""
    root = Path(images) if images is not None else path.parent
    out: list[Record | RecordError] = []
    for n, item in enumerate(json_list(path), start=1):
        if not isinstance(item, dict):
            out.append(bad(path, n, f"expected a JSON object, got {type(item).__name__}"))
            continue
        paths = item.get("image_path")
        # the authors' layout is HPD/test.json + HPD/test/<image> (README "Data Structure")
        hint = layout_hint(root, paths[0], "test") if images is None and first_is_path(paths) else ""
        out += ranking_records(path, n, None, item.get("prompt"), paths, item.get("rank"), root=root,
                               fields=("image_path", "rank", "images"), hint=hint)
    return out
