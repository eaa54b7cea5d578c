"""ReFL (reward feedback learning, ImageReward; the RL RewardDance itself uses) as small functions.

One ReFL update for a batch of prompts (method.md §5): sample WITHOUT gradients from noise down
to a random late step k, take ONE denoising step from x_k WITH gradients, predict the clean
image it points to (flow matching: x̂0 = x_k − σ_k·v), score x̂0 with a differentiable reward
and descend a loss that falls as the reward rises. The judge is frozen: gradients flow through
it into the pixels and on into the generator's trainable parameters only.

The reward is any callable `reward(images, prompts, references) -> B` differentiable in
`images` (B×3×H×W in [0, 1]): `RewardModel.reward_fn()` (pointwise: references None; pairwise:
each prompt's reference image, so r = P(sample beats the reference)), a weighted mix, or a
user's own function. Nothing here knows ShapeWorld: the recipe (recipes/refl.py) wires prompts,
references, regularisation data and the ground-truth metric.

Reward-to-loss mappings (`REWARD_LOSSES`; r is the reward per sample, the batch loss is the mean):
- "neg-reward": −r, the plain ascent (ImageReward's ReFL code scales it by its `grad_scale`);
- "hinge": ReLU(margin − r), ImageReward's paper: samples already past `margin` stop pulling,
  a guard against over-optimising the easy prompts;
- "neg-log": −log r, steeper where r is small (for a probability reward: the pairwise judge's
  log-likelihood that the sample beats its reference).

Example:
    >>> import torch
    >>> reward_to_loss(torch.tensor([0.2, 0.9]), "hinge", margin=0.8)
    tensor([0.6000, 0.0000])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..generators import Generator

REWARD_LOSSES = ("neg-reward", "hinge", "neg-log")

#: reward(images B×3×H×W in [0, 1], prompts, references or None) -> B rewards, differentiable in the images
RewardFn = Callable[[Tensor, Sequence[str], Any], Tensor]


def reward_to_loss(rewards: Tensor, mapping: str = "neg-reward", margin: float = 1.0) -> Tensor:
    """Per-sample loss from per-sample rewards (see the module docstring for the mappings)."""
    if mapping == "neg-reward":
        return -rewards
    if mapping == "hinge":
        return torch.relu(margin - rewards)
    if mapping == "neg-log":
        return -torch.log(rewards.clamp_min(1e-6))
    raise ValueError(f"reward-to-loss mapping must be one of {REWARD_LOSSES}, got {mapping!r}")


@dataclass
class ReFLOutput:
    loss: Tensor        # scalar with its graph: backpropagate it
    rewards: Tensor     # B, detached
    images: Tensor      # B×3×H×W predicted clean images in [0, 1], detached (for the monitor)
    step_index: int     # k, the step taken with gradients


def refl_forward(gen: Generator, reward: RewardFn, prompts: Sequence[str], seeds: Sequence[int], *, step_index: int,
                 num_steps: int = 20, guidance_scale: float = 3.0, references: Sequence[Any] | None = None,
                 loss: str = "neg-reward", margin: float = 1.0, reward_scale: float = 1.0) -> ReFLOutput:
    """The ReFL loss of one batch: no-grad sampling to `step_index`, one step with gradients, the
    reward of the predicted clean image, mapped by `loss` and multiplied by `reward_scale`.

    `seeds` fix each sample's starting noise (so a resumed run redraws the same samples);
    `references` go to the reward unchanged (one per prompt for a pairwise judge)."""
    if not 0 <= step_index < num_steps:
        raise ValueError(f"step_index must be in [0, {num_steps}), got {step_index}")
    with torch.no_grad():
        x_k = gen.sample(list(prompts), seeds=list(seeds), num_steps=num_steps, guidance_scale=guidance_scale,
                         stop_at=step_index).x
    cond = gen.encode_prompts(list(prompts))
    uncond = gen.encode_prompts([""]) if guidance_scale != 1.0 else None
    out = gen.step(x_k, step_index, cond, guidance_scale, num_steps, uncond)
    images = gen.to_images(out.pred_original_sample)
    r = reward(images, list(prompts), references)
    value = reward_scale * reward_to_loss(r, loss, margin).mean()
    return ReFLOutput(value, r.detach(), images.detach(), step_index)
