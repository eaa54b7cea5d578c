"""Tiny, randomly initialised diffusers pipelines of the real architectures, built offline.

What the tests (and a user trying the RL recipes without weights) load exactly as a real
checkpoint is loaded: `build_tiny_pipeline(kind, dir)` saves a pipeline directory that
`load_generator(dir)` / `DiffusionPipeline.from_pretrained(dir)` read back. The configs follow
diffusers' own pipeline tests; the tokenizers are the project's byte-level BPE built locally
(the tests' hub tokenizers cannot be downloaded here). SD3 is built without its T5 encoder.

    >>> from rewarddance.generators.tiny_pipelines import build_tiny_pipeline
    >>> path = build_tiny_pipeline("sd3", "runs/tiny-sd3")      # doctest: +SKIP
    >>> gen = load_generator(path)                               # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .pipelines import OPTIONS_FILE
from .shapeworld import build_tokenizer

#: kind -> (pipeline options saved beside it)
TINY_KINDS: dict[str, dict[str, int]] = {
    "sd3": {"height": 32, "width": 32, "max_sequence_length": 8},
    "sd": {"height": 32, "width": 32},
    "wan": {"height": 16, "width": 16, "num_frames": 5, "max_sequence_length": 16},
    "wan-i2v": {"height": 16, "width": 16, "num_frames": 5, "max_sequence_length": 16},
}


def _tokenizer(max_length: int) -> Any:
    tok = build_tokenizer(1024)
    tok.model_max_length = max_length
    return tok


def _clip_text_config(tok: Any, **kw: Any) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_attention_heads=4,
                          num_hidden_layers=2, max_position_embeddings=tok.model_max_length,
                          pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                          bos_token_id=tok.eos_token_id, **kw)


def _vae_2d(**kw: Any) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=[4, 8], in_channels=3, out_channels=3,
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                         latent_channels=4, norm_num_groups=2, **kw)


def _wan_parts(tok: Any, in_channels: int, image_dim: int | None) -> dict[str, Any]:
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    return {
        "vae": AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                temperal_downsample=[False, True, True]),
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
        "text_encoder": UMT5EncoderModel(UMT5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                                    num_heads=4, pad_token_id=tok.pad_token_id,
                                                    eos_token_id=tok.eos_token_id, decoder_start_token_id=0)),
        "tokenizer": tok,
        "transformer": WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                             in_channels=in_channels, out_channels=16, text_dim=32, freq_dim=256,
                                             ffn_dim=32, num_layers=2, cross_attn_norm=True,
                                             qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
                                             image_dim=image_dim),
    }


def build_tiny_pipeline(kind: str, path: str | os.PathLike, seed: int = 0) -> Path:
    """Build a tiny `kind` pipeline ("sd3", "sd", "wan", "wan-i2v") with weights drawn from `seed`, save it
    to `path` (with its options in rewarddance_generator.json) and return the path."""
    import diffusers
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if kind not in TINY_KINDS:
        raise ValueError(f"kind: one of {sorted(TINY_KINDS)}, got {kind!r}")
    options = TINY_KINDS[kind]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if kind == "sd3":
            tok = _tokenizer(16)
            pipe = diffusers.StableDiffusion3Pipeline(
                transformer=diffusers.SD3Transformer2DModel(
                    sample_size=16, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8,
                    num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32,
                    pooled_projection_dim=64, out_channels=4),
                scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
                vae=_vae_2d(shift_factor=0.0609, scaling_factor=1.5035),
                text_encoder=CLIPTextModelWithProjection(_clip_text_config(tok, projection_dim=32)), tokenizer=tok,
                text_encoder_2=CLIPTextModelWithProjection(_clip_text_config(tok, projection_dim=32)),
                tokenizer_2=tok, text_encoder_3=None, tokenizer_3=None)
        elif kind == "sd":
            tok = _tokenizer(16)
            pipe = diffusers.StableDiffusionPipeline(
                unet=diffusers.UNet2DConditionModel(
                    block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, norm_num_groups=4),
                scheduler=diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                  clip_sample=False, set_alpha_to_one=True),
                vae=_vae_2d(), text_encoder=CLIPTextModel(_clip_text_config(tok)), tokenizer=tok,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        elif kind == "wan":
            pipe = diffusers.WanPipeline(**_wan_parts(_tokenizer(16), in_channels=16, image_dim=None))
        else:
            from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

            encoder = CLIPVisionModel(CLIPVisionConfig(
                hidden_size=4, projection_dim=4, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                intermediate_size=16, patch_size=1))
            pipe = diffusers.WanImageToVideoPipeline(
                **_wan_parts(_tokenizer(16), in_channels=36, image_dim=4), image_encoder=encoder,
                image_processor=CLIPImageProcessor(crop_size=32, size=32))
    path = Path(path)
    pipe.save_pretrained(path)
    (path / OPTIONS_FILE).write_text(json.dumps(options, indent=2) + "\n")
    return path
