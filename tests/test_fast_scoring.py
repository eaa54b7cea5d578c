"""The fast scoring path (shared-prefix KV cache, vision-feature reuse, sorted batches) gives the
same rewards as the plain path: one full forward per (candidate, reference) sequence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rewarddance.models.fast import FeatureCache, content_key

from .conftest import ARCHS, smooth_images

PROMPTS = ["a red circle"] * 3 + ["two blue squares and a green star"] * 2 + ["a red circle"]


def _plain(rm, prompts, cands, refs=None, task=None):
    with torch.inference_mode():
        return rm.judge.rewards(rm.contexts(prompts, cands, references=refs, task=task)).tolist()


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
    cold = rm.score(PROMPTS, cands, references=refs, batch_size=4)
    warm = rm.score(PROMPTS, cands, references=refs, batch_size=4)  # vision features from the cache
    np.testing.assert_allclose(cold, plain, atol=1e-4)
    np.testing.assert_allclose(warm, plain, atol=1e-4)
    assert rm.prefix_scorer.features.hits >= len(cands)
    for task in ("plain", "t2i-overall"):
        np.testing.assert_allclose(rm.score(PROMPTS, cands, references=refs, task=task),
                                   _plain(rm, PROMPTS, cands, refs, task), atol=1e-4)


def test_compare_fast_equals_plain(load_rm):
    rm = load_rm("qwen2_5_vl", "pairwise")
    a, b = smooth_images(2, seed=13)
    p = _plain(rm, ["a red circle"] * 2, [a, b], [b, a])
    assert abs(rm.compare("a red circle", a, b) - (p[0] + 1 - p[1]) / 2) < 1e-4


def test_videos_take_the_plain_path(load_rm):
    rm = load_rm("llava")
    clips = [torch.stack(smooth_images(4, seed=s)) for s in (15, 16)]
    np.testing.assert_allclose(rm.score("a red circle moving up", clips, task="t2v-overall"),
                               _plain(rm, ["a red circle moving up"] * 2, clips, task="t2v-overall"), atol=1e-5)


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
