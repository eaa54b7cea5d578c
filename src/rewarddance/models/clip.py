"""The CLIP-style dual-encoder reward (the paradigm the paper argues against), measured rather than assumed.

`ClipJudge` embeds the prompt and the candidate image with a `transformers.CLIPModel` and
scores s = logit_scale * cos(text, image). Trained with a Bradley-Terry loss (objective
`clip-bt`), its reward is sigma(s). It reads no instruction, no reference and no rationale:
only the prompt (`Context.prompt`) and the last image of each context (the candidate).
Its scores are (s, 0), so consumers read the reward logit as scores[:, 0] - scores[:, 1]
exactly as for the generative judge.

Example:
    >>> from rewarddance.models.clip import ClipJudge
    >>> judge = ClipJudge.from_config("tiny")                                    # doctest: +SKIP
    >>> judge.save_pretrained("clip-judge")                                      # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
import transformers as T
from torch import nn

from ..context import Context
from .judge import JudgeModule
from .presets import preset_table
from .tokenizer import build_tokenizer

_SPECIAL = ["<|endoftext|>", "<|startoftext|>"]


class ClipJudge(JudgeModule):
    """CLIPModel + CLIPProcessor -> (s, 0) scores with s = logit_scale * cos(prompt, candidate)."""

    normalize = "yes_no"  # sigma of the score difference, like the generative judge's default

    def __init__(self, model: T.CLIPModel, processor: T.CLIPProcessor) -> None:
        super().__init__()
        self.model, self.processor = model, processor

    @classmethod
    def from_config(cls, size: str = "tiny", *, seed: int = 0) -> "ClipJudge":
        """A randomly initialised CLIP with the project's tokenizer, sized like the VLM presets' vision towers."""
        row, px = preset_table()["sizes"][size], preset_table()["image_size"]
        tok = build_tokenizer(_SPECIAL, named_tokens={"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                                                      "pad_token": "<|endoftext|>"})
        text = dict(vocab_size=len(tok), hidden_size=row["hidden"] // 2, intermediate_size=row["hidden"] * 2,
                    num_hidden_layers=max(row["layers"] // 2, 1), num_attention_heads=row["heads"],
                    max_position_embeddings=128, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id)
        vision = dict(hidden_size=row["vision_hidden"], intermediate_size=2 * row["vision_hidden"],
                      num_hidden_layers=row["vision_layers"], num_attention_heads=row["vision_heads"],
                      image_size=px, patch_size=8)
        torch.manual_seed(seed)
        model = T.CLIPModel(T.CLIPConfig(text_config=text, vision_config=vision, projection_dim=row["vision_hidden"]))
        image = T.CLIPImageProcessor(size={"shortest_edge": px}, crop_size={"height": px, "width": px})
        return cls(model, T.CLIPProcessor(image_processor=image, tokenizer=tok))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str = "cpu",
                        dtype: torch.dtype = torch.float32) -> "ClipJudge":
        model = T.CLIPModel.from_pretrained(path, dtype=dtype)
        return cls(model, T.CLIPProcessor.from_pretrained(path)).to(device=device, dtype=dtype).eval()

    def save_pretrained(self, path: str | os.PathLike, *, merge_adapter: bool = True) -> None:
        self.model.save_pretrained(Path(path))
        self.processor.save_pretrained(Path(path))

    @property
    def backbone(self) -> nn.Module:
        return self.model

    def encode(self, contexts: Sequence[Context]) -> dict[str, torch.Tensor]:
        """Tokenised prompts (with the end token CLIP pools at) and processed candidate images."""
        for c in contexts:
            if c.images[-1].ndim != 3:
                raise ValueError("the CLIP judge scores images only (a video candidate was given)")
        tok = self.processor.tokenizer
        text = tok([c.prompt + tok.eos_token for c in contexts], padding=True, truncation=True,
                   max_length=self.model.config.text_config.max_position_embeddings, return_tensors="pt")
        pixels = self.processor.image_processor(images=[c.images[-1] for c in contexts], do_rescale=False,
                                                return_tensors="pt")["pixel_values"]
        return {"input_ids": text["input_ids"].to(self.device), "attention_mask": text["attention_mask"].to(self.device),
                "pixel_values": pixels.to(self.device, self.dtype)}

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """N×2 scores (logit_scale * cos, 0)."""
        out = self.model(**inputs)
        s = out.logits_per_image.diagonal().float()[:, None]  # each image with its own prompt
        return torch.cat([s, torch.zeros_like(s)], dim=1)

    def answer_logits(self, inputs: dict[str, Any]) -> torch.Tensor:
        return self(inputs)

    def reward_from_scores(self, lp: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(lp[:, 0] - lp[:, 1])

    def rewards(self, contexts: Sequence[Context]) -> torch.Tensor:
        """sigma(s) for each context (differentiable)."""
        return self.reward_from_scores(self(self.encode(contexts)))
