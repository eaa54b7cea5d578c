"""The ShapeWorld generator: a small pixel-space text-to-image flow-matching model from diffusers parts.

A `UNet2DConditionModel` (pixel space, cross-attention at the lower resolutions only: self-
attention at full resolution dominates the cost on a CPU), a `CLIPTextModel` built from a
config with the project's own byte-level BPE tokenizer, and a `FlowMatchEulerDiscreteScheduler`
whose sigmas give the sampling schedule. Saved in the diffusers layout: unet/, text_encoder/,
tokenizer/, scheduler/ and generator.json.

Example:
    >>> import torch
    >>> from rewarddance.generators import ShapeWorldGenerator, ShapeWorldGeneratorConfig
    >>> gen = ShapeWorldGenerator.from_config(ShapeWorldGeneratorConfig(image_size=16, block_out_channels=[8, 16],
    ...     norm_num_groups=4, attention_heads=2, text_hidden_size=16, text_layers=1, text_heads=2))
    >>> with torch.no_grad():
    ...     out = gen.sample(["two red circles"], seeds=[0], num_steps=4)
    >>> out.images.shape
    torch.Size([1, 3, 16, 16])
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .base import Generator

if TYPE_CHECKING:  # imported where used: `import rewarddance.generators` (and the CLI) stays fast
    from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, PreTrainedTokenizerFast

CONFIG_NAME = "generator.json"
# Attention projections of diffusers' transformer blocks: the usual LoRA targets of a UNet.
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
PAD, EOS = "<|pad|>", "<|endoftext|>"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' file name for LoRA weights


@dataclass
class ShapeWorldGeneratorConfig:
    """Architecture of a ShapeWorld generator built from scratch (`ShapeWorldGenerator.from_config`)."""

    image_size: int = 32  # pixels per side
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])  # one UNet level each
    layers_per_block: int = 1
    attention_levels: list[int] = field(default_factory=lambda: [1, 2])  # levels with (self+cross) attention
    attention_heads: int = 4  # per attention block (those levels, and the middle)
    text_time_embedding: bool = True  # also add the attention-pooled prompt to the timestep embedding (every block)
    norm_num_groups: int = 8
    text_hidden_size: int = 64  # also the UNet's cross-attention width
    text_layers: int = 2
    text_heads: int = 4
    max_length: int = 16  # prompt tokens (padded or truncated); ShapeWorld prompts take at most 12
    vocab_size: int = 1024  # BPE merges budget; the synthetic corpus yields fewer tokens
    shift: float = 1.0  # the scheduler's timestep shift (>1 spends more steps at high noise)
    seed: int = 0  # initial weights


def build_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """The project's byte-level BPE (rewarddance.models.tokenizer) with a pad and an end-of-text token."""
    from ..models.tokenizer import build_tokenizer as build_bpe

    return build_bpe([PAD, EOS], vocab_size=vocab_size, named_tokens={"pad_token": PAD, "eos_token": EOS})


class ShapeWorldGenerator(Generator):
    """Text-to-image flow matching in pixel space: `unet` predicts the velocity eps - x0 from the state,
    the timestep (sigma x num_train_timesteps) and the text encoder's hidden states."""

    def __init__(self, unet: UNet2DConditionModel, text_encoder: CLIPTextModel,
                 tokenizer: PreTrainedTokenizerFast, scheduler: FlowMatchEulerDiscreteScheduler,
                 max_length: int) -> None:
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.max_length = max_length
        size = unet.config.sample_size
        self.image_shape = (unet.config.in_channels, size, size)

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.unet

    # ------------------------------------------------------------------ building, saving, loading
    @classmethod
    def from_config(cls, config: ShapeWorldGeneratorConfig | None = None) -> ShapeWorldGenerator:
        """A randomly initialised generator (weights drawn from `config.seed`; the global RNG is left alone)."""
        from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        cfg = config or ShapeWorldGeneratorConfig()
        tokenizer = build_tokenizer(cfg.vocab_size)
        levels = len(cfg.block_out_channels)
        attention = set(cfg.attention_levels)
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            unet = UNet2DConditionModel(
                sample_size=cfg.image_size, in_channels=3, out_channels=3,
                block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
                down_block_types=tuple("CrossAttnDownBlock2D" if i in attention else "DownBlock2D"
                                       for i in range(levels)),
                up_block_types=tuple("CrossAttnUpBlock2D" if i in attention else "UpBlock2D"
                                     for i in reversed(range(levels))),
                cross_attention_dim=cfg.text_hidden_size, norm_num_groups=cfg.norm_num_groups,
                attention_head_dim=cfg.attention_heads,  # diffusers' historical name: it is the number of heads
                addition_embed_type="text" if cfg.text_time_embedding else None,
                addition_embed_type_num_heads=cfg.attention_heads,
            )
            text_encoder = CLIPTextModel(CLIPTextConfig(
                vocab_size=len(tokenizer), hidden_size=cfg.text_hidden_size,
                intermediate_size=4 * cfg.text_hidden_size, num_hidden_layers=cfg.text_layers,
                num_attention_heads=cfg.text_heads, max_position_embeddings=cfg.max_length,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.eos_token_id))
        scheduler = FlowMatchEulerDiscreteScheduler(shift=cfg.shift)
        return cls(unet, text_encoder, tokenizer, scheduler, cfg.max_length)

    def save_pretrained(self, path: str | os.PathLike, *, dtype: torch.dtype | None = None) -> None:
        """unet/, text_encoder/, tokenizer/, scheduler/ and generator.json under `path`. LoRA adapters are
        merged into the saved UNet (the live model keeps them). `dtype` (e.g. torch.float16) halves the
        files; `from_pretrained` loads float32 either way.

        >>> gen.save_pretrained("runs/gen")  # doctest: +SKIP
        >>> ShapeWorldGenerator.from_pretrained("runs/gen/final")  # doctest: +SKIP
        """
        from peft.tuners.tuners_utils import BaseTunerLayer

        path = Path(path)
        unet, text_encoder = self.unet, self.text_encoder
        if any(isinstance(m, BaseTunerLayer) for m in unet.modules()):
            unet = copy.deepcopy(unet)
            unet.fuse_lora()
            unet.unload_lora()
        if dtype is not None and dtype != unet.dtype:  # copies: the live model keeps its own precision
            # nn.Module.to, not diffusers' override, which warns about float32-only modules (this UNet has none)
            unet, text_encoder = torch.nn.Module.to(copy.deepcopy(unet), dtype), copy.deepcopy(text_encoder).to(dtype)
        unet.save_pretrained(path / "unet")
        text_encoder.save_pretrained(path / "text_encoder")
        self.tokenizer.save_pretrained(path / "tokenizer")
        self.scheduler.save_pretrained(path / "scheduler")
        (path / CONFIG_NAME).write_text(json.dumps({"class": type(self).__name__, "max_length": self.max_length},
                                                   indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> ShapeWorldGenerator:
        """Load a directory written by `save_pretrained`, in float32, in eval mode."""
        from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, PreTrainedTokenizerFast

        path = Path(path)
        if not (path / CONFIG_NAME).exists():
            raise FileNotFoundError(f"{path}: no {CONFIG_NAME}; not a directory written by save_pretrained")
        meta = json.loads((path / CONFIG_NAME).read_text())
        if meta.get("class") != cls.__name__:
            raise ValueError(f"{path}: holds a {meta.get('class')!r}, not a {cls.__name__}")
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=torch.float32)
        text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", dtype=torch.float32)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path / "tokenizer")
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler")
        return cls(unet, text_encoder, tokenizer, scheduler, int(meta["max_length"])).to(device).eval()

    def add_lora(self, r: int = 8, alpha: int | None = None, targets: Sequence[str] | None = None) -> None:
        """Freeze every weight and add LoRA adapters (rank `r`, scale alpha / r; alpha defaults to r) to the
        UNet's attention projections (`targets`); `trainable_parameters()` then returns only the adapters.

        >>> gen.add_lora(r=4)  # doctest: +SKIP
        >>> optimizer = torch.optim.AdamW(gen.trainable_parameters(), lr=1e-4)  # doctest: +SKIP
        """
        from peft import LoraConfig

        self.requires_grad_(False)
        self.unet.add_adapter(LoraConfig(r=r, lora_alpha=alpha or r, target_modules=list(targets or LORA_TARGETS)))

    def save_lora(self, path: str | os.PathLike) -> None:
        """`path/pytorch_lora_weights.safetensors`: the UNet's adapters, which a fresh generator's
        `unet.load_lora_adapter(path, prefix=None)` loads."""
        self.unet.save_lora_adapter(path, weight_name=LORA_WEIGHTS)

    # ------------------------------------------------------------------ the model
    def encode_prompts(self, prompts: Sequence[str]) -> Tensor:
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.device)).last_hidden_state

    def velocity(self, x: Tensor, sigma: Tensor | float, cond: Tensor, guidance_scale: float = 1.0,
                 uncond: Tensor | None = None) -> Tensor:
        t = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        t = t * self.scheduler.config.num_train_timesteps
        if guidance_scale == 1.0:
            return self.unet(x, t, encoder_hidden_states=cond).sample
        if uncond is None:
            uncond = self.encode_prompts([""])
        uncond = uncond.expand(x.shape[0], -1, -1)
        # one UNet call on [unconditional; conditional]: half the calls of two passes
        v_uncond, v_cond = self.unet(torch.cat([x, x]), torch.cat([t, t]),
                                     encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
        return v_uncond + guidance_scale * (v_cond - v_uncond)

    def sigmas(self, num_steps: int) -> Tensor:
        self.scheduler.set_timesteps(num_steps)  # only its schedule is read; its step counter is not used
        return self.scheduler.sigmas.clone()


def parameter_count(module: torch.nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in module.parameters())

