"""Reward server under load: dynamic batching on vs off, same run, same requests.

    python bench/serve_load.py            # small preset, concurrency 1 / 8 / 32, ~6 minutes on 2 cores
    python bench/serve_load.py --quick    # tiny preset, short levels, < 2 minutes

For each mode the server is the real command (`rewarddance serve`, a subprocess on 127.0.0.1),
stopped with SIGTERM afterwards (its exit code is checked). The load generator (async httpx) keeps
`c` requests in flight, each one prompt and `--group` ShapeWorld images (64 px), and stops after
`--requests` responses or `--seconds` seconds per level, whichever comes first. Every response is
checked against a direct `rm.score` of the same images in this process (float32): a reward off
by more than 1e-5 counts as mismatched; a request with no 200 answer counts as an error. Modes:
  on   the server's batching defaults (--max-batch-size 32 --max-wait-ms 5), --dtype float32
  off  --max-batch-size 1 --max-wait-ms 0 (each request scored alone), --dtype float32
  bf16 batching on with --dtype bfloat16, at the highest concurrency: its largest difference from
       the float32 rewards is reported (not a mismatch: a different dtype).
The last line is one JSON object: throughput ratio on/off at each concurrency, errors, mismatches,
bf16 max difference.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import torch

import rewarddance as rd
from rewarddance.models.presets import preset_path
from rewarddance.world import CATEGORIES, random_spec, render, sample_scene

TOL = 1e-5
FP32 = ["--dtype", "float32"]  # explicit: the default dtype is bfloat16 on CPUs with bf16 matmul
MODES = {"on": FP32, "off": [*FP32, "--max-batch-size", "1", "--max-wait-ms", "0"]}  # on: the batching defaults


def pool(n: int, n_prompts: int, group: int, seed: int = 0) -> list[tuple[str, list[str], list]]:
    """`n` requests' contents, (prompt, base64 PNGs, PIL images): the prompts in turn, every image new
    (an RL job never sends an image twice, so the server's vision-feature cache must not flatter it)."""
    rng = np.random.default_rng(seed)
    specs = [random_spec(rng, CATEGORIES[int(rng.integers(len(CATEGORIES)))]) for _ in range(n_prompts)]
    out = []
    for k in range(n):
        spec = specs[k % n_prompts]
        images = [render(sample_scene(rng, spec), 64) for _ in range(group)]
        encoded = []
        for img in images:
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            encoded.append(base64.b64encode(buf.getvalue()).decode())
        out.append((spec.prompt(), encoded, images))
    return out


def start_server(model: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "rewarddance.cli", "serve", "--model", model, "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "warning", *extra])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError("server not ready after 600 s")


def stop_server(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(120)


def batch_stats(url: str) -> tuple[float, float]:
    """(items scored, model calls) so far, from the server's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    values = {s.name: s.value for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
              for s in f.samples if s.name in ("rewarddance_batch_size_sum", "rewarddance_batch_size_count")}
    return values.get("rewarddance_batch_size_sum", 0.0), values.get("rewarddance_batch_size_count", 0.0)


async def level(url: str, bodies: list[dict], want: list[list[float]], concurrency: int, seconds: float) -> dict:
    """Keep `concurrency` requests in flight until every body is sent or `seconds` have passed."""
    latencies, errors, mismatched, max_diff = [], 0, 0, 0.0
    sent = 0
    batches_before = batch_stats(url)
    start = time.perf_counter()
    stop_at = start + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal sent, errors, mismatched, max_diff
        while sent < len(bodies) and time.perf_counter() < stop_at:
            i = sent
            sent += 1
            t = time.perf_counter()
            try:
                r = await client.post(f"{url}/v1/score", json=bodies[i])
            except httpx.HTTPError:
                errors += 1
                continue
            if r.status_code != 200:  # an error is not a served request: neither its latency nor throughput
                errors += 1
                continue
            latencies.append(time.perf_counter() - t)
            got = r.json()["rewards"]
            if len(got) != len(want[i]):  # a short answer is a wrong one
                mismatched += 1
                continue
            diff = max(abs(a - b) for a, b in zip(got, want[i]))
            max_diff = max(max_diff, diff)
            mismatched += diff > TOL

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:
        await asyncio.gather(*[worker(client) for _ in range(concurrency)])
    elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1000 if latencies else np.zeros(1)
    (items0, calls0), (items1, calls1) = batches_before, batch_stats(url)
    return {"requests": len(latencies), "throughput": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "mean_batch": (items1 - items0) / max(calls1 - calls0, 1), "errors": errors,
            "mismatched": int(mismatched), "max_diff": max_diff}


def run_mode(model: str, extra: list[str], bodies: list[dict], want: list[list[float]], levels: list[int],
             max_requests: int, seconds: float) -> dict[int, dict]:
    proc, url = start_server(model, extra)
    warm = 2 * max(levels)
    try:
        asyncio.run(level(url, bodies[:warm], want[:warm], max(levels), 60))  # warm-up: first calls are slow
        results = {}
        for j, c in enumerate(levels):  # each level its own requests, none seen before
            part = slice(warm + j * max_requests, warm + (j + 1) * max_requests)
            results[c] = asyncio.run(level(url, bodies[part], want[part], c, seconds))
    finally:
        code = stop_server(proc)
    if code != 0:
        raise RuntimeError(f"server exited with {code} after SIGTERM")
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint or preset (default: qwen2_5_vl-small; --quick: tiny)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--group", type=int, default=1, help="images per request (a GRPO group: one prompt)")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--requests", type=int, default=None, help="answers per level (default 400; --quick 60)")
    ap.add_argument("--seconds", type=float, default=None, help="time cap per level (default 40; --quick 8)")
    args = ap.parse_args()
    model = args.model or ("qwen2_5_vl-tiny" if args.quick else "qwen2_5_vl-small")
    max_requests = args.requests or (60 if args.quick else 400)
    seconds = args.seconds or (8.0 if args.quick else 40.0)
    if not os.path.exists(model):
        model = str(preset_path(model))  # build the preset once here, not in each server
    rm = rd.load(model, dtype=torch.float32)
    data = pool(2 * max(args.concurrency) + len(args.concurrency) * max_requests, args.prompts, args.group)
    bodies = [{"prompts": [p], "images": enc} for p, enc, _ in data]
    want = []
    for k in range(0, len(data), 64):  # direct scoring, in batches as large as the server's
        chunk = data[k:k + 64]
        flat = rm.score([p for p, _, imgs in chunk for _ in imgs], [img for _, _, imgs in chunk for img in imgs],
                        batch_size=32)
        want += [flat[i * args.group:(i + 1) * args.group] for i in range(len(chunk))]
    del rm
    print(f"# {platform.node()} {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"model {args.model or os.path.basename(model)}, {args.group} image(s) per request, {args.prompts} prompts; "
          f"{time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    results = {mode: run_mode(model, flags, bodies, want, args.concurrency, max_requests, seconds)
               for mode, flags in MODES.items()}
    top = max(args.concurrency)
    bf16 = run_mode(model, ["--dtype", "bfloat16"], bodies, want, [top], max_requests, seconds)[top]

    print("| batching | concurrency | requests | req/s | p50 ms | p99 ms | mean batch | errors | mismatched "
          "| max abs diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = [(m, c, results[m][c]) for c in args.concurrency for m in MODES] + [("on, bf16", top, bf16)]
    for mode, c, r in rows:
        print(f"| {mode} | {c} | {r['requests']} | {r['throughput']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
              f"{r['mean_batch']:.1f} | "
              f"{r['errors']} | {r['mismatched'] if mode != 'on, bf16' else '-'} | {r['max_diff']:.1e} |")
    ratios = {c: results["on"][c]["throughput"] / results["off"][c]["throughput"] for c in args.concurrency}
    print("batching on/off throughput: " + ", ".join(f"{r:.2f}x at {c}" for c, r in ratios.items()))
    summary = {"ratio_on_off": {str(c): round(r, 2) for c, r in ratios.items()},
               "errors": sum(r["errors"] for _, _, r in rows),
               "mismatched": sum(results[m][c]["mismatched"] for m in MODES for c in args.concurrency),
               "fp32_max_diff": max(results[m][c]["max_diff"] for m in MODES for c in args.concurrency),
               "bf16_max_diff": bf16["max_diff"]}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
