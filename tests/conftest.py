"""Shared fixtures: tiny presets of the six real architectures, built once per test session."""

from __future__ import annotations

import os

import pytest
import torch

from rewarddance.models.presets import ARCHS  # noqa: F401  (re-exported: the tests import the one list from here)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Presets requested by name are built into a session directory, not the user's cache."""
    os.environ["REWARDDANCE_CACHE"] = str(tmp_path_factory.mktemp("rd-cache"))
    # equivalence checks compare in float32 (the default is bf16 on CPUs with bf16 matmul);
    # subprocesses (CLI, torchrun) inherit it. test_models checks the default itself.
    os.environ["REWARDDANCE_DTYPE"] = "float32"
    torch.set_num_threads(2)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@pytest.fixture(scope="session")
def preset_dirs(tmp_path_factory):
    """arch -> directory of its saved tiny preset (save_pretrained), built on first request."""
    from rewarddance.models.presets import build_preset

    root = tmp_path_factory.mktemp("presets")
    cache: dict[str, object] = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = build_preset(arch, "tiny", root / arch)
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def load_rm(preset_dirs):
    """(arch, layout) -> RewardModel loaded from the saved directory, the way users load checkpoints."""
    import rewarddance as rd

    cache: dict[tuple, object] = {}

    def get(arch: str, layout: str = "pointwise", **kw):
        key = (arch, layout, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = rd.load(preset_dirs(arch), layout=layout, **kw)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """A small ShapeWorld dataset (pairs with rationales, pointwise rows, video and image-to-video pairs)."""
    from rewarddance.world.dataset import build_world

    out = tmp_path_factory.mktemp("world")
    build_world(out, n=48, n_test=40, video=True, n_video=8, progress=False)
    return out


def smooth_images(n: int, size=(64, 64), seed: int = 0) -> list[torch.Tensor]:
    """Smooth random images (upsampled noise): resizing them is well-conditioned."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 3, 4, 4, generator=g)
    return list(torch.nn.functional.interpolate(small, size=size, mode="bilinear", align_corners=False))
