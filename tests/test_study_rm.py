"""`rewarddance study rm`: its arm runner on a two-arm, few-step configuration (the contract's JSON shape;
a re-run skips finished arms) and the arm lists of the quick and full studies."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from rewarddance.recipes.study_rm import (FULL, OBJECTIVES, QUICK, REFERENCE_CHOICES, Arm, StudySettings, arm_files,
                                         arms_for, ranking_accuracy, study_rm)

CONTRACT = {"name", "objective", "size", "arch", "start", "context", "seed", "id_accuracy", "ood_accuracy",
            "train_minutes", "train_steps", "pretrain_minutes"}


def test_study_rm_two_arms_contract_and_resume(tmp_path):
    s = StudySettings(data_n=24, data_n_test=12, steps=2, batch_size=4, ref_prompts_per_category=1, ref_pool=2,
                      ref_ranked=3, quick=True)
    arms = [Arm("paradigm-generative-pairwise", "paradigm"),
            Arm("context-pointwise-plain", "context", objective="generative-pointwise", context="pointwise+plain",
                overrides=["task=plain"])]
    out = tmp_path / "study"
    result = study_rm(out, settings=s, arms=arms)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["arms"] == result["arms"] and [r["name"] for r in on_disk["arms"]] == [a.name for a in arms]
    for row in on_disk["arms"]:
        assert CONTRACT <= set(row), CONTRACT - set(row)
        assert 0.0 <= row["id_accuracy"] <= 1.0 and 0.0 <= row["ood_accuracy"] <= 1.0
        assert row["train_steps"] == 2 and row["objective"] in OBJECTIVES
    # each arm checkpoints along the way (an interrupted arm resumes mid-run): here every step of 2
    assert (out / "arms" / arms[0].name / "train" / "checkpoints" / "step-1").is_dir()
    # the committed tiny preset's own pretraining time is reported, not counted as training
    assert on_disk["arms"][0]["pretrain_minutes"] > 10
    # the plain-instruction arm trained and was evaluated on rows that ask the plain question
    train, test = arm_files(arms[1], Path(on_disk["data"]))
    assert {json.loads(t)["task"] for t in train.read_text().splitlines()} == {"plain"}
    assert {json.loads(t)["task"] for t in test.read_text().splitlines()} == {"plain"}
    assert (out / "results.md").exists() and (out / "paradigms.png").exists() and (out / "curves.png").exists()

    # reference quality: the pairwise arm's judge ranked generator samples against three references per prompt
    ref = on_disk["reference_quality"]
    assert ref["judge"] == "paradigm-generative-pairwise" and set(ref["choices"]) == set(REFERENCE_CHOICES)
    assert ref["prompts"] == 4 * s.ref_prompts_per_category
    scores = [json.loads(t) for t in (out / "reference-quality" / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == 3 * ref["prompts"] * s.ref_ranked and all("reward" in r for r in scores)
    for v in ref["choices"].values():
        assert v["pairs"] > 0 and 0.0 <= v["ranking_accuracy"] <= 1.0
    # the checker's pick is the best reference the pool has; Best-of-N's is the judge's own
    assert ref["choices"]["checker-best"]["reference_checker_score"] >= max(
        v["reference_checker_score"] for v in ref["choices"].values())
    assert "Reference quality" in (out / "results.md").read_text()

    # a re-run skips finished arms: nothing is trained or evaluated again
    log_before = (out / "study.log").read_text()
    again = study_rm(out, settings=s, arms=arms)
    assert (out / "study.log").read_text() == log_before
    assert [r["id_accuracy"] for r in again["arms"]] == [r["id_accuracy"] for r in result["arms"]]
    # --arms: the other arms' finished rows, and the reference table of a finished judge, stay in the table
    kept = study_rm(out, settings=s, arms=arms, only={"context-pointwise-plain"})
    assert [r["name"] for r in kept["arms"]] == [a.name for a in arms]
    assert kept["reference_quality"] == ref and (out / "study.log").read_text() == log_before

    # other settings under the same arm names are never served the old rows or checkpoints
    changed = study_rm(out, settings=replace(s, steps=3), arms=arms[:1])
    assert changed["arms"][0]["train_steps"] == 3 and changed["arms"][0]["key"] != result["arms"][0]["key"]
    assert len((out / "study.log").read_text()) > len(log_before)

    # --arms: only the named arms run; the others' finished rows (of these settings) stay, unfinished ones are
    # left out (the pairwise arm's row is now the 3-step one: not this study's, and not retrained)
    log_before = (out / "study.log").read_text()
    subset = study_rm(out, settings=s, arms=arms, only={"context-pointwise-plain"})
    assert [r["name"] for r in subset["arms"]] == ["context-pointwise-plain"]
    assert (out / "study.log").read_text() == log_before
    with pytest.raises(ValueError, match="no arm named nope"):
        study_rm(out, settings=s, arms=arms, only={"nope"})
    with pytest.raises(ValueError, match="name at least one arm"):
        study_rm(out, settings=s, arms=arms, only=set())


def test_study_rm_arm_lists():
    quick = arms_for(QUICK)
    assert {a.objective for a in quick} == set(OBJECTIVES)  # one arm per objective...
    pairwise_sizes = {a.size for a in quick if a.objective == "generative-pairwise"}
    assert len(pairwise_sizes) == 2  # ...and two sizes of the pairwise judge
    full = arms_for(FULL)
    names = [a.name for a in full]
    assert len(names) == len(set(names))
    groups = {a.group for a in full}
    assert groups == {"paradigm", "size", "family", "context", "data", "video", "seeds"}
    assert {(a.size, a.start) for a in full if a.group in ("paradigm", "size") and a.objective ==
            "generative-pairwise"} == {(s, st) for s in FULL.sizes for st in ("pretrained", "scratch")}
    assert sorted(a.seed for a in full if a.objective == "clip-bt") == FULL.seeds


def test_ranking_accuracy_counts_pairs_within_a_prompt():
    truth = [1.0, 0.5, 0.0, 1.0, 0.0]
    prompts = ["p", "p", "p", "q", "q"]
    # p: pairs (0,1) right, (0,2) right, (1,2) wrong; q: (3,4) a reward tie, half
    assert ranking_accuracy([0.9, 0.2, 0.4, 0.3, 0.3], truth, prompts) == (2.5 / 4, 4)
    # equal checker scores make no pair; no pair at all gives no accuracy
    assert ranking_accuracy([0.1, 0.9], [1.0, 1.0], ["p", "p"]) == (None, 0)


def test_reference_candidates_follow_the_generator_weights(tmp_path):
    """A generator directory retrained in place keys other candidates (the cache is not by name only)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from rewarddance.generators import generator_path
    from rewarddance.recipes.study_rm import candidate_settings

    gen = shutil.copytree(generator_path("shapeworld-flow"), tmp_path / "gen")
    s = replace(QUICK, generator=str(gen))
    before = candidate_settings(s)
    weights = next(gen.rglob("*.safetensors"))
    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1
    save_file(tensors, weights)
    after = candidate_settings(s)
    assert before["generator_weights"] != after["generator_weights"]
    assert {k: v for k, v in before.items() if k != "generator_weights"} == \
        {k: v for k, v in after.items() if k != "generator_weights"}
