"""Training speed: our generative-pairwise step vs the HF model's own loss, same model, data and batch.

    python bench/train.py                       # small + base presets (qwen2_5_vl), float32 and bf16 autocast
    python bench/train.py --quick               # tiny preset, 1 rep: checks the script in < 1 minute
    python bench/train.py --sizes small base --batch 8 --reps 3

For each preset size and each dtype mode (float32; bf16 autocast = float32 weights and optimizer
under `torch.autocast("cpu", dtype=torch.bfloat16)`, as `rewarddance train` with `bf16: true`), one
batch of `--batch` ShapeWorld pairs (no ties; both orders, so 2 x batch sequences in the pairwise
layout, judgment-only targets, i.e. cot off) is trained on by two methods, each starting from
the same preset weights:

  ours      sequence_scores(judge, judge, batch.sequences) (judgment logit at the answer position
            only, only the yes/no rows of the LM head) + generative_pairwise loss + backward + AdamW step;
  baseline  the plain Hugging Face way: the chat template rendering of prompt + assistant answer
            ("yes"/"no"), labels -100 everywhere but the answer token, judge.backbone(**inputs,
            labels=labels, use_cache=False) (full-vocabulary logits at every position, HF's own
            cross-entropy) + backward + AdamW step. Its sequences are longer by the tokens that close
            the assistant turn after the answer (3 on Qwen), which a plain recipe would not trim.

Input building (chat template + processor: tokenising, image preprocessing) is INSIDE the timed
step for both methods, as the training loop pays it; it is also timed alone and reported.
Each timing is the best of `--reps` steps after one warm-up step; samples/s = pairs per second.

Peak memory: every (size, dtype, method) runs in a fresh subprocess, which reports its
ru_maxrss (peak resident set, MB) at the end, and the same figure just before the first step
(model, optimizer, data loaded), so the step's own growth is visible too.

MFU: the FLOPs of one whole step (forward + backward; AdamW's elementwise work counts 0),
counted with torch.utils.flop_counter.FlopCounterMode on the (untimed) warm-up step, divided by the
best step time, over the matmul peak of the dtype used (float32, or bfloat16 for autocast),
measured in this run with square matmuls (n = 1024 and 2048, best of 5 each, the higher).

Prints a table and writes everything to bench/results/train.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from common import matmul_peak  # bench/ is on sys.path

RESULTS = Path(__file__).resolve().parent / "results" / "train.json"
DTYPES = ("float32", "bf16-autocast")
METHODS = ("ours", "baseline")
LR = 1e-5


def matmul_peaks(dtype: torch.dtype, sizes: tuple[int, ...] = (1024, 2048), reps: int = 5) -> dict[str, float]:
    """GFLOP/s of square matmuls in `dtype` (best of `reps` per size) and their max."""
    out = {f"n{n}": matmul_peak(dtype, n, reps) / 1e9 for n in sizes}
    out["peak"] = max(out.values())
    return out


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ------------------------------------------------------------------ worker: one (size, dtype, method)
def load_batch(world: str, n_pairs: int):
    """The first `n_pairs` non-tie pairs of `world`/train.jsonl, as a generative-pairwise Batch (cot off)."""
    from rewarddance.data import read_manifest
    from rewarddance.data.records import RecordError
    from rewarddance.data.training import PAIRWISE, Batch, make_example

    records = [r for r in read_manifest(Path(world) / "train.jsonl")
               if not isinstance(r, RecordError) and r.label != "tie"][:n_pairs]
    if len(records) < n_pairs:
        raise SystemExit(f"{world}/train.jsonl has only {len(records)} non-tie pairs, need {n_pairs}")
    return Batch.join([make_example(r, PAIRWISE, task=r.task or "t2i-overall", cot=False) for r in records])


def baseline_inputs(judge, seqs) -> dict[str, torch.Tensor]:
    """Prompt + assistant answer as the chat template renders it; labels on the answer token only."""
    tok = judge.processor.tokenizer
    texts, n_suffix = [], []
    for s in seqs:
        prompt = judge.render(s.context)
        full = judge.processor.apply_chat_template(
            s.context.messages + [{"role": "assistant", "content": [{"type": "text", "text": s.judgment}]}],
            tokenize=False)
        if not full.startswith(prompt):
            raise ValueError("the generation prompt is not a prefix of the rendered answer")
        texts.append(full)
        n_suffix.append(len(tok.encode(full[len(prompt):], add_special_tokens=False)))
    inputs = judge.encode([s.context for s in seqs], texts=texts, padding_side="right")
    ids = inputs["input_ids"]
    labels = torch.full_like(ids, -100)
    for row, (s, length, k) in enumerate(zip(seqs, inputs["attention_mask"].sum(1).tolist(), n_suffix)):
        pos = length - k  # the answer token: first token after the generation prompt
        if ids[row, pos].item() not in (judge.yes_ids if s.judgment == "yes" else judge.no_ids):
            raise ValueError(f"row {row}: the answer token is not where the template puts it")
        labels[row, pos] = ids[row, pos]
    inputs["labels"] = labels
    return inputs


def worker(spec: dict) -> dict:
    import transformers
    from torch.utils.flop_counter import FlopCounterMode

    from rewarddance.models.judge import Judge
    from rewarddance.train.forward import encode_targets, sequence_scores
    from rewarddance.train.objectives import generative_pairwise

    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(0)
    judge = Judge.from_pretrained(spec["model"], dtype=torch.float32).train()  # as build_judge: full fine-tuning
    batch = load_batch(spec["world"], spec["batch"])
    seqs = batch.sequences
    opt = torch.optim.AdamW([p for p in judge.parameters() if p.requires_grad], lr=LR)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if spec["dtype"] == "bf16-autocast" else nullcontext()

    if spec["method"] == "ours":
        def build():
            return encode_targets(judge, seqs)

        def step() -> float:
            with autocast:
                scores = sequence_scores(judge, judge, seqs)
            loss, _ = generative_pairwise(scores, batch)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.item()
    else:
        def build():
            return baseline_inputs(judge, seqs)

        def step() -> float:
            inputs = baseline_inputs(judge, seqs)
            with autocast:
                loss = judge.backbone(**inputs, use_cache=False).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.item()

    build()
    t_build = float("inf")
    for _ in range(spec["reps"]):
        t = time.perf_counter()
        built = build()
        t_build = min(t_build, time.perf_counter() - t)
    inputs = built[0] if isinstance(built, tuple) else built
    tokens = int(inputs["attention_mask"].sum())
    seq_len = int(inputs["input_ids"].shape[1])
    del built, inputs
    rss_loaded = _rss_mb()

    with FlopCounterMode(display=False) as counter:  # the warm-up step, untimed, counts the FLOPs
        first_loss = step()
    flops = counter.get_total_flops()
    t_step = float("inf")
    for _ in range(spec["reps"]):
        t = time.perf_counter()
        step()
        t_step = min(t_step, time.perf_counter() - t)
    return {"method": spec["method"], "dtype": spec["dtype"], "step_s": t_step, "build_s": t_build,
            "pairs_per_s": spec["batch"] / t_step, "flops": flops, "achieved_gflops": flops / t_step / 1e9,
            "tokens": tokens, "padded_len": seq_len, "sequences": len(seqs), "first_loss": first_loss,
            "rss_loaded_mb": rss_loaded, "rss_peak_mb": _rss_mb(), "threads": torch.get_num_threads()}


def run_worker(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"worker {spec['method']} {spec['dtype']} {spec['model']} failed ({proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ driver
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny preset, 1 rep (a check of the script, < 1 minute)")
    ap.add_argument("--sizes", nargs="+", default=["small", "base"])
    ap.add_argument("--arch", default="qwen2_5_vl")
    ap.add_argument("--batch", type=int, default=8, help="pairs per step (2 x batch sequences)")
    ap.add_argument("--reps", type=int, default=3, help="timed steps after the warm-up; the best counts")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.quick:
        args.sizes, args.reps = ["tiny"], 1

    import transformers

    from rewarddance.models.presets import preset_path
    from rewarddance.world.dataset import build_world

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    peaks = {"float32": matmul_peaks(torch.float32), "bf16-autocast": matmul_peaks(torch.bfloat16)}
    print(f"# bench/train.py on {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; batch {args.batch} pairs = {2 * args.batch} sequences (both orders, "
          f"judgment only), best of {args.reps} step(s) after 1 warm-up; each (size, dtype, method) in its own "
          f"process")
    print("# input building (chat template + processor) is INSIDE the timed step for both methods")
    print(f"# matmul peak: float32 {peaks['float32']['n1024']:.0f} / {peaks['float32']['n2048']:.0f} GFLOP/s, "
          f"bfloat16 {peaks['bf16-autocast']['n1024']:.0f} / {peaks['bf16-autocast']['n2048']:.0f} GFLOP/s "
          f"(n = 1024 / 2048)", flush=True)

    world = tempfile.mkdtemp(prefix="rd-bench-train-")
    try:
        build_world(world, n=4 * args.batch, seed=0, n_test=0, progress=False)
        results = []
        for size in args.sizes:
            model = str(preset_path(f"{args.arch}-{size}"))  # built here once, before the workers load it
            for dtype in DTYPES:
                row = {"size": size, "dtype": dtype, "peak_gflops": peaks[dtype]["peak"]}
                for method in METHODS:
                    r = run_worker({"model": model, "world": world, "batch": args.batch, "reps": args.reps,
                                    "dtype": dtype, "method": method})
                    r["mfu"] = r["achieved_gflops"] / peaks[dtype]["peak"]
                    row[method] = r
                row["ratio"] = row["ours"]["pairs_per_s"] / row["baseline"]["pairs_per_s"]
                results.append(row)
                o, b = row["ours"], row["baseline"]
                print(f"  {size} {dtype}: ours {o['step_s'] * 1e3:.0f} ms/step ({o['flops'] / 1e9:.2f} GFLOP, "
                      f"inputs {o['build_s'] * 1e3:.0f} ms, {o['tokens']} tokens), baseline "
                      f"{b['step_s'] * 1e3:.0f} ms/step ({b['flops'] / 1e9:.2f} GFLOP, inputs "
                      f"{b['build_s'] * 1e3:.0f} ms, {b['tokens']} tokens)", flush=True)
    finally:
        shutil.rmtree(world, ignore_errors=True)

    head = ("| size | dtype | ours pairs/s | baseline pairs/s | ours/baseline | ours MFU | baseline MFU "
            "| peak RSS MB ours / baseline (step's growth) |")
    print()
    print(head)
    print("|" + "---|" * 8)
    for r in results:
        o, b = r["ours"], r["baseline"]
        print(f"| {r['size']} | {r['dtype']} | {o['pairs_per_s']:.2f} | {b['pairs_per_s']:.2f} | "
              f"{r['ratio']:.2f}x | {o['mfu']:.1%} | {b['mfu']:.1%} | {o['rss_peak_mb']:.0f} / "
              f"{b['rss_peak_mb']:.0f} (+{o['rss_peak_mb'] - o['rss_loaded_mb']:.0f} / "
              f"+{b['rss_peak_mb'] - b['rss_loaded_mb']:.0f}) |")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "arch": args.arch, "batch_pairs": args.batch, "reps": args.reps,
            "quick": args.quick, "input_building": "inside the timed step, both methods",
            "matmul_peak_gflops": peaks, "date": time.strftime("%Y-%m-%d %H:%M")}
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
