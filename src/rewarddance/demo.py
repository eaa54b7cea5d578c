"""The main job (README): until training lands, build a preset judge offline and score the bundled example.

    python -m rewarddance.demo [--arch qwen2_5_vl] [--size tiny] [--out runs/demo]

It writes a randomly initialised Qwen2.5-VL-architecture judge, scores the example
manifest through the same code path as `rewarddance score --input`, and prints the rewards
beside ShapeWorld's ground truth. The judge is untrained: its rewards sit near 0.5 and
carry no signal yet; the ground-truth column shows what a trained judge should find.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .examples import EXAMPLE_DIR


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rewarddance.demo")
    p.add_argument("--arch", default="qwen2_5_vl")
    p.add_argument("--size", default="tiny")
    p.add_argument("--out", default="runs/demo")
    args = p.parse_args(argv)
    out = Path(args.out)
    import transformers

    import rewarddance as rd

    from .evaluate import score_manifest
    from .models.presets import init_model
    from .world import check

    transformers.utils.logging.set_verbosity_error()
    model = out / f"{args.arch}-{args.size}"
    if not (model / "config.json").exists():
        init_model(args.arch, args.size, model)
    scores = out / "scores.jsonl"
    ok, failed = score_manifest(rd.load(model), EXAMPLE_DIR / "manifest.jsonl", scores)

    rows = {json.loads(t)["key"]: json.loads(t) for t in scores.read_text().splitlines()}
    print(f"\n{'id':10} {'prompt':48} {'model':>8} {'truth':>6}")
    for t in (EXAMPLE_DIR / "manifest.jsonl").read_text().splitlines():
        rec = json.loads(t)
        got = rows.get(rec["id"], {})
        value = got.get("reward", got.get("p_b_better", float("nan")))
        if "image" in rec:
            truth = "yes" if check(EXAMPLE_DIR / rec["image"], rec["prompt"]).passed else "no"
        else:
            sa, sb = (check(EXAMPLE_DIR / rec[k], rec["prompt"]).score for k in ("image_a", "image_b"))
            truth = "b" if sb > sa else "a" if sa > sb else "tie"
        print(f"{rec['id']:10} {rec['prompt'][:48]:48} {value:8.4f} {truth:>6}")
    print(f"\nscores: {scores}   (untrained judge: rewards carry no signal until it is trained)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
