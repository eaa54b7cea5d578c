"""Probe: does a pretrained backbone answer the judge's question in the order the judge asks it?

The judge's templates (context/tasks.yaml) put the question BEFORE the candidate image; a backbone
pretrained only on image-then-question sequences may not bind the question's words to an image
that comes after them. This measures it zero-shot (no judge training): on ShapeWorld pairs that
differ by ONE content fault (`world.dataset.build_defect_pairs`: wrong colour, wrong shape,
missing object; clean labels, no quality defects), the pair is decided right when P(yes) of the
good image exceeds the faulty one's, for three ways of asking:

- `task`: the judge's own pointwise t2i-alignment template (instruction and prompt, then the image);
- `question first`: "Is there <prompt> in the image?" before the image;
- `image first`: the same question after the image (the pretraining layout).

    python bench/layout_probe.py --model qwen2_5_vl-tiny-shapeworld [--model DIR ...] [--n 200]

Prints a table (one row per model and fault) and `--json PATH` writes it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from rewarddance.context import build_context
from rewarddance.data.training import question_context
from rewarddance.media import load_image
from rewarddance.models.judge import Judge
from rewarddance.models.presets import parse_preset_name, preset_path
from rewarddance.world.dataset import build_defect_pairs

FAULTS = ("wrong_colour", "wrong_shape", "missing_object")
WAYS = ("task", "question first", "image first")


def contexts(way: str, prompt: str, image: torch.Tensor):
    if way == "task":
        return build_context("t2i-alignment", "pointwise", prompt, image)
    return question_context(f"Is there {prompt} in the image?", image, question_first=way == "question first")


@torch.no_grad()
def pair_accuracy(judge: Judge, pairs: Path, way: str) -> float:
    rows = [json.loads(t) for t in pairs.read_text().splitlines()]
    right = 0
    for r in rows:
        a, b = load_image(pairs.parent / r["image_a"]), load_image(pairs.parent / r["image_b"])
        pa, pb = judge.rewards([contexts(way, r["prompt"], a), contexts(way, r["prompt"], b)]).tolist()
        right += (pb > pa) == (r["label"] == "b")
    return right / len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="model directory or preset name (repeatable)")
    ap.add_argument("--n", type=int, default=200, help="pairs per fault")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = {f: build_defect_pairs(Path(tmp) / f, args.n, f, seed=args.seed) for f in FAULTS}
        for model in args.model:
            path = preset_path(model) if not Path(model).exists() and parse_preset_name(model) else Path(model)
            judge = Judge.from_pretrained(path).eval()
            for fault in FAULTS:
                row = {"model": model, "fault": fault, "n": args.n}
                row |= {way: pair_accuracy(judge, data[fault], way) for way in WAYS}
                results.append(row)
                print(f"{model:<40} {fault:<15} " + "  ".join(f"{w} {row[w]:.1%}" for w in WAYS), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
