"""ShapeWorld checker: accuracy / precision / recall by category, resolution and defect severity,
and throughput on one core. Writes docs/shapeworld.md and example images.

    python bench/world_checker.py [--n 1000] [--write-docs]

Throughput is measured against the renderer in the same run (the only baseline here: the cost
of producing the image the checker reads), and printed as images/s and a ratio.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from rewarddance.world import CATEGORIES, Style, check, random_spec, render, sample_scene  # noqa: E402
from rewarddance.world.defects import QUALITY_DEFECTS  # noqa: E402
from rewarddance.world.evalset import balanced_cases, checker_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def by_category(cases):
    groups = defaultdict(list)
    for c in cases:
        groups[c.category].append(c)
    return {k: checker_metrics(v) for k, v in sorted(groups.items())}


def fmt(m):
    return f"{m['accuracy']:.3f} | {m['precision']:.3f} | {m['recall']:.3f} | {m['n']}"


def throughput(n: int = 500, size: int = 64, reps: int = 3) -> dict[str, float]:
    """Images per second, best of `reps` passes (this VM's speed varies from run to run)."""
    rng = np.random.default_rng(0)
    specs = [random_spec(rng, CATEGORIES[int(rng.integers(len(CATEGORIES)))]) for _ in range(n)]
    scenes = [sample_scene(rng, spec) for spec in specs]
    imgs = [(np.asarray(render(sc, size)), spec.prompt()) for sc, spec in zip(scenes, specs)]
    steps = {"render": lambda: [render(sc, size) for sc in scenes],
             "check": lambda: [check(a, p, quality=False) for a, p in imgs],
             "check+quality": lambda: [check(a, p) for a, p in imgs]}
    out = {}
    for name, fn in steps.items():
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        out[name] = n / best
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000, help="balanced cases per cell")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    lines = ["# ShapeWorld checker: measured accuracy", "",
             f"Measured {datetime.date.today()} on {platform.processor() or platform.machine()} "
             f"(1 thread) by `python bench/world_checker.py --n {args.n} --write-docs`.",
             "Balanced sets: half the images satisfy the prompt, half carry one content defect "
             "(wrong colour/shape, extra/missing object, swapped position/binding, cropped out). "
             "Metrics are for `check(image, prompt).passed`.", ""]

    lines += ["## By resolution and style", "", "| set | accuracy | precision | recall | n |", "|---|---|---|---|---|"]
    per_cat = {}
    for size in (32, 64, 128):
        for style_name, style in (("in-domain", Style()), ("OOD style", Style.ood())):
            cases = balanced_cases(np.random.default_rng(size), args.n, size=size, style=style)
            m = checker_metrics(cases)
            lines.append(f"| {size}px {style_name} | {fmt(m)} |")
            print(f"{size}px {style_name}: {m}")
            if style_name == "in-domain":
                per_cat[size] = by_category(cases)
    lines += ["", "## By category (in-domain style)", "", "| px | category | accuracy | precision | recall | n |",
              "|---|---|---|---|---|---|"]
    for size, cats in per_cat.items():
        for cat, m in cats.items():
            lines.append(f"| {size} | {cat} | {fmt(m)} |")

    lines += ["", "## Accuracy vs quality-defect severity", "",
              "Severity 1 is the default (noise sigma 0.05, blur radius 1 px at 64 px, JPEG quality 40, "
              "hue shift 8 degrees); severity s scales it (JPEG quality 100 - 60 s).", ""]
    sevs = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
    for size in (64, 32):
        lines += [f"### {size} px", "", "| defect | " + " | ".join(f"s={s}" for s in sevs) + " |",
                  "|---|" + "---|" * len(sevs)]
        for d in QUALITY_DEFECTS:
            row = []
            for s in sevs:
                cases = balanced_cases(np.random.default_rng(7), args.n // 2, size=size, quality_defect=d,
                                       severity=s)
                m = checker_metrics(cases)
                q = np.median([check(c.image, c.prompt).quality for c in cases[:100]])
                row.append(f"{m['accuracy']:.3f} (q {q:.2f})")
            lines.append(f"| {d} | " + " | ".join(row) + " |")
            print(size, d, row)
        lines.append("")
    lines.append("Cells: accuracy of `passed` (median quality score of the images).")

    tp = throughput()
    print("throughput (images/s, 1 thread, 64 px):", {k: round(v) for k, v in tp.items()})
    lines += ["", "## Throughput (64 px, one thread)", "", "| step | images/s |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in tp.items()]
    lines += ["", f"check / render ratio: {tp['check'] / tp['render']:.2f}", "",
              "![examples](shapeworld-examples.png)", "",
              "Examples (64 px, upscaled): top row satisfies its prompt; bottom row carries a content defect."]
    print(f"ratio check/render: {tp['check'] / tp['render']:.2f}")
    if args.write_docs:
        (ROOT / "docs" / "shapeworld.md").write_text("\n".join(lines) + "\n")
        cases = balanced_cases(np.random.default_rng(1), 16)
        grid = Image.new("RGB", (8 * 96, 2 * 96), "white")
        for i, c in enumerate(cases):
            grid.paste(c.image.resize((96, 96), Image.NEAREST), ((i // 2) * 96, (i % 2) * 96))
        grid.save(ROOT / "docs" / "shapeworld-examples.png")
        (ROOT / "docs" / "shapeworld-examples.txt").write_text(
            "\n".join(f"col {i // 2} row {i % 2}: {c.prompt!r} -> {c.kind}" for i, c in enumerate(cases)) + "\n")


if __name__ == "__main__":
    main()
