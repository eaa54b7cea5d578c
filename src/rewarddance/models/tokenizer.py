"""A small byte-level BPE tokenizer built offline, for randomly initialised presets.

Real checkpoints bring their own tokenizer; presets cannot download one, so we train a
byte-level BPE (the kind Qwen, Llama-3 and SmolLM use) on a synthetic corpus made of
the words the judge will read: the context builder's instructions, ShapeWorld's
vocabulary and the answer words. The answer words appear line-initially and after a
space so that "yes", " yes", "Yes" ... each merge into ONE token.
"""

from __future__ import annotations

import itertools

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

ANSWER_WORDS = ("yes", "no", "Yes", "No", "YES", "NO")

_VOCAB_WORDS = (
    "image video images videos prompt better worse than the a an of to is are and or it "
    "this that which with without from for in on by as be one two three four five "
    "first second reference candidate frame frames motion moving left right up down above below "
    "circle circles square squares triangle triangles star stars cross crosses ring rings "
    "red green blue yellow purple orange cyan pink small large colour color shape count "
    "object objects position quality alignment prompt-following visual aesthetic consistency "
    "noise blur sharp clean detailed realistic artifacts answer question judge evaluate "
    "Does Is Are Here Answer Compare Evaluate Look Given Task Criteria Reason because follows "
    "generated generation text-to-image text-to-video image-to-video condition start starts "
    "shows show has have contains missing extra wrong swapped correct match matches asks"
).split()


def _corpus() -> list[str]:
    from ..context import builtin_tasks

    lines = []
    for task in builtin_tasks().values():  # the instructions, verbatim: realistic token counts
        lines += [task.pointwise, task.pairwise, *task.criteria] * 20
    for a, w in itertools.product(ANSWER_WORDS, _VOCAB_WORDS):
        lines += [f"{a}", f"{a}, {w}", f"{w} {a}", f"{a}. {w} {w}"]
    for w1, w2 in itertools.product(_VOCAB_WORDS, repeat=2):
        lines.append(f"{w1} {w2}.")
    return lines


def build_tokenizer(
    special_tokens: list[str],
    *,
    vocab_size: int = 2048,
    named_tokens: dict[str, str] | None = None,
    extra_special_tokens: dict[str, str] | None = None,
    chat_template: str | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on the synthetic corpus and wrap it as a HF fast tokenizer.

    `special_tokens` are added as whole tokens (image placeholders, chat markers);
    `named_tokens` maps HF roles (bos_token, eos_token, pad_token, unk_token) to them;
    `extra_special_tokens` are the family-specific named tokens processors look up
    (e.g. InternVL's `context_image_token`).
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        extra_special_tokens=extra_special_tokens or {},
        **(named_tokens or {}),
    )
    if chat_template is not None:
        hf.chat_template = chat_template
    return hf
