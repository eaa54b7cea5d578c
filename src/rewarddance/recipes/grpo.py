"""Recipe: fine-tune a flow-matching generator with GRPO (Flow-GRPO) against one or more judges.

    rewarddance rl grpo reward.rm=runs/judge/final max_steps=100
    rewarddance rl grpo --config src/rewarddance/recipes/configs/grpo.yaml reward.remote=http://127.0.0.1:8000
    torchrun --standalone --nproc_per_node 2 -m rewarddance.cli rl grpo reward.rm=...     # data-parallel

Setup: config, the generator (committed ShapeWorld weights by default; LoRA adapters or full
fine-tuning), the judges (`reward`, plus `extra_rewards` for a weighted mix): local checkpoints
loaded frozen, or a reward server (`reward: {remote: URL}`, `rewarddance.serve.client.
RewardClient`; GRPO needs no gradients from the judge, so it can live in another process or
machine). A pairwise judge in "score" mode rewards P(sample beats the prompt's reference): the
Best-of-N pick (win counts) among `reference_candidates` samples of the STARTING generator,
computed once and cached in `references.pt`; in "win-rate" mode it ranks each group against itself.

Step s (its prompts, seeds and trained timesteps are drawn from (seed, s) alone, so a resumed
run redraws what an uninterrupted one drew; rl/grpo.py has the algorithm):
1. rollout: `group_size` SDE samples per prompt, states and log-probabilities kept;
2. rewards, group-normalised advantages (groups with equal rewards masked);
3. `updates_per_step` optimizer steps, each on a fixed share of the samples (sample i belongs
   to update i mod updates_per_step), over `timestep_fraction` of each sample's steps, in
   micro-batches whose gradients add up to the same update whatever `micro_batch_size` is.
Row s of metrics.jsonl: the monitor's row for the rollout of step s under the generator after
s steps (row 0: before any update) with the loss statistics of the update it fed
(`reward_std_group`, `zero_std_fraction`, `kl`, `clip_fraction`; the last row runs the same
computation without updating); every `eval_steps` rows and the last carry `gt_pass_rate`
(ODE sampling on fixed held-out prompts × seeds). Saved as the ReFL recipe: checkpoints,
`final/` (+ `final/lora/`), report.json, monitor.png, curves.png, TensorBoard.
"""

from __future__ import annotations

import contextlib
import copy
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
from ..rl.frames import subsample_frames, video_reward
from ..rl.grpo import (ADVANTAGE_STD, group_advantages, group_win_rates, grpo_loss, mix_rewards, sample_with_logprob,
                       step_log_prob)
from ..rl.monitor import HackingMonitor, MonitorConfig
from ..train.engine import Checkpointer, MetricsLog, rng_state
from ..world.generation import COMPOSITIONAL, checker_metric, heldout_prompts
from .rl_common import (all_reduce, all_reduce_gradients, any_rank, evaluate_heldout, finish_run, gather,
                        judge_takes_video, load_judge, load_prompts, reference_sources, resolve_device,
                        restore_checkpoint, setup_generator, starting_references, trainable_state)

#: the keys every GRPO metrics row adds to the monitor's (the issue's contract)
GRPO_ROW_KEYS = ("reward_std_group", "zero_std_fraction", "kl", "clip_fraction")


@dataclass
class RewardSpec:
    """One judge of the reward."""

    rm: str | None = None  # a judge checkpoint directory or preset name
    remote: str | None = None  # or the URL of a `rewarddance serve` server (API key from $REWARDDANCE_API_KEY)
    # or a rule reward: "shapeworld", the checker's fraction of the prompt's constraints that hold (GenEval-like;
    # the study's oracle: what GRPO does with a correct reward)
    checker: Literal["shapeworld"] | None = None
    task: str | None = None  # the judge's task (default: the checkpoint's / the server's)
    # score: the judge's reward (pointwise), or P(sample beats the prompt's Best-of-N reference) (pairwise);
    # win-rate: each sample's mean P(beats the other members of its group)
    mode: Literal["score", "win-rate"] = "score"
    weight: float = 1.0  # in a mix: weight of this judge's group-normalised reward
    dtype: Literal["float32", "bfloat16"] = "float32"  # a local judge's
    timeout: float = 120.0  # a remote judge's, per request


@dataclass
class GRPOConfig:
    """Settings of `rewarddance rl grpo` (YAML keys; override any with key=value, `reward.rm=...`)."""

    reward: RewardSpec = field(default_factory=RewardSpec)
    extra_rewards: list[RewardSpec] = field(default_factory=list)  # more judges, mixed with `reward`
    generator: str = "shapeworld-flow"  # a generator or diffusers pipeline directory, or a committed name
    generator_options: dict[str, Any] = field(default_factory=dict)  # pipelines: height, width, num_frames, ...
    conditions: str | None = None  # image-to-video pipelines: JSONL {"prompt", "image"} (first frames)
    reward_frames: int = 4  # video generators: frames the judge sees (an image judge averages over them)
    device: str | None = None  # "cuda", "cuda:1", "cpu"; default: this process's GPU (LOCAL_RANK) if any, else CPU
    output_dir: str = "runs/grpo"
    prompts: str = "shapeworld"  # or a text file, one prompt per line
    categories: list[str] = field(default_factory=lambda: list(COMPOSITIONAL))
    n_prompts: int = 256
    prompts_per_step: int = 4
    group_size: int = 8  # G samples per prompt
    # rollout: SDE sampling (Flow-GRPO trains on 10 steps and evaluates on more)
    num_steps: int = 10
    noise_level: float = 0.7  # a in s_t = a sqrt(t / (1 - t)); 0 is the ODE (no exploration)
    guidance_scale: float = 3.0
    # the update
    timestep_fraction: float = 0.6  # share of each sample's steps trained on (a random subset per sample)
    updates_per_step: int = 2  # optimizer steps per rollout (the 2nd onwards is off-policy: the clip matters)
    micro_batch_size: int = 16  # samples per forward/backward (memory only; the update does not depend on it)
    clip_range: float = 1e-4  # PPO clip on exp(mean log-ratio per element); Flow-GRPO's value
    adv_clip: float = 5.0
    advantage_std: Literal["group", "global"] = "group"
    beta: float = 0.04  # KL to the reference policy (LoRA off, or the starting weights)
    reference_candidates: int = 4  # pairwise "score" judges: Best-of-N pool per prompt for its reference
    max_steps: int = 100
    max_minutes: float | None = None  # stop cleanly after this much training time (evaluation included)
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0  # 0: no clipping (the norm is still logged)
    lora_r: int = 8  # 0: full fine-tuning (ShapeWorld: the denoiser and text encoder; pipelines: the denoiser)
    lora_alpha: int | None = None
    # evaluation: ODE sampling on fixed held-out prompts x seeds
    ground_truth: Literal["shapeworld", "none"] = "shapeworld"
    eval_steps: int = 10
    eval_num_steps: int = 20
    eval_categories: list[str] = field(default_factory=lambda: list(COMPOSITIONAL))
    eval_prompts_per_category: int = 16
    eval_seeds: int = 4
    eval_seed: int = 1234
    eval_batch_size: int = 64
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    seed: int = 0
    save_steps: int = 10
    keep_checkpoints: int = 2
    tensorboard: bool = True
    progress: bool = True


def check_config(cfg: GRPOConfig, world: int) -> None:
    for i, spec in enumerate([cfg.reward, *cfg.extra_rewards]):
        name = "reward" if i == 0 else f"extra_rewards[{i - 1}]"
        if sum(x is not None for x in (spec.rm, spec.remote, spec.checker)) != 1:
            raise ConfigError(f"{name}: give exactly one of rm (a checkpoint), remote (a server URL) or checker")
        if spec.checker and spec.mode != "score":
            raise ConfigError(f"{name}: a checker reward has mode 'score'")
    for key in ("prompts_per_step", "group_size", "num_steps", "updates_per_step", "micro_batch_size",
                "eval_steps", "save_steps"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(cfg, key)}")
    if cfg.group_size < 2:
        raise ConfigError(f"group_size: GRPO compares the samples of a prompt, needs >= 2, got {cfg.group_size}")
    if not 0 < cfg.timestep_fraction <= 1:
        raise ConfigError(f"timestep_fraction: in (0, 1], got {cfg.timestep_fraction}")
    if cfg.noise_level <= 0:
        raise ConfigError(f"noise_level: the SDE needs > 0 (0 is the deterministic ODE), got {cfg.noise_level}")
    if cfg.advantage_std not in ADVANTAGE_STD:
        raise ConfigError(f"advantage_std: one of {ADVANTAGE_STD}, got {cfg.advantage_std!r}")
    if cfg.prompts_per_step % world:  # whole groups per rank: win rates and rewards stay local
        raise ConfigError(f"prompts_per_step ({cfg.prompts_per_step}) must be a multiple of the {world} processes")


def trained_steps(cfg: GRPOConfig) -> int:
    """How many of each sample's `num_steps` steps the update trains on."""
    return max(1, round(cfg.timestep_fraction * cfg.num_steps))


def step_plan(cfg: GRPOConfig, step: int, n_prompts: int) -> tuple[list[int], list[int], np.ndarray]:
    """(prompt index per sample, sample seeds, trained step indices per sample (N×T, sorted)) of global
    step `step`: a pure function of (seed, step)."""
    rng = np.random.default_rng([cfg.seed, step])
    chosen = rng.choice(n_prompts, size=cfg.prompts_per_step, replace=False).tolist()
    idx = [i for i in chosen for _ in range(cfg.group_size)]
    seeds = rng.integers(0, 2**31 - 1, size=len(idx)).tolist()
    t = trained_steps(cfg)
    steps = np.stack([np.sort(rng.permutation(cfg.num_steps)[:t]) for _ in idx])
    return idx, seeds, steps


def judge_rewards(judge: Any, spec: RewardSpec, images: torch.Tensor, prompts: list[str], groups: list[int],
                  references: torch.Tensor | None, *, frames: int, video_judge: bool) -> torch.Tensor:
    """One judge's reward per sample (float64). Videos: the judge sees `frames` frames (an image judge
    scores each and they are averaged)."""
    if spec.checker:
        return torch.tensor(checker_metric(images, prompts)[1], dtype=torch.float64)
    if spec.mode == "win-rate":
        if images.ndim == 5 and not video_judge:
            raise ConfigError("reward.mode: win-rate on videos needs a video judge")
        clips = subsample_frames(images, frames) if images.ndim == 5 else images
        return group_win_rates(lambda p, ims: judge.win_matrix(p, ims, task=spec.task), clips, prompts, groups)
    refs = None if references is None else [references[g] for g in groups]

    def score(x: torch.Tensor, texts: list[str], refs: Any) -> torch.Tensor:
        return torch.tensor(judge.score(texts, list(x), references=refs, task=spec.task), dtype=torch.float64)

    return video_reward(score, frames, video_judge)(images, prompts, refs)


def _judge_name(spec: RewardSpec) -> str:
    return spec.rm or spec.remote or f"checker:{spec.checker}"


def command_line(config_file: str | None, overrides: list[str]) -> str:
    parts = ["rewarddance", "rl", "grpo"] + (["--config", config_file] if config_file else []) + overrides
    return " ".join(shlex.quote(p) for p in parts)


# ------------------------------------------------------------------ the run
def grpo(cfg: GRPOConfig, command: str | None = None) -> Path:
    """Run the recipe; returns `output_dir` (its report.json holds the before/after numbers)."""
    from tqdm import tqdm
    from transformers import get_constant_schedule_with_warmup

    rank, world = shard_info()
    main = rank == 0
    check_config(cfg, world)
    wall0 = time.perf_counter()
    out = Path(cfg.output_dir)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    torch.manual_seed(cfg.seed)

    specs = [cfg.reward, *cfg.extra_rewards]
    device = resolve_device(cfg.device)
    judges = [None if s.checker else load_judge(s.rm, s.remote, dtype=s.dtype, timeout=s.timeout, device=device)
              for s in specs]
    gen, condition_prompts = setup_generator(cfg.generator, cfg.generator_options, ground_truth=cfg.ground_truth,
                                             conditions=cfg.conditions, device=device)
    heldout = heldout_prompts(cfg.eval_categories, cfg.eval_prompts_per_category, cfg.eval_seed)
    excluded = {p for ps in heldout.values() for p in ps}
    prompts = condition_prompts or load_prompts(cfg.prompts, cfg.categories, cfg.n_prompts, cfg.seed, excluded)
    takes_video = [False if s.checker else judge_takes_video(j, s.task) for j, s in zip(judges, specs)]
    if len(prompts) < cfg.prompts_per_step:
        raise ConfigError(f"prompts_per_step ({cfg.prompts_per_step}) exceeds the {len(prompts)} prompts")

    # pairwise judges in score mode: each prompt's Best-of-N reference from the STARTING generator, cached
    references: list[torch.Tensor | None] = [None] * len(specs)
    for j, (spec, judge) in enumerate(zip(specs, judges)):
        if spec.checker or spec.mode != "score" or judge.layout != "pairwise":
            continue
        sources = reference_sources(spec.rm or spec.remote, spec.dtype, str(cfg.generator), cfg.generator_options)
        references[j] = starting_references(gen, judge, prompts, n=cfg.reference_candidates, seed=cfg.seed,
                                            num_steps=cfg.eval_num_steps, guidance_scale=cfg.guidance_scale,
                                            task=spec.task, rank=rank, world=world, progress=cfg.progress,
                                            cache=out / "references.pt", sources=sources)

    reference_gen = None  # full fine-tuning with a KL term: the starting weights, frozen
    if cfg.lora_r > 0:
        gen.add_lora(r=cfg.lora_r, alpha=cfg.lora_alpha)
    elif cfg.beta > 0:
        reference_gen = copy.deepcopy(gen).requires_grad_(False).eval()
    # eval mode throughout: the rollout and the update must evaluate the same policy (no dropout)
    gen.eval()
    params = gen.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_constant_schedule_with_warmup(optimizer, cfg.warmup_steps)
    monitor = HackingMonitor(cfg.monitor)
    checkpointer = Checkpointer(out, keep=max(cfg.keep_checkpoints, 1))

    step, elapsed, wall_before = restore_checkpoint(checkpointer, gen, params, optimizer=optimizer,
                                                    scheduler=scheduler, monitor=monitor, main=main)
    log = MetricsLog(out, resume_step=step - 1, tensorboard=cfg.tensorboard) if main else None

    def wall_minutes() -> float:
        return wall_before + (time.perf_counter() - wall0) / 60

    def reference_mean(x: torch.Tensor, x_next: torch.Tensor, k: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """The reference policy's Gaussian step mean (no gradients): LoRA off, or the starting weights."""
        policy = reference_gen or gen
        with torch.no_grad(), (gen.adapters_disabled() if reference_gen is None else contextlib.nullcontext()):
            uncond = policy.encode_prompts([""]) if cfg.guidance_scale != 1.0 else None
            return step_log_prob(policy, x, x_next, k, policy.encode_prompts(texts), uncond=uncond,
                                 num_steps=cfg.num_steps, guidance_scale=cfg.guidance_scale,
                                 noise_level=cfg.noise_level).mean

    bar = tqdm(total=cfg.max_steps + 1, initial=step, desc="grpo", unit="step", file=sys.stderr,
               disable=not cfg.progress or not main)
    last_eval: dict[str, Any] = {}

    def should_stop() -> bool:
        """Out of time or stopped by the monitor: the next row is the last (no update, evaluated)."""
        return any_rank(monitor.should_stop or (cfg.max_minutes is not None and elapsed >= cfg.max_minutes), world)

    stopping = should_stop()  # a run resumed from the checkpoint it wrote when stopping stops again
    t_train = trained_steps(cfg)
    while step <= cfg.max_steps:
        t0 = time.perf_counter()
        idx, seeds, train_k = step_plan(cfg, step, len(prompts))
        n = len(idx)
        share = n // world
        lo = rank * share
        local_prompts = [prompts[i] for i in idx[lo:lo + share]]
        # 1. rollout under the current policy
        with torch.no_grad():
            traj = sample_with_logprob(gen, local_prompts, seeds[lo:lo + share], num_steps=cfg.num_steps,
                                       guidance_scale=cfg.guidance_scale, noise_level=cfg.noise_level)
        # 2. rewards (every judge, on this rank's whole groups), gathered; advantages on the full batch
        per_judge = [gather(judge_rewards(judge, spec, traj.images, local_prompts, idx[lo:lo + share], refs,
                                          frames=cfg.reward_frames, video_judge=video), world)
                     for judge, spec, refs, video in zip(judges, specs, references, takes_video)]
        raw = sum(s.weight * r for s, r in zip(specs, per_judge))  # what the monitor watches
        signal = per_judge[0] if len(specs) == 1 else mix_rewards(per_judge, [s.weight for s in specs], idx)
        advantages, mask = group_advantages(signal, idx, std=cfg.advantage_std, clip=cfg.adv_clip)
        advantages = advantages.float().to(device)
        update = step < cfg.max_steps and not stopping
        # the ground truth of the weights that made this rollout (row 0: before any update)
        evaluation = {}
        if cfg.ground_truth == "shapeworld" and (step % cfg.eval_steps == 0 or not update):
            evaluation = evaluate_heldout(gen, heldout, checker_metric, seeds=cfg.eval_seeds,
                                          num_steps=cfg.eval_num_steps, guidance_scale=cfg.guidance_scale,
                                          batch_size=cfg.eval_batch_size, rank=rank, world=world)
            last_eval = evaluation
        # 3. updates: sample i belongs to update i mod updates_per_step
        sums = torch.zeros(5, dtype=torch.float64)  # loss, kl, clipped, count, max |ratio - 1| of the 1st update
        grad_norms: list[float] = []
        first_update = min((i % cfg.updates_per_step for i in range(n) if mask[i]), default=-1)
        for u in range(cfg.updates_per_step):
            members = [i for i in range(n) if i % cfg.updates_per_step == u and mask[i]]
            if not members:
                continue
            mine = [i for i in members if lo <= i < lo + share]
            denominator = len(members) * t_train
            for start in range(0, len(mine), cfg.micro_batch_size):
                batch = mine[start:start + cfg.micro_batch_size]
                rows = torch.tensor([i - lo for i in batch])
                batch_texts = [prompts[idx[i]] for i in batch]
                for j in range(t_train):
                    k = torch.as_tensor(train_k[batch, j])
                    x, x_next = traj.states[rows, k], traj.states[rows, k + 1]
                    with torch.set_grad_enabled(update):
                        # prompts re-encoded per step: with a trained text encoder each backward frees its graph
                        cond = gen.encode_prompts(batch_texts)
                        uncond = gen.encode_prompts([""]) if cfg.guidance_scale != 1.0 else None
                        res = step_log_prob(gen, x, x_next, k, cond, num_steps=cfg.num_steps,
                                            guidance_scale=cfg.guidance_scale, noise_level=cfg.noise_level,
                                            uncond=uncond)
                        ref_mean = reference_mean(x, x_next, k, batch_texts) if cfg.beta > 0 else None
                        terms = grpo_loss(res.log_prob, traj.log_probs[rows, k], advantages[batch],
                                          clip_range=cfg.clip_range, mean=res.mean, ref_mean=ref_mean, std=res.std,
                                          beta=cfg.beta)
                        if update:
                            (terms.per_sample.sum() / denominator).backward()
                    sums[0] += float(terms.per_sample.detach().sum())
                    sums[1] += float(terms.kl.sum())
                    sums[2] += float(terms.clipped.sum())
                    sums[3] += len(batch)
                    if u == first_update:
                        sums[4] = max(float(sums[4]), float((terms.ratio - 1).abs().max()))
            if update:
                all_reduce_gradients(params, world, average=False)  # each rank's part is already / global count
                limit = cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf
                grad_norms.append(float(torch.nn.utils.clip_grad_norm_(params, limit)))
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
        sums = torch.cat([all_reduce(sums[:4], world), all_reduce(sums[4:], world, op="max")])
        count = max(float(sums[3]), 1.0)
        extra = {"zero_std_fraction": float((~mask).float().mean()), "kl": float(sums[1]) / count,
                 "clip_fraction": float(sums[2]) / count, "loss": float(sums[0]) / count,
                 "ratio_max_deviation_on_policy": float(sums[4]), "advantage_abs_mean": float(advantages.abs().mean()),
                 "lr": scheduler.get_last_lr()[0], "minutes": elapsed}
        if len(specs) > 1:
            extra.update({f"reward_{j}_mean": float(r.mean()) for j, r in enumerate(per_judge)})
        if "eval_diversity" in evaluation:
            extra["eval_diversity"] = evaluation["eval_diversity"]
        row = monitor.update(step, raw.float(), images=gather(traj.images, world), groups=idx,
                             grad_norm=float(np.mean(grad_norms)) if grad_norms else None,
                             gt_pass_rate=evaluation.get("gt_pass_rate"), extra=extra)
        if main:
            log.log(row)
            bar.update(1)
            bar.set_postfix(reward=f"{row['reward_mean']:.3f}",
                            gt="" if row.get("gt_pass_rate") is None else f"{row['gt_pass_rate']:.0%}")
        step += 1
        elapsed += (time.perf_counter() - t0) / 60
        if not update:
            break
        stopping = should_stop()
        if main and (step % cfg.save_steps == 0 or stopping):
            state = {"step": step, "elapsed": elapsed, "wall_minutes": wall_minutes(),
                     "trainable": trainable_state(gen, params), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "monitor": monitor.state_dict(), "rng": rng_state()}
            checkpointer.save(step, lambda p: None, state)
        barrier(world)
    bar.close()
    if not main:
        return out

    finish_run("grpo", out, gen, lora=cfg.lora_r > 0, log=log, monitor=monitor, last_eval=last_eval,
               eval_seeds=cfg.eval_seeds, plot_keys=("reward_mean", "reward_std_group", "gt_pass_rate", "kl",
                                                     "clip_fraction"),
               fields={"command": command or command_line(None, []), "rm": _judge_name(specs[0]),
                       "judges": [_judge_name(s) for s in specs], "generator": str(cfg.generator),
                       "train_minutes": round(elapsed, 2), "wall_minutes": round(wall_minutes(), 2),
                       "config": config_dict(cfg), "processes": world})
    return out
