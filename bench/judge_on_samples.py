"""Probe: does a judge agree with the ShapeWorld checker on the generator's own samples?

RL (ReFL, GRPO, Best-of-N, search) only ever sees the judge's scores of generator samples, not the rendered
test pairs `rewarddance eval` measures. For each held-out compositional prompt (the RL recipes' held-out set),
`--samples` seeded samples of the committed generator are scored as the RL recipes score them (a pairwise
judge: P(sample beats the prompt's reference), the reference picked by Best-of-4 win counts as in `rl search`;
a pointwise judge: its reward) and checked by the ShapeWorld checker. Reported per category and overall:

- agreement: over every (passing, failing) pair of samples of the same prompt, the fraction where the judge
  scores the passing one higher (ties count half). 50% is no signal; below 50%, the judge prefers failures;
- the checker pass rate of the judge's top pick and of its bottom pick, and of a random sample.

    python bench/judge_on_samples.py --rm ~/.cache/rewarddance/study-rl/judge-generative-.../final \\
        --out bench/results/judge-on-samples/generative.json

The probe only measures; it is not a speed claim.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from rewarddance.evaluate.metrics import auroc
from rewarddance.generators import ShapeWorldGenerator, generator_path
from rewarddance.recipes.rl_common import load_judge, starting_references
from rewarddance.recipes.search import make_score
from rewarddance.world.generation import COMPOSITIONAL, checker_metric, heldout_prompts


def pooled(rows: list[dict]) -> float | None:
    """Agreement pooled over prompts, each weighted by its number of (pass, fail) pairs."""
    pairs = sum(r["pairs"] for r in rows)
    return sum(r["agreement"] * r["pairs"] for r in rows if r["pairs"]) / pairs if pairs else None


def summarise(rows: list[dict], resamples: int = 2000) -> dict:
    """Pooled agreement with a 95% interval from resampling prompts (the pairs of one prompt are not
    independent), and the pick pass rates, for `rows`."""
    rng = np.random.default_rng(0)
    boot = [pooled([rows[i] for i in rng.integers(0, len(rows), len(rows))]) for _ in range(resamples)]
    boot = [b for b in boot if b is not None]
    return {"prompts": len(rows), "pairs": sum(r["pairs"] for r in rows), "agreement": pooled(rows),
            "agreement_ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))] if boot else None,
            "top_pick_pass": float(np.mean([r["passed"][int(np.argmax(r["scores"]))] for r in rows])),
            "bottom_pick_pass": float(np.mean([r["passed"][int(np.argmin(r["scores"]))] for r in rows])),
            "random_sample_pass": float(np.mean([np.mean(r["passed"]) for r in rows]))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rm", required=True, help="the judge: a checkpoint directory or preset name")
    p.add_argument("--generator", default="shapeworld-flow")
    p.add_argument("--prompts-per-category", type=int, default=16)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--num-steps", type=int, default=20)
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--out", default=None, help="write the result here (JSON)")
    args = p.parse_args()
    t0 = time.perf_counter()
    judge = load_judge(args.rm, None)
    gen = ShapeWorldGenerator.from_pretrained(generator_path(args.generator))
    heldout = heldout_prompts(COMPOSITIONAL, args.prompts_per_category, 1234)  # the RL recipes' held-out prompts
    prompts = [q for qs in heldout.values() for q in qs]
    references = None
    if judge.layout == "pairwise":  # as `rl search` picks them: Best-of-4 by win counts, from seed 1
        refs = starting_references(gen, judge, prompts, n=4, seed=1, num_steps=args.num_steps,
                                   guidance_scale=args.guidance_scale, task=None, rank=0, world=1, progress=False)
        references = dict(zip(prompts, refs))
    score = make_score(judge, references, None)
    rows = []
    for i, prompt in enumerate(prompts):
        seeds = [10_000_000 + i * args.samples + j for j in range(args.samples)]
        with torch.no_grad():
            images = gen.sample([prompt] * len(seeds), seeds=seeds, num_steps=args.num_steps,
                                guidance_scale=args.guidance_scale).images
        scores = score(images, prompt).double().numpy()
        passed = np.array(checker_metric(images, [prompt] * len(images))[0], dtype=bool)
        # agreement = P(a passing sample outscores a failing one), ties half: the AUROC of score for "passes"
        rows.append({"prompt": prompt, "scores": scores.tolist(), "passed": passed.tolist(),
                     "agreement": auroc(scores, passed), "pairs": int(passed.sum() * (~passed).sum())})
    by_category = {c: summarise([r for r in rows if r["prompt"] in set(qs)]) for c, qs in heldout.items()}
    result = {"rm": args.rm, "layout": judge.layout, "samples_per_prompt": args.samples, "num_steps": args.num_steps,
              "overall": summarise(rows), "by_category": by_category, "rows": rows,
              "minutes": round((time.perf_counter() - t0) / 60, 2)}
    print(f"judge {args.rm} ({judge.layout}) on {len(prompts)} prompts x {args.samples} generator samples "
          f"({result['minutes']} min)")
    print("| category | prompts | (pass, fail) pairs | agreement with the checker [95%] | top pick passes | "
          "bottom pick passes | a random sample passes |\n|---|---|---|---|---|---|---|")
    for name, s in [*by_category.items(), ("all", result["overall"])]:
        agree = ("n/a" if s["agreement"] is None else
                 f"{s['agreement']:.1%} [{s['agreement_ci95'][0]:.1%}, {s['agreement_ci95'][1]:.1%}]")
        print(f"| {name} | {s['prompts']} | {s['pairs']} | {agree} | {s['top_pick_pass']:.1%} | "
              f"{s['bottom_pick_pass']:.1%} | {s['random_sample_pass']:.1%} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
