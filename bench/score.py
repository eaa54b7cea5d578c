"""Reward throughput: ours vs the ways peers compute a VLM judgment, same model, inputs and batch.

    python bench/score.py            # small + base presets, ~10 minutes on 2 cores
    python bench/score.py --quick    # smaller workload, same table, < 2 minutes

Methods (all get the same loaded images, dtype, SDPA attention and batch size):
  generate  the text-judge way (UnifiedReward style): greedy generation of exactly 32 new tokens
            with the KV cache, verdict parsed from the text (reward 1.0 for "yes", else 0.0);
  naive     one forward per batch, logits over the full vocabulary at every position, P(yes)
            read at the answer position (no caching);
  ours      RewardModel.score (answer-position logits, answer rows only, shared-prefix KV cache,
            vision-feature reuse, length-sorted batches).
Workloads: pointwise (P prompts × N candidates) and pairwise-with-reference (each candidate
against K references). Throughput counts (candidate, reference) pairs per second; each timing
is the best of 2 runs.

The last line is one JSON object: ratio_vs_naive, ratio_vs_generate (pairwise K=4, base),
ratio_pointwise_vs_naive (base), mfu (FLOPs ours executes, counted with FlopCounterMode,
per second, over the matmul peak measured here for the dtype used; base, batch 16), and
fast_path_fallbacks (items the shared-prefix path left to the plain path; 0 when every group fit).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

import rewarddance as rd
from common import matmul_peak  # noqa: E402  (bench/ is on sys.path)
from rewarddance.context import build_context, get_task
from rewarddance.media import load_image
from rewarddance.models.presets import preset_path
from rewarddance.world import CATEGORIES, random_spec, render, sample_scene

BATCH = 16
N_CANDIDATES = 16
REPS = 2  # each timing is the best of REPS runs (1 with --quick)


def workload(n_prompts: int, k_refs: int, seed: int = 0):
    """(prompts, candidates, references) flattened: every candidate of a prompt against each of its K refs."""
    rng = np.random.default_rng(seed)
    prompts, cands, refs = [], [], []
    for _ in range(n_prompts):
        spec = random_spec(rng, CATEGORIES[int(rng.integers(len(CATEGORIES)))])
        c = [load_image(render(sample_scene(rng, spec), 64)) for _ in range(N_CANDIDATES)]
        r = [load_image(render(sample_scene(rng, spec), 64)) for _ in range(k_refs)]
        for ref in r if k_refs else [None]:
            prompts += [spec.prompt()] * N_CANDIDATES
            cands += c
            refs += [ref] * N_CANDIDATES
    return prompts, cands, (refs if k_refs else None)


def _contexts(rm, prompts, cands, refs):
    task = get_task(rm.task)
    return [build_context(task, rm.layout, p, c, reference=None if refs is None else refs[i])
            for i, (p, c) in enumerate(zip(prompts, cands))]


def run_naive(rm, prompts, cands, refs) -> list[float]:
    ctxs, out = _contexts(rm, prompts, cands, refs), []
    with torch.inference_mode():
        for i in range(0, len(ctxs), BATCH):
            inputs = rm.judge.encode(ctxs[i:i + BATCH])
            logits = rm.model(**inputs).logits  # B × L × V: every position, every token
            last = logits[:, -1].float().log_softmax(-1)  # left padding: the answer position is last
            lp = torch.stack([last[:, rm.judge.yes_ids].logsumexp(1), last[:, rm.judge.no_ids].logsumexp(1)], 1)
            out += torch.sigmoid(lp[:, 0] - lp[:, 1]).tolist()
    return out


def run_generate(rm, prompts, cands, refs) -> list[float]:
    ctxs, out = _contexts(rm, prompts, cands, refs), []
    tok = rm.processor.tokenizer
    with torch.inference_mode():
        for i in range(0, len(ctxs), BATCH):
            inputs = rm.judge.encode(ctxs[i:i + BATCH])
            gen = rm.model.generate(**inputs, max_new_tokens=32, min_new_tokens=32, do_sample=False,
                                    use_cache=True, pad_token_id=tok.pad_token_id)
            texts = tok.batch_decode(gen[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            out += [1.0 if t.strip().lower().startswith("yes") else 0.0 for t in texts]
    return out


def run_ours(rm, prompts, cands, refs) -> list[float]:
    if rm.prefix_scorer is not None:
        rm.prefix_scorer.features.clear()  # every RL step brings new candidates: no warm cache
    return rm.score(prompts, cands, references=refs, batch_size=BATCH)


def timed(fn: Callable, *args, reps: int = 1) -> tuple[float, list[float]]:
    """Best wall time of `reps` runs (this VM's speed drifts by ~15% between runs), and the output."""
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t)
    return best, out


def bench_preset(name: str, dtype: torch.dtype, n_prompts: int, with_generate: bool) -> dict:
    path = preset_path(name)
    res: dict = {"preset": name, "dtype": str(dtype).replace("torch.", "")}
    rows = []
    for layout, k in (("pointwise", 0), ("pairwise", 1), ("pairwise", 4)):
        rm = rd.load(path, layout=layout, dtype=dtype)
        prompts, cands, refs = workload(n_prompts if k < 4 else max(1, n_prompts // 2), k)
        warm = (prompts[:BATCH], cands[:BATCH], None if refs is None else refs[:BATCH])
        for fn in (run_ours, run_naive):
            fn(rm, *warm)
        scored = rm.prefix_scorer.scored
        t_ours, r_ours = timed(run_ours, rm, prompts, cands, refs, reps=REPS)
        scored = rm.prefix_scorer.scored - scored  # by the timed runs
        t_naive, r_naive = timed(run_naive, rm, prompts, cands, refs, reps=REPS)
        n = len(cands)
        row = {"layout": layout, "k": k, "pairs": n, "ours": n / t_ours, "naive": n / t_naive,
               "max_diff_vs_naive": float(np.abs(np.array(r_ours) - np.array(r_naive)).max()),
               # items the shared-prefix path handed to the plain path (layout mismatch): should stay 0
               "fallbacks": rm.prefix_scorer.fallbacks}
        # a speed-up counts only if ours ran on the shared-prefix path and gave the naive rewards
        tolerance = 1e-4 if dtype == torch.float32 else 1e-2  # bf16: rounding differs between the two orders
        if scored != REPS * len(cands) or row["fallbacks"] or row["max_diff_vs_naive"] > tolerance:
            raise SystemExit(f"{name} {layout} K={k}: ours is not the fast path or disagrees with naive "
                             f"(scored {scored} of {REPS * len(cands)}, fallbacks {row['fallbacks']}, "
                             f"max diff {row['max_diff_vs_naive']:.1e} > {tolerance:.0e})")
        if with_generate and (k == 4 or layout == "pointwise"):
            run_generate(rm, *warm)
            t_gen, _ = timed(run_generate, rm, prompts, cands, refs, reps=REPS)
            row["generate"] = n / t_gen
        rows.append(row)
        label = "pointwise" if layout == "pointwise" else f"pairwise K={k}"
        gen = f"  generate {row['generate']:7.1f}/s  ours/generate {row['ours'] / row['generate']:5.1f}x" \
            if "generate" in row else ""
        print(f"{name:16s} {res['dtype']:8s} {label:13s} {n:4d} pairs  ours {row['ours']:7.1f}/s  naive "
              f"{row['naive']:7.1f}/s  ours/naive {row['ours'] / row['naive']:5.2f}x{gen}  "
              f"(max |ours-naive| {row['max_diff_vs_naive']:.1e}, fast-path fallbacks {row['fallbacks']})", flush=True)
        if layout == "pairwise" and k == 4:
            batch = (prompts[:BATCH], cands[:BATCH], refs[:BATCH])
            with FlopCounterMode(display=False) as counter:
                run_ours(rm, *batch)
            t, _ = timed(run_ours, rm, *batch)
            flops = counter.get_total_flops()
            peak = matmul_peak(dtype)
            res["mfu"] = flops / t / peak
            res["achieved_gflops"] = flops / t / 1e9
            res["peak_gflops"] = peak / 1e9
            print(f"{name:16s} mfu (pairwise K=4, batch {BATCH}): {flops / 1e9:.1f} GFLOP in {t * 1e3:.0f} ms = "
                  f"{flops / t / 1e9:.1f} GFLOP/s of a measured {peak / 1e9:.0f} GFLOP/s {res['dtype']} matmul "
                  f"peak -> {res['mfu']:.1%}", flush=True)
    res["rows"] = rows
    return res


def dtype_study(name: str, n_prompts: int) -> dict:
    """Ours in float32 vs bfloat16 on the same pairwise K=4 workload: speed and reward difference."""
    prompts, cands, refs = workload(n_prompts, 4, seed=1)
    out, rewards = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        rm = rd.load(preset_path(name), layout="pairwise", dtype=dtype)
        run_ours(rm, prompts[:BATCH], cands[:BATCH], refs[:BATCH])
        t, rewards[dtype] = timed(run_ours, rm, prompts, cands, refs)
        out[str(dtype).replace("torch.", "")] = len(cands) / t
    a, b = np.array(rewards[torch.float32]), np.array(rewards[torch.bfloat16])
    # do the two dtypes order the candidates of each (prompt, reference) group the same way?
    agree = total = 0
    for g in range(0, len(a), N_CANDIDATES):
        x, y = a[g:g + N_CANDIDATES], b[g:g + N_CANDIDATES]
        i, j = np.triu_indices(len(x), 1)
        agree += int((np.sign(x[i] - x[j]) == np.sign(y[i] - y[j])).sum())
        total += len(i)
    out.update(max_abs_diff=float(np.abs(a - b).max()), mean_abs_diff=float(np.abs(a - b).mean()),
               reward_spread=float(a.std()), order_agreement=agree / total)
    print(f"{name:16s} dtype study (ours, pairwise K=4): float32 {out['float32']:.1f}/s, bfloat16 "
          f"{out['bfloat16']:.1f}/s ({out['bfloat16'] / out['float32']:.2f}x); |bf16 - fp32| max "
          f"{out['max_abs_diff']:.1e} mean {out['mean_abs_diff']:.1e} (reward spread {out['reward_spread']:.1e}); "
          f"pairwise order agreement {out['order_agreement']:.1%}", flush=True)
    return out


def compile_study(name: str, dtype: torch.dtype) -> dict:
    """Ours eager vs torch.compile (after its first, compiling call)."""
    prompts, cands, refs = workload(1, 4, seed=2)
    out = {}
    for compiled in (False, True):
        rm = rd.load(preset_path(name), layout="pairwise", dtype=dtype, compile=compiled)
        t_first, _ = timed(run_ours, rm, prompts, cands, refs)
        t, _ = timed(run_ours, rm, prompts, cands, refs)
        out["compiled" if compiled else "eager"] = len(cands) / t
        if compiled:
            out["first_call_s"] = t_first
    print(f"{name:16s} torch.compile: eager {out['eager']:.1f}/s, compiled {out['compiled']:.1f}/s "
          f"({out['compiled'] / out['eager']:.2f}x) after a first call of {out['first_call_s']:.0f} s", flush=True)
    return out


def ablation(name: str, n_prompts: int) -> dict:
    """Each step on the same pairwise K=4 workload (float32): what it buys over the one before."""
    prompts, cands, refs = workload(n_prompts, 4, seed=3)
    steps: dict[str, float] = {}
    rm_plain = rd.load(preset_path(name), layout="pairwise", fast=False)
    rm_fast = rd.load(preset_path(name), layout="pairwise")
    warm = (prompts[:BATCH], cands[:BATCH], refs[:BATCH])
    for label, fn, rm in (("naive: full logits, every position", run_naive, rm_plain),
                          ("answer position, answer rows only", run_ours, rm_plain),
                          ("+ shared prefix (prompt, reference) + vision-feature reuse", run_ours, rm_fast)):
        fn(rm, *warm)
        t, _ = timed(fn, rm, prompts, cands, refs)
        steps[label] = len(cands) / t
    rm_fast.score(prompts, cands, references=refs)  # a second pass over the same candidates: cache warm
    t, _ = timed(lambda: rm_fast.score(prompts, cands, references=refs, batch_size=BATCH))
    steps["+ warm vision cache (same candidates again)"] = len(cands) / t
    prev = None
    for label, v in steps.items():
        extra = f"  ({v / prev:.2f}x the step before)" if prev else ""
        print(f"{name:16s} ablation  {label:62s} {v:7.1f} pairs/s{extra}", flush=True)
        prev = v
    return steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a smaller workload (< 2 minutes)")
    ap.add_argument("--arch", default="qwen2_5_vl")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                    help="default: the library's default for this device")
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile (minutes of compiling)")
    ap.add_argument("--ablation", action="store_true", help="also measure each optimisation step on its own")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    dtype = getattr(torch, args.dtype) if args.dtype else rd.default_dtype("cpu")
    global REPS
    REPS = 1 if args.quick else REPS
    print(f"# bench/score.py on {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, batch {BATCH}, {N_CANDIDATES} candidates per prompt")
    results = {}
    for size, n_prompts in (("small", 1 if args.quick else 4), ("base", 1 if args.quick else 2)):
        results[size] = bench_preset(f"{args.arch}-{size}", dtype, n_prompts, with_generate=True)
    studies = {"dtype": dtype_study(f"{args.arch}-{'small' if args.quick else 'base'}", 1)}
    if args.compile:
        studies["compile"] = compile_study(f"{args.arch}-small", dtype)
    if args.ablation:
        studies["ablation"] = ablation(f"{args.arch}-base", 1 if args.quick else 2)
    base = {(r["layout"], r["k"]): r for r in results["base"]["rows"]}
    k4, pw = base[("pairwise", 4)], base[("pointwise", 0)]
    summary = {"ratio_vs_naive": k4["ours"] / k4["naive"], "ratio_vs_generate": k4["ours"] / k4["generate"],
               "ratio_pointwise_vs_naive": pw["ours"] / pw["naive"], "mfu": results["base"]["mfu"],
               "dtype": results["base"]["dtype"], "quick": args.quick,
               "small_ratio_vs_naive": {f"{r['layout']}-K{r['k']}": r["ours"] / r["naive"]
                                        for r in results["small"]["rows"]},
               "bf16_speedup": studies["dtype"]["bfloat16"] / studies["dtype"]["float32"],
               "bf16_max_abs_diff": studies["dtype"]["max_abs_diff"],
               "fast_path_fallbacks": sum(r["fallbacks"] for res in results.values() for r in res["rows"])}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
