"""How often a judge's Best-of-N reference passes the ShapeWorld checker, against random choice.

`rewarddance data world` writes candidates.jsonl: N candidates per held-out prompt, each with the
checker's verdict. For each model this script runs `rewarddance references`' selection (all pairs,
both orders, most wins) and reports the share of prompts whose chosen reference passes the checker
and its mean checker score. Random choice is computed exactly (the mean share of passing
candidates per prompt, no sampling); "oracle" is the share of prompts with any passing candidate.

    python bench/references.py --candidates runs/world/candidates.jsonl \
        --model runs/judge/final --model qwen2_5_vl-tiny-shapeworld --out bench/results/references.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import rewarddance as rd
from rewarddance.evaluate.references import select_references


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", required=True)
    ap.add_argument("--model", action="append", required=True, help="checkpoint or preset (repeatable)")
    ap.add_argument("--n", type=int, default=None, help="candidates per prompt (default: all)")
    ap.add_argument("--out", default=None, help="JSON results")
    args = ap.parse_args()

    cands = [json.loads(line) for line in Path(args.candidates).read_text().splitlines() if line.strip()]
    groups: dict[str, list[dict]] = defaultdict(list)
    for c in cands:
        if args.n is None or len(groups[c["prompt"]]) < args.n:
            groups[c["prompt"]].append(c)
    by_id = {c["id"]: c for g in groups.values() for c in g}
    rows = {
        "random choice (exact expectation)": {
            "passes": sum(sum(c["passed"] for c in g) / len(g) for g in groups.values()) / len(groups),
            "mean_score": sum(sum(c["score"] for c in g) / len(g) for g in groups.values()) / len(groups)},
        "oracle (any candidate passes)": {
            "passes": sum(any(c["passed"] for c in g) for g in groups.values()) / len(groups),
            "mean_score": sum(max(c["score"] for c in g) for g in groups.values()) / len(groups)},
    }
    for spec in args.model:
        rm = rd.load(spec, layout="pairwise")
        out = Path("/tmp") / f"refs-{abs(hash(spec))}.jsonl"
        t0 = time.perf_counter()
        select_references(rm, args.candidates, out, n=args.n, progress=True)
        refs = [json.loads(line) for line in out.read_text().splitlines()]
        chosen = [by_id[r["candidate"]] for r in refs]
        rows[spec] = {"passes": sum(c["passed"] for c in chosen) / len(chosen),
                      "mean_score": sum(c["score"] for c in chosen) / len(chosen),
                      "seconds": round(time.perf_counter() - t0, 1)}
    n_per = sorted({len(g) for g in groups.values()})
    print(f"{len(groups)} prompts, {n_per} candidates each")
    print(f"{'selection':<45} {'passes checker':>15} {'mean score':>11}")
    for name, r in rows.items():
        print(f"{name:<45} {r['passes']:>15.3f} {r['mean_score']:>11.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"candidates": args.candidates, "prompts": len(groups),
                                              "command": " ".join(sys.argv), "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
