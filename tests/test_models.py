"""The generative reward model on the six real architectures (tiny random presets)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import rewarddance as rd
from rewarddance.context import build_context, builtin_tasks
from rewarddance.models.presets import FAMILIES
from rewarddance.models.judge import resolve_answer_ids
from rewarddance.models.tokenizer import build_tokenizer

from .conftest import ARCHS, smooth_images

GOLDEN = Path(__file__).parent / "golden"
PROMPTS = ["a red circle", "two blue squares", "a green star to the left of a yellow ring"]


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_score_batch_and_gradients(arch, load_rm):
    """save -> load -> score in (0,1); batch == one-by-one, on the fast path and on the plain path
    with left and right padding (prompts of different lengths in one batch); grads reach pixels."""
    for layout in ("pointwise", "pairwise"):
        rm = load_rm(arch, layout)
        imgs = smooth_images(3, seed=1)
        refs = smooth_images(3, seed=2) if layout == "pairwise" else None
        scored = rm.prefix_scorer.scored
        batch = rm.score(PROMPTS, imgs, references=refs)
        assert rm.prefix_scorer.scored - scored == 3 and rm.prefix_scorer.fallbacks == 0  # the fast path ran
        assert all(0.0 < s < 1.0 for s in batch)
        single = [rm.score(p, [i], references=None if refs is None else [r])[0]
                  for p, i, r in zip(PROMPTS, imgs, refs or [None] * 3)]
        assert np.ptp(single) > 100 * 1e-5  # the rewards differ far more than the tolerance
        np.testing.assert_allclose(batch, single, atol=1e-5)
        for side in ("left", "right"):
            plain = load_rm(arch, layout, fast=False, padding_side=side)
            mask = plain.judge.encode(plain.contexts(PROMPTS, imgs, references=refs))["attention_mask"]
            assert not mask[:, 0 if side == "left" else -1].all()  # the batch really is padded, on that side
            np.testing.assert_allclose(plain.score(PROMPTS, imgs, references=refs), single, atol=1e-5)
        x = torch.stack(imgs).requires_grad_(True)
        r = rm.reward_fn()(x, PROMPTS, references=refs)
        assert r.shape == (3,) and r.requires_grad
        r.sum().backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        np.testing.assert_allclose(r.detach().numpy(), single, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_torch_preprocessing_matches_processor(arch, load_rm):
    """The differentiable path (float tensors through the family's torch processor) equals the
    processor's own output on the same image given as a uint8 PIL image."""
    rm = load_rm(arch)
    ip = rm.processor.image_processor
    for size, tol in (((64, 64), 1e-5), ((48, 80), 0.03)):
        x = smooth_images(2, size=size, seed=3)
        x8 = [(t * 255).round().to(torch.uint8) for t in x]
        pil = [Image.fromarray(t.permute(1, 2, 0).numpy()) for t in x8]
        ours = ip(images=[t.float() / 255 for t in x8], do_rescale=False, return_tensors="pt")["pixel_values"]
        ref = ip(images=pil, return_tensors="pt")["pixel_values"]
        assert ours.shape == ref.shape
        assert (ours - ref).abs().max().item() < tol, (arch, size)


@pytest.mark.parametrize("arch", ARCHS)
def test_rendered_prompts_match_golden(arch, load_rm):
    """The exact text each family's chat template renders for each layout (and a CoT target)."""
    rm = load_rm(arch)
    img = torch.zeros(3, 64, 64)
    parts = []
    for layout in ("pointwise", "pairwise"):
        ctx = build_context("t2i-alignment", layout, "a red circle", img, reference=img)
        parts.append(rm.processor.apply_chat_template(ctx.messages, add_generation_prompt=True, tokenize=False))
    ctx = build_context("t2i-alignment", "pairwise", "a red circle", img, reference=img,
                        target="yes\nReason: image 2 has the red circle")
    parts.append(rm.processor.apply_chat_template(ctx.messages, tokenize=False))
    text = "\n=====\n".join(parts)
    path = GOLDEN / f"{arch}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_every_task_and_layout_golden():
    """Family-independent golden text of every built-in task in both layouts (images as <image>)."""
    img, video = torch.zeros(3, 8, 8), torch.zeros(2, 3, 8, 8)
    out = []
    for name, task in builtin_tasks().items():
        for layout in ("pointwise", "pairwise"):
            cand = video if task.is_video else img
            ctx = build_context(name, layout, "a red circle moving up" if task.is_video else "a red circle", cand,
                                reference=cand, condition=img if task.needs_condition else None)
            text = "".join(c["text"] if c["type"] == "text" else "<image>" for c in ctx.messages[0]["content"])
            out.append(f"## {name} / {layout} ({len(ctx.images)} images)\n{text}")
    path = GOLDEN / "tasks.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text("\n\n".join(out))
    assert "\n\n".join(out) == path.read_text()


def test_answer_tokens_resolved_per_family(load_rm):
    for arch in ARCHS:
        rm = load_rm(arch)
        tok = rm.processor.tokenizer
        assert tok.decode([rm.judge.yes_ids[0]]).strip() == "yes" and tok.decode([rm.judge.no_ids[0]]).strip() == "no"
        assert {tok.decode([i]).strip() for i in rm.judge.yes_ids} <= {"yes", "Yes"}


def test_answer_split_into_several_tokens_fails_clearly(load_rm):
    """A tokenizer whose vocabulary cannot hold 'yes' as one token is refused with a clear error."""
    import transformers as T

    fam = FAMILIES["qwen2_vl"]
    tok = build_tokenizer(fam.tokens, vocab_size=270, named_tokens=fam.named, chat_template=fam.template)
    proc = T.Qwen2VLProcessor(image_processor=load_rm("qwen2_vl").processor.image_processor,
                              video_processor=load_rm("qwen2_vl").processor.video_processor,
                              tokenizer=tok, chat_template=tok.chat_template)
    with pytest.raises(ValueError, match="several tokens"):
        resolve_answer_ids(proc, "yes")


def _paligemma(vocab: int, image_token_id: int, softcap: float | None):
    """A tiny PaliGemma (Gemma3 text): a real family that soft-caps its logits after the LM head."""
    import transformers as T

    text = dict(model_type="gemma3_text", vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, head_dim=32, final_logit_softcapping=softcap)
    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, image_size=64, patch_size=16)
    torch.manual_seed(0)
    return T.PaliGemmaForConditionalGeneration(T.PaliGemmaConfig(
        text_config=text, vision_config=vision, projection_dim=64, hidden_size=64, vocab_size=vocab,
        image_token_index=image_token_id))


def test_head_scores_are_the_models_own_logits(load_rm, preset_dirs, tmp_path):
    """The LM-head check every load runs passes for the six families (and in bfloat16); a family
    that soft-caps its logits after the head is refused at load time, the same model without the
    cap loads."""
    for arch in ARCHS:
        load_rm(arch).judge.check_head()
    load_rm("qwen2_5_vl", dtype=torch.bfloat16).judge.check_head()
    proc = load_rm("llava").processor  # any processor: the check reads only the answer tokens
    vocab, image_token_id = len(proc.tokenizer), proc.tokenizer.convert_tokens_to_ids("<image>")
    for softcap in (None, 30.0):
        path = tmp_path / f"paligemma-{softcap}"
        _paligemma(vocab, image_token_id, softcap).save_pretrained(path)
        proc.save_pretrained(path)
        if softcap is None:
            assert 0 < rd.load(path).score("a red circle", smooth_images(1))[0] < 1
        else:
            with pytest.raises(ValueError, match="final_logit_softcapping"):
                rd.load(path)


def test_vocab_normalisation_and_one_forward_logits(load_rm):
    """Full-vocabulary P(yes) is in (0,1), below the {yes,no}-normalised one's total mass."""
    rm_yn = load_rm("qwen2_vl")
    rm_v = load_rm("qwen2_vl", normalize="vocab")
    imgs = smooth_images(2)
    yn, voc = rm_yn.score(PROMPTS[:2], imgs), rm_v.score(PROMPTS[:2], imgs)
    assert all(0 < v < 1 for v in voc)
    # reference: the full forward's last-position softmax, computed the slow way
    inputs = rm_v.judge.encode(rm_v.contexts(PROMPTS[:2], imgs))
    with torch.no_grad():
        logits = rm_v.model(**inputs).logits[:, -1].float()
    p = logits.softmax(-1)[:, rm_v.judge.yes_ids].sum(1)
    np.testing.assert_allclose(voc, p.numpy(), atol=1e-5)
    lyn = logits[:, rm_yn.judge.yes_ids].logsumexp(1) - logits[:, rm_yn.judge.no_ids].logsumexp(1)
    np.testing.assert_allclose(yn, torch.sigmoid(lyn).numpy(), atol=1e-5)


def test_pairwise_layout_needs_references(load_rm):
    rm = load_rm("qwen2_vl", "pairwise")
    with pytest.raises(ValueError, match="pass references"):
        rm.score("a red circle", smooth_images(1))


def test_compare_symmetric_and_rank(load_rm):
    for layout in ("pairwise", "pointwise"):
        rm = load_rm("idefics3", layout)
        a, b, c = smooth_images(3, seed=7)
        pab, pba = rm.compare("a red circle", a, b), rm.compare("a red circle", b, a)
        assert 0 < pab < 1 and math.isclose(pab + pba, 1.0, abs_tol=1e-5)
        order = rm.rank("a red circle", [a, b, c])
        assert sorted(order) == [0, 1, 2]
        if layout == "pointwise":
            s = rm.score("a red circle", [a, b, c])
            assert order == sorted(range(3), key=lambda i: -s[i])


def test_preset_by_name_is_built_and_cached():
    rm = rd.load("llava-tiny")
    assert type(rm.model).__name__ == "LlavaForConditionalGeneration"
    assert (Path(os.environ["REWARDDANCE_CACHE"]) / "presets" / "llava-tiny" / "config.json").exists()


def test_video_and_image_to_video_scoring(load_rm, tmp_path):
    from rewarddance.media import write_video

    rm = load_rm("qwen2_5_vl")
    frames = torch.stack(smooth_images(8, seed=4))
    path = write_video(tmp_path / "clip.mp4", frames)
    s_path = rm.score("a red circle moving up", [path], task="t2v-overall")
    s_frames = rm.score("a red circle moving up", [frames], task="t2v-overall")
    assert 0 < s_path[0] < 1 and 0 < s_frames[0] < 1
    with pytest.raises(ValueError, match="conditions"):
        rm.score("a red circle moving up", [frames], task="i2v-overall")
    s_i2v = rm.score("a red circle moving up", [frames], task="i2v-overall", conditions=frames[0])
    assert 0 < s_i2v[0] < 1
    x = frames[None].clone().requires_grad_(True)
    rm.reward_fn("t2v-overall")(x, "a red circle moving up").sum().backward()
    assert x.grad.abs().sum() > 0


def test_pretrained_preset_lookup(tmp_path, monkeypatch):
    """-shapeworld presets: the user's cache first, then the shipped copy; otherwise a clear error naming
    the command that builds it."""
    from rewarddance.models.presets import PRETRAINED_DIR, PresetNotBuiltError, preset_path

    name = "qwen2_5_vl-tiny-shapeworld"
    monkeypatch.setenv("REWARDDANCE_CACHE", str(tmp_path))
    assert preset_path(name) == PRETRAINED_DIR / name and (PRETRAINED_DIR / name / "config.json").exists()
    own = tmp_path / "presets" / name
    own.mkdir(parents=True)
    (own / "config.json").write_text("{}")
    assert preset_path(name) == own
    with pytest.raises(PresetNotBuiltError, match="rewarddance pretrain --arch llava --size tiny"):
        preset_path("llava-tiny-shapeworld")


def test_default_dtype_is_bf16_where_the_hardware_has_bf16_matmul(preset_dirs, monkeypatch):
    import rewarddance as rd
    from rewarddance import _cpu_has_bf16_matmul

    monkeypatch.delenv("REWARDDANCE_DTYPE")
    for has_bf16, dtype in ((True, torch.bfloat16), (False, torch.float32)):  # the rule, both ways
        monkeypatch.setattr(rd, "_cpu_has_bf16_matmul", lambda: has_bf16)
        assert rd.default_dtype("cpu") == dtype
    monkeypatch.undo()
    monkeypatch.delenv("REWARDDANCE_DTYPE")
    expected = torch.bfloat16 if _cpu_has_bf16_matmul() else torch.float32  # and this machine's answer
    assert rd.default_dtype("cpu") == expected
    rm = rd.load(preset_dirs("qwen2_5_vl"))
    assert rm.dtype == expected and 0 < rm.score("a red circle", smooth_images(1, seed=3))[0] < 1
    assert rd.load(preset_dirs("qwen2_5_vl"), dtype=torch.float32).dtype == torch.float32  # one argument away
    monkeypatch.setenv("REWARDDANCE_DTYPE", "float32")
    assert rd.default_dtype("cpu") == torch.float32
    monkeypatch.setenv("REWARDDANCE_DTYPE", "float64")
    with pytest.raises(ValueError, match="REWARDDANCE_DTYPE"):
        rd.default_dtype("cpu")


def test_judgment_head_rows_run_in_float32_under_bfloat16():
    """The answer rows (and a value head) are applied in float32 to bf16 hidden states, under autocast too:
    rounded to bf16, rewards that differ by 1e-3 tie (a near-chance judge scored 37% instead of 58%)."""
    from rewarddance.models.judge import _float32_rows

    g = torch.Generator().manual_seed(0)
    h, w = torch.randn(64, 256, generator=g).bfloat16(), torch.randn(2, 256, generator=g).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _float32_rows(h, w, None)
        coarse = (h @ w.T).float()  # what the bf16 head gives
    exact = h.double() @ w.double().T
    assert out.dtype == torch.float32
    assert (out.double() - exact).abs().max() < 1e-4 < (coarse.double() - exact).abs().max()
