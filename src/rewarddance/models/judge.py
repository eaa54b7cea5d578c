"""The judge: the differentiable core of a reward model (backbone + processor -> P(yes)).

`Judge` turns contexts (chat messages + images, from `rewarddance.context`) into the
log-scores of the answer tokens at the answer position, from one forward pass of the
backbone, reading only the "yes"/"no" rows of the LM head. It is an `nn.Module`, so the
training recipe can wrap it (DDP, FSDP) and peft can inject adapters into its backbone;
`Judge.backbone` is the one accessor that reaches the Hugging Face model through such
wrappers. The public facade (batching, input checks, fast path, score/compare/rank) is
`RewardModel` in reward_model.py.

A regressive judge (the paper's value-head baseline) is the same backbone with a linear
head on the last hidden state at the answer position; its scores are (v, 0), so every
consumer reads the reward logit as scores[:, 0] - scores[:, 1] whatever the head.

Example:
    >>> import rewarddance as rd, torch
    >>> judge = rd.load("qwen2_5_vl-tiny").judge                                  # doctest: +SKIP
    >>> ctx = [build_context("t2i-alignment", "pointwise", "a red circle", torch.rand(3, 64, 64))]
    >>> judge.rewards(ctx)                                                        # doctest: +SKIP
    tensor([0.49...])
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..context import Context

NORMALIZATIONS = ("yes_no", "vocab")
VALUE_HEAD_FILE = "value_head.safetensors"


def resolve_answer_ids(processor: Any, word: str) -> list[int]:
    """Token ids the model may answer `word` with; the first is the one training targets.

    The primary id is found by rendering the chat template with and without the answer,
    so it is exactly the token that follows the generation prompt (with or without a
    leading space, as the family's template makes it). Capitalised and space-prefixed
    variants that are single tokens are added.
    """
    tok = processor.tokenizer
    user = [{"role": "user", "content": [{"type": "text", "text": "Q"}]}]
    answer = [{"role": "assistant", "content": [{"type": "text", "text": word}]}]
    prompt_ids = tok.encode(processor.apply_chat_template(user, add_generation_prompt=True, tokenize=False),
                            add_special_tokens=False)
    full_ids = tok.encode(processor.apply_chat_template(user + answer, tokenize=False), add_special_tokens=False)
    if full_ids[: len(prompt_ids)] != prompt_ids or len(full_ids) <= len(prompt_ids):
        raise ValueError("the chat template's generation prompt is not a prefix of the rendered answer; "
                         "cannot locate the answer token")
    first = full_ids[len(prompt_ids)]
    if tok.decode([first]).strip() != word:
        raise ValueError(f"the tokenizer splits the answer {word!r} into several tokens "
                         f"(first is {tok.decode([first])!r}); a generative reward needs it as one token")
    ids = [first]
    for form in (word, " " + word, word.capitalize(), " " + word.capitalize()):
        enc = tok.encode(form, add_special_tokens=False)
        if len(enc) == 1 and enc[0] not in ids:
            ids.append(enc[0])
    return ids


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row, for left or right padding."""
    length = attention_mask.shape[1]
    return length - 1 - attention_mask.flip(1).int().argmax(1)


def enable_layer_checkpointing(model: nn.Module) -> None:
    """Hugging Face activation checkpointing on `model`'s transformer layers (non-reentrant) for training,
    through `activation_checkpointing_enable` where transformers has it, else its older name."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def is_vision_parameter(name: str) -> bool:
    """Whether parameter `name` belongs to a VLM's vision side: its encoder and the projector into the language
    model (Qwen's `visual`, merger included; Idefics3's `vision_model` and `connector`; LLaVA's and InternVL's
    `vision_tower` and `multi_modal_projector`), under any wrapper's prefix."""
    return any(part in name for part in ("visual", "vision", "connector", "multi_modal_projector"))


def unwrap(module: nn.Module) -> nn.Module:
    """The Hugging Face model inside DDP / FSDP (`.module`), torch.compile (`._orig_mod`) and
    peft (`get_base_model()`) wrappers; peft's adapters stay injected in its layers."""
    while True:
        if hasattr(module, "get_base_model"):
            module = module.get_base_model()
        elif isinstance(getattr(module, "module", None), nn.Module):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod
        else:
            return module


def weights_state(module: nn.Module) -> tuple:
    """A cheap fingerprint of the weights: in-place updates through autograd-visible ops (optimizer
    steps, load_state_dict) bump a tensor's version counter; replaced tensors, dtype and device
    moves change its identity, storage or dtype. Not seen: writes through `.data` (e.g.
    `p.data.copy_(...)` in an EMA loop, peft's merge_adapter): clear caches yourself after those."""
    return tuple((id(p), p._version, p.data_ptr(), p.dtype, p.device) for p in module.parameters())


class JudgeModule(nn.Module):
    """What every judge module shares: its device, dtype and weights state (caches key on it)."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def state(self) -> tuple:
        """Changes whenever the weights, dtype or device change."""
        return weights_state(self)

    @contextmanager
    def layer_checkpointing(self) -> Iterator[list[nn.Module]]:
        """Inside, every transformer layer of the backbone (language model and vision tower) keeps only its
        input in the forward pass and recomputes its activations in the backward pass: less memory when
        gradients flow through a frozen judge to its pixels (ReFL), for about one more forward pass.

        Transformers checkpoints a layer only while the layer is in training mode, so only the layers' own
        flags are set (`training`, `gradient_checkpointing` and the checkpoint function), not their
        submodules' (dropout stays off), and each is restored on exit. The flags are set directly rather
        than through `activation_checkpointing_enable`, which also hooks the input embeddings (a hook its
        `disable` leaves behind). Checkpointed layers cannot extend a KV cache: score through the plain path
        (no shared prefix). Yields the checkpointed layers.

            >>> with judge.layer_checkpointing():                              # doctest: +SKIP
            ...     judge.rewards(contexts).sum().backward()
        """
        from transformers.modeling_layers import GradientCheckpointingLayer

        layers = [m for m in self.backbone.modules() if isinstance(m, GradientCheckpointingLayer)]
        if not layers:
            raise ValueError(f"{type(self.backbone).__name__} has no checkpointable transformer layers")
        missing = object()
        saved = [(m.training, m.gradient_checkpointing, m.__dict__.get("_gradient_checkpointing_func", missing))
                 for m in layers]
        for m in layers:
            m.training, m.gradient_checkpointing = True, True
            m._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
        try:
            yield layers
        finally:
            for m, (training, on, func) in zip(layers, saved):
                m.training, m.gradient_checkpointing = training, on
                if func is missing:
                    del m._gradient_checkpointing_func
                else:
                    m._gradient_checkpointing_func = func


def _float32_rows(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The few head rows a judgment needs, in float32 whatever the model's dtype (autocast too): in
    bfloat16 an answer logit of size ~8 is rounded to steps of ~0.03 and a value of size ~1 to ~0.004,
    so two images whose rewards differ by 1e-3 (a judge early in training) would tie. Measured on the
    RL study's regressive judge: 58% accuracy in float32, 37% in bfloat16 (its ties count wrong)."""
    with torch.autocast(h.device.type, enabled=False):
        return nn.functional.linear(h.float(), weight.float(), None if bias is None else bias.float())


class Judge(JudgeModule):
    """Backbone + processor -> B×2 (yes, no) log-scores at the answer position; P(yes) from them.

    `normalize`: "yes_no" (softmax over the answer tokens) or "vocab" (full-vocabulary softmax).
    `value_head`: a Linear(hidden, 1) for the regressive baseline; its scores are (v, 0).
    """

    def __init__(self, model: nn.Module, processor: Any, *, normalize: str = "yes_no", padding_side: str = "left",
                 value_head: nn.Linear | None = None) -> None:
        super().__init__()
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        if value_head is not None and normalize != "yes_no":
            raise ValueError("a value-head judge has no vocabulary to normalise over: use normalize='yes_no'")
        self.model, self.processor = model, processor
        self.value_head = value_head
        self.normalize, self.padding_side = normalize, padding_side
        self.yes_ids = resolve_answer_ids(processor, "yes")
        self.no_ids = resolve_answer_ids(processor, "no")

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                        normalize: str = "yes_no", padding_side: str = "left", value_head: bool = False,
                        adapter_of: str | os.PathLike | None = None) -> "Judge":
        """Load the backbone and processor from `path` (a LoRA adapter directory when `adapter_of`
        names its base model directory), and the value head when the checkpoint has one."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = Path(path)
        base = Path(adapter_of) if adapter_of else path
        model = AutoModelForImageTextToText.from_pretrained(base, dtype=dtype, attn_implementation="sdpa")
        if adapter_of:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, path)
        head = None
        if value_head:
            from safetensors.torch import load_file

            hidden = model.get_output_embeddings().weight.shape[1]
            head = nn.Linear(hidden, 1)
            head.load_state_dict(load_file(path / VALUE_HEAD_FILE))
        judge = cls(model, AutoProcessor.from_pretrained(path), normalize=normalize, padding_side=padding_side,
                    value_head=head).to(device=device, dtype=dtype).eval()
        if head is None:
            judge.check_head()
        return judge

    def save_pretrained(self, path: str | os.PathLike, *, merge_adapter: bool = True) -> None:
        """Write the backbone (adapters merged into the weights, or the adapter alone), processor
        and value head. The checkpoint config (rewarddance.json) is the caller's to write."""
        from peft import PeftModel

        path = Path(path)
        model = self.model
        if isinstance(model, PeftModel) and merge_adapter:
            import copy

            model = copy.deepcopy(model).merge_and_unload()  # the live model keeps training its adapter
        model.save_pretrained(path)
        self.processor.save_pretrained(path)
        if self.value_head is not None:
            from safetensors.torch import save_file

            save_file({k: v.detach().contiguous() for k, v in self.value_head.state_dict().items()},
                      path / VALUE_HEAD_FILE)

    # ------------------------------------------------------------------ accessors
    @property
    def backbone(self) -> nn.Module:
        """The Hugging Face *ForConditionalGeneration model, through peft / DDP / compile wrappers."""
        return unwrap(self.model)

    # ------------------------------------------------------------------ core
    def encode(self, contexts: Sequence[Context], *, add_generation_prompt: bool = True,
               texts: Sequence[str] | None = None, padding_side: str | None = None) -> dict[str, torch.Tensor]:
        """Render contexts with the chat template and run the processor; tensors on the model's device.

        `texts` replaces the rendered texts (training appends its targets to them)."""
        if texts is None:
            texts = [self.render(c, add_generation_prompt=add_generation_prompt) for c in contexts]
        batch = self.processor(text=list(texts), images=[c.images for c in contexts], padding=True,
                               padding_side=padding_side or self.padding_side, do_rescale=False,
                               return_tensors="pt")
        out = {}
        for k, v in batch.items():
            v = v.to(self.device)
            out[k] = v.to(self.dtype) if v.is_floating_point() else v
        return out

    def render(self, context: Context, *, add_generation_prompt: bool = True) -> str:
        """The chat-template text of one context."""
        return self.processor.apply_chat_template(context.messages, add_generation_prompt=add_generation_prompt,
                                                  tokenize=False)

    def hidden_states(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """B×L×H final hidden states: one forward of the VLM without its LM head."""
        return self.backbone.model(**inputs, use_cache=False).last_hidden_state

    def head_scores(self, h: torch.Tensor) -> torch.Tensor:
        """B×2 (yes, no) log-scores from final hidden states B×H: only the answer rows of the LM
        head (or the value head's (v, 0))."""
        if self.value_head is not None:
            v = _float32_rows(h, self.value_head.weight, self.value_head.bias)
            return torch.cat([v, torch.zeros_like(v)], dim=1)
        head = self.backbone.get_output_embeddings()
        if self.normalize == "vocab":
            return self.scores_from_logits(head(h))
        ids = torch.tensor(self.yes_ids + self.no_ids, device=h.device)
        bias = getattr(head, "bias", None)
        return self._pool_answers(_float32_rows(h, head.weight[ids], None if bias is None else bias[ids]))

    def scores_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """B×2 (yes, no) log-scores from full-vocabulary logits B×V."""
        if self.normalize == "vocab":
            return self._pool_answers(torch.log_softmax(logits.float(), dim=-1)[:, self.yes_ids + self.no_ids])
        return self._pool_answers(logits[:, self.yes_ids + self.no_ids].float())

    def _pool_answers(self, logits: torch.Tensor) -> torch.Tensor:
        n_yes = len(self.yes_ids)
        return torch.stack([logits[:, :n_yes].logsumexp(1), logits[:, n_yes:].logsumexp(1)], dim=1)

    @torch.no_grad()
    def check_head(self) -> None:
        """Refuse a model whose logits are not its LM head's output: `head_scores` applies only the
        head's answer rows, so a family that soft-caps or scales logits after the head (PaliGemma's
        final_logit_softcapping, Granite's logits_scaling, Cohere's logit_scale) would be judged on
        numbers it never produces. One forward of the whole model on two tokens, the head's input
        replaced by random hidden states sized to give answer logits of std 30, where such transforms
        are far from the identity, compared with `head_scores` on the same states."""
        head = self.backbone.get_output_embeddings()
        rows = head.weight[self.yes_ids + self.no_ids].float()
        g = torch.Generator().manual_seed(0)
        hidden: list[torch.Tensor] = []

        def substitute(module: nn.Module, args: tuple) -> tuple:
            h = torch.randn(args[0].shape, generator=g)
            h = h * (30.0 / (h @ rows.T.cpu()).std().clamp_min(1e-6))
            hidden.append(h.to(args[0].device, args[0].dtype))
            return (hidden[-1],)

        ids = torch.tensor([[self.yes_ids[0], self.no_ids[0]]], device=self.device)
        handle = head.register_forward_pre_hook(substitute)
        try:
            logits = self.backbone(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
        finally:
            handle.remove()
        theirs, ours = self.scores_from_logits(logits[:, -1]), self.head_scores(hidden[0][:, -1])
        # bfloat16 rounds each logit by up to ~0.4%; a cap or scale moves them by tens of percent
        if (ours - theirs).abs().max() > 0.05 * theirs.abs().max():
            cfg = self.backbone.config.get_text_config()
            named = {k: getattr(cfg, k) for k in ("final_logit_softcapping", "logits_scaling", "logit_scale")
                     if getattr(cfg, k, None) is not None}
            raise ValueError(f"{type(self.backbone).__name__}: the model's logits are not its LM head's output "
                             f"(transformed after the head{': ' + str(named) if named else ''}); the judge reads "
                             "the answer rows of the head directly and would score other numbers than the model's "
                             "own, so this family is not supported")

    def forward(self, inputs: dict[str, torch.Tensor], answer_positions: torch.Tensor | None = None,
                lm_positions: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B×2 answer log-scores, full-vocabulary logits at `lm_positions` (rows, cols) or None), from
        one forward. Answers are read at `answer_positions` (default: each row's last real token).
        Training calls this through its DDP wrapper, so everything with gradients happens inside."""
        hidden = self.hidden_states(inputs)
        if answer_positions is None:
            answer_positions = last_positions(inputs["attention_mask"])
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        scores = self.head_scores(hidden[rows, answer_positions])
        if lm_positions is None:
            return scores, None
        return scores, self.backbone.get_output_embeddings()(hidden[lm_positions[0], lm_positions[1]])

    def answer_logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """B×2 (yes, no) log-scores at each sequence's answer position, from one forward pass."""
        return self(inputs)[0]

    def reward_from_scores(self, lp: torch.Tensor) -> torch.Tensor:
        """P(yes) from B×2 (yes, no) log-scores."""
        if self.normalize == "yes_no":
            return torch.sigmoid(lp[:, 0] - lp[:, 1])
        return lp[:, 0].exp()

    def rewards(self, contexts: Sequence[Context]) -> torch.Tensor:
        """P(yes) for each context (differentiable; wrap in torch.no_grad() when scoring)."""
        return self.reward_from_scores(self.answer_logits(self.encode(contexts)))

    @torch.no_grad()
    def explain(self, context: Context, *, max_new_tokens: int = 64) -> tuple[float, str, str]:
        """(P(yes), the judgment, the rationale): one forward for the judgment, then greedy
        generation after the judgment token (a CoT-trained judge writes its reason there)."""
        inputs = self.encode([context])
        p = self.reward_from_scores(self.answer_logits(inputs))[0].item()
        judgment = "yes" if p >= 0.5 else "no"
        answer_id = (self.yes_ids if judgment == "yes" else self.no_ids)[0]
        ids = torch.cat([inputs["input_ids"], inputs["input_ids"].new_tensor([[answer_id]])], dim=1)
        extended = dict(inputs, input_ids=ids, attention_mask=torch.cat(
            [inputs["attention_mask"], inputs["attention_mask"].new_ones(1, 1)], dim=1))
        if "mm_token_type_ids" in inputs:
            extended["mm_token_type_ids"] = torch.cat(
                [inputs["mm_token_type_ids"], inputs["mm_token_type_ids"].new_zeros(1, 1)], dim=1)
        tok = self.processor.tokenizer
        out = self.backbone.generate(**extended, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        return p, judgment, text.removeprefix("Reason:").strip()
