"""The fast scoring path (shared-prefix KV cache, vision-feature reuse, sorted batches) gives the
same rewards as the plain path: one full forward per (candidate, reference) sequence."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import pytest
import torch

from rewarddance.context import get_task
from rewarddance.models.fast import FeatureCache, LayoutMismatchError, content_key

from .conftest import ARCHS, smooth_images

PROMPTS = ["a red circle"] * 3 + ["two blue squares and a green star"] * 2 + ["a red circle"]


def _plain(rm, prompts, cands, refs=None, task=None):
    with torch.inference_mode():
        return rm.judge.rewards(rm.contexts(prompts, cands, references=refs, task=task)).tolist()


@contextmanager
def _on_the_fast_path(rm, n: int):
    """Assert that the block scored `n` items on the shared-prefix path and none fell back."""
    scored = rm.prefix_scorer.scored
    yield
    assert rm.prefix_scorer.scored - scored == n and rm.prefix_scorer.fallbacks == 0


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layout", ["pointwise", "pairwise"])
def test_fast_equals_plain(arch, layout, load_rm):
    rm = load_rm(arch, layout)
    assert rm.prefix_scorer is not None
    cands = smooth_images(6, seed=11)
    r1, r2 = smooth_images(2, seed=12)
    refs = [r1, r1, r2, r1, r1, r2] if layout == "pairwise" else None  # groups of several sizes
    plain = _plain(rm, PROMPTS, cands, refs)
    rm.prefix_scorer.features.clear()
    with _on_the_fast_path(rm, 2 * len(cands)):
        cold = rm.score(PROMPTS, cands, references=refs, batch_size=4)
        warm = rm.score(PROMPTS, cands, references=refs, batch_size=4)  # vision features from the cache
    np.testing.assert_allclose(cold, plain, atol=1e-5)
    np.testing.assert_allclose(warm, plain, atol=1e-5)
    assert rm.prefix_scorer.features.hits >= len(cands)
    for task in ("plain", "t2i-overall"):
        with _on_the_fast_path(rm, len(cands)):
            fast = rm.score(PROMPTS, cands, references=refs, task=task)
        np.testing.assert_allclose(fast, _plain(rm, PROMPTS, cands, refs, task), atol=1e-5)


# one prompt, images of several shapes: equal token counts with different Qwen grids, InternVL tiling
# the non-square ones (80 tokens against 16)
MIXED = [(64, 64), (32, 128), (128, 32), (64, 64)]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layout", ["pointwise", "pairwise"])
def test_fast_equals_plain_for_mixed_shapes(arch, layout, load_rm):
    rm = load_rm(arch, layout)
    imgs = [smooth_images(1, size, seed=30 + i)[0] for i, size in enumerate(MIXED)]
    refs = [imgs[1], imgs[0], imgs[3], imgs[2]] if layout == "pairwise" else None  # each of another shape
    prompts = ["a red circle"] * len(imgs)
    plain = _plain(rm, prompts, imgs, refs)
    assert np.ptp(plain) > 100 * 1e-5  # the rewards differ far more than the tolerance
    with _on_the_fast_path(rm, len(imgs)):
        fast = rm.score(prompts, imgs, references=refs)
    np.testing.assert_allclose(fast, plain, atol=1e-5)


def test_layouts_are_what_the_processor_makes(load_rm):
    """Raw sizes are not layouts: LLaVA resizes every size to one layout; Qwen gives 64×64 and 32×128
    the same token count but other grids (3-D positions); InternVL tiles the non-square image."""
    square, wide = smooth_images(1, (64, 64))[0], smooth_images(1, (32, 128))[0]
    a, b = load_rm("llava").prefix_scorer.encode_images([square, wide])
    assert a.layout == b.layout
    a, b = load_rm("qwen2_vl").prefix_scorer.encode_images([square, wide])
    assert len(a.features) == len(b.features) and a.layout != b.layout
    a, b = load_rm("internvl").prefix_scorer.encode_images([square, wide])
    assert len(b.features) > len(a.features)


def test_layout_mismatch_falls_back_to_the_plain_path(preset_dirs, monkeypatch, caplog):
    """A group whose images do not fit its rendered layout is scored on the plain path, counted and
    logged; the other groups stay on the fast path. The fault is injected by giving every image one
    layout key, so that the 64×64 and 48×80 images (16 and 24 tokens) land in one group."""
    import rewarddance as rd

    rm = rd.load(preset_dirs("qwen2_vl"))
    scorer = rm.prefix_scorer
    encode = scorer.encode_images
    monkeypatch.setattr(scorer, "encode_images",
                        lambda images, batch_size=16: [replace(e, layout=()) for e in encode(images, batch_size)])
    imgs = [smooth_images(1, size, seed=40 + i)[0] for i, size in enumerate([(64, 64), (48, 80), (64, 64)])]
    prompts = ["a red circle", "a red circle", "a blue star"]
    with caplog.at_level(logging.WARNING, logger="rewarddance.models.reward_model"):
        fast = rm.score(prompts, imgs)
    assert scorer.fallbacks == 2 and scorer.scored == 1
    assert "fell back to the plain path for 2 item(s)" in caplog.text
    np.testing.assert_allclose(fast, _plain(rm, prompts, imgs), atol=1e-5)
    with pytest.raises(LayoutMismatchError):
        scorer.rewards(get_task("t2i-alignment"), "pointwise", "a red circle", (imgs[0], None),
                       [(None, encode(imgs[:2]))], 16)


def test_compare_fast_equals_plain(load_rm):
    rm = load_rm("qwen2_5_vl", "pairwise")
    a, b = smooth_images(2, seed=13)
    p = _plain(rm, ["a red circle"] * 2, [a, b], [b, a])
    with _on_the_fast_path(rm, 2):  # both orders
        fast = rm.compare("a red circle", a, b)
    assert abs(fast - (p[0] + 1 - p[1]) / 2) < 2e-5  # the two orders differ by ~8e-4 here


def test_videos_take_the_plain_path(load_rm):
    rm = load_rm("llava")
    clips = [torch.stack(smooth_images(4, seed=s)) for s in (15, 16)]
    scored = rm.prefix_scorer.scored
    np.testing.assert_allclose(rm.score("a red circle moving up", clips, task="t2v-overall"),
                               _plain(rm, ["a red circle moving up"] * 2, clips, task="t2v-overall"), atol=1e-5)
    assert rm.prefix_scorer.scored == scored  # none of them on the image-only shared-prefix path


def test_fast_path_can_be_disabled(preset_dirs):
    import rewarddance as rd

    rm = rd.load(preset_dirs("qwen2_vl"), fast=False)
    assert rm.prefix_scorer is None
    cands = smooth_images(3, seed=14)
    np.testing.assert_allclose(rm.score("a red circle", cands), _plain(rm, ["a red circle"] * 3, cands), atol=1e-6)


def test_feature_cache_is_bounded_lru():
    cache = FeatureCache(max_items=2)
    keys = [content_key(torch.full((3, 4, 4), float(i))) for i in range(3)]
    assert len(set(keys)) == 3 and content_key(torch.zeros(3, 4, 4)) == keys[0]
    for i, k in enumerate(keys):
        cache.put(k, torch.tensor([i]))
    assert cache.get(keys[0]) is None and cache.get(keys[2]).item() == 2 and len(cache._items) == 2


def test_feature_cache_follows_the_weights(preset_dirs, tmp_path):
    """After an optimizer step the fast path serves features of the NEW weights: its scores equal a
    fresh load of the saved, updated checkpoint (and differ from the scores before the step)."""
    import rewarddance as rd

    rm = rd.load(preset_dirs("qwen2_5_vl"), layout="pairwise")
    cands, refs = smooth_images(3, seed=21), smooth_images(3, seed=22)
    before = rm.score("a red circle", cands, references=refs)
    assert rm.prefix_scorer.features.misses > 0
    opt = torch.optim.SGD(rm.judge.parameters(), lr=0.5)
    loss = rm.reward_fn()(torch.stack(cands), "a red circle", references=refs).sum()
    loss.backward()
    opt.step()
    after = rm.score("a red circle", cands, references=refs)
    rm.save_pretrained(tmp_path / "stepped")
    fresh = rd.load(tmp_path / "stepped").score("a red circle", cands, references=refs)
    np.testing.assert_allclose(after, fresh, atol=1e-5)
    assert np.abs(np.array(after) - np.array(before)).max() > 1e-3


def test_feature_cache_follows_the_image_processor(preset_dirs):
    """Changing the processor's settings after scoring re-encodes: no stale vision features."""
    import rewarddance as rd

    rm = rd.load(preset_dirs("qwen2_5_vl"), dtype=torch.float32)
    imgs = smooth_images(2, seed=23)
    before = rm.score("a red circle", imgs)
    rm.processor.image_processor.image_mean = [0.0, 0.0, 0.0]
    plain = rd.load(preset_dirs("qwen2_5_vl"), dtype=torch.float32, fast=False)
    plain.processor.image_processor.image_mean = [0.0, 0.0, 0.0]
    expected = plain.score("a red circle", imgs)
    np.testing.assert_allclose(rm.score("a red circle", imgs), expected, atol=1e-5)
    assert np.abs(np.array(expected) - before).max() > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_differentiable_prefix_reward_equals_plain_path(arch, load_rm):
    """ReFL's cached reward: the prompt+reference prefix runs once without gradients, only the
    candidates' tokens are differentiated. Rewards and pixel gradients equal the plain path's
    (one full differentiable forward per sequence) for both layouts, two prompts and two references,
    and a second call reuses the cached prefix."""
    for layout in ("pairwise", "pointwise"):
        fast, plain = load_rm(arch, layout), load_rm(arch, layout, fast=False)
        x = torch.stack(smooth_images(4, seed=31))
        prompts = ["a red circle", "a red circle", "two blue squares", "two blue squares"]
        ref_a, ref_b = smooth_images(2, seed=32)
        refs = [ref_a, ref_a, ref_b, ref_a] if layout == "pairwise" else None
        out = {}
        for name, rm in (("fast", fast), ("plain", plain)):
            xi = x.clone().requires_grad_(True)
            r = rm.reward_fn()(xi, prompts, references=refs)
            (r * torch.tensor([1.0, -2.0, 3.0, 0.5])).sum().backward()
            out[name] = (r.detach(), xi.grad)
        assert np.ptp(out["plain"][0].numpy()) > 1e-3  # rewards differ far more than the tolerance
        torch.testing.assert_close(out["fast"][0], out["plain"][0], atol=1e-5, rtol=0)
        g_fast, g_plain = out["fast"][1], out["plain"][1]
        assert g_plain.abs().max() > 1e-4
        assert (g_fast - g_plain).abs().max() <= 1e-3 * g_plain.abs().max()
        assert fast.prefix_scorer.fallbacks == 0 and plain.prefix_scorer is None
        misses, scored = fast.prefix_scorer.prefixes.misses, fast.prefix_scorer.scored
        with torch.no_grad():
            again = fast.reward_fn()(x, prompts, references=refs)
        torch.testing.assert_close(again, out["fast"][0], atol=1e-6, rtol=0)
        assert fast.prefix_scorer.prefixes.misses == misses and fast.prefix_scorer.scored == scored + 4


@pytest.mark.parametrize("arch", ARCHS)
def test_layer_checkpointed_reward_equals_plain_path(arch, preset_dirs):
    """`reward_fn(checkpointing=True)` (ReFL's rm_gradient_checkpointing): the frozen judge's layers keep only
    their inputs for the backward pass and recompute the rest. Rewards and pixel gradients equal the plain
    path's; far fewer bytes are saved for the backward pass (so the layers really were checkpointed); the
    judge is left in eval mode, its layers unflagged."""
    import rewarddance as rd

    rm = rd.load(preset_dirs(arch), layout="pairwise", fast=False)  # its own copy: it is frozen here
    rm.judge.requires_grad_(False).eval()
    x = torch.stack(smooth_images(3, seed=41))
    prompts = ["a red circle", "two blue squares", "a red circle"]
    refs = smooth_images(1, seed=42) * 3
    out = {}
    for checkpointing in (False, True, True):  # twice: a second call must find the judge as the first did
        saved = [0]

        def pack(t, saved=saved):
            saved[0] += t.numel() * t.element_size()
            return t

        xi = x.clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            r = rm.reward_fn(checkpointing=checkpointing)(xi, prompts, references=refs)
        (r * torch.tensor([1.0, -2.0, 3.0])).sum().backward()
        out[checkpointing] = (r.detach(), xi.grad, saved[0])
        if not checkpointing:  # the hooks the plain path itself leaves (a family's first call may add one)
            hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in rm.judge.modules()]
    assert np.ptp(out[False][0].numpy()) > 1e-3  # rewards differ far more than the tolerance
    torch.testing.assert_close(out[True][0], out[False][0], atol=1e-5, rtol=0)
    g_ckpt, g_plain = out[True][1], out[False][1]
    assert g_plain.abs().max() > 1e-4 and (g_ckpt - g_plain).abs().max() <= 1e-3 * g_plain.abs().max()
    assert out[True][2] < 0.5 * out[False][2], (out[True][2], out[False][2])
    assert not any(m.training for m in rm.judge.modules())
    assert not any(getattr(m, "gradient_checkpointing", False) for m in rm.judge.modules())
    # no hook left behind, call after call
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in rm.judge.modules()] == hooks
