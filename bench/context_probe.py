"""Probe: does the judge's instruction (the task template) or its layout limit the tiny judge at 300 steps?

Three arms of `rewarddance study rm` (same runner, data and evaluation), 300 steps x 16 records each, on
the quick study's data (1,000 training pairs, 400 clean test pairs):
- `pairwise-task-cot-300`: the default judge (pairwise, the t2i-overall instruction, CoT rationales);
- `pairwise-plain-cot-300`: the same with the short `plain` instruction;
- `pointwise-plain-300`: a pointwise judge with the `plain` instruction.

    python bench/context_probe.py --out runs/ctx-exp

Writes OUT/results.json / results.md (the study's format) and prints the table.
"""

from __future__ import annotations

import argparse

from rewarddance.recipes.study_rm import Arm, StudySettings, markdown, study_rm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/ctx-exp")
    p.add_argument("--steps", type=int, default=300)
    args = p.parse_args()
    s = StudySettings(data_n=1000, data_n_test=400, steps=args.steps, quick=True)
    arms = [Arm(f"pairwise-task-cot-{args.steps}", "context"),
            Arm(f"pairwise-plain-cot-{args.steps}", "context", context="pairwise+plain+cot", overrides=["task=plain"]),
            Arm(f"pointwise-plain-{args.steps}", "context", objective="generative-pointwise",
                context="pointwise+plain", overrides=["task=plain"])]
    command = f"python bench/context_probe.py --out {args.out} --steps {args.steps}"
    print(markdown(study_rm(args.out, settings=s, arms=arms, command=command)))


if __name__ == "__main__":
    main()
