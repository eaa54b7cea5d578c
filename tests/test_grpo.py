"""GRPO (Flow-GRPO) on a tiny ShapeWorld generator and a tiny real judge: the SDE step and its density,
on-policy ratios, advantages, the recipe end to end (contract, micro-batch independence, resume after
SIGKILL, 2-process DDP) and a remote reward served by `rewarddance serve` on loopback."""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest
import torch

import rewarddance as rd
from rewarddance.generators import ShapeWorldGenerator
from rewarddance.recipes.grpo import GRPO_ROW_KEYS, GRPOConfig, RewardSpec, grpo, step_plan
from rewarddance.rl.grpo import (group_advantages, group_win_rates, grpo_loss, mix_rewards, sample_with_logprob,
                                 sde_step, step_log_prob)

from .conftest import assert_lora_export_matches_final, assert_same_rows, kill_at_checkpoint, metrics_rows, run_ok

PROMPTS = ["two red circles", "a blue star above a green ring"]


# ------------------------------------------------------------------ the SDE step
def test_sde_step_log_prob_is_the_gaussian_density():
    g = torch.Generator().manual_seed(0)
    x, v, nxt = (torch.randn(3, 3, 8, 8, generator=g) for _ in range(3))
    sigma, sigma_next = torch.tensor([1.0, 0.6, 0.2]), torch.tensor([0.9, 0.5, 0.0])
    out = sde_step(x, v, sigma, sigma_next, noise_level=0.7, sigma_cap=0.9, prev_sample=nxt)
    direct = torch.distributions.Normal(out.mean, out.std).log_prob(nxt).mean(dim=(1, 2, 3))
    torch.testing.assert_close(out.log_prob, direct, atol=1e-5, rtol=1e-6)
    assert out.log_prob.std() > 0.1  # the three samples' densities differ far beyond the tolerance
    # std = a sqrt(t / (1 - t)) sqrt(-dt), with t / (1 - t) at t = 1 taken with the cap in the denominator
    expected = 0.7 * torch.sqrt(torch.tensor([1 / (1 - 0.9), 0.6 / 0.4, 0.2 / 0.8]) * torch.tensor([0.1, 0.1, 0.2]))
    torch.testing.assert_close(out.std.flatten(), expected)
    # drawn with the given noise: mean + std * noise
    noise = torch.randn(x.shape, generator=g)
    drawn = sde_step(x, v, sigma, sigma_next, noise_level=0.7, sigma_cap=0.9, noise=noise)
    torch.testing.assert_close(drawn.prev_sample, out.mean + out.std * noise)


def test_sde_step_keeps_the_marginals_of_the_flow():
    """With the exact velocity of a point mass x0 (v = (x - x0) / t), states drawn from the flow's marginal
    at t (N((1 - t) x0, t²)) land, after one SDE step, on the marginal at t' (N((1 - t') x0, t'²)): the
    drift correction is what keeps the distribution (the ODE keeps it too; without the correction the
    added noise would widen it)."""
    g = torch.Generator().manual_seed(1)
    x0, t, t_next, n = 0.7, 0.5, 0.48, 400_000
    x = (1 - t) * x0 + t * torch.randn(n, 1, generator=g, dtype=torch.float64)
    v = (x - x0) / t
    out = sde_step(x, v, t, t_next, noise_level=0.9, sigma_cap=0.9, noise=torch.randn(n, 1, generator=g,
                                                                                      dtype=torch.float64))
    assert abs(float(out.prev_sample.mean()) - (1 - t_next) * x0) < 3e-3
    assert abs(float(out.prev_sample.std()) - t_next) < 3e-3
    wrong = x + v * (t_next - t) + out.std * torch.randn(n, 1, generator=g, dtype=torch.float64)  # no correction
    assert float(wrong.std()) - t_next > 0.01


def test_sde_at_noise_level_zero_is_the_generators_euler_step(gen_dir):
    gen = ShapeWorldGenerator.from_pretrained(gen_dir)
    with torch.no_grad():
        x = gen.initial_noise([1, 2])
        cond, uncond = gen.encode_prompts(PROMPTS), gen.encode_prompts([""])
        ode = gen.step(x, 1, cond, 2.0, 4, uncond).prev_sample
        sde = step_log_prob(gen, x, x, torch.tensor([1, 1]), cond, num_steps=4, guidance_scale=2.0,
                            noise_level=0.0, uncond=uncond)
    torch.testing.assert_close(sde.mean, ode, atol=1e-6, rtol=0)


def test_on_policy_ratio_is_one_and_the_policy_gradient_reaches_only_lora(gen_dir):
    """Rollout log-probabilities recomputed in other micro-batches (one sample, per-sample steps) under
    the same weights give importance ratios of exactly 1; the clipped loss then sends gradients to the
    LoRA adapters and nowhere else."""
    gen = ShapeWorldGenerator.from_pretrained(gen_dir)
    gen.add_lora(r=4)
    prompts, seeds = PROMPTS * 2, [3, 4, 5, 6]
    with torch.no_grad():
        traj = sample_with_logprob(gen, prompts, seeds, num_steps=4, guidance_scale=2.0, noise_level=0.7)
        again = sample_with_logprob(gen, prompts[1:2], seeds[1:2], num_steps=4, guidance_scale=2.0, noise_level=0.7)
    assert traj.states.shape == (4, 5, 3, 16, 16) and traj.log_probs.shape == (4, 4)
    torch.testing.assert_close(again.states[0], traj.states[1], atol=1e-5, rtol=0)  # a sample follows its seed
    assert float((traj.states[0, -1] - traj.states[2, -1]).abs().max()) > 0.1  # other seed, other sample
    rows, k = torch.tensor([2]), torch.tensor([3])
    adv = torch.tensor([1.5])
    res = step_log_prob(gen, traj.states[rows, k], traj.states[rows, k + 1], k, gen.encode_prompts([prompts[2]]),
                        num_steps=4, guidance_scale=2.0, noise_level=0.7, uncond=gen.encode_prompts([""]))
    loss = grpo_loss(res.log_prob, traj.log_probs[rows, k], adv, clip_range=1e-4)
    assert float((loss.ratio - 1).abs().max()) <= 1e-6 and not loss.clipped.any()
    loss.per_sample.sum().backward()
    grads = {n: p.grad for n, p in gen.named_parameters() if p.grad is not None}
    assert grads and all("lora" in n for n in grads)
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0


def test_grpo_loss_clips_and_adds_the_kl():
    adv = torch.tensor([1.0, -1.0, 1.0])
    new, old = torch.tensor([0.1, 0.1, 0.0]), torch.zeros(3)
    out = grpo_loss(new, old, adv, clip_range=0.05)
    # ratio e^0.1 > 1.05: a positive advantage is capped at the clipped ratio, a negative one is not
    torch.testing.assert_close(out.per_sample, torch.tensor([-1.05, math.exp(0.1), -1.0]))
    assert out.clipped.tolist() == [True, True, False]
    mean, ref = torch.zeros(3, 2, 2), torch.ones(3, 2, 2)
    with_kl = grpo_loss(new, old, adv, clip_range=0.05, mean=mean, ref_mean=ref, std=torch.full((3, 1, 1), 2.0),
                        beta=0.5)
    torch.testing.assert_close(with_kl.kl, torch.full((3,), 1 / 8))
    torch.testing.assert_close(with_kl.per_sample, out.per_sample + 0.5 / 8)


def test_group_advantages_normalise_clip_and_mask():
    r = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0, 0.0, 10.0])
    groups = ["a", "a", "a", "b", "b", "b", "c", "c"]
    adv, mask = group_advantages(r, groups)
    torch.testing.assert_close(adv[:3], torch.tensor([-1.0, 0.0, 1.0]) / (1 + 1e-4))  # group std 1
    torch.testing.assert_close(adv[6:], torch.tensor([-5.0, 5.0]) / (50**0.5 + 1e-4))  # group std 7.07
    assert mask.tolist() == [True] * 3 + [False] * 3 + [True] * 2 and adv[3:6].abs().max() == 0
    clipped, _ = group_advantages(r, groups, clip=0.8)
    assert clipped[:3].tolist() == pytest.approx([-0.8, 0.0, 0.8]) and clipped[6:].tolist() == pytest.approx(
        adv[6:].tolist())
    glob, _ = group_advantages(r, groups, std="global", clip=100)
    torch.testing.assert_close(glob[6:], torch.tensor([-5.0, 5.0]) / (r.std() + 1e-4))
    mixed = mix_rewards([r, 100 * r], [1.0, 0.5], groups)  # each judge normalised first: scale drops out
    torch.testing.assert_close(mixed, 1.5 * mix_rewards([r], [1.0], groups), atol=1e-4, rtol=0)  # up to eps
    win = torch.tensor([[0.5, 0.9, 0.8], [0.1, 0.5, 0.6], [0.2, 0.4, 0.5]])
    rates = group_win_rates(lambda p, ims: win, torch.zeros(3, 3, 4, 4), ["p"] * 3, ["g"] * 3)
    torch.testing.assert_close(rates, torch.tensor([0.85, 0.35, 0.3], dtype=torch.float64))


# ------------------------------------------------------------------ the recipe
def _overrides(out, gen_dir, rm_dir, **extra):
    settings = {"reward.rm": rm_dir, "generator": gen_dir, "output_dir": out, "n_prompts": 4, "prompts_per_step": 2,
                "group_size": 3, "num_steps": 4, "timestep_fraction": 0.5, "updates_per_step": 2,
                "micro_batch_size": 2, "eval_num_steps": 4, "eval_prompts_per_category": 1, "eval_seeds": 2,
                "eval_steps": 2, "max_steps": 4, "save_steps": 1, "reference_candidates": 2, "lr": 0.01,
                "clip_range": 1e-3, "progress": "false", "tensorboard": "false", **extra}
    return [f"{k}={v}" for k, v in settings.items()]


def _cmd(out, gen_dir, rm_dir, *launcher, **extra):
    return [*(launcher or [sys.executable, "-m"]), "rewarddance.cli", "rl", "grpo",
            *_overrides(out, gen_dir, rm_dir, **extra)]


ROW_KEYS = ("reward_mean", "reward_std", "reward_std_window", "diversity", "loss", "gt_pass_rate", "grad_norm",
            *GRPO_ROW_KEYS)


@pytest.fixture(scope="module")
def uninterrupted(gen_dir, judges, tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo") / "full"
    run_ok(_cmd(out, gen_dir, judges["pairwise"]))
    return out


def test_grpo_run_writes_the_contract(uninterrupted, gen_dir):
    rows = metrics_rows(uninterrupted)
    assert [r["step"] for r in rows] == list(range(5))
    for r in rows:
        assert {"step", "reward_mean", "reward_std", "reward_std_window", "diversity", *GRPO_ROW_KEYS} <= set(r)
        assert r["ratio_max_deviation_on_policy"] <= 1e-6  # the first update of each step is on-policy
    assert [r["step"] for r in rows if r.get("gt_pass_rate") is not None] == [0, 2, 4]
    assert rows[-1]["grad_norm"] is None and all(r["grad_norm"] > 0 for r in rows[:-1])
    assert any(r["clip_fraction"] > 0 for r in rows) and any(r["kl"] > 0 for r in rows)  # the 2nd update is off-policy
    assert len({r["reward_mean"] for r in rows}) > 1
    report = json.loads((uninterrupted / "report.json").read_text())
    assert report["method"] == "grpo" and report["gt_pass_rate_before"] == rows[0]["gt_pass_rate"]
    assert report["steps"] == rows[-1]["step"]  # the updates made, not the rows logged
    # row 0's evaluation is the starting generator's (before any update), the last row's the final one's
    from rewarddance.recipes.rl_common import evaluate_heldout
    from rewarddance.world.generation import COMPOSITIONAL, checker_metric, heldout_prompts

    held = heldout_prompts(list(COMPOSITIONAL), 1, 1234)
    for row, path in ((rows[0], gen_dir), (rows[-1], uninterrupted / "final")):
        ev = evaluate_heldout(ShapeWorldGenerator.from_pretrained(path), held, checker_metric, seeds=2, num_steps=4,
                              guidance_scale=3.0, batch_size=64, rank=0, world=1)
        assert abs(ev["eval_diversity"] - row["eval_diversity"]) < 1e-6
    assert abs(rows[0]["eval_diversity"] - rows[-1]["eval_diversity"]) > 1e-4
    assert (uninterrupted / "references.pt").exists() and (uninterrupted / "monitor.png").exists()
    assert_lora_export_matches_final(gen_dir, uninterrupted, PROMPTS)


def test_grpo_update_does_not_depend_on_the_micro_batch_size(gen_dir, judges, tmp_path):
    """One step (two optimizer updates, the second off-policy) with micro-batches of 1 and of 3 samples:
    the same LoRA weights, which moved far more than they differ. Pointwise judge in win-rate mode mixed
    with a pairwise judge and the ShapeWorld checker (a rule reward)."""
    from rewarddance.config import load_config

    weights = []
    for mb in (1, 3):
        cfg = load_config(GRPOConfig, overrides=_overrides(tmp_path / f"mb{mb}", gen_dir, judges["pointwise"],
                                                           micro_batch_size=mb, max_steps=1, ground_truth="none",
                                                           **{"reward.mode": "win-rate"}))
        cfg.extra_rewards = [RewardSpec(rm=str(judges["pairwise"]), weight=0.5),
                             RewardSpec(checker="shapeworld", weight=0.25)]
        grpo(cfg)
        weights.append(ShapeWorldGenerator.from_pretrained(tmp_path / f"mb{mb}" / "final").unet.state_dict())
        rows = metrics_rows(tmp_path / f"mb{mb}")
        assert {"reward_0_mean", "reward_1_mean", "reward_2_mean"} <= set(rows[0])
    start = ShapeWorldGenerator.from_pretrained(gen_dir).unet.state_dict()
    moved = max(float((weights[0][k] - start[k]).abs().max()) for k in start)
    differ = max(float((weights[0][k] - weights[1][k]).abs().max()) for k in start)
    assert moved > 1e-3 and differ < moved * 1e-3, (moved, differ)


def test_grpo_resumes_after_sigkill_with_identical_rows(uninterrupted, gen_dir, judges, tmp_path):
    out = tmp_path / "killed"
    kill_at_checkpoint(_cmd(out, gen_dir, judges["pairwise"]), out, 2)
    assert len(metrics_rows(out)) < 5
    run_ok(_cmd(out, gen_dir, judges["pairwise"]))
    assert_same_rows(metrics_rows(uninterrupted), metrics_rows(out), ROW_KEYS, atol=1e-6)


def test_grpo_data_parallel_two_processes_matches_one(uninterrupted, gen_dir, judges, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m")
    run_ok(_cmd(out, gen_dir, judges["pairwise"], *launcher), env=env)
    assert json.loads((out / "report.json").read_text())["processes"] == 2
    assert_same_rows(metrics_rows(uninterrupted), metrics_rows(out), ROW_KEYS, atol=1e-4)


def test_grpo_with_a_remote_reward_served_on_loopback(gen_dir, judges, tmp_path):
    """`reward: {remote: URL}`: the judge behind `rewarddance serve` (a real server on a loopback port);
    the first row's rewards equal the local judge's scores of the same rollout sent as 8-bit PNGs.
    `rl best-of-n remote=URL` runs through the same server and writes the local judge's table."""
    from rewarddance.serve import ServeConfig, create_app

    from .test_serve import ThreadServer, metric

    rm = rd.load(judges["pointwise"], dtype=torch.float32)
    server = ThreadServer(create_app([rm], ServeConfig(max_batch_size=16, max_wait_ms=5), model_name="judge"))
    try:
        out = tmp_path / "remote"
        overrides = [o for o in _overrides(out, gen_dir, None, max_steps=1, ground_truth="none")
                     if not o.startswith("reward.rm=")]
        run_ok([sys.executable, "-m", "rewarddance.cli", "rl", "grpo", *overrides, f"reward.remote={server.url}"])
        served = metric(server.url, "rewarddance_requests_total", endpoint="/v1/score", status="200")
        assert served >= 1
        # Best-of-N and its references through the same server (`rl best-of-n remote=URL`)
        from rewarddance.recipes.search import SearchConfig, run_search

        kw = dict(generator=str(gen_dir), n=[1, 3], num_steps=3, eval_prompts_per_category=1, progress=False)
        remote = run_search(SearchConfig(remote=server.url, output_dir=str(tmp_path / "bon-remote"), **kw), "best-of-n")
        assert metric(server.url, "rewarddance_requests_total", endpoint="/v1/score", status="200") > served
    finally:
        server.close()
    local = run_search(SearchConfig(rm=str(judges["pointwise"]), output_dir=str(tmp_path / "bon-local"), **kw),
                       "best-of-n")
    assert remote["layout"] == "pointwise" and len(remote["best_of_n"]) == len(local["best_of_n"]) == 2
    for a, b in zip(remote["best_of_n"], local["best_of_n"]):  # the judge saw 8-bit PNGs over HTTP
        assert abs(a.pop("judge_score_mean") - b.pop("judge_score_mean")) < 1e-4 and a == b
    from rewarddance.config import load_config

    cfg = load_config(GRPOConfig, overrides=overrides)
    idx, seeds, _ = step_plan(cfg, 0, cfg.n_prompts)
    from rewarddance.recipes.rl_common import load_prompts
    from rewarddance.world.generation import heldout_prompts

    held = heldout_prompts(cfg.eval_categories, cfg.eval_prompts_per_category, cfg.eval_seed)
    prompts = load_prompts("shapeworld", cfg.categories, cfg.n_prompts, cfg.seed, {p for v in held.values() for p in v})
    gen = ShapeWorldGenerator.from_pretrained(gen_dir)
    with torch.no_grad():
        images = sample_with_logprob(gen, [prompts[i] for i in idx], seeds, num_steps=cfg.num_steps,
                                     guidance_scale=cfg.guidance_scale, noise_level=cfg.noise_level).images
    local = rm.score([prompts[i] for i in idx], list((images * 255).round() / 255))
    row = metrics_rows(out)[0]
    assert abs(row["reward_mean"] - float(np.mean(local))) < 1e-5
    assert float(np.std(local)) > 1e-3


def _reduce_worker(rank: int, port: int, out) -> None:
    import torch.distributed as dist

    from rewarddance.recipes.rl_common import all_reduce_gradients

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=__import__("datetime").timedelta(seconds=30))
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    if rank == 0:  # rank 1 had no unmasked sample: it never called backward
        params[0].grad = torch.full((3,), 4.0)
    all_reduce_gradients(params, 2, average=False)
    out.put((rank, [p.grad.tolist() for p in params]))
    dist.destroy_process_group()


def test_gradient_reduction_stays_in_step_when_a_rank_has_no_gradient():
    """A rank whose groups were all masked has no gradients; it must still join every all-reduce (else the
    ranks' collectives fall out of step and the run hangs)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_reduce_worker, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    assert results[0] == results[1] == [[4.0, 4.0, 4.0], [0.0, 0.0]]


def test_a_run_out_of_time_resumed_from_its_last_checkpoint_stops_again(gen_dir, judges, tmp_path):
    """max_minutes reached after the first update: the run checkpoints, logs its last row (no update) and
    ends; the same command again resumes from that checkpoint and ends there too (it does not update)."""
    from rewarddance.config import load_config

    overrides = _overrides(tmp_path / "timed", gen_dir, judges["pointwise"], max_minutes=1e-6, ground_truth="none",
                           save_steps=100)
    grpo(load_config(GRPOConfig, overrides=overrides))
    first = metrics_rows(tmp_path / "timed")
    assert [r["step"] for r in first] == [0, 1] and first[1]["grad_norm"] is None
    assert (tmp_path / "timed" / "checkpoints" / "step-1").exists()
    grpo(load_config(GRPOConfig, overrides=overrides))
    again = metrics_rows(tmp_path / "timed")
    assert [r["step"] for r in again] == [0, 1] and again[1]["grad_norm"] is None
    assert_same_rows(first, again, ROW_KEYS, atol=1e-6)
