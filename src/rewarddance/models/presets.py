"""Randomly initialised presets of REAL Hugging Face VLM architectures, built offline.

A preset is `<arch>-<size>` (e.g. `qwen2_5_vl-tiny`). `build_preset` makes the family's
real config, model class, processor (image + video processors) and a locally trained
tokenizer with the family's special tokens and a chat template shaped like the family's
own, then `save_pretrained`s everything to a directory. Loading goes through
`AutoModelForImageTextToText` / `AutoProcessor` exactly like a downloaded checkpoint.

Example:
    >>> from rewarddance.models.presets import build_preset
    >>> path = build_preset("qwen2_vl", "tiny", "/tmp/qwen2_vl-tiny")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Callable

import torch
import transformers as T
import yaml

from .tokenizer import build_tokenizer

ARCHS = ("qwen2_vl", "qwen2_5_vl", "idefics3", "smolvlm", "llava", "internvl")


@cache
def preset_table() -> dict[str, Any]:
    """The size ladder (presets.yaml) as a dict."""
    return yaml.safe_load((Path(__file__).parent / "presets.yaml").read_text())


SIZES = tuple(preset_table()["sizes"])


PRETRAINED_SUFFIX = "-shapeworld"
# Pretrained presets shipped inside the package (float16, made by `rewarddance pretrain`).
PRETRAINED_DIR = Path(__file__).parent / "pretrained"


class PresetNotBuiltError(FileNotFoundError):
    """A pretrained preset that is neither shipped nor in the cache; the message names the command."""


def parse_preset_name(name: str) -> tuple[str, str] | None:
    """'qwen2_5_vl-tiny' -> ('qwen2_5_vl', 'tiny'), also for the pretrained 'qwen2_5_vl-tiny-shapeworld';
    None when `name` is not a preset."""
    arch, _, size = name.removesuffix(PRETRAINED_SUFFIX).rpartition("-")
    return (arch, size) if arch in ARCHS and size in SIZES else None


def cache_root() -> Path:
    """The user's rewarddance cache ($REWARDDANCE_CACHE, else ~/.cache/rewarddance)."""
    return Path(os.environ.get("REWARDDANCE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "rewarddance"))


def cache_dir() -> Path:
    """Where presets are built on first use: <cache_root>/presets."""
    return cache_root() / "presets"


# ---------------------------------------------------------------- chat templates
# Shaped like each family's published template; jinja as the processors expect.
_QWEN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_INTERNVL_TEMPLATE = _QWEN_TEMPLATE.replace(
    "<|vision_start|><|image_pad|><|vision_end|>", "<IMG_CONTEXT>\n"
).replace("<|vision_start|><|video_pad|><|vision_end|>", "<video>\n").replace(
    "You are a helpful assistant.", "You are InternVL, a multimodal assistant."
)
_IDEFICS_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}: {{ message['content'] }}"
    "{% else %}{% if message['content'][0]['type'] in ['image', 'video'] %}:{% else %}: {% endif %}"
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'text' %}{{ c['text'] }}{% elif c['type'] == 'image' %}<image>"
    "{% elif c['type'] == 'video' %}<video>{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
_LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] }} "
    "{% else %}{{ message['role'] | upper }}: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>\n"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}</s>{% endif %} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass(frozen=True)
class _Family:
    tokens: list[str]
    named: dict[str, str]
    extra: dict[str, str]
    template: str
    config: Callable[[dict, Any, int], Any]
    processor: Callable[[Any, int], Any]
    model_class: str = "AutoModelForImageTextToText"


def _qwen_rope(head_dim: int) -> dict:
    half = head_dim // 2
    s = 3 * half // 8
    return {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [half - 2 * s, s, s]}


def _text(s: dict, tok, vocab: int, **extra) -> dict:
    return dict(
        vocab_size=vocab,
        hidden_size=s["hidden"],
        intermediate_size=s["intermediate"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["kv_heads"],
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **extra,
    )


def _qwen_config(cls_name: str) -> Callable:
    def make(s: dict, tok, vocab: int):
        head_dim = s["hidden"] // s["heads"]
        text = _text(s, tok, vocab, rope_parameters=_qwen_rope(head_dim))
        if cls_name == "Qwen2VLConfig":
            vision = dict(depth=s["vision_layers"], embed_dim=s["vision_hidden"], hidden_size=s["hidden"],
                          num_heads=s["vision_heads"], patch_size=8, spatial_merge_size=2)
        else:
            vision = dict(depth=s["vision_layers"], hidden_size=s["vision_hidden"], out_hidden_size=s["hidden"],
                          intermediate_size=2 * s["vision_hidden"], num_heads=s["vision_heads"], patch_size=8,
                          spatial_merge_size=2, window_size=32, fullatt_block_indexes=[s["vision_layers"] - 1])
        ids = tok.convert_tokens_to_ids
        return getattr(T, cls_name)(
            text_config=text, vision_config=vision,
            image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        )
    return make


def _qwen_processor(cls_name: str) -> Callable:
    def make(tok, px: int):
        size = {"shortest_edge": px * px, "longest_edge": px * px}
        kw = dict(size=size, patch_size=8, merge_size=2, temporal_patch_size=2)
        return getattr(T, cls_name)(
            image_processor=T.Qwen2VLImageProcessor(**kw),
            video_processor=T.Qwen2VLVideoProcessor(**kw),
            tokenizer=tok, chat_template=tok.chat_template,
        )
    return make


def _idefics_vision(s: dict, px: int) -> dict:
    return dict(hidden_size=s["vision_hidden"], intermediate_size=2 * s["vision_hidden"],
                num_hidden_layers=s["vision_layers"], num_attention_heads=s["vision_heads"],
                image_size=px, patch_size=8)


def _idefics_config(cls_name: str) -> Callable:
    def make(s: dict, tok, vocab: int):
        px = preset_table()["image_size"]
        return getattr(T, cls_name)(
            text_config=dict(model_type="llama", **_text(s, tok, vocab)),
            vision_config=_idefics_vision(s, px),
            image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=2,
        )
    return make


def _idefics3_processor(tok, px: int):
    image = T.Idefics3ImageProcessor(size={"longest_edge": px}, max_image_size={"longest_edge": px},
                                     do_image_splitting=False)
    return T.Idefics3Processor(image_processor=image, tokenizer=tok, image_seq_len=(px // 8 // 2) ** 2,
                               chat_template=tok.chat_template)


def _smolvlm_processor(tok, px: int):
    kw = dict(size={"longest_edge": px}, max_image_size={"longest_edge": px}, do_image_splitting=False)
    return T.SmolVLMProcessor(image_processor=T.SmolVLMImageProcessor(**kw),
                              video_processor=T.SmolVLMVideoProcessor(**kw),
                              tokenizer=tok, image_seq_len=(px // 8 // 2) ** 2, chat_template=tok.chat_template)


def _llava_config(s: dict, tok, vocab: int):
    px = preset_table()["image_size"]
    vision = dict(model_type="clip_vision_model", hidden_size=s["vision_hidden"],
                  intermediate_size=2 * s["vision_hidden"], num_hidden_layers=s["vision_layers"],
                  num_attention_heads=s["vision_heads"], image_size=px, patch_size=16,
                  projection_dim=s["vision_hidden"])
    return T.LlavaConfig(text_config=dict(model_type="llama", **_text(s, tok, vocab)), vision_config=vision,
                         image_token_index=tok.convert_tokens_to_ids("<image>"),
                         image_seq_length=(px // 16) ** 2, vision_feature_layer=-1)


def _llava_processor(tok, px: int):
    image = T.CLIPImageProcessor(size={"shortest_edge": px}, crop_size={"height": px, "width": px})
    return T.LlavaProcessor(image_processor=image, tokenizer=tok, patch_size=16,
                            vision_feature_select_strategy="default", num_additional_image_tokens=1,
                            chat_template=tok.chat_template)


def _internvl_config(s: dict, tok, vocab: int):
    px = preset_table()["image_size"]
    vision = dict(hidden_size=s["vision_hidden"], intermediate_size=2 * s["vision_hidden"],
                  num_hidden_layers=s["vision_layers"], num_attention_heads=s["vision_heads"],
                  image_size=[px, px], patch_size=[8, 8])
    text = dict(model_type="qwen2", **_text(s, tok, vocab))
    return T.InternVLConfig(text_config=text, vision_config=vision,
                            image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
                            image_seq_length=(px // 8 // 2) ** 2, tie_word_embeddings=False)


def _internvl_processor(tok, px: int):
    image = T.GotOcr2ImageProcessor(size={"height": px, "width": px}, crop_to_patches=False)
    video = T.InternVLVideoProcessor(size={"height": px, "width": px})
    return T.InternVLProcessor(image_processor=image, video_processor=video, tokenizer=tok,
                               image_seq_length=(px // 8 // 2) ** 2, chat_template=tok.chat_template)


_QWEN_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
_QWEN_NAMED = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": "<|endoftext|>"}
_IDEFICS_TOKENS = (["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>",
                    "<image>", "<global-img>", "<video>"]
                   + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)])
_IDEFICS_NAMED = {"bos_token": "<|im_start|>", "eos_token": "<end_of_utterance>", "pad_token": "<|endoftext|>"}
_IDEFICS_EXTRA = {"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
                  "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"}

FAMILIES: dict[str, _Family] = {
    "qwen2_vl": _Family(_QWEN_TOKENS, _QWEN_NAMED, {}, _QWEN_TEMPLATE,
                        _qwen_config("Qwen2VLConfig"), _qwen_processor("Qwen2VLProcessor")),
    "qwen2_5_vl": _Family(_QWEN_TOKENS, _QWEN_NAMED, {}, _QWEN_TEMPLATE,
                          _qwen_config("Qwen2_5_VLConfig"), _qwen_processor("Qwen2_5_VLProcessor")),
    "idefics3": _Family(_IDEFICS_TOKENS, _IDEFICS_NAMED, _IDEFICS_EXTRA, _IDEFICS_TEMPLATE,
                        _idefics_config("Idefics3Config"), _idefics3_processor),
    "smolvlm": _Family(_IDEFICS_TOKENS, _IDEFICS_NAMED, _IDEFICS_EXTRA, _IDEFICS_TEMPLATE,
                       _idefics_config("SmolVLMConfig"), _smolvlm_processor),
    "llava": _Family(["<unk>", "<s>", "</s>", "<pad>", "<image>"],
                     {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"},
                     {"image_token": "<image>"}, _LLAVA_TEMPLATE, _llava_config, _llava_processor),
    "internvl": _Family(_QWEN_TOKENS[:3] + ["<img>", "</img>", "<IMG_CONTEXT>", "<video>"], _QWEN_NAMED,
                        {"start_image_token": "<img>", "end_image_token": "</img>",
                         "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
                        _INTERNVL_TEMPLATE, _internvl_config, _internvl_processor),
}


def build_preset(arch: str, size: str, out: str | os.PathLike, *, seed: int = 0) -> Path:
    """Build a randomly initialised `arch` model of `size`, save model + processor to `out`."""
    if arch not in FAMILIES:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    fam, row, px = FAMILIES[arch], preset_table()["sizes"][size], preset_table()["image_size"]
    tok = build_tokenizer(fam.tokens, named_tokens=fam.named, extra_special_tokens=fam.extra,
                          chat_template=fam.template)
    vocab = max(len(tok), row["vocab"] or 0)
    config = fam.config(row, tok, vocab)
    torch.manual_seed(seed)
    model = getattr(T, fam.model_class).from_config(config)
    processor = fam.processor(tok, px)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def init_model(arch: str, size: str, out: str | os.PathLike, *, layout: str = "pointwise",
               task: str = "t2i-alignment", seed: int = 0) -> Path:
    """`build_preset` plus the checkpoint config: a judge directory `rd.load` reads with this layout/task."""
    from .checkpoint import CheckpointConfig, write_checkpoint_config

    out = build_preset(arch, size, out, seed=seed)
    objective = "generative-pairwise" if layout == "pairwise" else "generative-pointwise"
    write_checkpoint_config(out, CheckpointConfig(objective=objective, layout=layout, task=task))
    return out


def preset_path(name: str) -> Path:
    """The directory of preset `name`: random presets are built into the cache on first use; pretrained
    (-shapeworld) ones come from the cache (the user's own `rewarddance pretrain`) or the package."""
    parsed = parse_preset_name(name)
    if parsed is None:
        raise ValueError(f"{name!r} is not a preset name (<arch>-<size>, arch in {ARCHS}, size in {SIZES})")
    path = cache_dir() / name
    if name.endswith(PRETRAINED_SUFFIX):
        shipped = PRETRAINED_DIR / name
        for candidate in (path, shipped):  # the user's own `rewarddance pretrain` output wins
            if (candidate / "config.json").exists():
                return candidate
        arch, size = parsed
        raise PresetNotBuiltError(f"{name} is not shipped or cached yet: build it with `rewarddance pretrain "
                                  f"--arch {arch} --size {size}` (or name it as model= in `rewarddance train`, "
                                  "which builds it)")
    if not (path / "config.json").exists():
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")  # concurrent builders never see half a preset
        build_preset(*parsed, tmp)
        if path.exists():
            shutil.rmtree(tmp)
        else:
            tmp.rename(path)
    return path
