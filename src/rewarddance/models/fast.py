"""Fast scoring: a shared-prefix KV cache and reuse of vision-encoder outputs.

Everything before the candidate's image tokens (system prompt, instruction, prompt, and in
the pairwise layout the reference image) is the same for every candidate compared under one
prompt and reference. We run the prompt's text once, extend it once per reference, keep the
keys/values, and run only each candidate's suffix (its image tokens and the turn's closing
tokens) against them. Vision-encoder outputs are cached by content hash (bounded LRU), so a
candidate compared with K references is encoded once.

Works for the six tested families through transformers' `mm_encoder_outputs` argument.
Positions continue exactly: 1-D positions are a range; Qwen2-VL / Qwen2.5-VL 3-D M-RoPE
positions are computed on the full sequence and sliced. Results equal the plain path
(tests check 1e-4 in float32).
"""

from __future__ import annotations

import hashlib
import inspect
from collections import OrderedDict
from typing import Any, Sequence

import torch
from transformers import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..context import build_context
from .judge import Judge
from .presets import ARCHS

MROPE = ("qwen2_vl", "qwen2_5_vl")


def content_key(x: torch.Tensor) -> bytes:
    """A hash of a tensor's shape, dtype and bytes."""
    data = x.detach().to("cpu").contiguous()
    h = hashlib.blake2b(str((tuple(data.shape), data.dtype)).encode(), digest_size=16)
    h.update(data.numpy().tobytes() if data.dtype != torch.bfloat16 else data.view(torch.int16).numpy().tobytes())
    return h.digest()


class FeatureCache:
    """Bounded LRU: content hash -> vision-encoder output of one image (and its grid, for Qwen).

    The outputs depend on the weights too: `bind(state)` empties the cache whenever the
    judge's weights state (`Judge.state()`: parameter versions, dtype, device) has changed.
    """

    def __init__(self, max_items: int = 4096) -> None:
        self.max_items = max_items
        self._items: OrderedDict[bytes, Any] = OrderedDict()
        self._state: Any = None
        self.hits = self.misses = 0

    def bind(self, state: Any) -> None:
        """Serve only features computed under weights `state` from now on."""
        if state != self._state:
            self._items.clear()
            self._state = state

    def get(self, key: bytes) -> Any:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
            self.hits += 1
        else:
            self.misses += 1
        return value

    def put(self, key: bytes, value: Any) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()


def _image_runs(ids: torch.Tensor, image_token_id: int) -> list[tuple[int, int]]:
    """(start, end) of each run of image tokens in a 1-D id sequence."""
    is_img = (ids == image_token_id).int()
    edges = torch.diff(torch.cat([is_img.new_zeros(1), is_img, is_img.new_zeros(1)]))
    return list(zip((edges == 1).nonzero().flatten().tolist(), (edges == -1).nonzero().flatten().tolist()))


class PrefixScorer:
    """Scores many candidates that share a prompt (and references) with shared prefix forwards."""

    def __init__(self, judge: Judge, *, cache_items: int = 4096) -> None:
        self.judge = judge
        self.features = FeatureCache(cache_items)
        cfg = judge.backbone.config
        self.mrope = cfg.model_type in MROPE
        self.image_token_id = getattr(cfg, "image_token_id", None)
        if self.image_token_id is None:
            self.image_token_id = cfg.image_token_index  # LLaVA's name for it
        params = inspect.signature(judge.backbone.model.get_image_features).parameters
        self._vision_args = set(params)
        # LLaVA / InternVL read these from the config in forward(); get_image_features needs them passed
        self._vision_config = {k: getattr(cfg, k) for k in ("vision_feature_layer", "vision_feature_select_strategy")
                               if k in params and hasattr(cfg, k)}
        self._as_tensor = False  # whether the family packs image features as one tensor

    @staticmethod
    def supports(judge: Judge) -> bool:
        """The six tested families (generative or value head: both read the last hidden state)."""
        return getattr(judge.backbone.config, "model_type", None) in ARCHS

    def _vision_features(self, images: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Per-image vision-encoder outputs (cached by content) and, for Qwen, their grids."""
        judge = self.judge
        keys = [content_key(x) for x in images]
        entries = [self.features.get(k) for k in keys]
        missing = [i for i, e in enumerate(entries) if e is None]
        if missing:
            processed = judge.processor.image_processor(images=[images[i] for i in missing], do_rescale=False,
                                                     return_tensors="pt")
            kwargs = {k: (v.to(judge.device, judge.dtype) if v.is_floating_point() else v.to(judge.device))
                      for k, v in processed.items() if k in self._vision_args}
            if kwargs["pixel_values"].ndim == 5:  # Idefics3/SmolVLM: (samples, images, ...); one image per sample
                kwargs = {k: v.transpose(0, 1) if k in ("pixel_values", "pixel_attention_mask") else v
                          for k, v in kwargs.items()}
            out = judge.backbone.model.get_image_features(**kwargs, **self._vision_config).pooler_output
            self._as_tensor = isinstance(out, torch.Tensor)
            grids = kwargs.get("image_grid_thw")
            for j, i in enumerate(missing):
                entries[i] = (out[j], None if grids is None else grids[j])
                self.features.put(keys[i], entries[i])
        grids = None if entries[0][1] is None else torch.stack([e[1] for e in entries])
        return [e[0] for e in entries], grids

    def _encoder_outputs(self, feats: Sequence[torch.Tensor]) -> dict:
        pooled = torch.stack(list(feats)) if self._as_tensor else tuple(feats)
        return {"image": BaseModelOutputWithPooling(pooler_output=pooled)}

    def _positions(self, pos: torch.Tensor, start: int, end: int, batch: int) -> torch.Tensor:
        if self.mrope:
            return pos[:, :, start:end].expand(-1, batch, -1)
        return pos[:, start:end].expand(batch, -1)

    def _vision_kwargs(self, inputs: dict, start: int, end: int, batch: int, grids: torch.Tensor | None) -> dict:
        """Family extras for tokens [start, end): Qwen's token types and image grids."""
        if not self.mrope:
            return {}
        out = {"mm_token_type_ids": inputs["mm_token_type_ids"][:, start:end].expand(batch, -1)}
        if grids is not None:
            out["image_grid_thw"] = grids
        return out

    def _extend(self, layers: list | None, inputs: dict, pos: torch.Tensor, start: int, end: int,
                **kwargs: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Keys/values of tokens [0, end), given those of [0, start) (`layers`, left untouched)."""
        if start == end:
            return layers or []
        ids = inputs["input_ids"]
        cache = DynamicCache(ddp_cache_data=layers) if layers else DynamicCache()
        past = self.judge.backbone.model(input_ids=ids[:, start:end], attention_mask=torch.ones_like(ids[:, :end]),
                                   position_ids=self._positions(pos, start, end, 1), past_key_values=cache,
                                   use_cache=True, **kwargs).past_key_values
        return [(layer.keys, layer.values) for layer in past.layers]

    def rewards(self, task, layout: str, prompt: str,
                groups: Sequence[tuple[torch.Tensor | None, Sequence[torch.Tensor]]], batch_size: int
                ) -> list[torch.Tensor]:
        """P(yes) for the candidates of one prompt, grouped by reference (None in the pointwise layout).

        The text before the first image is run once for the prompt, each reference extends it once,
        and each batch of candidates runs only its own image tokens and the turn's closing tokens.
        Raises ValueError when the images do not share one token layout (the caller groups by size first).
        """
        judge = self.judge
        self.features.bind(judge.state())
        reference, candidates = groups[0]
        inputs = judge.encode([build_context(task, layout, prompt, candidates[0], reference=reference)])
        ids = inputs["input_ids"]
        runs = _image_runs(ids[0], self.image_token_id)
        if len(runs) != (2 if layout == "pairwise" else 1):
            raise ValueError("unexpected number of images in the rendered context")
        (shared, _), (split, split_end) = runs[0], runs[-1]
        if self.mrope:
            pos, _ = judge.backbone.model.get_rope_index(ids, mm_token_type_ids=inputs["mm_token_type_ids"],
                                                   image_grid_thw=inputs["image_grid_thw"],
                                                   attention_mask=inputs["attention_mask"])
        else:
            pos = torch.arange(ids.shape[1], device=ids.device)[None]
        prompt_layers = self._extend(None, inputs, pos, 0, shared, **self._vision_kwargs(inputs, 0, shared, 1, None))
        out = []
        for reference, candidates in groups:
            layers = prompt_layers
            if reference is not None:
                feats, grids = self._vision_features([reference])
                if feats[0].shape[0] != runs[0][1] - runs[0][0]:
                    raise ValueError("references of different sizes cannot share one token layout")
                layers = self._extend(prompt_layers, inputs, pos, shared, split,
                                      mm_encoder_outputs=self._encoder_outputs(feats),
                                      **self._vision_kwargs(inputs, shared, split, 1, grids))
            out.append(self._suffix(layers, inputs, pos, split, split_end - split, candidates, batch_size))
        return out

    def _suffix(self, layers: list, inputs: dict, pos: torch.Tensor, split: int, n_image_tokens: int,
                candidates: Sequence[torch.Tensor], batch_size: int) -> torch.Tensor:
        judge, ids, out = self.judge, inputs["input_ids"], []
        length = ids.shape[1]
        for i in range(0, len(candidates), batch_size):
            chunk = candidates[i:i + batch_size]
            feats, grids = self._vision_features(chunk)
            if any(f.shape[0] != n_image_tokens for f in feats):
                raise ValueError("candidates of different sizes cannot share one suffix")
            b = len(chunk)
            cache = DynamicCache(ddp_cache_data=[(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1))
                                                 for k, v in layers])
            hidden = judge.backbone.model(
                input_ids=ids[:, split:].expand(b, -1), attention_mask=torch.ones_like(ids).expand(b, length),
                position_ids=self._positions(pos, split, length, b), past_key_values=cache, use_cache=True,
                mm_encoder_outputs=self._encoder_outputs(feats),
                **self._vision_kwargs(inputs, split, length, b, grids),
            ).last_hidden_state
            out.append(judge.reward_from_scores(judge.head_scores(hidden[:, -1])))
        return torch.cat(out)
