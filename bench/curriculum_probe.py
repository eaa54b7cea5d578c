"""Probe: does a curriculum (pass-vs-fail pairs first) get the tiny judge off the ln 2 plateau sooner?

The default pairwise judge from `qwen2_5_vl-tiny-shapeworld` answers P = 0.5 to every pair for its first
~1,000 steps on the RM study's 4,000 pairs (docs/training.md, "The ln 2 plateau"). A third of those pairs
are not decided by content at all (ties, or both images pass or fail the same constraints, decided by
image quality), and the tiny judge learned one fault alone within 200 steps (89% on colour pairs). So:
- `baseline`: `rewarddance train` on all pairs for STEPS steps (cosine, the defaults otherwise);
- `curriculum`: first EASY_STEPS steps on the pass-vs-fail pairs only (the preferred image passes
  every constraint of its prompt and the other fails at least one; read from ShapeWorld's rationales;
  pairs where both fail, one fewer, are left for the second phase), at a constant rate, then
  STEPS - EASY_STEPS steps on all pairs from that checkpoint (cosine). The optimizer starts again in
  the second phase; the total number of updates is the same. Training reads `label`, so about 10% of
  the pass-vs-fail rows carry the data's flipped labels too.
Both are evaluated by `rewarddance eval` on every clean test pair, and on EVAL_MAX test pairs every
EVAL_STEPS steps during training (the curve that shows when a run leaves the plateau).

    rewarddance data world --out runs/data/world --n 4000 --n-test 800
    python bench/curriculum_probe.py --data runs/data/world --out runs/curriculum-probe

Writes OUT/results.json and prints the table: final ID / OOD accuracy of each arm, its held-out accuracy
curve and the training batches' judgment loss at those steps. A re-run into the same OUT resumes the runs
of the same arguments (OUT/args.json) and refuses other ones.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rewarddance.recipes.steps import cli_command, run_step


def pass_vs_fail(row: dict) -> bool:
    """Whether the pair's clean preference is pass against fail: the preferred image passes every
    constraint, the other fails one (ShapeWorld's rationale says "Image A shows ...; it fails '...'")."""
    text = row.get("rationale") or ""
    if row.get("label_clean") not in ("a", "b") or "Image A shows" not in text or "Image B shows" not in text:
        return False
    a = text.split("Image A shows", 1)[1].split("Image B shows", 1)[0]
    b = text.split("Image B shows", 1)[1].split(" So ", 1)[0]
    preferred, other = (a, b) if row["label_clean"] == "a" else (b, a)
    return "fails" not in preferred and "fails" in other


def write_easy(train: Path, out: Path) -> tuple[Path, int, int]:
    """The pass-vs-fail rows of `train`, their image paths made absolute (the file lives elsewhere)."""
    rows = [json.loads(t) for t in train.read_text().splitlines() if t.strip()]
    easy = [r | {k: str((train.parent / r[k]).resolve()) for k in ("image_a", "image_b")}
            for r in rows if pass_vs_fail(r)]
    path = out / "easy.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in easy))
    return path, len(easy), len(rows)


def train(out: Path, log: Path, data: Path, eval_data: Path, model: str, steps: int, *extra: str) -> Path:
    """`rewarddance train` (resumes when interrupted); its final checkpoint."""
    if not (out / "final").exists():
        run_step([*cli_command(), "train", f"data={data}", f"eval_data={eval_data}", f"output_dir={out}",
                  f"model={model}", f"max_steps={steps}", "progress=false", "tensorboard=false", *extra], log)
    return out / "final"


def evaluate(model: Path, test: Path, log: Path) -> dict:
    result = model.parent / "eval.json"
    if not result.exists():
        run_step([*cli_command(), "eval", "--model", str(model), "--data", str(test), "--json", str(result)], log)
    splits = json.loads(result.read_text())["splits"]
    return {"id": splits["id"]["accuracy"], "ood": splits["ood"]["accuracy"]}


def curve(*runs: Path) -> list[dict]:
    """Held-out accuracy and the training judgment loss (last log window) at each evaluation of `runs`
    (phases, in order; the second phase's steps counted on from the first's)."""
    rows, done = [], 0
    for run in runs:
        last = None
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
            last = r
            if "eval_accuracy" in r:
                rows.append({"step": done + r["step"], "eval_accuracy": r["eval_accuracy"],
                             "judgment_loss": r.get("judgment_loss")})
        done += last["step"] if last else 0
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a `rewarddance data world` folder (train.jsonl, test.jsonl)")
    p.add_argument("--out", default="runs/curriculum-probe")
    p.add_argument("--model", default="qwen2_5_vl-tiny-shapeworld")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--easy-steps", type=int, default=300)
    p.add_argument("--eval-steps", type=int, default=100)
    p.add_argument("--eval-max", type=int, default=200)
    args = p.parse_args()
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "probe.log"
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    recorded = out / "args.json"
    if recorded.exists() and json.loads(recorded.read_text()) != settings:
        raise SystemExit(f"{out} holds runs of other arguments ({recorded}): use another --out")
    recorded.write_text(json.dumps(settings) + "\n")
    easy, n_easy, n_all = write_easy(data / "train.jsonl", out)
    test = data / "test.jsonl"
    evals = [f"eval_steps={args.eval_steps}", f"eval_max={args.eval_max}", f"save_steps={args.eval_steps}"]

    base = train(out / "baseline", log, data / "train.jsonl", test, args.model, args.steps, *evals)
    phase1 = train(out / "curriculum-1", log, easy, test, args.model, args.easy_steps, "schedule=constant", *evals)
    phase2 = train(out / "curriculum-2", log, data / "train.jsonl", test, str(phase1), args.steps - args.easy_steps,
                   *evals)
    result = {"command": f"python bench/curriculum_probe.py --data {args.data} --out {args.out} --model {args.model} "
                         f"--steps {args.steps} --easy-steps {args.easy_steps} --eval-steps {args.eval_steps} "
                         f"--eval-max {args.eval_max}",
              "easy_pairs": n_easy, "all_pairs": n_all,
              "baseline": {**evaluate(base, test, log), "curve": curve(out / "baseline")},
              "curriculum": {**evaluate(phase2, test, log),
                             "curve": curve(out / "curriculum-1", out / "curriculum-2")}}
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"pass-vs-fail pairs: {n_easy} of {n_all}")
    for arm in ("baseline", "curriculum"):
        r = result[arm]
        print(f"{arm}: ID {100 * r['id']:.1f}% / OOD {100 * r['ood']:.1f}%")
        for c in r["curve"]:
            print(f"  step {c['step']:5d}  held-out {100 * c['eval_accuracy']:.1f}%  "
                  f"train judgment loss {c['judgment_loss']}")


if __name__ == "__main__":
    main()
