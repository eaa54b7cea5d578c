"""One scoring forward (batch 8, pairwise) for every family and size, with parameter counts;
baseline in the same run: the full forward with logits at every position.

    python bench/forward.py [--sizes tiny small] [--reps 5]
"""

from __future__ import annotations

import argparse

import torch

import rewarddance as rd
from rewarddance.models.presets import ARCHS, preset_path

from common import warm_then_time  # bench/ is on sys.path


def best_of(fn, reps: int) -> float:
    return min(warm_then_time(fn, reps))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    g = torch.Generator().manual_seed(0)
    cands = list(torch.rand(8, 3, 64, 64, generator=g))
    refs = list(torch.rand(8, 3, 64, 64, generator=g))
    print(f"{'preset':20s} {'params':>8s} {'ours ms':>8s} {'full ms':>8s} {'ratio':>6s}   (batch 8, pairwise, "
          f"{torch.get_num_threads()} threads)")
    for size in args.sizes:
        for arch in ARCHS:
            rm = rd.load(preset_path(f"{arch}-{size}"), layout="pairwise", fast=False)
            inputs = rm.judge.encode(rm.contexts("a red circle to the left of a blue star", cands, references=refs))
            with torch.inference_mode():
                ours = best_of(lambda: rm.judge.answer_logits(inputs), args.reps)
                full = best_of(lambda: rm.model(**inputs), args.reps)
            n = sum(p.numel() for p in rm.model.parameters())
            print(f"{arch + '-' + size:20s} {n / 1e6:7.2f}M {ours * 1e3:8.1f} {full * 1e3:8.1f} {full / ours:6.2f}x",
                  flush=True)


if __name__ == "__main__":
    main()
