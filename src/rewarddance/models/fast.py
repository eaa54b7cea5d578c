"""Fast scoring: a shared-prefix KV cache and reuse of vision-encoder outputs.

Everything before the candidate's image tokens (system prompt, instruction, prompt, and in
the pairwise layout the reference image) is the same for every candidate compared under one
prompt and reference. We run the prompt's text once, extend it once per reference, keep the
keys/values, and run only each candidate's suffix (its image tokens and the turn's closing
tokens) against them. Vision-encoder outputs are cached by content hash (bounded LRU), so a
candidate compared with K references is encoded once.

Candidates share a suffix only when they share a token layout: the tokens the processor
expands the image into (InternVL's and Idefics3's tiling, every family's token count) and, for
Qwen2-VL / Qwen2.5-VL, the patch grid their 3-D M-RoPE positions are computed from. Both come
from the family's own processor (`encode_images`), so two raw sizes that process alike share a
group and two that only share a token count do not. Images whose layout the rendered context
contradicts raise `LayoutMismatchError`; `RewardModel.score_items` scores those on the plain path.

The same split makes the reward cheap to differentiate (ReFL): `differentiable_scores` runs
the prompt-and-reference prefix once under no_grad (kept in a bounded cache, bound to the
judge's weights like the features) and backpropagates only through the candidates' vision
encoder and suffix; tests check values and pixel gradients against the plain path.

Works for the six tested families through transformers' `mm_encoder_outputs` argument.
Positions continue exactly: 1-D positions are a range; Qwen 3-D positions are computed on the
full sequence and sliced. Results equal the plain path (tests check 1e-5 in float32).
"""

from __future__ import annotations

import hashlib
import inspect
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from transformers import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..context import Task, build_context
from .judge import Judge
from .presets import ARCHS

MROPE = ("qwen2_vl", "qwen2_5_vl")


class LayoutMismatchError(ValueError):
    """Images sent through one shared prefix do not share the token layout the rendered context has."""


def content_key(x: torch.Tensor) -> bytes:
    """A hash of a tensor's shape, dtype and bytes."""
    data = x.detach().to("cpu").contiguous()
    h = hashlib.blake2b(str((tuple(data.shape), data.dtype)).encode(), digest_size=16)
    h.update(data.numpy().tobytes() if data.dtype != torch.bfloat16 else data.view(torch.int16).numpy().tobytes())
    return h.digest()


@dataclass(frozen=True)
class Encoded:
    """One image as the language model consumes it.

    `features`: n_tokens × hidden rows, in the order they fill the image's tokens.
    `layout`: everything that shapes the image's place in the sequence: the token ids the
    processor expands it into, and Qwen's (t, h, w) patch grid, which its 3-D positions follow.
    `grid`: that grid as the model takes it (Qwen), else None.
    """

    key: bytes
    features: torch.Tensor
    layout: tuple
    grid: torch.Tensor | None


class FeatureCache:
    """Bounded LRU: content hash -> `Encoded` of one image (also used for whole prefixes, below).

    The outputs depend on the weights and the image processor too: `bind(state)` empties the cache
    whenever the judge's weights state (`Judge.state()`: parameter versions, dtype, device) or the
    image processor's settings have changed.
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


class PrefixScorer:
    """Scores many candidates that share a prompt (and references) with shared prefix forwards.

    `scored` counts the (candidate, reference) items it has scored; `fallbacks` counts those the
    caller had to score on the plain path after a `LayoutMismatchError`.
    """

    def __init__(self, judge: Judge, *, cache_items: int = 4096, prefix_items: int = 64) -> None:
        self.judge = judge
        self.features = FeatureCache(cache_items)
        # (task, layout, prompt, reference, candidate layout) -> the prefix's keys/values, for
        # differentiable scoring; each entry holds a whole prompt+reference KV cache, hence fewer items
        self.prefixes = FeatureCache(prefix_items)
        self.scored = self.fallbacks = 0
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

    def _weights_key(self) -> tuple:
        # the processor's settings (resize limits, normalisation) shape the features as much as the weights
        return self.judge.state(), repr(self.judge.processor.image_processor.to_dict())

    def encode_images(self, images: Sequence[torch.Tensor], batch_size: int = 16) -> list[Encoded]:
        """Each image's vision-encoder output and token layout (cached by content)."""
        self.features.bind(self._weights_key())
        keys = [content_key(x) for x in images]
        found: dict[bytes, Encoded] = {}
        missing: dict[bytes, torch.Tensor] = {}
        for key, x in zip(keys, images):
            if key not in found and key not in missing:
                entry = self.features.get(key)
                if entry is None:
                    missing[key] = x
                else:
                    found[key] = entry
        todo = list(missing.items())
        for i in range(0, len(todo), batch_size):
            chunk = todo[i:i + batch_size]
            for (key, _), entry in zip(chunk, self._encode([x for _, x in chunk])):
                entry = Encoded(key, *entry)
                self.features.put(key, entry)
                found[key] = entry
        return [found[k] for k in keys]

    def _encode(self, images: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, tuple, torch.Tensor | None]]:
        """(features, layout, grid) per image. The images go through the family's full processor, each
        as a text holding only its placeholder, so tiling and token expansion are exactly those the
        plain path's processor call makes (InternVL's processor, e.g., overrides its image processor's
        `crop_to_patches`)."""
        judge, processor = self.judge, self.judge.processor
        batch = processor(text=[processor.image_token] * len(images), images=[[x] for x in images], padding=True,
                          do_rescale=False, return_tensors="pt")
        kwargs = {k: (v.to(judge.device, judge.dtype) if v.is_floating_point() else v.to(judge.device))
                  for k, v in batch.items() if k in self._vision_args}
        out = judge.backbone.model.get_image_features(**kwargs, **self._vision_config).pooler_output
        self._as_tensor = isinstance(out, torch.Tensor)
        rows = torch.cat([f.reshape(-1, f.shape[-1]) for f in out])  # every family's features, one row per token
        tokens = [ids[mask.bool()] for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
        feats = rows.split([int((t == self.image_token_id).sum()) for t in tokens])
        grids = kwargs.get("image_grid_thw")
        return [(f, (tuple(t.tolist()), None if grids is None else tuple(grids[j].tolist())),
                 None if grids is None else grids[j])
                for j, (f, t) in enumerate(zip(feats, tokens))]

    def _encoder_outputs(self, feats: Sequence[torch.Tensor]) -> dict:
        pooled = torch.cat(list(feats)) if self._as_tensor else tuple(feats)
        return {"image": BaseModelOutputWithPooling(pooler_output=pooled)}

    def _positions(self, pos: torch.Tensor, start: int, end: int, batch: int) -> torch.Tensor:
        if self.mrope:
            return pos[:, :, start:end].expand(-1, batch, -1)
        return pos[:, start:end].expand(batch, -1)

    def _vision_kwargs(self, inputs: dict, start: int, end: int, batch: int,
                       images: Sequence[Encoded] = ()) -> dict:
        """Family extras for tokens [start, end): Qwen's token types and image grids."""
        if not self.mrope:
            return {}
        out = {"mm_token_type_ids": inputs["mm_token_type_ids"][:, start:end].expand(batch, -1)}
        if images:
            out["image_grid_thw"] = torch.stack([e.grid for e in images])
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

    def _check_layouts(self, inputs: dict, slots: Sequence[tuple[Encoded, int, int]]) -> None:
        """Every (image, its token count, its index among the rendered grids) must fit the rendered
        sequence: its token count and (Qwen) the grid its positions follow."""
        grids = inputs.get("image_grid_thw")
        if any(len(e.features) != n or (grids is not None and not torch.equal(e.grid, grids[j])) for e, n, j in slots):
            raise LayoutMismatchError("an image's token layout differs from the one rendered for its group")

    def _render(self, task: Task, layout: str, prompt: str, example: tuple[torch.Tensor, torch.Tensor | None]
                ) -> tuple[dict, torch.Tensor, list[int]]:
        """The token sequence of one (candidate, reference) example: inputs, positions, image token indices."""
        judge = self.judge
        inputs = judge.encode([build_context(task, layout, prompt, example[0], reference=example[1])])
        ids = inputs["input_ids"]
        image_pos = (ids[0] == self.image_token_id).nonzero().flatten().tolist()
        if self.mrope:
            pos, _ = judge.backbone.model.get_rope_index(ids, mm_token_type_ids=inputs["mm_token_type_ids"],
                                                         image_grid_thw=inputs.get("image_grid_thw"),
                                                         attention_mask=inputs["attention_mask"])
        else:
            pos = torch.arange(ids.shape[1], device=ids.device)[None]
        return inputs, pos, image_pos

    def rewards(self, task: Task, layout: str, prompt: str, example: tuple[torch.Tensor, torch.Tensor | None],
                groups: Sequence[tuple[Encoded | None, Sequence[Encoded]]], batch_size: int) -> list[torch.Tensor]:
        """P(yes) for the candidates of one prompt, grouped by reference (None in the pointwise layout).

        `example` is one (candidate, reference) pair of raw images the token sequence is rendered
        from; every reference and every candidate must share its layout (`encode_images`), else
        LayoutMismatchError. The text before the first image is run once, each reference extends
        it once, and each batch of candidates runs only its own image tokens and the turn's end.
        """
        judge = self.judge
        reference, candidate = groups[0][0], groups[0][1][0]
        if ({None if r is None else r.layout for r, _ in groups} != {None if reference is None else reference.layout}
                or {c.layout for _, cs in groups for c in cs} != {candidate.layout}):
            raise LayoutMismatchError("the references or the candidates of one group have different token layouts")
        inputs, pos, image_pos = self._render(task, layout, prompt, example)
        n_ref = 0 if reference is None else len(reference.features)
        self._check_layouts(inputs, [(r, n_ref, 0) for r, _ in groups if r is not None] + [
            (c, len(image_pos) - n_ref, -1) for _, cs in groups for c in cs])
        shared, split = image_pos[0], image_pos[n_ref]
        prompt_layers = self._extend(None, inputs, pos, 0, shared, **self._vision_kwargs(inputs, 0, shared, 1))
        out = []
        for reference, candidates in groups:
            layers = prompt_layers
            if reference is not None:
                layers = self._extend(prompt_layers, inputs, pos, shared, split,
                                      mm_encoder_outputs=self._encoder_outputs([reference.features]),
                                      **self._vision_kwargs(inputs, shared, split, 1, [reference]))
            out.append(judge.reward_from_scores(self._suffix(layers, inputs, pos, split, candidates, batch_size)))
            self.scored += len(candidates)
        return out

    def differentiable_scores(self, task: Task, layout: str, prompt: str, candidates: torch.Tensor,
                              reference: torch.Tensor | None = None, batch_size: int = 16) -> torch.Tensor:
        """B×2 (yes, no) log-scores of `candidates` (B×3×H×W float images in [0, 1], gradients kept)
        under one prompt and reference (None in the pointwise layout), for ReFL.

        The prefix (prompt text and reference image) does not depend on the candidates: it runs
        once under no_grad and its keys/values are cached (bound to the judge's weights), so the
        graph holds only the candidates' vision encoder and suffix. Raises LayoutMismatchError
        when the candidates do not share one token layout (the caller scores those plainly).
        """
        feats = self._encode(list(candidates))  # with gradients: no feature cache
        layouts = {layout_ for _, layout_, _ in feats}
        if len(layouts) != 1:
            raise LayoutMismatchError("the candidates do not share one token layout")
        self.prefixes.bind(self._weights_key())
        key = (task, layout, prompt, None if reference is None else content_key(reference), layouts.pop())
        prefix = self.prefixes.get(key)
        if prefix is None:
            with torch.no_grad():
                prefix = self._prefix(task, layout, prompt, candidates[0].detach(), reference)
            self.prefixes.put(key, prefix)
        inputs, pos, split, n_cand, layers = prefix
        encoded = [Encoded(b"", f, layout_, grid) for f, layout_, grid in feats]
        self._check_layouts(inputs, [(e, n_cand, -1) for e in encoded])
        self.scored += len(encoded)
        return self._suffix(layers, inputs, pos, split, encoded, batch_size)

    def _prefix(self, task: Task, layout: str, prompt: str, example: torch.Tensor, reference: torch.Tensor | None
                ) -> tuple[dict, torch.Tensor, int, int, list]:
        """(inputs, positions, index of the candidate's first token, its token count, the keys/values
        of everything before it) for one prompt and reference."""
        inputs, pos, image_pos = self._render(task, layout, prompt, (example, reference))
        n_ref = 0
        if reference is not None:
            ref = self.encode_images([reference])[0]
            n_ref = len(ref.features)
            self._check_layouts(inputs, [(ref, n_ref, 0)])
        shared, split = image_pos[0], image_pos[n_ref]
        layers = self._extend(None, inputs, pos, 0, shared, **self._vision_kwargs(inputs, 0, shared, 1))
        if reference is not None:
            layers = self._extend(layers, inputs, pos, shared, split,
                                  mm_encoder_outputs=self._encoder_outputs([ref.features]),
                                  **self._vision_kwargs(inputs, shared, split, 1, [ref]))
        return inputs, pos, split, len(image_pos) - n_ref, layers

    def _suffix(self, layers: list, inputs: dict, pos: torch.Tensor, split: int, candidates: Sequence[Encoded],
                batch_size: int) -> torch.Tensor:
        """B×2 answer log-scores of the candidates, each run from `split` on against the prefix `layers`."""
        judge, ids, out = self.judge, inputs["input_ids"], []
        length = ids.shape[1]
        for i in range(0, len(candidates), batch_size):
            chunk = candidates[i:i + batch_size]
            b = len(chunk)
            cache = DynamicCache(ddp_cache_data=[(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1))
                                                 for k, v in layers])
            hidden = judge.backbone.model(
                input_ids=ids[:, split:].expand(b, -1), attention_mask=torch.ones_like(ids).expand(b, length),
                position_ids=self._positions(pos, split, length, b), past_key_values=cache, use_cache=True,
                mm_encoder_outputs=self._encoder_outputs([c.features for c in chunk]),
                **self._vision_kwargs(inputs, split, length, b, chunk),
            ).last_hidden_state
            out.append(judge.head_scores(hidden[:, -1]))
        return torch.cat(out)
