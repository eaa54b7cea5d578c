"""Pair accuracy of a trained judge on manifests, by split and by category (until `rewarddance eval` lands).

    python bench/judge_accuracy.py --model runs/train15/final data/world/test.jsonl data/other/pairs.jsonl

Accuracy over non-tied pairs (P(b better than a) > 0.5 when the label is b; 0.5 counts as wrong),
through the same scoring path as `rewarddance score --input` (both orders for pairwise judges).
Prints one line per file and group, and writes --json if given.
"""

from __future__ import annotations

import argparse
import json

import torch

import rewarddance as rd
from rewarddance.data import RecordError, read_manifest
from rewarddance.evaluate import pairwise_accuracy, score_records


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--json")
    p.add_argument("manifests", nargs="+")
    args = p.parse_args()
    rm = rd.load(args.model)
    out = {}
    for path in args.manifests:
        records = [r for r in read_manifest(path) if not isinstance(r, RecordError)]
        with torch.inference_mode():
            rows = score_records(rm, records, batch_size=32)
        out[path] = table = pairwise_accuracy(rows, records, by=("split", "category"))
        for key, value in table.items():
            if key.startswith("accuracy"):
                group = key.removeprefix("accuracy").lstrip("_") or "all"
                print(f"{path}  {group:24s} {value:6.1%}  (n={table['n' + key.removeprefix('accuracy')]})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "results": out}, f, indent=2)


if __name__ == "__main__":
    main()
