"""GRPO for flow-matching generators (Flow-GRPO / DanceGRPO) as small functions.

Policy-gradient RL needs a stochastic policy with a density, and an Euler ODE sampler has
neither. Flow-GRPO replaces each Euler step by the step of a reverse-time SDE with the same
marginals. For the interpolation x_t = (1 - t) x0 + t eps with velocity v = eps - x0, the
model's clean and noise estimates at x_t are x̂0 = x - t v and ε̂ = x + (1 - t) v, so the
score is ∇log p_t(x) = -ε̂ / t. The reverse SDE with diffusion coefficient s_t,

    dx = [v + s_t² / (2t) · (x + (1 - t) v)] dt + s_t dw,      dt < 0 (t runs from 1 to 0),

discretised from t = sigma_k to sigma_{k+1} (dt = sigma_{k+1} - sigma_k), is a Gaussian step

    x_{k+1} ~ N(mean, std²),   mean = x + [v + s²/(2t)(x + (1-t)v)] dt,   std = s · sqrt(-dt),

with s = a · sqrt(t / (1 - t)) (a = `noise_level`; a = 0 is the Euler ODE step). At t = 1 the
ratio is infinite; there t / (1 - t) uses the schedule's second sigma in the denominator
(`sigma_cap`), as Flow-GRPO does. `sde_step` draws the step and returns its log-density;
the log-density is averaged over pixels (Flow-GRPO's convention: a per-dimension density keeps
importance ratios near 1, which is why its `clip_range` is 1e-4).

One GRPO step (the recipe, recipes/grpo.py, wires these):
1. `sample_with_logprob`: G samples per prompt with the SDE sampler (seeded per sample and
   step), keeping every state and each step's log-probability under the sampling policy;
2. rewards of the final images, `group_advantages`: each prompt's rewards normalised by its
   group's mean and std (or the whole batch's std), clipped; groups whose rewards are all
   equal carry no signal and are masked;
3. for a random subset of the steps of each sample (`timestep_fraction`), `step_log_prob`
   recomputes the log-probability of the stored next state under the current policy;
   `grpo_loss` is PPO's clipped objective on the ratio exp(log p - log p_old), plus beta
   times the KL to the reference policy (the Gaussian steps' means compared; for LoRA, the
   reference is the adapter switched off).

Rewards: any `rewards(images, prompts, references) -> B` (no gradients needed); several judges
combine with `mix_rewards` (each normalised within its group, then weighted); a pairwise judge
can also rank a group against itself: `group_win_rates`, each sample's mean P(beats the other
members).

Example (one SDE step equals the ODE step at noise level 0):
    >>> import torch
    >>> x, v = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    >>> out = sde_step(x, v, torch.tensor(0.5), torch.tensor(0.4), noise_level=0.0, sigma_cap=0.9)
    >>> torch.allclose(out.prev_sample, x - 0.1 * v)
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..generators import Generator, seeded_noise
from ..generators.base import per_sample

ADVANTAGE_STD = ("group", "global")


@dataclass
class SDEStep:
    prev_sample: Tensor  # the next state x_{k+1}
    mean: Tensor         # the Gaussian step's mean
    std: Tensor          # its standard deviation, per sample (B×1×...×1)
    log_prob: Tensor     # B: log-density of prev_sample, averaged over its elements


def sde_step(x: Tensor, v: Tensor, sigma: Tensor | float, sigma_next: Tensor | float, *, noise_level: float,
             sigma_cap: float, noise: Tensor | None = None, prev_sample: Tensor | None = None) -> SDEStep:
    """One reverse-SDE step from state `x` at `sigma` to `sigma_next` (numbers or one per sample) given the
    velocity `v` (see the module docstring). The next state is `prev_sample` when given (its log-density
    is then what a policy-gradient update needs), else mean + std · `noise` (standard normal, drawn by the
    caller so that it follows the sample's seed; zeros when None)."""
    s, s_next = per_sample(sigma, x), per_sample(sigma_next, x)
    dt = s_next - s
    ratio = s / (1 - torch.where(s >= 1, torch.as_tensor(sigma_cap, dtype=x.dtype, device=x.device), s))
    diffusion = noise_level * ratio.sqrt()
    mean = x + (v + diffusion**2 / (2 * s) * (x + (1 - s) * v)) * dt
    std = diffusion * (-dt).sqrt()
    if prev_sample is None:
        prev_sample = mean if noise is None else mean + std * noise
    if noise_level > 0:
        z = (prev_sample.detach() - mean) / std
        log_prob = -0.5 * z**2 - torch.log(std) - 0.5 * math.log(2 * math.pi)
        log_prob = log_prob.mean(dim=tuple(range(1, x.ndim)))
    else:  # the deterministic step has no density; 0 keeps ratios at 1
        log_prob = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    return SDEStep(prev_sample, mean, std.expand(x.shape[0], *std.shape[1:]), log_prob)


def step_noise(seeds: Sequence[int], step_index: int, shape: tuple[int, ...], device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> Tensor:
    """The SDE noise of step `step_index` for each sample: a pure function of (seed, step), so a sample
    redrawn after a restart follows the same path."""
    keys = [int(np.random.SeedSequence([int(s), step_index]).generate_state(1)[0]) for s in seeds]
    return seeded_noise(keys, shape, device, dtype)


@dataclass
class Trajectory:
    states: Tensor      # B×(S+1)×C×H×W: x_0 (noise) .. x_S (clean), model space
    log_probs: Tensor   # B×S: log-density of each step under the sampling policy
    images: Tensor      # B×C×H×W in [0, 1]: the final states as images
    sigmas: Tensor      # S+1 noise levels


def sample_with_logprob(gen: Generator, prompts: Sequence[str], seeds: Sequence[int], *, num_steps: int = 10,
                        guidance_scale: float = 3.0, noise_level: float = 0.7) -> Trajectory:
    """SDE sampling (`sde_step` at every step), keeping every state and step log-probability. Call under
    torch.no_grad(): this is the rollout, its log-probabilities are the "old" policy's."""
    sig = gen.sigmas(num_steps).to(gen.device)
    cond = gen.encode_prompts(list(prompts))
    uncond = gen.encode_prompts([""]) if guidance_scale != 1.0 else None
    x = gen.initial_noise(list(seeds), num_steps)
    states, log_probs = [x], []
    for k in range(num_steps):
        v = gen.velocity(x, sig[k], cond, guidance_scale, uncond)
        noise = step_noise(seeds, k, tuple(x.shape[1:]), x.device, x.dtype)
        out = sde_step(x, v, sig[k], sig[k + 1], noise_level=noise_level, sigma_cap=float(sig[1]), noise=noise)
        x = out.prev_sample
        states.append(x)
        log_probs.append(out.log_prob)
    return Trajectory(torch.stack(states, 1), torch.stack(log_probs, 1), gen.to_images(x), sig)


def step_log_prob(gen: Generator, x: Tensor, x_next: Tensor, step_index: Tensor, cond: Tensor, *,
                  num_steps: int, guidance_scale: float, noise_level: float,
                  uncond: Tensor | None = None) -> SDEStep:
    """The SDE step from `x` (B states) at step indices `step_index` (B, one per sample) to the stored
    `x_next`, under the generator's CURRENT weights (with gradients unless disabled)."""
    sig = gen.sigmas(num_steps).to(x.device)
    k = step_index.to(x.device)
    v = gen.velocity(x, sig[k], cond, guidance_scale, uncond)
    return sde_step(x, v, sig[k], sig[k + 1], noise_level=noise_level, sigma_cap=float(sig[1]), prev_sample=x_next)


def group_advantages(rewards: Tensor, groups: Sequence[Hashable], *, std: str = "group", clip: float = 5.0,
                     eps: float = 1e-4) -> tuple[Tensor, Tensor]:
    """(advantages, mask): each reward minus its group's mean, divided by the group's std (`std="group"`)
    or the whole batch's (`"global"`), clipped to ±`clip`. mask is False for the samples of groups whose
    rewards are all equal (no signal: they are left out of the loss).

    >>> adv, mask = group_advantages(torch.tensor([1., 3., 2., 2.]), ["a", "a", "b", "b"])
    >>> [round(a, 3) for a in adv.tolist()], mask.tolist()
    ([-0.707, 0.707, 0.0, 0.0], [True, True, False, False])
    """
    if std not in ADVANTAGE_STD:
        raise ValueError(f"std: one of {ADVANTAGE_STD}, got {std!r}")
    r = rewards.double()
    adv, mask = torch.zeros_like(r), torch.ones(len(r), dtype=torch.bool)
    global_std = r.std() if len(r) > 1 else r.new_tensor(0.0)
    for key in dict.fromkeys(groups):
        idx = torch.tensor([i for i, g in enumerate(groups) if g == key])
        g = r[idx]
        spread = g.std() if len(g) > 1 else g.new_tensor(0.0)
        if float(g.max() - g.min()) <= 1e-12:
            mask[idx] = False
            continue
        adv[idx] = (g - g.mean()) / ((spread if std == "group" else global_std) + eps)
    return adv.clamp(-clip, clip).to(rewards.dtype), mask


def normalize_in_groups(rewards: Tensor, groups: Sequence[Hashable], eps: float = 1e-4) -> Tensor:
    """Each reward as a z-score within its group (mean 0, std 1; 0 for a constant group)."""
    adv, _ = group_advantages(rewards, groups, std="group", clip=math.inf, eps=eps)
    return adv


def mix_rewards(rewards: Sequence[Tensor], weights: Sequence[float], groups: Sequence[Hashable]) -> Tensor:
    """A weighted mix of several judges' rewards, each normalised within its group first (so judges on
    different scales weigh what their weights say)."""
    if len(rewards) != len(weights) or not rewards:
        raise ValueError(f"mix_rewards: {len(rewards)} reward vectors for {len(weights)} weights")
    return sum(w * normalize_in_groups(r, groups) for r, w in zip(rewards, weights))


def group_win_rates(win_matrix: Callable[[str, list[Tensor]], Tensor], images: Tensor, prompts: Sequence[str],
                    groups: Sequence[Hashable]) -> Tensor:
    """Each sample's mean probability of beating the other members of its group, from
    `win_matrix(prompt, images) -> n×n P(i beats j)` (e.g. `RewardModel.win_matrix`)."""
    out = torch.full((len(images),), 0.5, dtype=torch.float64)
    for key in dict.fromkeys(groups):
        idx = [i for i, g in enumerate(groups) if g == key]
        if len(idx) < 2:
            continue
        win = torch.as_tensor(win_matrix(prompts[idx[0]], [images[i] for i in idx]), dtype=torch.float64)
        out[idx] = (win.sum(dim=1) - win.diagonal()) / (len(idx) - 1)
    return out


@dataclass
class GRPOLoss:
    per_sample: Tensor   # B: the clipped policy loss (+ beta · KL) of each sample, with its graph
    ratio: Tensor        # B: exp(log p - log p_old), detached
    clipped: Tensor      # B bool: the ratio lies outside 1 ± clip_range (Flow-GRPO's clip fraction)
    kl: Tensor           # B: KL to the reference policy per element, detached (0 without a reference)


def grpo_loss(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, *, clip_range: float = 1e-4,
              mean: Tensor | None = None, ref_mean: Tensor | None = None, std: Tensor | None = None,
              beta: float = 0.0) -> GRPOLoss:
    """PPO's clipped surrogate per sample, max(-A·r, -A·clip(r, 1 ± clip_range)), plus `beta` times the
    KL between the current step's Gaussian (`mean`, `std`) and the reference policy's (`ref_mean`, same
    std): |mean - ref_mean|² / (2 std²), averaged over elements like the log-probability."""
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    loss = torch.maximum(unclipped, clipped)
    kl = torch.zeros_like(loss)
    if beta > 0:
        if mean is None or ref_mean is None or std is None:
            raise ValueError("grpo_loss: beta > 0 needs mean, ref_mean and std")
        kl = ((mean - ref_mean) ** 2 / (2 * std**2)).mean(dim=tuple(range(1, mean.ndim)))
        loss = loss + beta * kl
    return GRPOLoss(loss, ratio.detach(), ((ratio - 1).abs() > clip_range).detach(), kl.detach())
