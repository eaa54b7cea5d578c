"""ReFL, Best-of-N and search over paths on a tiny generator and a tiny real judge (Qwen2.5-VL built
from config), and the `rewarddance rl` recipes end to end: resume after SIGKILL, 2-process DDP."""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch

import rewarddance as rd
from rewarddance.generators import ShapeWorldGenerator
from rewarddance.rl import best_of_n, refl_forward, reward_to_loss, search_over_paths

from .conftest import assert_lora_export_matches_final, assert_same_rows, kill_at_checkpoint, metrics_rows, run_ok

PROMPTS = ["two red circles", "a blue star above a green ring"]


@pytest.fixture(scope="module")
def judge(judges):
    rm = rd.load(judges["pointwise"], dtype=torch.float32)
    rm.judge.requires_grad_(False).eval()
    return rm


def test_reward_to_loss_mappings():
    r = torch.tensor([0.2, 0.9])
    torch.testing.assert_close(reward_to_loss(r, "neg-reward"), -r)
    torch.testing.assert_close(reward_to_loss(r, "hinge", margin=0.5), torch.tensor([0.3, 0.0]))
    torch.testing.assert_close(reward_to_loss(r, "neg-log"), -torch.log(r))
    with pytest.raises(ValueError, match="mapping"):
        reward_to_loss(r, "mse")


def test_refl_gradient_reaches_lora_and_one_step_raises_the_reward(judge, gen_dir):
    """The reward's gradient flows through the frozen judge into the pixels and on into the
    generator's LoRA adapters only; one step along it raises the reward of the same batch."""
    gen = ShapeWorldGenerator.from_pretrained(gen_dir)
    gen.add_lora(r=4)
    gen.train()
    params = gen.trainable_parameters()
    assert params and all("lora" in n for n, p in gen.named_parameters() if p.requires_grad)
    fn = judge.reward_fn()
    kw = dict(step_index=2, num_steps=4, guidance_scale=2.0)
    before = refl_forward(gen, fn, PROMPTS * 2, [1, 2, 3, 4], **kw)
    before.loss.backward()
    grads = [p.grad for p in params if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in judge.judge.parameters())  # the judge stays frozen
    assert judge.prefix_scorer.scored > 0 and judge.prefix_scorer.fallbacks == 0  # the cached reward ran
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p -= 0.05 * p.grad / norm
    after = refl_forward(gen, fn, PROMPTS * 2, [1, 2, 3, 4], **kw)
    assert after.rewards.mean() > before.rewards.mean() + 1e-5


def test_starting_references_are_cached_under_everything_they_depend_on(judges, gen_dir, tmp_path):
    """A restarted run reads its references back; another sampling setting, or a judge retrained at the
    same path, computes new ones (the same file holds both)."""
    from rewarddance.recipes.rl_common import reference_sources, starting_references

    judge_dir = tmp_path / "judge"
    shutil.copytree(judges["pairwise"], judge_dir)
    rm = rd.load(judge_dir, dtype=torch.float32)
    gen = ShapeWorldGenerator.from_pretrained(gen_dir)
    cache = tmp_path / "references.pt"
    kw = dict(n=2, seed=0, num_steps=2, guidance_scale=3.0, task=None, rank=0, world=1, progress=False, cache=cache)
    sources = reference_sources(str(judge_dir), "float32", str(gen_dir), {})
    first = starting_references(gen, rm, PROMPTS, sources=sources, **kw)
    stored = torch.load(cache, weights_only=False)
    assert len(stored) == 1 and torch.equal(next(iter(stored.values())), first)
    (entry,) = stored
    stored[entry] = torch.zeros_like(first)  # so that a read-back is told apart from a recomputation
    torch.save(stored, cache)
    assert torch.equal(starting_references(gen, rm, PROMPTS, sources=sources, **kw), torch.zeros_like(first))
    other = starting_references(gen, rm, PROMPTS, sources=sources, **{**kw, "guidance_scale": 1.0})
    assert not torch.equal(other, torch.zeros_like(first)) and len(torch.load(cache, weights_only=False)) == 2
    with (judge_dir / "model.safetensors").open("r+b") as f:  # the judge retrained at the same path
        f.seek(-4, os.SEEK_END)
        last = f.read(4)
        f.seek(-4, os.SEEK_END)
        f.write(bytes(b ^ 0xFF for b in last))
    assert reference_sources(str(judge_dir), "float32", str(gen_dir), {}) != sources
    assert reference_sources(str(judge_dir), "bfloat16", str(gen_dir), {}) != reference_sources(
        str(judge_dir), "float32", str(gen_dir), {})


@torch.no_grad()
def test_best_of_n_picks_the_judges_argmax(judge, gen_dir):
    gen = ShapeWorldGenerator.from_pretrained(gen_dir)

    def score(images, prompt):
        return torch.tensor(judge.score(prompt, list(images)))

    res = best_of_n(gen, PROMPTS[0], range(6), score, num_steps=4)
    plain = gen.sample([PROMPTS[0]] * 6, seeds=list(range(6)), num_steps=4).images
    assert torch.equal(res.images, plain)
    np.testing.assert_allclose(res.scores.numpy(), judge.score(PROMPTS[0], list(plain)), atol=1e-6)
    assert np.ptp(res.scores.numpy()) > 1e-4  # the pick is not a tie
    assert torch.equal(res.image, plain[int(res.scores.argmax())]) and res.score == res.scores.max()
    assert (res.judge_calls, res.nfe) == (6, 24)


@torch.no_grad()
def test_search_over_paths_keeps_the_best_scoring_paths(judge, gen_dir):
    gen = ShapeWorldGenerator.from_pretrained(gen_dir)

    def score(images, prompt):
        return torch.tensor(judge.score(prompt, list(images)))

    res = search_over_paths(gen, PROMPTS[1], score, paths=4, branches=2, every=2, back=1, num_steps=6, seed=3)
    assert [t["step"] for t in res.trace] == [2, 4]
    for t in res.trace:
        assert sorted(t["kept"]) == sorted(torch.argsort(t["scores"], descending=True)[:2].tolist())
        assert float(t["scores"][t["kept"]].min()) >= float(torch.sort(t["scores"]).values[1])
    assert res.judge_calls == 4 * 3 and res.images.shape == (4, 3, 16, 16)
    assert torch.equal(res.image, res.images[int(res.scores.argmax())])
    assert res.nfe == 4 * 6 + 4 * 2 + 2 * 2 * 1  # every step, the velocity at 2 checkpoints, the re-noised branches

    # with one branch per path and no re-noising, the paths are plain samples of their seeds (best first)
    flat = search_over_paths(gen, PROMPTS[1], score, paths=3, branches=1, every=2, back=0, num_steps=6, seed=3)
    plain = gen.sample([PROMPTS[1]] * 3, seeds=[3_000_000 + i for i in range(3)], num_steps=6).images
    order = torch.arange(3)
    for t in flat.trace:  # each checkpoint re-orders the population, best first
        order = order[t["kept"]]
    torch.testing.assert_close(flat.images, plain[order], atol=1e-6, rtol=0)


# ------------------------------------------------------------------ the recipes, end to end
def _refl_cmd(out, gen_dir, rm_dir, *launcher):
    return [*(launcher or [sys.executable, "-m"]), "rewarddance.cli", "rl", "refl", f"rm={rm_dir}",
            f"generator={gen_dir}", f"output_dir={out}", "n_prompts=4", "prompts_per_step=2", "samples_per_prompt=2",
            "num_steps=4", "grad_steps=[2,3]", "eval_prompts_per_category=1", "eval_seeds=2", "eval_steps=2",
            "max_steps=5", "save_steps=1", "reference_candidates=2", "lr=0.01", "pretrain_weight=0.1",
            "pretrain_batch_size=4", "ema_decay=0.9", "progress=false", "tensorboard=false"]


ROW_KEYS = ("reward_mean", "reward_std", "reward_std_window", "diversity", "loss", "gt_pass_rate", "eval_diversity",
            "grad_norm", "step_index")


@pytest.fixture(scope="module")
def uninterrupted(gen_dir, judges, tmp_path_factory):
    out = tmp_path_factory.mktemp("refl") / "full"
    run_ok(_refl_cmd(out, gen_dir, judges["pairwise"]))
    return out


def test_refl_run_writes_the_contract(uninterrupted, gen_dir):
    rows = metrics_rows(uninterrupted)
    assert [r["step"] for r in rows] == list(range(6))  # row 0 = before any update, then one per update
    for r in rows:
        assert {"step", "reward_mean", "reward_std", "reward_std_window", "diversity"} <= set(r)
    assert [r["step"] for r in rows if r.get("gt_pass_rate") is not None] == [0, 2, 4, 5]
    assert rows[-1]["grad_norm"] is None and all(r["grad_norm"] > 0 for r in rows[:-1])
    assert len({r["reward_mean"] for r in rows}) > 1  # the generator moved
    report = json.loads((uninterrupted / "report.json").read_text())
    assert report["layout"] == "pairwise" and report["gt_pass_rate_before"] == rows[0]["gt_pass_rate"]
    assert report["steps"] == rows[-1]["step"]  # the updates made, not the rows logged
    assert {"hacking_flagged", "diversity_before", "diversity_after", "reward_std_window_last"} <= set(report)
    assert_lora_export_matches_final(gen_dir, uninterrupted, PROMPTS)
    assert (uninterrupted / "monitor.png").exists() and (uninterrupted / "references.pt").exists()


def test_refl_resumes_after_sigkill_with_identical_rows(uninterrupted, gen_dir, judges, tmp_path):
    out = tmp_path / "killed"
    kill_at_checkpoint(_refl_cmd(out, gen_dir, judges["pairwise"]), out, 3)
    assert len(metrics_rows(out)) < 6
    run_ok(_refl_cmd(out, gen_dir, judges["pairwise"]))
    assert_same_rows(metrics_rows(uninterrupted), metrics_rows(out), ROW_KEYS, atol=1e-6)


def test_refl_data_parallel_two_processes_matches_one(uninterrupted, gen_dir, judges, tmp_path):
    """torchrun, 2 CPU processes (gloo): each takes half of every batch, gradients are averaged; the rows
    equal the one-process run's."""
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m")
    run_ok(_refl_cmd(out, gen_dir, judges["pairwise"], *launcher), env=env)
    assert json.loads((out / "report.json").read_text())["processes"] == 2
    assert_same_rows(metrics_rows(uninterrupted), metrics_rows(out), ROW_KEYS, atol=1e-4)


def test_refl_with_layer_checkpointing_matches_the_plain_run(uninterrupted, gen_dir, judges, tmp_path):
    """gradient_checkpointing (the generator's UNet) and rm_gradient_checkpointing (the judge's layers; the
    reward then takes the plain differentiable path instead of the cached prefix) change memory, not results:
    the rows equal the default run's."""
    out = tmp_path / "checkpointed"
    cmd = [*_refl_cmd(out, gen_dir, judges["pairwise"]), "gradient_checkpointing=true",
           "rm_gradient_checkpointing=true"]
    run_ok(cmd)
    report = json.loads((out / "report.json").read_text())
    # the default run's training rewards took the shared-prefix path; this run's none (the plain path ran)
    assert json.loads((uninterrupted / "report.json").read_text())["rewards_on_prefix_path"] > 0
    assert report["config"]["rm_gradient_checkpointing"] is True and report["rewards_on_prefix_path"] == 0
    assert_same_rows(metrics_rows(uninterrupted), metrics_rows(out), ROW_KEYS, atol=1e-4)


def test_search_recipes_write_their_tables(judges, gen_dir, tmp_path):
    from rewarddance.recipes.search import SearchConfig, run_search

    cfg = SearchConfig(rm=str(judges["pairwise"]), generator=str(gen_dir), output_dir=str(tmp_path / "s"),
                       n=[2, 3], paths=[2], branches=2, every=2, back=1, num_steps=4, reference_candidates=2,
                       eval_prompts_per_category=1, progress=False)
    result = run_search(cfg, "search")
    # 2 paths scored at the one checkpoint (step 2) and at the end: 4 judge calls, added to the Best-of-N budgets
    assert [p["judge_calls"] for p in result["search"]] == [4]
    assert [p["n"] for p in result["best_of_n"]] == [1, 2, 3, 4]  # with 1, the random sample
    comparison = result["search_vs_best_of_n"][0]
    assert comparison["judge_calls"] == 4 and comparison["best_of_n_gt_pass_rate"] == result["best_of_n"][-1][
        "gt_pass_rate"]
    pass_at = [p["pass_at_n"] for p in result["best_of_n"]]
    assert pass_at == sorted(pass_at)  # nested draws: more samples never lose a passing one
    for name in ("results.json", "results.md", "gain.png"):
        assert (tmp_path / "s" / name).exists()

    # torchrun, 2 CPU processes: the prompts are split, the merged table is the one-process table
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run_ok([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
            "rewarddance.cli", "rl", "search", f"rm={judges['pairwise']}", f"generator={gen_dir}",
            f"output_dir={tmp_path / 'ddp'}", "n=[2,3]", "paths=[2]", "branches=2", "every=2", "back=1",
            "num_steps=4", "reference_candidates=2", "eval_prompts_per_category=1", "progress=false"], env=env)
    ddp = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert ddp["processes"] == 2 and result["processes"] == 1

    def assert_close(a, b, where: str) -> None:
        # 1e-6: one process and two (1 thread each) may sum a mean in another order (one float32 ulp)
        if isinstance(a, dict):
            assert a.keys() == b.keys(), where
            for k in a:
                assert_close(a[k], b[k], f"{where}.{k}")
        elif isinstance(a, list):
            assert len(a) == len(b), where
            for i, (x, y) in enumerate(zip(a, b)):
                assert_close(x, y, f"{where}[{i}]")
        elif isinstance(a, float) or isinstance(b, float):
            assert a == pytest.approx(b, abs=1e-6), where
        else:
            assert a == b, where

    for key in ("best_of_n", "search", "search_vs_best_of_n", "random_sample_gt_pass_rate"):
        assert_close(ddp[key], result[key], key)


def test_rl_study_with_given_judges_writes_the_contract_and_resumes(judges, gen_dir, tmp_path, monkeypatch):
    """`rewarddance study rl --rm ...` at the smallest settings: one ReFL arm per judge plus Best-of-N and
    search, results.json as the contract says; a re-run skips the finished arms."""
    from rewarddance.recipes.study_rl import Judges, StudySettings, study_rl

    s = StudySettings(refl_steps=2, refl_overrides=["n_prompts=4", "prompts_per_step=2", "grad_steps=[2,3]",
                                                    "reference_candidates=2", "tensorboard=false"],
                      eval_prompts_per_category=1, eval_seeds=2, eval_steps=2, search_n=[2], search_paths=[2],
                      generator=str(gen_dir), num_steps=4, grpo_steps=1, grpo_judges=["pointwise"],
                      grpo_overrides=["n_prompts=4", "prompts_per_step=2", "group_size=2", "num_steps=3",
                                      "tensorboard=false"])
    rms = {"pairwise": str(judges["pairwise"]), "pointwise": str(judges["pointwise"])}
    result = study_rl(tmp_path / "study", rms=rms, settings=s)
    names = [a["name"] for a in result["arms"]]
    assert names == ["refl-pairwise", "refl-pointwise", "grpo-pointwise", "best-of-n", "search-paths2"]
    keys = {"name", "rm", "method", "gt_pass_rate_before", "gt_pass_rate_after", "reward_std_window_last",
            "diversity_before", "diversity_after", "hacking_flagged"}
    on_disk = json.loads((tmp_path / "study" / "results.json").read_text())
    assert [a["name"] for a in on_disk["arms"]] == names
    for arm in on_disk["arms"]:
        assert keys <= set(arm) and arm["method"] in ("refl", "grpo", "best-of-n", "search")
    for name in ("refl-pairwise", "refl-pointwise"):
        rows = metrics_rows(tmp_path / "study" / name)
        assert [r["step"] for r in rows] == [0, 1, 2] and rows[0]["gt_pass_rate"] is not None
    rows = metrics_rows(tmp_path / "study" / "grpo-pointwise")
    assert [r["step"] for r in rows] == [0, 1] and {"kl", "clip_fraction", "zero_std_fraction"} <= set(rows[0])
    for name in names:  # every arm's files in its own folder
        assert any((tmp_path / "study" / name / f).exists() for f in ("metrics.jsonl", "results.json")), name
    assert (tmp_path / "study" / "curves.png").exists()
    table = (tmp_path / "study" / "results.md").read_text()
    assert all(f"| {name} |" in table for name in names)  # one row per arm, with what it spent
    assert table.count("judge calls per prompt") == sum(a["method"] in ("best-of-n", "search") for a in on_disk["arms"])
    mtime = (tmp_path / "study" / "refl-pairwise" / "report.json").stat().st_mtime
    study_rl(tmp_path / "study", rms=rms, settings=s)  # finished arms are skipped
    assert (tmp_path / "study" / "refl-pairwise" / "report.json").stat().st_mtime == mtime

    # carried over: the arms' small files copied into a fresh OUT, the judges moved elsewhere: nothing runs again,
    # no judge is even asked for ...
    carried = tmp_path / "carried"
    for name in ("refl-pairwise", "refl-pointwise", "grpo-pointwise", "search"):
        (carried / name).mkdir(parents=True)
        for f in ("row.json", "report.json", "metrics.jsonl", "results.json"):
            if (tmp_path / "study" / name / f).exists():
                shutil.copy(tmp_path / "study" / name / f, carried / name / f)
    moved = {name: shutil.copytree(path, tmp_path / "moved" / name) for name, path in rms.items()}

    def no_judge(self, name):
        raise AssertionError(f"judge {name} asked for by a finished arm")

    monkeypatch.setattr(Judges, "get", no_judge)
    again = study_rl(carried, rms={k: str(v) for k, v in moved.items()}, settings=s)
    monkeypatch.undo()
    assert not (carried / "study.log").exists()  # no step ran
    assert [{k: a[k] for k in keys} for a in again["arms"]] == [{k: a[k] for k in keys} for a in result["arms"]]
    for name in names:
        assert any((carried / name / f).exists() for f in ("metrics.jsonl", "results.json")), name
    # ... and a row written under other settings is run again: that arm only
    row = json.loads((carried / "refl-pairwise" / "row.json").read_text())
    (carried / "refl-pairwise" / "row.json").write_text(json.dumps(row | {"key": "other settings"}))
    # (--arms: only the named arms run; an unfinished other arm is left out of the table)
    partial = study_rl(carried, rms=rms, settings=s, only={"search"})
    assert [a["name"] for a in partial["arms"]] == names[1:] and not (carried / "study.log").exists()
    with pytest.raises(ValueError, match="no arm named refl-nope"):
        study_rl(carried, rms=rms, settings=s, only={"refl-nope"})
    study_rl(carried, rms=rms, settings=s)
    steps = [line for line in (carried / "study.log").read_text().splitlines() if line.startswith("$ ")]
    assert len(steps) == 1 and " rl refl " in steps[0] and "refl-pairwise" in steps[0], steps
    assert json.loads((carried / "refl-pairwise" / "row.json").read_text())["key"] == row["key"]


def test_rl_study_refuses_judge_names_that_are_not_folder_names(tmp_path, capsys):
    """`--rm NAME=DIR`: NAME becomes the arms' folders in OUT (refl-NAME), so a path-like name is refused
    before anything runs."""
    from rewarddance.cli import main

    for name in ("a/../../x", "..", ".hidden"):
        assert main(["study", "rl", "--rm", f"{name}={tmp_path}", "--out", str(tmp_path / "out")]) == 2
        assert "NAME may hold" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_rl_study_judge_folders_follow_the_start_weights_and_the_test_set(tmp_path):
    """A study-trained judge (and its cached test accuracy) is reused only under the key its arms use: a start
    preset re-pretrained in place, or another test set, trains a new one."""
    from rewarddance.models.presets import preset_path
    from rewarddance.recipes.study_rl import Judges, StudySettings

    start = tmp_path / "start"
    shutil.copytree(preset_path("qwen2_5_vl-tiny-shapeworld"), start)
    overrides = ["objective=generative-pairwise", f"model={start}"]
    log = tmp_path / "study.log"

    def folder(**settings):
        return Judges(StudySettings(judge_overrides=overrides, **settings), None, log).folder("generative")

    base = folder()
    assert folder() == base and folder(data_n_test=100) != base
    with (start / "model.safetensors").open("r+b") as f:  # the same preset, pretrained again in place
        f.seek(-4, os.SEEK_END)
        last = f.read(4)
        f.seek(-4, os.SEEK_END)
        f.write(bytes(b ^ 0xFF for b in last))
    assert folder() != base


def test_rl_study_reports_its_judges_float32_accuracy(judges, world, tmp_path, monkeypatch):
    """A study-trained judge is measured in float32 (`rewarddance eval --dtype float32`) and the table takes that
    accuracy from the cache, in place of a row's older (bf16) one; a given judge and the checker have none."""
    from rewarddance.recipes.study_rl import Judges, StudySettings, evaluate_judge

    monkeypatch.setenv("REWARDDANCE_CACHE", str(tmp_path / "cache"))
    log = tmp_path / "study.log"
    study = Judges(StudySettings(judge_overrides=["objective=generative-pairwise", f"model={judges['pairwise']}"]),
                   None, log)
    assert study.measured("generative") is None  # not trained here: nothing is measured (or trained) for the table
    final = study.folder("generative") / "final"
    shutil.copytree(judges["pairwise"], final)
    measured = evaluate_judge(final, world / "test.jsonl", log)
    assert "--dtype float32" in log.read_text()
    assert 0.0 <= measured["accuracy_id"] <= 1.0 and 0.0 <= measured["accuracy_ood"] <= 1.0
    assert study.measured("generative") == measured and study.measured("checker") is None
    assert Judges(StudySettings(), {"generative": str(final)}, log).measured("generative") is None
