"""Benchmark: what a ReFL step costs, against the alternatives it replaces.

1. One ReFL step (sample WITHOUT gradients down to step k, one step WITH gradients, reward of the
   predicted clean image, backward) vs backpropagating through the whole sampling chain (every
   step with gradients, reward of the final image, backward): same generator, judge, batch and
   number of steps; both sample the whole chain, only what is kept for the backward differs.
   Each variant runs in its own process, so its peak memory is its own: the kernel's resident-set
   high-water mark is reset (/proc/self/clear_refs) after the models are loaded and warmed up (and the
   warm-up's freed heap is handed back with malloc_trim, so that the step cannot hide in it),
   and read after the step. Also reported: the bytes autograd saved for the backward (exact,
   from saved-tensor hooks).
2. The prefix-cached differentiable reward (prompt + reference prefix under no_grad, gradients only
   through the candidates; `RewardModel.reward_fn` with the fast path) vs the plain differentiable
   reward (`fast=False`: one full forward per (reference, candidate) sequence), forward + backward
   to the pixels, at the `base` preset (random weights, built offline) with K = 1 reference.
3. The judge's layer checkpointing (ReFL's `rm_gradient_checkpointing`: `reward_fn(checkpointing=True)`)
   vs the plain differentiable reward it runs on: time and peak memory of forward + backward at the
   `base` preset, each in its own process (peak RSS growth, as in 1).

    python bench/refl.py                 # ~6 minutes on 2 CPU cores
    python bench/refl.py --quick         # smaller batch, fewer repeats

Prints a table and the ratios; `--json PATH` writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from common import warm_then_time  # bench/ is on sys.path


def _rss_reset() -> bool:
    """Hand memory the warm-up freed back to the OS (glibc malloc_trim), then reset the high-water mark:
    without the trim, the step reuses the warm-up's freed heap and its peak barely shows in the RSS."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: the growth is then a looser lower bound
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class SavedBytes:
    """Bytes of the tensors autograd saves for the backward while active (each storage counted once;
    the models' own weights, which autograd also saves, are not extra memory and are left out)."""

    def __init__(self, *models: torch.nn.Module) -> None:
        self.seen: set[int] = {t.untyped_storage().data_ptr() for m in models
                               for t in [*m.parameters(), *m.buffers()]}
        self.bytes = 0

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage().data_ptr()
        if key not in self.seen:
            self.seen.add(key)
            self.bytes += t.untyped_storage().nbytes()
        return t

    def __enter__(self) -> SavedBytes:
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


def run_variant(variant: str, batch: int, steps: int, k: int, repeats: int) -> dict:
    """One process: load, warm up, then time `repeats` steps of `variant` and measure its memory."""
    import rewarddance as rd
    from rewarddance.generators import ShapeWorldGenerator, pretrained_path
    from rewarddance.rl import refl_forward

    torch.manual_seed(0)
    rm = rd.load("qwen2_5_vl-tiny-shapeworld", dtype=torch.float32)
    rm.judge.requires_grad_(False).eval()
    fn = rm.reward_fn()
    gen = ShapeWorldGenerator.from_pretrained(pretrained_path())
    gen.add_lora(r=8)
    gen.train()
    prompts = ["two red circles", "a blue star above a green ring", "three yellow squares",
               "a pink cross to the left of a cyan triangle"] * (batch // 4 + 1)
    prompts, seeds = prompts[:batch], list(range(batch))

    def step() -> float:
        if variant == "refl":
            out = refl_forward(gen, fn, prompts, seeds, step_index=k, num_steps=steps)
            loss = out.loss
        else:  # the whole chain with gradients
            images = gen.sample(prompts, seeds=seeds, num_steps=steps).images
            loss = -fn(images, prompts).mean()
        loss.backward()
        gen.zero_grad(set_to_none=True)
        return float(loss)

    times = warm_then_time(step, repeats)
    reset = _rss_reset()
    base = _rss_mb()
    with SavedBytes(gen, rm.judge) as saved:
        if variant == "refl":
            out = refl_forward(gen, fn, prompts, seeds, step_index=k, num_steps=steps)
            loss = out.loss
        else:
            loss = -fn(gen.sample(prompts, seeds=seeds, num_steps=steps).images, prompts).mean()
    loss.backward()
    return {"variant": variant, "time_s": statistics.median(times), "times": times,
            "peak_growth_mb": _hwm_mb() - base if reset else None, "saved_for_backward_mb": saved.bytes / 2**20,
            "batch": batch, "steps": steps, "k": k}


def reward_memory(variant: str, batch: int, repeats: int, preset: str) -> dict:
    """One process: the plain differentiable reward's forward + backward, with the judge's layers
    checkpointed or not (`variant` "reward-checkpointed" / "reward-plain"): time and peak RSS growth."""
    import rewarddance as rd

    rm = rd.load(preset, dtype=torch.float32, layout="pairwise", fast=False)
    rm.judge.requires_grad_(False).eval()
    fn = rm.reward_fn(checkpointing=variant == "reward-checkpointed")
    g = torch.Generator().manual_seed(0)
    x, ref = torch.rand(batch, 3, 64, 64, generator=g), torch.rand(3, 64, 64, generator=g)

    def once() -> float:
        xi = x.clone().requires_grad_(True)
        r = fn(xi, "a blue star above a green ring", references=[ref] * batch)
        r.sum().backward()
        return float(r.sum())

    times = warm_then_time(once, repeats)
    reset = _rss_reset()
    base = _rss_mb()
    total = once()
    return {"variant": variant, "time_s": statistics.median(times), "times": times, "reward_sum": total,
            "peak_growth_mb": _hwm_mb() - base if reset else None, "preset": preset, "batch": batch}


def reward_speed(batch: int, repeats: int, preset: str) -> dict:
    """Forward + backward of the differentiable reward: prefix-cached vs plain, K = 1 reference."""
    import rewarddance as rd

    fast = rd.load(preset, dtype=torch.float32, layout="pairwise")
    plain = rd.load(preset, dtype=torch.float32, layout="pairwise", fast=False)
    for rm in (fast, plain):
        rm.judge.requires_grad_(False).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 64, 64, generator=g)
    ref = torch.rand(3, 64, 64, generator=g)
    prompt = "a blue star above a green ring"
    out = {}
    for name, rm in (("cached", fast), ("plain", plain)):
        fn = rm.reward_fn()
        last: list[torch.Tensor] = []  # the last timed call's rewards and pixel gradients, compared below

        def once() -> None:
            xi = x.clone().requires_grad_(True)
            r = fn(xi, prompt, references=[ref] * batch)
            r.sum().backward()
            last[:] = [r.detach(), xi.grad]

        # the warm-up also builds the cached reward's prefix: it is reused from here on, as in ReFL
        times = warm_then_time(once, repeats)
        r, grad = last
        out[name] = {"time_s": statistics.median(times), "times": times, "rewards": r, "grad": grad}
    dv = float((out["cached"]["rewards"] - out["plain"]["rewards"]).abs().max())
    dg = float((out["cached"]["grad"] - out["plain"]["grad"]).abs().max() / out["plain"]["grad"].abs().max())
    assert fast.prefix_scorer.fallbacks == 0 and fast.prefix_scorer.scored > 0  # the cached path really ran
    if dv > 1e-4 or dg > 1e-4:  # the bound: the cached reward is the plain one, values and gradients
        raise SystemExit(f"the cached reward disagrees with the plain one: max reward difference {dv:.1e}, "
                         f"max relative gradient difference {dg:.1e} (bound 1e-4)")
    return {"preset": preset, "batch": batch, "references": 1, "cached_s": out["cached"]["time_s"],
            "plain_s": out["plain"]["time_s"], "speedup": out["plain"]["time_s"] / out["cached"]["time_s"],
            "max_reward_difference": dv, "max_relative_gradient_difference": dg}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--k", type=int, default=17, help="ReFL's gradient step (ImageReward draws it late)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--preset", default="qwen2_5_vl-base", help="judge preset of the reward comparison")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.batch, args.repeats = 4, 2
    if args.variant:  # a child process: one variant, JSON on stdout
        if args.variant.startswith("reward-"):
            print(json.dumps(reward_memory(args.variant, args.batch, args.repeats, args.preset)))
        else:
            print(json.dumps(run_variant(args.variant, args.batch, args.steps, args.k, args.repeats)))
        return

    def child(variant: str) -> dict:
        """One variant in its own process (its peak memory is its own)."""
        cmd = [sys.executable, __file__, "--variant", variant, "--batch", str(args.batch), "--steps", str(args.steps),
               "--k", str(args.k), "--repeats", str(args.repeats), "--preset", args.preset]
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return json.loads(r.stdout.strip().splitlines()[-1])

    def peak(v: dict) -> str:
        return "n/a" if v["peak_growth_mb"] is None else f"{v['peak_growth_mb']:.0f}"

    results = {"threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    for variant in ("refl", "full-chain"):
        results[variant] = child(variant)
    refl, chain = results["refl"], results["full-chain"]
    results["chain_vs_refl_time"] = chain["time_s"] / refl["time_s"]
    results["chain_vs_refl_saved_memory"] = chain["saved_for_backward_mb"] / refl["saved_for_backward_mb"]
    if refl["peak_growth_mb"] and chain["peak_growth_mb"]:
        results["chain_vs_refl_peak_memory"] = chain["peak_growth_mb"] / refl["peak_growth_mb"]
    results["reward"] = reward_speed(args.batch, args.repeats, args.preset)
    for variant in ("reward-plain", "reward-checkpointed"):
        results[variant] = child(variant)
    plain_r, ckpt_r = results["reward-plain"], results["reward-checkpointed"]
    results["checkpointed_vs_plain_time"] = ckpt_r["time_s"] / plain_r["time_s"]
    if plain_r["peak_growth_mb"] and ckpt_r["peak_growth_mb"]:
        results["plain_vs_checkpointed_peak_memory"] = plain_r["peak_growth_mb"] / ckpt_r["peak_growth_mb"]

    print(f"ReFL step vs full-chain backpropagation (ShapeWorld generator 1.7M + LoRA r=8, tiny judge; "
          f"batch {args.batch}, {args.steps} steps, ReFL gradient step k={args.k}; {results['threads']} threads)")
    print(f"{'variant':<12} {'time (s)':>9} {'peak RSS growth (MB)':>21} {'saved for backward (MB)':>24}")
    for v in (refl, chain):
        print(f"{v['variant']:<12} {v['time_s']:>9.2f} {peak(v):>21} {v['saved_for_backward_mb']:>24.1f}")
    print(f"full chain / ReFL: time {results['chain_vs_refl_time']:.2f}x, saved-for-backward memory "
          f"{results['chain_vs_refl_saved_memory']:.1f}x"
          + (f", peak RSS growth {results['chain_vs_refl_peak_memory']:.1f}x"
             if "chain_vs_refl_peak_memory" in results else ""))
    rw = results["reward"]
    print(f"\ndifferentiable reward, forward + backward, {rw['preset']}, batch {rw['batch']}, K=1 reference:")
    print(f"plain {rw['plain_s']:.3f} s, prefix-cached {rw['cached_s']:.3f} s: {rw['speedup']:.2f}x "
          f"(max |reward difference| {rw['max_reward_difference']:.1e}, max relative gradient difference "
          f"{rw['max_relative_gradient_difference']:.1e})")
    print(f"\nthe judge's layer checkpointing (plain differentiable reward, {plain_r['preset']}, batch "
          f"{plain_r['batch']}), forward + backward:")
    print(f"{'variant':<20} {'time (s)':>9} {'peak RSS growth (MB)':>21}")
    for v in (plain_r, ckpt_r):
        print(f"{v['variant']:<20} {v['time_s']:>9.2f} {peak(v):>21}")
    print(f"checkpointed / plain: time {results['checkpointed_vs_plain_time']:.2f}x"
          + (f"; plain / checkpointed peak RSS growth {results['plain_vs_checkpointed_peak_memory']:.1f}x"
             if "plain_vs_checkpointed_peak_memory" in results else "")
          + f" (reward sums {plain_r['reward_sum']:.6f} / {ckpt_r['reward_sum']:.6f})")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
