"""Fast scoring: a shared-prefix KV cache and reuse of vision-encoder outputs.

Everything before the candidate (system prompt, instruction, prompt, the reference image
in the pairwise layout) is the same for every candidate compared under one prompt and
reference. We run that prefix once, keep its keys/values, and run only each candidate's
suffix (its image tokens and the closing question) against it. Candidate images seen
before (the same candidate against K references, or across calls) reuse their vision-
encoder output from a bounded cache keyed by content hash.

Supported where positions can be continued exactly: Qwen2-VL and Qwen2.5-VL (3-D M-RoPE
positions are computed on the full sequence and sliced). Other families use the plain
path; `RewardModel.score` picks automatically. Results equal the plain path (tests check
1e-4 in float32).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import TYPE_CHECKING, Sequence

import torch
from transformers import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..context import build_context

if TYPE_CHECKING:
    from .reward_model import RewardModel

SUPPORTED = ("qwen2_vl", "qwen2_5_vl")


def content_key(x: torch.Tensor) -> bytes:
    """A hash of a tensor's shape, dtype and bytes."""
    data = x.detach().to("cpu").contiguous()
    h = hashlib.blake2b(str((tuple(data.shape), data.dtype)).encode(), digest_size=16)
    h.update(data.numpy().tobytes() if data.dtype != torch.bfloat16 else data.view(torch.int16).numpy().tobytes())
    return h.digest()


class FeatureCache:
    """Bounded LRU: content hash -> vision-encoder output of one image."""

    def __init__(self, max_items: int = 4096) -> None:
        self.max_items = max_items
        self._items: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: bytes) -> torch.Tensor | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
            self.hits += 1
        else:
            self.misses += 1
        return value

    def put(self, key: bytes, value: torch.Tensor) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()


class PrefixScorer:
    """Scores many candidates that share a prompt (and reference) with one prefix forward."""

    def __init__(self, rm: "RewardModel", *, cache_items: int = 4096) -> None:
        self.rm = rm
        self.features = FeatureCache(cache_items)

    @staticmethod
    def supports(model: torch.nn.Module) -> bool:
        return getattr(model.config, "model_type", None) in SUPPORTED

    def _vision_features(self, images: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-image vision-encoder outputs (cached) and their grids."""
        rm = self.rm
        keys = [content_key(x) for x in images]
        processed = rm.processor.image_processor(images=list(images), do_rescale=False, return_tensors="pt")
        grids = processed["image_grid_thw"].to(rm.device)
        feats: list[torch.Tensor | None] = [self.features.get(k) for k in keys]
        missing = [i for i, f in enumerate(feats) if f is None]
        if missing:
            sizes = processed["image_grid_thw"].prod(-1).tolist()
            starts = [sum(sizes[:i]) for i in range(len(sizes))]
            pv = torch.cat([processed["pixel_values"][starts[i]:starts[i] + sizes[i]] for i in missing])
            out = rm.model.model.get_image_features(pv.to(rm.device, rm.dtype), grids[missing]).pooler_output
            for i, f in zip(missing, out):
                feats[i] = f
                self.features.put(keys[i], f)
        return feats, grids  # type: ignore[return-value]

    def _extend(self, layers: list | None, ids: torch.Tensor, mm: torch.Tensor, pos: torch.Tensor, start: int,
                end: int, **vision) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Keys/values of tokens [0, end), given those of [0, start) (`layers`, left untouched)."""
        if start == end:
            return layers or []
        cache = DynamicCache(ddp_cache_data=layers) if layers else DynamicCache()
        past = self.rm.model.model(input_ids=ids[:, start:end], attention_mask=torch.ones_like(ids[:, :end]),
                                   position_ids=pos[:, :, start:end], mm_token_type_ids=mm[:, start:end],
                                   past_key_values=cache, use_cache=True, **vision).past_key_values
        return [(layer.keys, layer.values) for layer in past.layers]

    @staticmethod
    def _encoder_outputs(feats: Sequence[torch.Tensor]) -> dict:
        return {"image": BaseModelOutputWithPooling(pooler_output=tuple(feats))}

    def rewards(self, task, prompt: str, groups: Sequence[tuple[torch.Tensor | None, Sequence[torch.Tensor]]],
                batch_size: int) -> list[torch.Tensor]:
        """P(yes) for the candidates of one prompt, grouped by reference (None in the pointwise layout).

        The text before the first image is run once for the prompt, each reference extends it once,
        and each batch of candidates runs only its own image and the turn's closing tokens.
        """
        rm = self.rm
        reference, candidates = groups[0]
        inputs = rm.encode([build_context(task, rm.layout, prompt, candidates[0], reference=reference)])
        ids, mm, grid = inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"]
        starts = (ids[0] == rm.model.config.vision_start_token_id).nonzero().flatten()
        shared, split = int(starts[0]), int(starts[-1])  # first image; the candidate's image
        pos, _ = rm.model.model.get_rope_index(ids, mm_token_type_ids=mm, image_grid_thw=grid,
                                               attention_mask=inputs["attention_mask"])
        prompt_layers = self._extend(None, ids, mm, pos, 0, shared)
        out = []
        for reference, candidates in groups:
            layers = prompt_layers
            if reference is not None:
                feats, ref_grid = self._vision_features([reference])
                if not bool((ref_grid == grid[:-1]).all()):
                    raise ValueError("references of different sizes cannot share one token layout")
                layers = self._extend(prompt_layers, ids, mm, pos, shared, split, image_grid_thw=ref_grid,
                                      mm_encoder_outputs=self._encoder_outputs(feats))
            out.append(self._suffix(layers, ids, mm, pos, split, grid[-1], candidates, batch_size))
        return out

    def _suffix(self, layers: list, ids: torch.Tensor, mm: torch.Tensor, pos: torch.Tensor, split: int,
                grid: torch.Tensor, candidates: Sequence[torch.Tensor], batch_size: int) -> torch.Tensor:
        rm, length, out = self.rm, ids.shape[1], []
        for i in range(0, len(candidates), batch_size):
            chunk = candidates[i:i + batch_size]
            feats, grids = self._vision_features(chunk)
            if not bool((grids == grid).all()):
                raise ValueError("candidates of different sizes cannot share one suffix")  # caller falls back
            b = len(chunk)
            cache = DynamicCache(ddp_cache_data=[(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1))
                                                 for k, v in layers])
            hidden = rm.model.model(
                input_ids=ids[:, split:].expand(b, -1), attention_mask=torch.ones_like(ids).expand(b, length),
                position_ids=pos[:, :, split:].expand(-1, b, -1), past_key_values=cache, use_cache=True,
                mm_token_type_ids=mm[:, split:].expand(b, -1), image_grid_thw=grids,
                mm_encoder_outputs=self._encoder_outputs(feats),
            ).last_hidden_state
            out.append(rm.reward_from_scores(rm.head_scores(hidden[:, -1])))
        return torch.cat(out)
