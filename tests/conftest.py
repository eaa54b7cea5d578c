"""Shared fixtures: tiny presets of the six real architectures, built once per test session."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import torch

from rewarddance.generators import ShapeWorldGenerator, ShapeWorldGeneratorConfig
from rewarddance.models.presets import ARCHS  # noqa: F401  (re-exported: the tests import the one list from here)

# a ShapeWorld generator small enough to sample in milliseconds (16 px, two UNet levels)
TINY = ShapeWorldGeneratorConfig(image_size=16, block_out_channels=[8, 16], attention_levels=[1], norm_num_groups=4,
                                 attention_heads=2, text_hidden_size=16, text_layers=1, text_heads=2)


def _perturbed(gen: ShapeWorldGenerator, seed: int = 1) -> ShapeWorldGenerator:
    """Random weights of a usable scale: diffusers zero-initialises the UNet's output conv, so a fresh
    UNet predicts v = 0 and every sample would equal its noise."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in gen.unet.conv_out.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return gen


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


@pytest.fixture(scope="session")
def gen_dir(tmp_path_factory):
    """A saved tiny ShapeWorld generator (random weights of a usable scale)."""
    path = tmp_path_factory.mktemp("rl") / "generator"
    _perturbed(ShapeWorldGenerator.from_config(TINY)).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def judges(preset_dirs, tmp_path_factory):
    """layout -> directory of a tiny Qwen2.5-VL judge saved in that layout (as training would write it)."""
    import rewarddance as rd

    root = tmp_path_factory.mktemp("rl-judges")
    out = {}
    for layout in ("pointwise", "pairwise"):
        rd.load(preset_dirs("qwen2_5_vl"), layout=layout, dtype=torch.float32).save_pretrained(root / layout)
        out[layout] = root / layout
    return out


# ------------------------------------------------------------------ RL runs (ReFL, GRPO)
def metrics_rows(out) -> list[dict]:
    """The rows of a run's metrics.jsonl."""
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_rows(a: list[dict], b: list[dict], keys, atol: float) -> None:
    """Two runs logged the same steps with the same values of `keys` (None where one has none)."""
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in keys:
            if ra.get(key) is None:
                assert rb.get(key) is None, (ra["step"], key)
            else:
                assert abs(ra[key] - rb[key]) <= atol, (ra["step"], key, ra[key], rb[key])


def run_ok(cmd: list[str], timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
    """Run a command that must succeed; a failure quotes the end of its stderr."""
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert r.returncode == 0, f"exit {r.returncode}: {' '.join(map(str, cmd))}\n{r.stderr[-3000:]}"
    return r


def kill_at_checkpoint(cmd: list[str], out, step: int, timeout: float = 600) -> None:
    """Start a recipe, SIGKILL it as soon as its checkpoint of `step` is on disk. Its output goes to
    OUT.stderr.log (next to `out`), which a failed assertion quotes."""
    log = out.parent / f"{out.name}.stderr.log"
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=f)
    deadline = time.monotonic() + timeout  # generous: the machine may be shared with other jobs
    try:
        while not (out / "checkpoints" / f"step-{step}").exists():
            assert proc.poll() is None, f"the run ended before it could be killed: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no checkpoint of step {step} after {timeout} s: " \
                                                f"{log.read_text()[-3000:]}"
            time.sleep(0.05)
    finally:  # killed at the checkpoint, or on a failed assertion (no run left behind to load later tests)
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def assert_lora_export_matches_final(gen_dir, run_dir, prompts) -> None:
    """`final/lora/` loaded onto the starting generator samples what the merged `final/` samples, and
    differs from the start far more than from the merged weights."""
    start = ShapeWorldGenerator.from_pretrained(gen_dir)
    final = ShapeWorldGenerator.from_pretrained(run_dir / "final")
    assert not any("lora" in n for n, _ in final.named_parameters())  # merged: a plain generator
    with torch.no_grad():
        before = start.sample(prompts, seeds=[5, 6], num_steps=4).images
    start.unet.load_lora_adapter(run_dir / "final" / "lora", prefix=None,
                                 weight_name="pytorch_lora_weights.safetensors")
    with torch.no_grad():
        adapted, merged = (g.sample(prompts, seeds=[5, 6], num_steps=4).images for g in (start, final))
    assert (adapted - before).abs().max() > 100 * (adapted - merged).abs().max()
    assert (adapted - merged).abs().max() < 1e-4
