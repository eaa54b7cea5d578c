"""The Generator interface on a tiny ShapeWorld generator built from config (real diffusers and
transformers parts), the shipped weights, and the `rewarddance generator pretrain` recipe."""

from __future__ import annotations

import json

import pytest
import torch

from rewarddance.generators import (
    Generator,
    ShapeWorldGenerator,
    pretrained_path,
    seeded_noise,
)

from .conftest import TINY, _perturbed

TINY_OVERRIDES = ["model.image_size=16", "model.block_out_channels=[8,16]", "model.attention_levels=[1]",
                  "model.norm_num_groups=4", "model.attention_heads=2", "model.text_hidden_size=16",
                  "model.text_layers=1", "model.text_heads=2"]
PROMPTS = ["a red circle", "two blue squares", "a green star to the left of a pink ring"]


@pytest.fixture(scope="module")
def gen() -> ShapeWorldGenerator:
    return _perturbed(ShapeWorldGenerator.from_config(TINY)).eval()


@pytest.fixture
def fresh() -> ShapeWorldGenerator:
    """A generator a test may modify (LoRA, gradients)."""
    return _perturbed(ShapeWorldGenerator.from_config(TINY)).train()


@torch.no_grad()
def test_round_trip_gives_identical_samples(gen, tmp_path):
    gen.save_pretrained(tmp_path / "g")
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == [
        "generator.json", "scheduler", "text_encoder", "tokenizer", "unet"]
    loaded = ShapeWorldGenerator.from_pretrained(tmp_path / "g")
    a = gen.sample(PROMPTS, seeds=[1, 2, 3], num_steps=4)
    b = loaded.sample(PROMPTS, seeds=[1, 2, 3], num_steps=4)
    assert a.images.shape == (3, 3, 16, 16) and 0 <= a.images.min() and a.images.max() <= 1
    assert torch.equal(a.images, b.images)
    assert a.images.std() > 0.01  # not a constant image: the comparison means something


@torch.no_grad()
def test_same_seed_same_image_whatever_the_batch(gen):
    batch = gen.sample(PROMPTS, seeds=[7, 8, 9], num_steps=4).images
    alone = gen.sample(PROMPTS[1:2], seeds=[8], num_steps=4).images
    torch.testing.assert_close(batch[1], alone[0], atol=1e-5, rtol=0)
    other = gen.sample(PROMPTS[1:2], seeds=[9], num_steps=4).images
    assert (other - alone).abs().max() > 0.05


@torch.no_grad()
def test_sampling_from_a_state_continues_the_full_sample(gen):
    full = gen.sample(PROMPTS, seeds=[4, 5, 6], num_steps=6, return_trajectory=True)
    assert len(full.trajectory) == 7 and full.step_index == 6
    part = gen.sample(PROMPTS, seeds=[4, 5, 6], num_steps=6, stop_at=3)
    assert part.images is None and part.step_index == 3
    torch.testing.assert_close(part.x, full.trajectory[3], atol=1e-6, rtol=0)
    rest = gen.sample(PROMPTS, start=(part.x, 3), num_steps=6)
    torch.testing.assert_close(rest.images, full.images, atol=1e-6, rtol=0)
    torch.testing.assert_close(full.sigmas, gen.sigmas(6))
    assert full.sigmas[0] == 1 and full.sigmas[-1] == 0


@torch.no_grad()
def test_euler_step_is_the_schedulers_step(gen):
    num_steps, k = 6, 2
    x = seeded_noise([0, 1], gen.image_shape)
    cond = gen.encode_prompts(PROMPTS[:2])
    out = gen.step(x, k, cond, 3.0, num_steps)
    gen.scheduler.set_timesteps(num_steps)
    gen.scheduler.set_begin_index(k)
    expected = gen.scheduler.step(out.velocity, gen.scheduler.timesteps[k], x).prev_sample
    torch.testing.assert_close(out.prev_sample, expected, atol=1e-6, rtol=0)


@torch.no_grad()
def test_guidance_is_cfg_over_the_unets_two_predictions(gen):
    x = seeded_noise([3, 4], gen.image_shape)
    sigma = torch.tensor([0.7, 0.3])
    cond, uncond = gen.encode_prompts(PROMPTS[:2]), gen.encode_prompts(["", ""])
    t = sigma * gen.scheduler.config.num_train_timesteps
    v_cond = gen.unet(x, t, encoder_hidden_states=cond).sample
    v_uncond = gen.unet(x, t, encoder_hidden_states=uncond).sample
    torch.testing.assert_close(gen.velocity(x, sigma, cond, guidance_scale=1.0), v_cond, atol=1e-5, rtol=0)
    torch.testing.assert_close(gen.velocity(x, sigma, cond, guidance_scale=3.0),
                               v_uncond + 3.0 * (v_cond - v_uncond), atol=1e-5, rtol=0)


def test_predict_clean_and_renoise_invert_the_interpolation(gen):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, *gen.image_shape, generator=g) * 2 - 1
    eps = torch.randn(x0.shape, generator=g)
    sigma = torch.tensor([0.1, 0.5, 0.9])
    x_t = (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * eps
    torch.testing.assert_close(Generator.predict_clean(x_t, sigma, eps - x0), x0, atol=1e-5, rtol=0)

    renoised = gen.renoise(x0, 0.4, seeds=[10, 11, 12])
    eps = seeded_noise([10, 11, 12], gen.image_shape)
    torch.testing.assert_close(renoised, 0.6 * x0 + 0.4 * eps, atol=1e-6, rtol=0)
    torch.testing.assert_close(gen.predict_clean(renoised, 0.4, eps - x0), x0, atol=1e-5, rtol=0)


def test_step_gradients_reach_the_unet_then_only_lora(fresh, tmp_path):
    x = seeded_noise([0, 1], fresh.image_shape)
    out = fresh.step(x, 4, fresh.encode_prompts(PROMPTS[:2]), 3.0, 6)
    fresh.to_images(out.pred_original_sample).mean().backward()
    missing = [n for n, p in fresh.unet.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing
    fresh.zero_grad(set_to_none=True)

    fresh.add_lora(r=4)
    trainable = dict(fresh.named_parameters())
    names = [n for n, p in trainable.items() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert len(fresh.trainable_parameters()) == len(names)
    out = fresh.step(x, 4, fresh.encode_prompts(PROMPTS[:2]), 3.0, 6)
    fresh.to_images(out.pred_original_sample).mean().backward()
    assert all(trainable[n].grad is not None for n in names)
    assert any(trainable[n].grad.abs().sum() > 0 for n in names if "lora_B" in n)  # lora_A waits for B != 0
    assert all(p.grad is None for n, p in trainable.items() if n not in names)

    with torch.no_grad():  # a trained adapter: saving merges it, the loaded plain model predicts the same
        for n in names:
            if "lora_B" in n:
                trainable[n].normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
        fresh.save_pretrained(tmp_path / "merged")
        loaded = ShapeWorldGenerator.from_pretrained(tmp_path / "merged")
        cond = fresh.encode_prompts(PROMPTS[:2])
        fresh.eval()
        torch.testing.assert_close(loaded.velocity(x, 0.5, cond, 3.0), fresh.velocity(x, 0.5, cond, 3.0),
                                   atol=1e-4, rtol=1e-4)
        fresh.unet.disable_adapters()
        assert (loaded.velocity(x, 0.5, cond, 3.0) - fresh.velocity(x, 0.5, cond, 3.0)).abs().max() > 1e-3


def test_bad_arguments_are_clear_errors(gen):
    with pytest.raises(ValueError, match="one seed per prompt"):
        gen.sample(PROMPTS, seeds=[1], num_steps=2)
    with pytest.raises(ValueError, match="stop_at"):
        gen.sample(PROMPTS, seeds=[1, 2, 3], num_steps=2, stop_at=3)
    with pytest.raises(FileNotFoundError, match="generator.json"):
        ShapeWorldGenerator.from_pretrained("/nonexistent")


def test_shipped_weights_load_and_are_small():
    path = pretrained_path()
    size = sum(f.stat().st_size for f in path.rglob("*.safetensors"))
    assert size <= 10 * 2**20
    report = json.loads((path / "pretrain_report.json").read_text())
    assert report["command"].startswith("rewarddance generator pretrain") and 0 <= report["pass_rate"] <= 1
    gen = ShapeWorldGenerator.from_pretrained(path)
    with torch.no_grad():
        images = gen.sample(["a red circle"], seeds=[0], num_steps=2).images
    assert images.shape == (1, 3, report["config"]["model"]["image_size"], report["config"]["model"]["image_size"])


def test_pretrain_recipe_writes_final_and_resumes_exactly(tmp_path, capsys):
    from rewarddance.cli import main

    out = tmp_path / "run"
    args = ["generator", "pretrain", f"output_dir={out}", "max_steps=6", "batch_size=4", "warmup_steps=2",
            "save_steps=2", "log_steps=1", "eval_steps=3", "eval_prompts_per_category=1", "eval_seeds=2",
            "eval_num_steps=2",
            "tensorboard=false", "progress=false", *TINY_OVERRIDES]
    assert main(args) == 0
    rows = [json.loads(t) for t in (out / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in rows if "eval_pass_rate" in r] == [3, 6]  # every eval_steps, and at the end
    report = json.loads((out / "report.json").read_text())
    assert report["n_images"] == 8 and set(report) >= {"pass_rate_counting", "pass_rate_position", "wall_minutes"}
    assert report["command"].startswith("rewarddance generator pretrain output_dir=")
    final = ShapeWorldGenerator.from_pretrained(out / "final")
    assert final.image_shape == (3, 16, 16)
    assert (out / "final" / "samples.png").exists() and (out / "final" / "pretrain_report.json").exists()

    # killed after step 4: its last checkpoint is step-4; the rerun repeats steps 5 and 6 exactly
    import shutil

    shutil.rmtree(out / "checkpoints" / "step-6")
    shutil.rmtree(out / "final")
    capsys.readouterr()
    assert main(args) == 0
    assert "(step 4)" in capsys.readouterr().err
    rows = [json.loads(t) for t in (out / "metrics.jsonl").read_text().splitlines()]
    resumed = {r["step"]: r["loss"] for r in rows if "loss" in r}
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    for step in (5, 6):
        assert resumed[step] == pytest.approx(losses[step], rel=1e-5)

    other = [a if not a.startswith("model.block_out_channels") else "model.block_out_channels=[8,8]" for a in args]
    assert main(other) == 2  # another architecture cannot resume this run's checkpoints: a clear error
    assert "use a new output_dir" in capsys.readouterr().err


def test_pretrain_continues_from_init_from(tmp_path, gen, capsys):
    """`init_from=DIR` starts from those weights: with lr 0 the final generator is the initial one."""
    from rewarddance.cli import main

    gen.save_pretrained(tmp_path / "start")
    out = tmp_path / "run"
    args = ["generator", "pretrain", f"output_dir={out}", f"init_from={tmp_path / 'start'}", "max_steps=1", "lr=0",
            "batch_size=2", "warmup_steps=0", "eval_prompts_per_category=1", "eval_seeds=1", "eval_num_steps=2",
            "tensorboard=false", "progress=false", *TINY_OVERRIDES]
    assert main(args) == 0
    final = ShapeWorldGenerator.from_pretrained(out / "final")
    for (name, a), b in zip(gen.state_dict().items(), final.state_dict().values()):
        assert torch.equal(a, b), name
    fresh = ShapeWorldGenerator.from_config(TINY)
    assert any(not torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), final.state_dict().values()))
    capsys.readouterr()
    assert main([*args[:2], f"output_dir={tmp_path / 'other'}", f"init_from={tmp_path / 'start'}",
                 "model.image_size=32", "max_steps=1", "progress=false", "tensorboard=false"]) != 0
    assert "image_size" in capsys.readouterr().err
