"""Unmodified diffusers pipelines as Generators: what ReFL and GRPO run on for real models.

Each adapter wraps a pipeline loaded with `from_pretrained(local_dir)` (or any pipeline object)
and supplies the Generator interface (generators/base.py) from the pipeline's own parts: its
text encoders (`pipe.encode_prompt`), its denoiser, its VAE, its scheduler's sigmas. Sampling,
one step with gradients, SDE steps with log-probabilities (rl/grpo.py) are plain functions over
those, so the pipeline is never forked. States are the pipeline's latents; `to_images` decodes
them with the VAE (differentiably: ReFL backpropagates through it).

- `SD3Generator`: `StableDiffusion3Pipeline` (an `SD3Transformer2DModel`, flow matching,
  `FlowMatchEulerDiscreteScheduler`); loaded without its T5 encoder unless `use_t5=True`.
- `StableDiffusionGenerator`: the `StableDiffusionPipeline` family (epsilon- or v-prediction
  UNet, DDPM noise schedule) seen as flow matching: with alpha_t, sigma_t of the schedule,
  s = sigma_t / (alpha_t + sigma_t) and state x/(alpha_t + sigma_t) follow exactly the flow
  interpolation (1 - s) x0 + s eps, and an Euler step in s is a DDIM step. The last step lands
  on the predicted clean latent (DDIM with `set_alpha_to_one=True`).
- `WanGenerator`: `WanPipeline`, text-to-video (a `WanTransformer3DModel`, flow matching; Euler steps
  over the flow sigmas of the shipped scheduler's shift); states are B×C×F×H×W latents, `to_images`
  gives B×F×3×H×W videos in [0, 1]. Wan 2.1-style (one transformer); Wan 2.2's two experts are refused.
- `WanImageToVideoGenerator`: `WanImageToVideoPipeline`; each prompt comes with its first
  frame (`set_condition_images`), encoded once by the pipeline's own `prepare_latents` and
  image encoder and concatenated to the state at every step, as the pipeline does.

Loading: `load_generator(dir)` picks the adapter from `model_index.json` (a ShapeWorld
generator's `generator.json` gives `ShapeWorldGenerator`); options (`height`, `width`,
`num_frames`, `max_sequence_length`) come as keyword arguments or from the directory's
`rewarddance_generator.json`, which `save_pretrained` writes beside the pipeline.

LoRA: `add_lora` puts peft adapters on the denoiser's attention projections; `save_lora(dir)`
writes them with the pipeline class's own `save_lora_weights`, so a fresh pipeline loads them
with `pipe.load_lora_weights(dir)`; `save_pretrained(dir)` writes a full pipeline directory
with the adapters merged.

Example (any SD3 directory on disk; `rewarddance.generators.tiny_pipelines` builds tiny ones):
    >>> gen = load_generator("path/to/sd3", height=512, width=512)  # doctest: +SKIP
    >>> gen.add_lora(r=16)                                           # doctest: +SKIP
    >>> out = gen.sample(["a red circle"], seeds=[0], num_steps=20)   # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .base import Generator, per_sample, seeded_noise
from .shapeworld import LORA_TARGETS, LORA_WEIGHTS

OPTIONS_FILE = "rewarddance_generator.json"
Cond = tuple[Tensor, ...]


def _load_pipeline(path: Path, class_name: str, **components: Any) -> Any:
    """`class_name.from_pretrained(path)` in float32, components the index leaves empty passed as None."""
    import diffusers

    index = json.loads((path / "model_index.json").read_text())
    empty = {k: None for k, v in index.items() if isinstance(v, list) and v[0] is None}
    return getattr(diffusers, class_name).from_pretrained(path, torch_dtype=torch.float32, **{**empty, **components})


def _saved_options(path: Path) -> dict[str, Any]:
    """The options `save_pretrained` wrote beside a pipeline (none for a pipeline from elsewhere)."""
    return json.loads((path / OPTIONS_FILE).read_text()) if (path / OPTIONS_FILE).exists() else {}


def _expand(cond: Cond, n: int) -> Cond:
    return tuple(c.expand(n, *c.shape[1:]) if c.shape[0] == 1 else c for c in cond)


def _cat(a: Cond, b: Cond) -> Cond:
    return tuple(torch.cat([x, y]) for x, y in zip(a, b))


class DiffusersGenerator(Generator):
    """What every pipeline adapter shares: the pipeline's modules, options, LoRA and saving."""

    pipeline_class: ClassVar[str]
    denoiser_name: ClassVar[str] = "transformer"

    def __init__(self, pipe: Any, *, height: int | None = None, width: int | None = None,
                 num_frames: int | None = None, max_sequence_length: int | None = None) -> None:
        super().__init__()
        self.pipe = pipe
        # registered, so that .parameters(), .to() and state_dict() see the pipeline's weights
        self.parts = nn.ModuleDict({k: v for k, v in pipe.components.items() if isinstance(v, nn.Module)})
        for name, module in self.parts.items():
            module.requires_grad_(name == self.denoiser_name)  # full fine-tuning trains the denoiser
        self.options = {"height": height, "width": width, "num_frames": num_frames,
                        "max_sequence_length": max_sequence_length}
        if getattr(pipe, "text_encoder_3", None) is not None:  # SD3 with T5: saved so that a reload matches
            self.options["use_t5"] = True
        self.options = {k: v for k, v in self.options.items() if v is not None}

    @property
    def denoiser(self) -> nn.Module:
        return self.parts[self.denoiser_name]

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: torch.device | str = "cpu",
                        **options: Any) -> DiffusersGenerator:
        """Load a pipeline directory (`options` override those saved beside it)."""
        saved = _saved_options(Path(path))
        saved.pop("use_t5", None)
        pipe = _load_pipeline(Path(path), cls.pipeline_class)
        return cls(pipe, **{**saved, **options}).to(device).eval()

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """The whole pipeline under `path` (LoRA merged into a copy of the denoiser) and its options."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        path = Path(path)
        denoiser = self.denoiser
        if any(isinstance(m, BaseTunerLayer) for m in denoiser.modules()):
            denoiser = copy.deepcopy(denoiser)
            denoiser.fuse_lora()
            denoiser.unload_lora()
        components = {**self.pipe.components, self.denoiser_name: denoiser}
        type(self.pipe)(**components).save_pretrained(path)
        (path / OPTIONS_FILE).write_text(json.dumps(self.options, indent=2) + "\n")

    def add_lora(self, r: int = 8, alpha: int | None = None, targets: Sequence[str] | None = None) -> None:
        from peft import LoraConfig

        self.requires_grad_(False)
        self.denoiser.add_adapter(LoraConfig(r=r, lora_alpha=alpha or r,
                                             target_modules=list(targets or LORA_TARGETS)))

    def save_lora(self, path: str | os.PathLike) -> None:
        """The denoiser's adapters in the pipeline's LoRA format: `pipe.load_lora_weights(path)` loads them."""
        from peft.utils import get_peft_model_state_dict

        layers = get_peft_model_state_dict(self.denoiser)
        type(self.pipe).save_lora_weights(path, weight_name=LORA_WEIGHTS,
                                          **{f"{self.denoiser_name}_lora_layers": layers})

    def sigmas(self, num_steps: int) -> Tensor:
        self.pipe.scheduler.set_timesteps(num_steps)
        return self.pipe.scheduler.sigmas.clone().float()


# ------------------------------------------------------------------ SD3 (flow-matching transformer)
class SD3Generator(DiffusersGenerator):
    """`StableDiffusion3Pipeline` as a Generator (see the module docstring). Loaded without its T5 encoder
    unless `use_t5=True` (T5-XXL is ~19 GB in float32; diffusers supports SD3 without it): a LoRA trained
    either way should be used with the pipeline loaded the same way."""

    pipeline_class = "StableDiffusion3Pipeline"

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: torch.device | str = "cpu", use_t5: bool | None = None,
                        **options: Any) -> SD3Generator:
        """Load an SD3 pipeline directory; `use_t5` defaults to what the directory's options say (False)."""
        saved = _saved_options(Path(path))
        use_t5 = saved.pop("use_t5", False) if use_t5 is None else use_t5
        components = {} if use_t5 else {"text_encoder_3": None, "tokenizer_3": None}
        pipe = _load_pipeline(Path(path), cls.pipeline_class, **components)
        return cls(pipe, **{**saved, **options}).to(device).eval()

    def __init__(self, pipe: Any, **options: Any) -> None:
        super().__init__(pipe, **options)
        if self.pipe.scheduler.config.get("use_dynamic_shifting"):
            raise ValueError("SD3Generator: a scheduler with use_dynamic_shifting needs a resolution-dependent "
                             "shift; set use_dynamic_shifting=false and a fixed shift in scheduler_config.json")
        factor = pipe.vae_scale_factor
        h = self.options.setdefault("height", pipe.default_sample_size * factor)
        w = self.options.setdefault("width", pipe.default_sample_size * factor)
        self.image_shape = (pipe.transformer.config.in_channels, h // factor, w // factor)

    def encode_prompts(self, prompts: Sequence[str]) -> Cond:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            list(prompts), None, None, device=self.device, do_classifier_free_guidance=False,
            max_sequence_length=self.options.get("max_sequence_length", 256))
        return embeds, pooled

    def velocity(self, x: Tensor, sigma: Tensor | float, cond: Cond, guidance_scale: float = 1.0,
                 uncond: Cond | None = None) -> Tensor:
        t = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        t = t * self.pipe.scheduler.config.num_train_timesteps
        cond = _expand(cond, x.shape[0])
        if guidance_scale != 1.0:
            uncond = _expand(uncond if uncond is not None else self.encode_prompts([""]), x.shape[0])
            x, t, cond = torch.cat([x, x]), torch.cat([t, t]), _cat(uncond, cond)
        v = self.denoiser(hidden_states=x, timestep=t, encoder_hidden_states=cond[0], pooled_projections=cond[1],
                          return_dict=False)[0]
        if guidance_scale == 1.0:
            return v
        v_uncond, v_cond = v.chunk(2)
        return v_uncond + guidance_scale * (v_cond - v_uncond)

    def to_images(self, x: Tensor) -> Tensor:
        vae = self.pipe.vae
        decoded = vae.decode(x / vae.config.scaling_factor + vae.config.shift_factor, return_dict=False)[0]
        return ((decoded + 1) / 2).clamp(0, 1)


# ------------------------------------------------------------------ Stable Diffusion (epsilon / v UNet)
class StableDiffusionGenerator(DiffusersGenerator):
    """`StableDiffusionPipeline` (epsilon or v-prediction) as a flow-matching Generator (module docstring)."""

    pipeline_class = "StableDiffusionPipeline"
    denoiser_name = "unet"

    def __init__(self, pipe: Any, **options: Any) -> None:
        from diffusers import DDIMScheduler

        super().__init__(pipe, **options)
        factor = pipe.vae_scale_factor
        size = pipe.unet.config.sample_size * factor
        h, w = self.options.setdefault("height", size), self.options.setdefault("width", size)
        self.image_shape = (pipe.unet.config.in_channels, h // factor, w // factor)
        self.prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
        if self.prediction not in ("epsilon", "v_prediction"):
            raise ValueError(f"StableDiffusionGenerator: prediction_type {self.prediction!r} is not supported")
        # DDIM's timesteps over the pipeline's own noise schedule
        self.ddim = DDIMScheduler.from_config(pipe.scheduler.config)
        alphas = self.ddim.alphas_cumprod.double()
        self.register_buffer("alphas_cumprod", alphas, persistent=False)
        self.register_buffer("s_table", self._s(alphas), persistent=False)

    @staticmethod
    def _s(alpha_cumprod: Tensor) -> Tensor:
        a, s = alpha_cumprod.sqrt(), (1 - alpha_cumprod).sqrt()
        return s / (a + s)

    def _schedule_at(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(timestep, alpha, sigma_vp) of flow noise level `sigma` (per sample): the timestep is found in
        the schedule's table (fractional between entries, alpha_cumprod interpolated linearly)."""
        table = self.s_table
        sigma = sigma.to(table.device, torch.float64).clamp(float(table[0]), float(table[-1]))
        hi = torch.searchsorted(table, sigma).clamp(1, len(table) - 1)
        lo = hi - 1
        frac = (sigma - table[lo]) / (table[hi] - table[lo])
        t = lo.double() + frac
        abar = self.alphas_cumprod[lo] + frac * (self.alphas_cumprod[hi] - self.alphas_cumprod[lo])
        return t, abar.sqrt(), (1 - abar).sqrt()

    def sigmas(self, num_steps: int) -> Tensor:
        """DDIM's timesteps for `num_steps` as flow noise levels, ending at 0 (the predicted clean latent)."""
        self.ddim.set_timesteps(num_steps)
        levels = self._s(self.alphas_cumprod[self.ddim.timesteps.long().to(self.alphas_cumprod.device)])
        return torch.cat([levels.cpu(), torch.zeros(1, dtype=levels.dtype)]).float()

    def initial_noise(self, seeds: Sequence[int], num_steps: int | None = None) -> Tensor:
        """The pipeline's starting latent (standard normal noise at the first timestep) in flow coordinates:
        divided by alpha + sigma of that timestep."""
        noise = seeded_noise(seeds, self.image_shape, self.device)
        t0 = self.sigmas(num_steps or 50)[0]
        _, a, s = self._schedule_at(t0.reshape(1))
        return noise / float(a + s)

    def encode_prompts(self, prompts: Sequence[str]) -> Cond:
        embeds, _ = self.pipe.encode_prompt(list(prompts), self.device, 1, False)
        return (embeds,)

    def velocity(self, x: Tensor, sigma: Tensor | float, cond: Cond, guidance_scale: float = 1.0,
                 uncond: Cond | None = None) -> Tensor:
        sig = torch.as_tensor(sigma, device=x.device).reshape(-1).expand(x.shape[0])
        t, a, s = (per_sample(v.to(x.dtype), x) for v in self._schedule_at(sig))
        x_t = x * (a + s)  # the UNet's own (variance-preserving) latent
        timestep = t.flatten()
        cond = _expand(cond, x.shape[0])
        if guidance_scale != 1.0:
            uncond = _expand(uncond if uncond is not None else self.encode_prompts([""]), x.shape[0])
            out = self.denoiser(torch.cat([x_t, x_t]), torch.cat([timestep, timestep]),
                                encoder_hidden_states=torch.cat([uncond[0], cond[0]]), return_dict=False)[0]
            out_uncond, out_cond = out.chunk(2)
            out = out_uncond + guidance_scale * (out_cond - out_uncond)  # CFG on the UNet output, as the pipeline
        else:
            out = self.denoiser(x_t, timestep, encoder_hidden_states=cond[0], return_dict=False)[0]
        if self.prediction == "epsilon":
            eps = out
            x0 = (x_t - s * eps) / a
        else:  # v-prediction: x0 = a x_t - s v, eps = s x_t + a v
            x0, eps = a * x_t - s * out, s * x_t + a * out
        return eps - x0

    def to_images(self, x: Tensor) -> Tensor:
        vae = self.pipe.vae
        decoded = vae.decode(x / vae.config.scaling_factor, return_dict=False)[0]
        return ((decoded + 1) / 2).clamp(0, 1)


# ------------------------------------------------------------------ Wan (text-to-video, image-to-video)
class WanGenerator(DiffusersGenerator):
    """`WanPipeline` (text-to-video) as a Generator: B×C×F×H×W latents, B×F×3×H×W videos."""

    pipeline_class = "WanPipeline"

    def __init__(self, pipe: Any, **options: Any) -> None:
        super().__init__(pipe, **options)
        from diffusers import FlowMatchEulerDiscreteScheduler

        if getattr(pipe, "transformer_2", None) is not None or pipe.config.get("boundary_ratio") is not None:
            raise ValueError("WanGenerator: two-expert Wan 2.2 pipelines (transformer_2, boundary_ratio) are not "
                             "supported: the adapter runs one transformer at every step")
        if pipe.config.get("expand_timesteps"):
            raise ValueError("WanGenerator: expand_timesteps pipelines (Wan 2.2 TI2V) are not supported")
        # Euler steps over the flow sigmas; Wan ships UniPC with a flow shift, which stays the pipeline's own
        # scheduler (and is what save_pretrained writes)
        self.flow_scheduler = (pipe.scheduler if isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler) else
                               FlowMatchEulerDiscreteScheduler(shift=pipe.scheduler.config.get("flow_shift", 1.0)
                                                               or 1.0))
        h = self.options.setdefault("height", 480)
        w = self.options.setdefault("width", 832)
        f = self.options.setdefault("num_frames", 81)
        spatial, temporal = pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal
        if (f - 1) % temporal:
            raise ValueError(f"num_frames: must be 1 + a multiple of {temporal} for this VAE, got {f}")
        self.image_shape = (pipe.vae.config.z_dim, (f - 1) // temporal + 1, h // spatial, w // spatial)

    def sigmas(self, num_steps: int) -> Tensor:
        self.flow_scheduler.set_timesteps(num_steps)
        return self.flow_scheduler.sigmas.clone().float()

    def encode_prompts(self, prompts: Sequence[str]) -> Cond:
        embeds, _ = self.pipe.encode_prompt(list(prompts), do_classifier_free_guidance=False, device=self.device,
                                            max_sequence_length=self.options.get("max_sequence_length", 226))
        return (embeds,)

    def _denoise(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        return self.denoiser(hidden_states=x, timestep=t, encoder_hidden_states=cond[0], return_dict=False)[0]

    def velocity(self, x: Tensor, sigma: Tensor | float, cond: Cond, guidance_scale: float = 1.0,
                 uncond: Cond | None = None) -> Tensor:
        t = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        t = t * self.flow_scheduler.config.num_train_timesteps
        cond = _expand(cond, x.shape[0])
        v = self._denoise(x, t, cond)
        if guidance_scale == 1.0:
            return v
        # the pipeline's two calls (conditional, unconditional), combined as it does
        uncond = _expand(uncond if uncond is not None else self.encode_prompts([""]), x.shape[0])
        v_uncond = self._denoise(x, t, uncond)
        return v_uncond + guidance_scale * (v - v_uncond)

    def to_images(self, x: Tensor) -> Tensor:
        vae = self.pipe.vae
        mean = torch.tensor(vae.config.latents_mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1, 1)
        video = vae.decode(x * std + mean, return_dict=False)[0]  # B×3×F×H×W in [-1, 1]
        return ((video.transpose(1, 2) + 1) / 2).clamp(0, 1)


class WanImageToVideoGenerator(WanGenerator):
    """`WanImageToVideoPipeline` as a Generator. The first frame of each sample is a condition image
    given with `set_condition_images(prompts, images)` before sampling: the pipeline's own
    `prepare_latents` encodes it into the channels concatenated to the state, and its image encoder
    into the transformer's image tokens."""

    pipeline_class = "WanImageToVideoPipeline"

    def __init__(self, pipe: Any, **options: Any) -> None:
        super().__init__(pipe, **options)
        self._conditions: dict[str, tuple[Tensor, Tensor | None]] = {}
        self._batch_prompts: list[str] | None = None

    def set_condition_images(self, prompts: Sequence[str], images: Sequence[Any]) -> None:
        """Condition image of each prompt (a path, PIL image, or 3×H×W tensor in [0, 1]), used whenever that
        prompt is sampled. Prepared as the pipeline prepares its `image` argument."""
        from ..media import load_image, to_pil

        h, w, f = self.options["height"], self.options["width"], self.options["num_frames"]
        for prompt, image in zip(prompts, images):
            pil = to_pil(load_image(image))
            pixels = self.pipe.video_processor.preprocess(pil, height=h, width=w).to(self.device, torch.float32)
            with torch.no_grad():
                embeds = None if self.pipe.image_encoder is None else self.pipe.encode_image(pil, self.device)
                _, condition = self.pipe.prepare_latents(pixels, 1, self.pipe.vae.config.z_dim, h, w, f, torch.float32,
                                                         self.device, None, torch.zeros(1, *self.image_shape))
            self._conditions[prompt] = (condition[0], None if embeds is None else embeds[0])

    def encode_prompts(self, prompts: Sequence[str]) -> Cond:
        embeds = super().encode_prompts(prompts)[0]
        if list(prompts) == [""]:
            return (embeds,)
        missing = [p for p in prompts if p not in self._conditions]
        if missing:
            raise KeyError(f"no condition image for prompt {missing[0]!r}: call set_condition_images first")
        conds = [self._conditions[p] for p in prompts]
        images = None if conds[0][1] is None else torch.stack([c[1] for c in conds])
        return (embeds, torch.stack([c[0] for c in conds])) + (() if images is None else (images,))

    def velocity(self, x: Tensor, sigma: Tensor | float, cond: Cond, guidance_scale: float = 1.0,
                 uncond: Cond | None = None) -> Tensor:
        if uncond is not None or guidance_scale != 1.0:  # the negative prompt shares the samples' conditions
            base = uncond if uncond is not None else self.encode_prompts([""])
            uncond = (_expand(base, x.shape[0])[0],) + _expand(cond[1:], x.shape[0])
        return super().velocity(x, sigma, cond, guidance_scale, uncond)

    def _denoise(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        latent_condition = cond[1].expand(x.shape[0], *cond[1].shape[1:])
        image_embeds = cond[2] if len(cond) > 2 else None
        return self.denoiser(hidden_states=torch.cat([x, latent_condition], dim=1), timestep=t,
                             encoder_hidden_states=cond[0], encoder_hidden_states_image=image_embeds,
                             return_dict=False)[0]


ADAPTERS: dict[str, type[DiffusersGenerator]] = {
    cls.pipeline_class: cls
    for cls in (SD3Generator, StableDiffusionGenerator, WanGenerator, WanImageToVideoGenerator)
}
