"""What the RL recipes (refl, grpo) share: ranks, prompt pools, held-out evaluation, saving the result.

Data-parallel runs are plain torchrun processes (gloo on CPU): every rank draws the same plan
for a step from (seed, step), works on its equal share, and the recipes average gradients
with `all_reduce_gradients`. ShapeWorld enters here (prompt pools, held-out prompts, the
checker), never in rl/.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ConfigError
from ..generators import Generator, ShapeWorldGenerator, evaluate_generator, generator_path, load_generator
from ..rl.monitor import diversity
from ..train.engine import atomic_dir
from ..world.generation import training_prompts


def resolve_device(name: str | None) -> torch.device:
    """The device a recipe runs on: `name`, or (None / "auto") this process's GPU (LOCAL_RANK under
    torchrun) when there is one, else the CPU. Sets it as the current CUDA device."""
    if name not in (None, "auto"):
        device = torch.device(name)
    elif torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def _collective(x: torch.Tensor) -> torch.Tensor:
    """`x` where the process group's backend can reduce it (NCCL: the current GPU; gloo: as it is)."""
    import torch.distributed as dist

    return x.cuda() if dist.get_backend() == "nccl" and x.device.type != "cuda" else x


def gather(x: torch.Tensor, world: int) -> torch.Tensor:
    """Concatenate equal-shaped tensors of every rank, in rank order (on `x`'s device)."""
    if world == 1:
        return x
    import torch.distributed as dist

    y = _collective(x.contiguous())
    parts = [torch.empty_like(y) for _ in range(world)]
    dist.all_gather(parts, y)
    return torch.cat(parts).to(x.device)


def all_reduce(x: torch.Tensor, world: int, op: str = "sum") -> torch.Tensor:
    """`x` reduced over the ranks ("sum" or "max"), on `x`'s device (a new tensor)."""
    if world == 1:
        return x
    import torch.distributed as dist

    y = _collective(x.clone())
    dist.all_reduce(y, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return y.to(x.device)


def any_rank(flag: bool, world: int) -> bool:
    """True on every rank when `flag` is true on any (ranks must agree on stopping: each measures its own
    time, and a rank that stops updating while another goes on would desynchronise the collectives)."""
    return bool(all_reduce(torch.tensor([float(flag)]), world, op="max").item()) if world > 1 else flag


def gather_objects(obj: Any, world: int) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order."""
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def all_reduce_gradients(params: Sequence[torch.nn.Parameter], world: int, average: bool = True) -> None:
    """Sum (average=False) or average the parameters' gradients over the ranks. Every rank reduces every
    parameter (a rank without a gradient contributes zeros), so the collectives stay in step even when
    one rank had nothing to backpropagate."""
    if world == 1:
        return
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        if average:
            p.grad /= world


def load_prompts(source: str, categories: Sequence[str], n_prompts: int, seed: int, excluded: set[str]) -> list[str]:
    """The training prompt pool: `n_prompts` drawn from ShapeWorld's `categories` (source "shapeworld"),
    or a text file with one prompt per line."""
    if source == "shapeworld":
        return training_prompts(list(categories), n_prompts, seed, excluded)
    path = Path(source)
    if not path.exists():
        raise ConfigError(f"prompts: {path} does not exist (give 'shapeworld' or a text file, one prompt per line)")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ConfigError(f"prompts: {path} has no prompts")
    return prompts


def setup_generator(name_or_path: str, options: dict[str, Any], *, ground_truth: str, conditions: str | None,
                    device: torch.device, pixel_space_needed: bool = False) -> tuple[Generator, list[str] | None]:
    """The generator to fine-tune (a committed name, a ShapeWorld directory or a diffusers pipeline
    directory with its `options`) on `device` and, for an image-to-video pipeline, the prompts of the
    `conditions` manifest (JSONL rows {"prompt", "image"}: each prompt's first frame), already set on it."""
    gen = load_generator(generator_path(name_or_path), **options).to(device)
    if ground_truth == "shapeworld" and not isinstance(gen, ShapeWorldGenerator):
        raise ConfigError("ground_truth: the ShapeWorld checker judges ShapeWorld generators' images; "
                          "set ground_truth=none for a diffusers pipeline")
    if pixel_space_needed and not isinstance(gen, ShapeWorldGenerator):
        raise ConfigError("pretrain_weight: the regulariser trains on ShapeWorld renders in pixel space; "
                          "set pretrain_weight=0 for a diffusers pipeline")
    if not hasattr(gen, "set_condition_images"):
        if conditions:
            raise ConfigError(f"conditions: {type(gen).__name__} is not an image-to-video generator")
        return gen, None
    if not conditions:
        raise ConfigError(f"conditions: {type(gen).__name__} needs a JSONL of {{\"prompt\", \"image\"}} rows "
                          f"(each prompt's first frame)")
    from ..data.records import RecordError, read_jsonl

    path = Path(conditions)
    if not path.exists():
        raise ConfigError(f"conditions: {path} does not exist")
    rows = []
    for item in read_jsonl(path):
        if isinstance(item, RecordError):
            raise ConfigError(f"conditions: {item}")
        line, row = item
        if not isinstance(row, dict) or {"prompt", "image"} - set(row):
            raise ConfigError(f"conditions: {path}:{line}: a row needs \"prompt\" and \"image\"")
        rows.append(row)
    if not rows:
        raise ConfigError(f"conditions: {path} has no rows")
    base = path.parent
    gen.set_condition_images([r["prompt"] for r in rows], [base / r["image"] for r in rows])
    return gen, [r["prompt"] for r in rows]


def load_judge(rm: str | None, remote: str | None, *, dtype: str = "float32", timeout: float = 120.0,
               device: torch.device | str = "cpu") -> Any:
    """The judge of an RL recipe: a local `RewardModel` (checkpoint directory or preset name), frozen, or a
    `RewardClient` for a `rewarddance serve` URL (API key from $REWARDDANCE_API_KEY). Both have score,
    win_matrix, rank and layout, so Best-of-N, search and GRPO take either; ReFL needs a local one."""
    if (rm is None) == (remote is None):
        raise ConfigError("give exactly one of rm (a checkpoint directory or preset name) or remote (a server URL)")
    if remote:
        from ..serve.client import RewardClient

        return RewardClient(remote, timeout=timeout)
    import rewarddance as rd

    judge = rd.load(rm, device=str(device), dtype=getattr(torch, dtype))
    judge.judge.requires_grad_(False).eval()
    return judge


def reference_sources(judge: str, dtype: str, generator: str, generator_options: dict[str, Any]) -> dict[str, Any]:
    """The judge and the generator the references of a run come from, by their weights where they are local
    (a checkpoint retrained at the same path is another judge) and by name otherwise (a server URL)."""
    from ..models.checkpoint import weights_file_digest
    from ..models.presets import parse_preset_name, preset_path

    judge_dir = Path(judge) if Path(judge).is_dir() else preset_path(judge) if parse_preset_name(judge) else None
    config = judge_dir / "rewarddance.json" if judge_dir is not None else None  # its layout, task, normalize
    return {"judge": judge if judge_dir is None else weights_file_digest(judge_dir),
            "judge_config": config.read_text() if config is not None and config.exists() else None,
            "judge_dtype": dtype,
            "generator": weights_file_digest(generator_path(generator), recursive=True),
            "generator_options": generator_options}


def starting_references(gen: Generator, judge: Any, prompts: Sequence[str], *, n: int, seed: int, num_steps: int,
                        guidance_scale: float, task: str | None, rank: int, world: int, progress: bool,
                        cache: Path | None = None, sources: dict[str, Any] | None = None) -> torch.Tensor:
    """Each prompt's reference for a pairwise judge: the Best-of-N pick by win counts among `n` samples of
    `gen` (the STARTING generator: call before any update), prompts split over the ranks, P×C×H×W on every
    rank. With `cache`, kept in that file under everything the references depend on (`sources`, from
    `reference_sources`, and the sampling arguments; several judges share one file) and read back by a
    restarted run."""
    from ..evaluate.references import generator_references

    entry = json.dumps({"sources": sources, "prompts": list(prompts), "n": n, "seed": seed, "num_steps": num_steps,
                        "guidance_scale": guidance_scale, "task": task}, sort_keys=True, default=str)
    stored = torch.load(cache, weights_only=False) if cache is not None and cache.exists() else {}
    if entry in stored:
        return stored[entry]
    mine = generator_references(gen, judge, list(prompts), n=n, seed=seed, num_steps=num_steps,
                                guidance_scale=guidance_scale, task=task, indices=range(rank, len(prompts), world),
                                progress=progress and rank == 0)
    merged = {i: img for part in gather_objects(mine, world) for i, img in part.items()}
    references = torch.stack([merged[i] for i in range(len(prompts))])
    if cache is not None and rank == 0:
        torch.save({**stored, entry: references}, cache)
    return references


def judge_takes_video(judge: Any, task: str | None) -> bool:
    """Whether a judge (a RewardModel or a RewardClient) scores videos under `task` (default: its own)."""
    from ..context import get_task
    from ..models.reward_model import RewardModel

    if not isinstance(judge, RewardModel) and task is None:  # a server (RewardClient): its task's media
        return judge.info()["media"] == "video"
    return get_task(task or judge.task).is_video


def evaluate_heldout(gen: Generator, heldout: dict[str, list[str]], metric: Callable, *, seeds: int, num_steps: int,
                     guidance_scale: float, batch_size: int, rank: int, world: int) -> dict[str, Any]:
    """Ground truth on the held-out prompts × `seeds` (ODE sampling), split over the ranks: the pass
    rate, the diversity between a prompt's samples, and the images (every rank gets all of them)."""
    n_rows = sum(len(v) for v in heldout.values()) * seeds
    ev = evaluate_generator(gen, heldout, range(seeds), metric, num_steps=num_steps, guidance_scale=guidance_scale,
                            batch_size=batch_size, rows=list(range(rank, n_rows, world)))
    parts = gather_objects((ev.passed, ev.prompts, ev.images), world)
    passed = [v for p in parts for v in p[0]]
    images = torch.cat([p[2] for p in parts])
    groups = [q for p in parts for q in p[1]]
    return {"gt_pass_rate": float(np.mean(passed)), "eval_diversity": diversity(images, groups),
            "eval_images": images, "eval_prompts": groups}


def save_final(gen: Generator, out: Path, lora: bool) -> Path:
    """`out/final/`: the generator with any LoRA merged, and with LoRA also `final/lora/`, the adapter
    alone in the diffusers format (`unet.load_lora_adapter(dir, prefix=None)` loads it). Atomic."""
    def write(p: Path) -> None:
        gen.save_pretrained(p)
        if lora:
            gen.save_lora(p / "lora")

    return atomic_dir(out / "final", write)


def finish_run(method: str, out: Path, gen: Generator, *, lora: bool, log: Any, monitor: Any, last_eval: dict[str, Any],
               eval_seeds: int, fields: dict[str, Any], plot_keys: tuple[str, ...]) -> dict[str, Any]:
    """What a training RL run leaves (rank 0): `final/` (and `final/lora/`), report.json (the monitor's
    summary, the ground truth and held-out diversity before/after, plus `fields`), final/samples.png,
    curves.png, monitor.png, and a one-line summary on stderr. Returns the report."""
    from ..generators import save_grid
    from ..rl.monitor import plot_monitor

    final = save_final(gen, out, lora=lora)
    rows = log.rows
    gt_rows = [r for r in rows if r.get("gt_pass_rate") is not None]
    div_rows = [r for r in rows if r.get("eval_diversity") is not None]
    summary = monitor.summary()
    report = {
        "method": method, **fields,
        **summary,
        # updates made (row k follows k updates); after the monitor's summary, whose "steps" counts its rows
        "steps": max(r["step"] for r in rows if "reward_mean" in r),
        # diversity of the held-out samples (final images, `eval_seeds` per prompt); the monitor's own,
        # on each step's training samples, is kept as train_diversity_*
        "train_diversity_before": summary["diversity_before"],
        "train_diversity_after": summary["diversity_after"],
        "diversity_before": div_rows[0]["eval_diversity"] if div_rows else None,
        "diversity_after": div_rows[-1]["eval_diversity"] if div_rows else None,
        "gt_pass_rate_before": gt_rows[0]["gt_pass_rate"] if gt_rows else None,
        "gt_pass_rate_after": gt_rows[-1]["gt_pass_rate"] if gt_rows else None,
        "torch_threads": torch.get_num_threads(),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    if last_eval.get("eval_images") is not None:
        save_grid(last_eval["eval_images"][::eval_seeds], final / "samples.png")
    log.close()
    log.plot(keys=plot_keys)
    plot_monitor(rows, out / "monitor.png")
    before, after = report["gt_pass_rate_before"], report["gt_pass_rate_after"]
    if before is not None:
        print(f"{method}: {report['steps']} steps in {fields.get('train_minutes', 0):.1f} min; held-out pass rate "
              f"{before:.1%} -> {after:.1%}; hacking flagged: {report.get('hacking_flagged')} -> {final}",
              file=sys.stderr)
    return report


def restore_checkpoint(checkpointer: Any, gen: Generator, params: Sequence[torch.nn.Parameter], *, optimizer: Any,
                       scheduler: Any, monitor: Any, ema: Any = None, main: bool = True) -> tuple[int, float, float]:
    """Load the latest checkpoint of a run into its live objects; (next step, train minutes, wall minutes),
    zeros when there is none."""
    from ..train.engine import Checkpointer, set_rng_state

    latest = checkpointer.latest()
    if latest is None:
        return 0, 0.0, 0.0
    state = Checkpointer.load_state(latest)
    if set(trainable_state(gen, params)) ^ set(state["trainable"]):
        raise ConfigError(f"output_dir: {latest} was written by a run with other trainable weights "
                          f"(lora_r?); use a new output_dir")
    gen.load_state_dict(state["trainable"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    monitor.load_state_dict(state["monitor"])
    set_rng_state(state["rng"])
    if main:
        print(f"resuming from {latest} (next row: step {state['step']})", file=sys.stderr)
    return state["step"], state["elapsed"], state["wall_minutes"]


def trainable_state(gen: Generator, params: Sequence[torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """Copies of the trainable weights, by name (what a checkpoint keeps)."""
    ids = {id(p) for p in params}
    return {k: v.detach().clone() for k, v in gen.named_parameters() if id(v) in ids}
