"""Recipe: fine-tune a generator against a frozen judge with ReFL, the hacking monitor on.

    rewarddance rl refl rm=runs/judge/final max_steps=300 max_minutes=30
    rewarddance rl refl --config src/rewarddance/recipes/configs/refl.yaml rm=... loss=hinge margin=0.9
    torchrun --standalone --nproc_per_node 2 -m rewarddance.cli rl refl rm=...      # data-parallel

Setup: config, the generator (committed ShapeWorld weights by default; LoRA adapters or full
fine-tuning), the frozen judge (`requires_grad=False`, eval mode), the prompt pool and, for a
pairwise judge, each prompt's reference: the Best-of-N pick (win counts under the judge,
`evaluate.references.select`) among `reference_candidates` samples of the STARTING generator,
computed once and cached in `references.pt`. The loop (`rl.refl.refl_forward`): step s draws its
prompts, seeds and gradient step from (seed, s) alone, so a resumed run redraws what an
uninterrupted one drew. Row s of metrics.jsonl is the monitor's row for batch s under the
generator after s updates (row 0: before any update); every `eval_steps` rows (and the last)
carry `gt_pass_rate`, the ground truth on FIXED held-out prompts x seeds. Saved: atomic
`checkpoints/step-N` (trainable weights, optimizer, EMA, RNG, monitor; the references file
beside them), `final/` (the generator, LoRA merged; `final/lora/` the adapter alone in the
diffusers format), `report.json`, `monitor.png`, `curves.png`, TensorBoard.

ShapeWorld is wired here, not in rl/: the prompt pool, the held-out prompts, the regularisation
renders (`pretrain_weight`) and the checker (`ground_truth`) come from rewarddance.world.
"""

from __future__ import annotations

import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..config import ConfigError, config_dict, save_config
from ..evaluate.scoring import barrier, shard_info
from ..rl.frames import video_reward
from ..rl.monitor import HackingMonitor, MonitorConfig
from ..rl.refl import REWARD_LOSSES, refl_forward
from ..train.engine import Checkpointer, MetricsLog, rng_state
from ..world.generation import COMPOSITIONAL, checker_metric, heldout_prompts, render_batch
from .rl_common import (all_reduce_gradients, any_rank, evaluate_heldout, finish_run, gather,
                        judge_takes_video, load_judge, load_prompts, reference_sources, resolve_device,
                        restore_checkpoint, setup_generator, starting_references, trainable_state)


@dataclass
class ReFLConfig:
    """Settings of `rewarddance rl refl` (YAML keys; override any with key=value, `monitor.x=...`)."""

    rm: str | None = None  # the judge: a checkpoint directory or preset name; required
    generator: str = "shapeworld-flow"  # a generator or diffusers pipeline directory, or a committed name
    generator_options: dict[str, Any] = field(default_factory=dict)  # pipelines: height, width, num_frames, ...
    conditions: str | None = None  # image-to-video pipelines: JSONL {"prompt", "image"} (first frames)
    reward_frames: int = 4  # video generators: frames the judge sees (an image judge averages over them)
    device: str | None = None  # "cuda", "cuda:1", "cpu"; default: this process's GPU (LOCAL_RANK) if any, else CPU
    task: str | None = None  # the judge's task (default: its checkpoint's)
    rm_dtype: Literal["float32", "bfloat16"] = "float32"
    output_dir: str = "runs/refl"
    # prompts: a pool drawn once from ShapeWorld's categories, or a text file with one prompt per line
    prompts: str = "shapeworld"
    categories: list[str] = field(default_factory=lambda: list(COMPOSITIONAL))
    n_prompts: int = 256
    prompts_per_step: int = 4
    samples_per_prompt: int = 2  # diversity is measured between the samples of one prompt
    # sampling
    num_steps: int = 20
    grad_steps: list[int] = field(default_factory=lambda: [14, 19])  # k uniform in [lo, hi] (ImageReward: 30-39 of 40)
    guidance_scale: float = 3.0
    reference_candidates: int = 4  # pairwise judges: Best-of-N pool per prompt for its reference
    # optimisation
    max_steps: int = 200  # generator updates
    max_minutes: float | None = None  # stop cleanly after this much training time (evaluation included)
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10
    max_grad_norm: float = 1.0  # 0: no clipping (the norm is still logged)
    lora_r: int = 8  # 0: full fine-tuning (ShapeWorld: the denoiser and text encoder; pipelines: the denoiser)
    lora_alpha: int | None = None  # default: lora_r (scale 1)
    loss: Literal["neg-reward", "hinge", "neg-log"] = "neg-reward"
    margin: float = 1.0  # hinge: ReLU(margin - r)
    reward_scale: float = 1.0  # multiplies the reward loss (ImageReward's grad_scale)
    pretrain_weight: float = 0.0  # weight of the flow-matching loss on the generator's own data (renders)
    pretrain_batch_size: int = 16
    ema_decay: float = 0.0  # > 0: an EMA of the trainable weights evaluates and is saved as final/
    gradient_checkpointing: bool = False  # recompute the denoiser's activations in the backward pass
    # recompute the judge's layer activations in the backward pass too; the reward then runs the plain
    # differentiable path (checkpointed layers cannot extend the shared prefix's KV cache)
    rm_gradient_checkpointing: bool = False
    # evaluation on fixed held-out prompts x seeds
    ground_truth: Literal["shapeworld", "none"] = "shapeworld"
    eval_steps: int = 25  # rows with gt_pass_rate: 0, eval_steps, 2 eval_steps, ..., and the last
    eval_categories: list[str] = field(default_factory=lambda: list(COMPOSITIONAL))
    eval_prompts_per_category: int = 16
    eval_seeds: int = 4
    eval_seed: int = 1234
    eval_batch_size: int = 64
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    seed: int = 0
    save_steps: int = 25
    keep_checkpoints: int = 2
    tensorboard: bool = True
    progress: bool = True


# ------------------------------------------------------------------ setup helpers
def check_config(cfg: ReFLConfig) -> None:
    if not cfg.rm:
        raise ConfigError("rm: the judge to fine-tune against is required (a checkpoint directory or preset name)")
    lo, hi = (cfg.grad_steps + [None, None])[:2]
    if len(cfg.grad_steps) != 2 or not 0 <= lo <= hi < cfg.num_steps:
        raise ConfigError(f"grad_steps: [lo, hi] with 0 <= lo <= hi < num_steps ({cfg.num_steps}), "
                          f"got {cfg.grad_steps}")
    if cfg.loss not in REWARD_LOSSES:
        raise ConfigError(f"loss: one of {REWARD_LOSSES}, got {cfg.loss!r}")
    for key in ("prompts_per_step", "samples_per_prompt", "n_prompts", "eval_steps", "save_steps"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(cfg, key)}")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise ConfigError(f"ema_decay: in [0, 1), got {cfg.ema_decay}")


def step_plan(cfg: ReFLConfig, step: int, n_prompts: int) -> tuple[list[int], list[int], int]:
    """(prompt indices repeated per sample, sample seeds, gradient step) of global step `step`: a pure
    function of (seed, step)."""
    rng = np.random.default_rng([cfg.seed, step])
    chosen = rng.choice(n_prompts, size=min(cfg.prompts_per_step, n_prompts), replace=False).tolist()
    idx = [i for i in chosen for _ in range(cfg.samples_per_prompt)]
    seeds = rng.integers(0, 2**31 - 1, size=len(idx)).tolist()
    k = int(rng.integers(cfg.grad_steps[0], cfg.grad_steps[1] + 1))
    return idx, seeds, k


def command_line(config_file: str | None, overrides: list[str]) -> str:
    parts = ["rewarddance", "rl", "refl"] + (["--config", config_file] if config_file else []) + overrides
    return " ".join(shlex.quote(p) for p in parts)


# ------------------------------------------------------------------ the run
def refl(cfg: ReFLConfig, command: str | None = None) -> Path:
    """Run the recipe; returns `output_dir` (its report.json holds the before/after numbers)."""
    from diffusers.training_utils import EMAModel
    from tqdm import tqdm
    from transformers import get_constant_schedule_with_warmup

    check_config(cfg)
    rank, world = shard_info()
    main = rank == 0
    for key in ("prompts_per_step", "pretrain_batch_size"):
        if getattr(cfg, key) % world:
            raise ConfigError(f"{key} ({getattr(cfg, key)}) must be a multiple of the {world} processes")
    wall0 = time.perf_counter()
    out = Path(cfg.output_dir)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    torch.manual_seed(cfg.seed)

    # the judge: frozen, eval mode; gradients reach the pixels only
    device = resolve_device(cfg.device)
    rm = load_judge(cfg.rm, None, dtype=cfg.rm_dtype, device=device)  # frozen: gradients reach the pixels only
    pairwise = rm.layout == "pairwise"
    reward_fn = video_reward(rm.reward_fn(cfg.task, checkpointing=cfg.rm_gradient_checkpointing), cfg.reward_frames,
                             judge_takes_video(rm, cfg.task))

    gen, condition_prompts = setup_generator(cfg.generator, cfg.generator_options, ground_truth=cfg.ground_truth,
                                             conditions=cfg.conditions, device=device,
                                             pixel_space_needed=cfg.pretrain_weight > 0)
    heldout = heldout_prompts(cfg.eval_categories, cfg.eval_prompts_per_category, cfg.eval_seed)
    excluded = {p for ps in heldout.values() for p in ps}
    prompts = condition_prompts or load_prompts(cfg.prompts, cfg.categories, cfg.n_prompts, cfg.seed, excluded)
    references = None
    if pairwise:  # from the STARTING generator: computed before any update, cached across restarts
        references = starting_references(gen, rm, prompts, n=cfg.reference_candidates, seed=cfg.seed,
                                         num_steps=cfg.num_steps, guidance_scale=cfg.guidance_scale, task=cfg.task,
                                         rank=rank, world=world, progress=cfg.progress, cache=out / "references.pt",
                                         sources=reference_sources(str(cfg.rm), cfg.rm_dtype, str(cfg.generator),
                                                                   cfg.generator_options))

    # items this process's training rewards scored on the shared-prefix path (report.json: a user can see that
    # the fast path ran; the references' Best-of-N is not counted)
    def prefix_scored() -> int:
        return rm.prefix_scorer.scored if rm.prefix_scorer is not None else 0
    prefix_scored_before = prefix_scored()
    if cfg.lora_r > 0:
        gen.add_lora(r=cfg.lora_r, alpha=cfg.lora_alpha)
    if cfg.gradient_checkpointing:
        gen.unet.enable_gradient_checkpointing()
    gen.train()
    params = gen.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_constant_schedule_with_warmup(optimizer, cfg.warmup_steps)
    ema = EMAModel(params, decay=cfg.ema_decay) if cfg.ema_decay > 0 else None
    monitor = HackingMonitor(cfg.monitor)
    checkpointer = Checkpointer(out, keep=max(cfg.keep_checkpoints, 1))

    step, elapsed, wall_before = restore_checkpoint(checkpointer, gen, params, optimizer=optimizer,
                                                    scheduler=scheduler, monitor=monitor, ema=ema, main=main)
    log = MetricsLog(out, resume_step=step - 1, tensorboard=cfg.tensorboard) if main else None

    def evaluate() -> dict[str, Any]:
        """Ground truth on the held-out prompts x seeds (EMA weights when on), split over the ranks."""
        if cfg.ground_truth == "none":
            return {}
        if ema is not None:
            ema.store(params)
            ema.copy_to(params)
        result = evaluate_heldout(gen, heldout, checker_metric, seeds=cfg.eval_seeds, num_steps=cfg.num_steps,
                                  guidance_scale=cfg.guidance_scale, batch_size=cfg.eval_batch_size, rank=rank,
                                  world=world)
        if ema is not None:
            ema.restore(params)
        return result

    def save_checkpoint() -> None:
        state = {"step": step, "elapsed": elapsed, "wall_minutes": wall_minutes(),
                 "trainable": trainable_state(gen, params), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(),
                 "ema": None if ema is None else ema.state_dict(), "monitor": monitor.state_dict(),
                 "rng": rng_state()}
        checkpointer.save(step, lambda p: None, state)

    def wall_minutes() -> float:
        return wall_before + (time.perf_counter() - wall0) / 60

    bar = tqdm(total=cfg.max_steps + 1, initial=step, desc="refl", unit="step", file=sys.stderr,
               disable=not cfg.progress or not main)
    last_eval: dict[str, Any] = {}

    def should_stop() -> bool:
        """Out of time or stopped by the monitor: the next row is the last (no update, evaluated)."""
        return any_rank(monitor.should_stop or (cfg.max_minutes is not None and elapsed >= cfg.max_minutes), world)

    stopping = should_stop()  # a run resumed from the checkpoint it wrote when stopping stops again
    while step <= cfg.max_steps:
        t0 = time.perf_counter()
        idx, seeds, k = step_plan(cfg, step, len(prompts))
        per_rank = len(idx) // world
        mine = slice(rank * per_rank, (rank + 1) * per_rank)
        batch_prompts = [prompts[i] for i in idx[mine]]
        refs = None if references is None else [references[i] for i in idx[mine]]
        update = step < cfg.max_steps and not stopping
        with torch.set_grad_enabled(update):
            res = refl_forward(gen, reward_fn, batch_prompts, seeds[mine], step_index=k, num_steps=cfg.num_steps,
                               guidance_scale=cfg.guidance_scale, references=refs, loss=cfg.loss,
                               margin=cfg.margin, reward_scale=cfg.reward_scale)
            loss, reg = res.loss, None
            if cfg.pretrain_weight > 0:  # the generator's own data keeps it close to what it was
                reg_prompts, x0 = render_batch(cfg.seed + 7919, step, cfg.pretrain_batch_size, gen.image_shape[-1],
                                               categories=cfg.categories, excluded=excluded, caption_dropout=0.1)
                noise = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
                share = cfg.pretrain_batch_size // world
                reg = gen.flow_matching_loss(reg_prompts, x0.to(gen.device), noise,
                                             rows=slice(rank * share, (rank + 1) * share))
                loss = loss + cfg.pretrain_weight * reg
        grad_norm = None
        if update:
            loss.backward()
            all_reduce_gradients(params, world)  # each rank holds an equal share of the batch
            limit = cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, limit))
        evaluation = evaluate() if step % cfg.eval_steps == 0 or not update else {}
        extra = {"loss": float(gather(loss.detach().reshape(1), world).mean()), "step_index": k,
                 "lr": scheduler.get_last_lr()[0], "minutes": elapsed}
        if reg is not None:
            extra["pretrain_loss"] = float(gather(reg.detach().reshape(1), world).mean())
        if "eval_diversity" in evaluation:
            extra["eval_diversity"] = evaluation["eval_diversity"]
        row = monitor.update(step, gather(res.rewards.float(), world), images=gather(res.images, world), groups=idx,
                             grad_norm=grad_norm, gt_pass_rate=evaluation.get("gt_pass_rate"), extra=extra)
        if evaluation:
            last_eval = evaluation
        if main:
            log.log(row)
            bar.update(1)
            bar.set_postfix(reward=f"{row['reward_mean']:.3f}",
                            gt="" if row.get("gt_pass_rate") is None else f"{row['gt_pass_rate']:.0%}")
        if update:
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step(params)
        step += 1
        elapsed += (time.perf_counter() - t0) / 60
        if not update:
            break
        stopping = should_stop()
        if main and (step % cfg.save_steps == 0 or stopping):
            save_checkpoint()
        barrier(world)
    bar.close()
    if not main:
        return out

    if ema is not None:
        ema.copy_to(params)

    finish_run("refl", out, gen, lora=cfg.lora_r > 0, log=log, monitor=monitor, last_eval=last_eval,
               eval_seeds=cfg.eval_seeds, plot_keys=("reward_mean", "reward_std_window", "gt_pass_rate",
                                                     "eval_diversity", "loss"),
               fields={"command": command or command_line(None, []), "rm": str(cfg.rm), "layout": rm.layout,
                       "generator": str(cfg.generator), "train_minutes": round(elapsed, 2),
                       "wall_minutes": round(wall_minutes(), 2), "config": config_dict(cfg), "processes": world,
                       "rewards_on_prefix_path": prefix_scored() - prefix_scored_before})
    return out
