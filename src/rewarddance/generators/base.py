"""The Generator interface every RL recipe uses: a text-conditioned flow-matching model in pixel space.

A concrete generator supplies four things: `encode_prompts`, `velocity` (classifier-free
guidance inside), the scheduler's `sigmas`, and its image shape. Everything the recipes
need is built on those here, once, for every generator:

- `sample`: Euler sampling with one seed per image (same seed, same image, whatever else
  is in the batch), from pure noise or from a given state `start=(x, k)`, optionally
  stopping at step `stop_at` (ReFL's "no gradients down to a late step") and returning
  the trajectory (Best-of-N / search over paths);
- `step`: one Euler step from state x_k WITH gradients, and the clean image it predicts;
- `predict_clean` / `renoise`: the flow-matching interpolation x_t = (1 - sigma) x0 + sigma eps,
  inverted and applied.

Conventions: images are float B×3×H×W, in [-1, 1] inside the model ("states", x) and in
[0, 1] outside (`images`, what reward functions read). Step k of an S-step schedule is at
`sigmas(S)[k]`: sigma 1 (pure noise) at k = 0, sigma 0 (clean) at k = S. The velocity
target is v = eps - x0, so an Euler step is x_{k+1} = x_k + (sigma_{k+1} - sigma_k) v, which
is what diffusers' FlowMatchEulerDiscreteScheduler.step computes.

Example (ReFL's use; `gen` is any Generator, e.g. ShapeWorldGenerator.from_pretrained(...)):
    >>> out = gen.sample(["a red circle"], seeds=[0], num_steps=20, stop_at=15)  # doctest: +SKIP
    >>> step = gen.step(out.x, 15, gen.encode_prompts(["a red circle"]), 3.0, 20)  # doctest: +SKIP
    >>> reward = reward_fn(gen.to_images(step.pred_original_sample), ["a red circle"])  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class SampleOutput:
    """What `Generator.sample` returns.

    `x` is the last state (model space, [-1, 1] when clean), at `sigmas[step_index]`;
    `images` is `x` as images in [0, 1] when sampling ran to the end (step_index ==
    num_steps), else None (the state is still noisy); `trajectory` holds the states from
    the start index to `step_index`, both included, when asked for.
    """

    x: Tensor
    step_index: int
    sigmas: Tensor
    images: Tensor | None = None
    trajectory: list[Tensor] | None = None


@dataclass
class StepOutput:
    """One Euler step (diffusers' names): the next state, the clean image predicted from the
    current one, and the (guided) velocity both were computed from."""

    prev_sample: Tensor
    pred_original_sample: Tensor
    velocity: Tensor


def seeded_noise(seeds: Sequence[int], shape: tuple[int, ...], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal noise of `shape` per seed, stacked: each sample has its own CPU torch.Generator,
    so an image depends on its seed only (not on its batch neighbours, nor on the device).

    >>> seeded_noise([3, 4], (1, 2, 2)).shape
    torch.Size([2, 1, 2, 2])
    >>> bool((seeded_noise([3, 4], (1, 2, 2))[1] == seeded_noise([4], (1, 2, 2))[0]).all())
    True
    """
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(noise).to(device=device, dtype=dtype)


def per_sample(sigma: Tensor | float, x: Tensor) -> Tensor:
    """sigma (a number, a 0-d tensor or one per sample) shaped to broadcast against B×C×H×W `x`: B×1×1×1,
    or 1×1×1×1 (always as many dimensions as `x`, so that a per-sample reduction of it stays per sample)."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return sigma.reshape(-1, *([1] * (x.ndim - 1))) if sigma.ndim else sigma.reshape(*([1] * x.ndim))


class Generator(nn.Module, ABC):
    """A text-to-image flow-matching generator (see the module docstring for the conventions)."""

    #: 3×H×W: the shape of one image (and of one state).
    image_shape: tuple[int, int, int]

    # ------------------------------------------------------------------ what a generator supplies
    @abstractmethod
    def encode_prompts(self, prompts: Sequence[str]) -> Tensor:
        """Prompt embeddings (B×L×D), with gradients when the text encoder is trained; "" is the
        unconditional prompt that classifier-free guidance uses."""

    @abstractmethod
    def velocity(self, x: Tensor, sigma: Tensor | float, cond: Tensor, guidance_scale: float = 1.0,
                 uncond: Tensor | None = None) -> Tensor:
        """The velocity v (= eps - x0) predicted at state `x` (B×3×H×W) and noise level `sigma` (a number
        or one per sample) for prompt embeddings `cond`, with classifier-free guidance:
        v_uncond + guidance_scale * (v_cond - v_uncond). `uncond` is the unconditional embedding (one row
        or B rows; computed from "" when None). guidance_scale 1 is the conditional velocity alone."""

    @abstractmethod
    def sigmas(self, num_steps: int) -> Tensor:
        """The noise levels of an `num_steps`-step schedule: num_steps + 1 values from 1 down to 0."""

    @abstractmethod
    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write the generator to a directory `from_pretrained` reads."""

    @classmethod
    @abstractmethod
    def from_pretrained(cls, path: str | os.PathLike) -> Generator:
        """Load a generator written by `save_pretrained`."""

    @abstractmethod
    def add_lora(self, r: int = 8, alpha: int | None = None, targets: Sequence[str] | None = None) -> None:
        """Freeze the weights and add trainable LoRA adapters (peft) to the denoiser."""

    @abstractmethod
    def save_lora(self, path: str | os.PathLike) -> None:
        """Write the LoRA adapters alone, in the diffusers format, to directory `path`."""

    #: the network LoRA adapters go on (a diffusers model: a UNet or a transformer)
    denoiser: nn.Module

    # ------------------------------------------------------------------ built on those
    @contextlib.contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        """A context in which the denoiser runs without its LoRA adapters: the reference policy
        (the weights before fine-tuning) that GRPO's KL term compares with."""
        self.denoiser.disable_adapters()
        try:
            yield
        finally:
            self.denoiser.enable_adapters()

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters an optimizer should update: all of them, or only the LoRA adapters after `add_lora`."""
        return [p for p in self.parameters() if p.requires_grad]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def to_images(self, x: Tensor) -> Tensor:
        """Clean states -> images B×3×H×W (videos B×F×3×H×W) in [0, 1], differentiably. Pixel space:
        [-1, 1] -> [0, 1] (clamped); latent adapters decode with their VAE."""
        return ((x + 1) / 2).clamp(0, 1)

    @staticmethod
    def predict_clean(x: Tensor, sigma: Tensor | float, v: Tensor) -> Tensor:
        """The clean image x0 = x_t - sigma * v that state `x` at `sigma` and velocity `v` point to."""
        return x - per_sample(sigma, x) * v

    def renoise(self, x0: Tensor, sigma: Tensor | float, seeds: Sequence[int]) -> Tensor:
        """x0 moved back to noise level `sigma`: (1 - sigma) x0 + sigma eps, eps drawn from each sample's seed."""
        eps = seeded_noise(seeds, tuple(x0.shape[1:]), x0.device, x0.dtype)
        s = per_sample(sigma, x0)
        return (1 - s) * x0 + s * eps

    def flow_matching_loss(self, prompts: Sequence[str], x0: Tensor, generator: torch.Generator,
                           sigma_sampling: str = "logit-normal", rows: slice | None = None) -> Tensor:
        """The pretraining loss on clean states `x0` (B×3×H×W in [-1, 1]): mean squared error of the
        velocity against eps - x0 at a random sigma per sample, logit-normal(0, 1) (SD3's choice: most
        samples at mid noise, where the content is decided) or uniform. Noise comes from `generator`,
        drawn for the whole batch; `rows` computes the loss on those samples only (a data-parallel
        rank's share of a global batch, with the noise the whole batch would give them).
        ReFL adds it on the generator's own data as a regulariser."""
        b = x0.shape[0]
        if sigma_sampling == "logit-normal":
            sigma = torch.sigmoid(torch.randn(b, generator=generator))
        elif sigma_sampling == "uniform":
            sigma = torch.rand(b, generator=generator)
        else:
            raise ValueError(f"sigma_sampling: 'logit-normal' or 'uniform', got {sigma_sampling!r}")
        eps = torch.randn(x0.shape, generator=generator)
        rows = rows or slice(None)
        x0, prompts = x0[rows], list(prompts)[rows]
        sigma, eps = sigma[rows].to(x0.device, x0.dtype), eps[rows].to(x0.device, x0.dtype)
        x_t = (1 - per_sample(sigma, x0)) * x0 + per_sample(sigma, x0) * eps
        v = self.velocity(x_t, sigma, self.encode_prompts(prompts))
        return torch.nn.functional.mse_loss(v, eps - x0)

    def initial_noise(self, seeds: Sequence[int], num_steps: int | None = None) -> Tensor:
        """The state at step 0 of a `num_steps` schedule for each seed: standard normal noise (sigma 1).
        Adapters whose schedule starts below sigma 1 (StableDiffusionGenerator) rescale it."""
        return seeded_noise(seeds, self.image_shape, self.device)

    def step(self, x: Tensor, step_index: int, cond: Tensor, guidance_scale: float, num_steps: int,
             uncond: Tensor | None = None) -> StepOutput:
        """One Euler step from state `x` at step `step_index` of a `num_steps` schedule. Gradients flow
        (unless the caller disables them) into the trainable parameters and into `x`."""
        sig = self.sigmas(num_steps).to(x.device)
        if not 0 <= step_index < num_steps:
            raise ValueError(f"step_index must be in [0, {num_steps}), got {step_index}")
        v = self.velocity(x, sig[step_index], cond, guidance_scale, uncond)
        return StepOutput(x + (sig[step_index + 1] - sig[step_index]) * v,
                          self.predict_clean(x, sig[step_index], v), v)

    def sample(self, prompts: Sequence[str], *, seeds: Sequence[int] | None = None, num_steps: int = 20,
               guidance_scale: float = 3.0, start: tuple[Tensor, int] | None = None, stop_at: int | None = None,
               return_trajectory: bool = False) -> SampleOutput:
        """Sample images for `prompts`.

        From pure noise drawn from `seeds` (one per prompt), or from `start=(x, k)`: state x at step k
        (seeds unused). Runs to step `stop_at` (default num_steps, the clean image). Gradients are
        whatever the caller's grad mode says: wrap in torch.no_grad() for plain sampling.
        """
        if start is None:
            if seeds is None or len(seeds) != len(prompts):
                raise ValueError(f"sample: give one seed per prompt ({len(prompts)} prompts, "
                                 f"{None if seeds is None else len(seeds)} seeds), or start=(x, step_index)")
            x, k0 = self.initial_noise(seeds, num_steps), 0
        else:
            x, k0 = start
            if x.shape[0] != len(prompts):
                raise ValueError(f"sample: start state has {x.shape[0]} samples for {len(prompts)} prompts")
        stop = num_steps if stop_at is None else stop_at
        if not 0 <= k0 <= stop <= num_steps:
            raise ValueError(f"sample: need 0 <= start index ({k0}) <= stop_at ({stop}) <= num_steps ({num_steps})")
        cond = self.encode_prompts(prompts)
        uncond = self.encode_prompts([""]) if guidance_scale != 1.0 else None
        trajectory = [x] if return_trajectory else None
        for k in range(k0, stop):
            x = self.step(x, k, cond, guidance_scale, num_steps, uncond).prev_sample
            if trajectory is not None:
                trajectory.append(x)
        return SampleOutput(x, stop, self.sigmas(num_steps), self.to_images(x) if stop == num_steps else None,
                            trajectory)
