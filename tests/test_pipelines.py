"""Real diffusers pipelines as Generators: tiny SD3, Stable Diffusion (DDIM), Wan text-to-video and
image-to-video pipelines built from configs, saved and loaded with `from_pretrained(dir)`; sampling
equals the pipeline's own `__call__`; ReFL and GRPO gradients reach the LoRA adapters; the exported
LoRA loads into a fresh pipeline with `load_lora_weights`; the RL recipes run on them unchanged."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import rewarddance as rd
from rewarddance.generators import (SD3Generator, StableDiffusionGenerator, WanGenerator, WanImageToVideoGenerator,
                                    load_generator)
from rewarddance.generators.tiny_pipelines import build_tiny_pipeline
from rewarddance.rl.frames import video_reward
from rewarddance.rl.grpo import grpo_loss, sample_with_logprob, step_log_prob
from rewarddance.rl.refl import refl_forward

PROMPTS = ["a red circle", "two blue squares"]
KINDS = {"sd3": SD3Generator, "sd": StableDiffusionGenerator, "wan": WanGenerator, "wan-i2v": WanImageToVideoGenerator}


@pytest.fixture(scope="session")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return {kind: build_tiny_pipeline(kind, root / kind) for kind in KINDS}


@pytest.fixture(scope="session")
def condition_image():
    g = torch.Generator().manual_seed(0)
    return torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(16, 16), mode="bilinear")[0]


def _load(pipelines, kind, condition_image):
    gen = load_generator(pipelines[kind])
    assert type(gen) is KINDS[kind]
    if kind == "wan-i2v":
        gen.set_condition_images(PROMPTS, [condition_image] * len(PROMPTS))
    return gen


def _pipeline_call(gen, kind, latents, condition_image, steps=4, guidance=2.0):
    """The pipeline's own __call__ from the same starting latents (its output in [0, 1])."""
    o = gen.options
    kw = {"height": o["height"], "width": o["width"], "num_inference_steps": steps, "guidance_scale": guidance,
          "output_type": "pt"}
    if kind in ("sd3", "wan", "wan-i2v"):
        kw["max_sequence_length"] = o["max_sequence_length"]
    if kind.startswith("wan"):
        kw["num_frames"] = o["num_frames"]
    if kind == "wan-i2v":  # the pipeline takes one condition image per call
        pil = Image.fromarray((condition_image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
        return torch.cat([torch.as_tensor(gen.pipe(image=pil, prompt=[p], latents=latents[i:i + 1], **kw).frames)
                          for i, p in enumerate(PROMPTS)])
    out = gen.pipe(prompt=PROMPTS, latents=latents, **kw)
    return torch.as_tensor(out.frames if kind == "wan" else out.images)


@pytest.mark.parametrize("kind", list(KINDS))
def test_adapter_sampling_equals_the_pipelines_own_call(pipelines, condition_image, kind):
    gen = _load(pipelines, kind, condition_image)
    with torch.no_grad():
        ours = gen.sample(PROMPTS, seeds=[0, 1], num_steps=4, guidance_scale=2.0).images
        latents = gen.initial_noise([0, 1], 4)
        if kind == "sd":  # the pipeline starts from unit noise; the flow view divides it by alpha + sigma
            _, a, s = gen._schedule_at(gen.sigmas(4)[:1])
            latents = latents * float(a + s)
        theirs = _pipeline_call(gen, kind, latents, condition_image)
    assert ours.shape == theirs.shape == ((2, 3, 32, 32) if kind in ("sd3", "sd") else (2, 5, 3, 16, 16))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert float((ours[0] - ours[1]).abs().max()) > 0.01  # other seed and prompt: far beyond the tolerance


@pytest.mark.parametrize("kind", ["sd3", "sd", "wan"])
def test_exported_lora_loads_into_a_fresh_pipeline(pipelines, condition_image, kind, tmp_path):
    """save_lora -> `pipe.load_lora_weights(dir)` on a freshly loaded pipeline: the same samples as the
    adapted generator, different from the base; save_pretrained -> a merged pipeline directory, same."""
    from diffusers import DiffusionPipeline

    gen = _load(pipelines, kind, condition_image)
    gen.add_lora(r=4)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # LoRA's B starts at zero: give the adapters (seeded) weights that change the output
        for name, p in gen.denoiser.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        adapted = gen.sample(PROMPTS, seeds=[0, 1], num_steps=3, guidance_scale=2.0).images
        latents = gen.initial_noise([0, 1], 3)
        if kind == "sd":
            _, a, s = gen._schedule_at(gen.sigmas(3)[:1])
            latents = latents * float(a + s)
    gen.save_lora(tmp_path / "lora")
    gen.save_pretrained(tmp_path / "merged")

    fresh = load_generator(pipelines[kind])
    assert isinstance(fresh.pipe, DiffusionPipeline)
    with torch.no_grad():
        base = _pipeline_call(fresh, kind, latents, condition_image, steps=3)
    fresh.pipe.load_lora_weights(tmp_path / "lora")
    with torch.no_grad():
        loaded = _pipeline_call(fresh, kind, latents, condition_image, steps=3)
        merged = load_generator(tmp_path / "merged").sample(PROMPTS, seeds=[0, 1], num_steps=3,
                                                            guidance_scale=2.0).images
    assert float((loaded - base).abs().max()) > 0.01
    torch.testing.assert_close(loaded, adapted, atol=1e-4, rtol=0)
    torch.testing.assert_close(merged, adapted, atol=1e-4, rtol=0)


def _judge(judges):
    rm = rd.load(judges["pointwise"], dtype=torch.float32)
    rm.judge.requires_grad_(False).eval()
    return rm


@pytest.mark.parametrize("kind", ["sd", "wan"])
def test_refl_reward_gradient_reaches_the_lora_through_the_vae(pipelines, judges, condition_image, kind):
    """ReFL on an epsilon-prediction UNet and on a video transformer: the judge's reward of the decoded
    prediction (a video's frames, sub-sampled and scored one by one) sends gradients into LoRA only."""
    gen = _load(pipelines, kind, condition_image)
    gen.add_lora(r=4)
    rm = _judge(judges)
    reward = video_reward(rm.reward_fn(), frames=2, video_judge=False)
    out = refl_forward(gen, reward, PROMPTS, [3, 4], step_index=2, num_steps=3, guidance_scale=2.0)
    out.loss.backward()
    grads = {n: p.grad for n, p in gen.named_parameters() if p.grad is not None}
    assert grads and all("lora" in n for n in grads) and sum(float(g.abs().sum()) for g in grads.values()) > 0
    assert all(p.grad is None for p in rm.judge.parameters())


@pytest.mark.parametrize("kind", ["sd3", "wan", "wan-i2v"])
def test_grpo_policy_gradient_reaches_the_lora(pipelines, condition_image, kind):
    gen = _load(pipelines, kind, condition_image)
    gen.add_lora(r=4)
    with torch.no_grad():
        traj = sample_with_logprob(gen, PROMPTS, [5, 6], num_steps=3, guidance_scale=2.0, noise_level=0.7)
    k = torch.tensor([1, 2])
    res = step_log_prob(gen, traj.states[torch.arange(2), k], traj.states[torch.arange(2), k + 1], k,
                        gen.encode_prompts(PROMPTS), num_steps=3, guidance_scale=2.0, noise_level=0.7,
                        uncond=gen.encode_prompts([""]))
    loss = grpo_loss(res.log_prob, traj.log_probs[torch.arange(2), k], torch.tensor([1.0, -1.0]))
    assert float((loss.ratio - 1).abs().max()) <= 1e-5  # on-policy
    loss.per_sample.sum().backward()
    grads = {n: p.grad for n, p in gen.named_parameters() if p.grad is not None}
    assert grads and all("lora" in n for n in grads) and sum(float(g.abs().sum()) for g in grads.values()) > 0


def test_rl_recipes_run_on_pipeline_directories(pipelines, judges, condition_image, tmp_path):
    """`rl grpo` on an SD3 directory, `rl refl` on a Stable Diffusion directory and `rl grpo` on a Wan
    image-to-video directory with a conditions manifest: unchanged recipes, the contract's rows, a LoRA
    that loads into the pipeline."""
    from rewarddance.config import load_config
    from rewarddance.recipes.grpo import GRPO_ROW_KEYS, GRPOConfig, grpo
    from rewarddance.recipes.refl import ReFLConfig, refl

    (tmp_path / "prompts.txt").write_text("a red circle\ntwo blue squares\na green star\n")
    Image.fromarray((condition_image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()).save(
        tmp_path / "first.png")
    (tmp_path / "conditions.jsonl").write_text("".join(json.dumps({"prompt": p, "image": "first.png"}) + "\n"
                                                       for p in PROMPTS))
    common = [f"prompts={tmp_path / 'prompts.txt'}", "ground_truth=none", "max_steps=1", "num_steps=3",
              "prompts_per_step=2", "progress=false", "tensorboard=false", "lora_r=4"]
    runs = {
        "grpo-sd3": (GRPOConfig, grpo, [f"generator={pipelines['sd3']}", f"reward.rm={judges['pointwise']}",
                                        "group_size=2", "eval_num_steps=3"]),
        "refl-sd": (ReFLConfig, refl, [f"generator={pipelines['sd']}", f"rm={judges['pointwise']}",
                                       "grad_steps=[1,2]", "samples_per_prompt=1"]),
        "grpo-wan-i2v": (GRPOConfig, grpo, [f"generator={pipelines['wan-i2v']}", f"reward.rm={judges['pointwise']}",
                                            f"conditions={tmp_path / 'conditions.jsonl'}", "group_size=2",
                                            "reward_frames=2", "beta=0"]),
    }
    for name, (schema, run, overrides) in runs.items():
        out = tmp_path / name
        run(load_config(schema, overrides=[*common, f"output_dir={out}", *overrides]))
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [0, 1] and rows[0]["grad_norm"] > 0
        if schema is GRPOConfig:
            assert all(set(GRPO_ROW_KEYS) <= set(r) for r in rows)
        assert (out / "final" / "lora" / "pytorch_lora_weights.safetensors").exists()
        assert load_generator(out / "final").options == load_generator(overrides[0].split("=", 1)[1]).options


def test_wan_keeps_its_shipped_scheduler_and_steps_over_its_flow_sigmas(pipelines, tmp_path):
    """Wan ships UniPC with a flow shift: the adapter steps with Euler over the same shift's sigmas, and the
    pipeline it saves still has UniPC."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    gen = load_generator(pipelines["wan"])
    gen.pipe.scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                 flow_shift=5.0)
    gen = type(gen)(gen.pipe, **gen.options)
    expected = FlowMatchEulerDiscreteScheduler(shift=5.0)
    expected.set_timesteps(4)
    torch.testing.assert_close(gen.sigmas(4), expected.sigmas.float())
    gen.save_pretrained(tmp_path / "wan")
    saved = json.loads((tmp_path / "wan" / "scheduler" / "scheduler_config.json").read_text())
    assert saved["_class_name"] == "UniPCMultistepScheduler" and saved["flow_shift"] == 5.0


def test_video_reward_subsamples_candidates_and_references_alike():
    seen = {}

    def judge(videos, prompts, references):
        seen["videos"], seen["references"] = videos, references
        return videos.mean(dim=(1, 2, 3, 4))

    videos = torch.arange(2 * 9, dtype=torch.float32).view(2, 9, 1, 1, 1).expand(2, 9, 3, 2, 2)
    video_reward(judge, frames=3, video_judge=True)(videos, ["a", "b"], list(videos))
    assert seen["videos"].shape[1] == 3 and all(r.shape[0] == 3 for r in seen["references"])
    torch.testing.assert_close(seen["references"][1], seen["videos"][1])
    per_frame = video_reward(lambda x, p, r: x.mean(dim=(1, 2, 3)), frames=3, video_judge=False)(videos, ["a", "b"])
    torch.testing.assert_close(per_frame, videos[:, [0, 4, 8]].mean(dim=(1, 2, 3, 4)))
