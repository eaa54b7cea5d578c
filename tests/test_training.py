"""`rewarddance train`: every objective learns and its checkpoint loads, LoRA both ways, CoT mapping,
explain, bad rows, video rows, data-parallel (torchrun, 2 CPU processes) and SIGKILL + exact resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import rewarddance as rd
from rewarddance.config import ConfigError, load_config
from rewarddance.data import read_manifest
from rewarddance.data.training import make_example, map_rationale
from rewarddance.models.checkpoint import CheckpointError
from rewarddance.models.presets import preset_path
from rewarddance.recipes.train_rm import TrainConfig, train

from .conftest import run_ok

ENTRY = str(Path(sys.executable).with_name("rewarddance"))
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


@pytest.fixture(scope="session")
def fixed_pairs(world):
    """Eight non-tied pairs: the fixed small batch each objective must learn."""
    rows = [json.loads(t) for t in (world / "train.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["label"] != "tie"][:8]
    path = world / "fixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _metrics(run: Path) -> list[dict]:
    return [json.loads(t) for t in (run / "metrics.jsonl").read_text().splitlines()]


TINY = "qwen2_5_vl-tiny-shapeworld"  # the committed pretrained tiny preset


def _cfg(**kw) -> TrainConfig:
    base = dict(model=TINY, batch_size=8, lr=2e-3, warmup_steps=0, schedule="constant", log_steps=5,
                save_steps=1000, progress=False, tensorboard=False, cot=False)
    return TrainConfig(**(base | kw))


@pytest.mark.parametrize("objective", ["generative-pairwise", "generative-pointwise", "regressive-bt", "clip-bt"])
def test_each_objective_learns_a_fixed_batch_and_loads(objective, fixed_pairs, tmp_path):
    """Loss falls and training accuracy on the fixed batch exceeds 80% within 30 steps; the final
    checkpoint loads with rd.load and scores, compares and ranks like any judge."""
    final = train(_cfg(objective=objective, data=str(fixed_pairs), output_dir=str(tmp_path), max_steps=30,
                       clip_size="tiny"))
    rows = _metrics(tmp_path)
    assert rows[-1]["loss"] < 0.7 * rows[0]["loss"], rows
    assert rows[-1]["accuracy"] > 0.8, rows
    assert {"step", "loss", "samples_per_s"} <= set(rows[-1])
    # the vision encoder's own gradient norm is logged beside the total (a collapse shows as ~0 there)
    assert 0 < rows[-1]["grad_norm_vision"] < rows[-1]["grad_norm"], rows[-1]
    rm = rd.load(final)
    assert rm.config.objective == objective
    rec = next(r for r in read_manifest(fixed_pairs))
    a, b = rec.media["a"], rec.media["b"]
    p = rm.compare(rec.prompt, b, a)
    assert 0 < p < 1 and (p > 0.5) == (rec.label == "b")  # a pair it was trained on
    refs = [a] if rm.layout == "pairwise" else None
    assert 0 < rm.score(rec.prompt, [b], references=refs)[0] < 1
    assert sorted(rm.rank(rec.prompt, [a, b])) == [0, 1]
    if objective == "regressive-bt":  # sigma(v) and the raw value v agree
        img = torch.from_numpy(np.array(__import__("PIL.Image").Image.open(b).convert("RGB"))).permute(2, 0, 1)
        x = (img.float() / 255)[None]
        v = rm.reward_fn(raw=True)(x, rec.prompt)
        assert torch.allclose(torch.sigmoid(v), rm.reward_fn()(x, rec.prompt), atol=1e-6)
    assert (tmp_path / "curves.png").exists() and (tmp_path / "config.yaml").exists()


def test_tiny_pretrained_preset_learns_missing_objects_in_45_seconds(tmp_path):
    """The learning check: on held-out missing-object pairs (the easy category), the committed tiny
    pretrained preset reaches >= 70% accuracy within 45 s of training (judgment only)."""
    from rewarddance.world.dataset import build_defect_pairs

    train_file = build_defect_pairs(tmp_path / "data", 400, "missing_object", seed=1, name="train.jsonl")
    test_file = build_defect_pairs(tmp_path / "data", 100, "missing_object", seed=2, name="test.jsonl")
    # a step budget, not a clock (deterministic under load): 100 steps took 40-45 s on this project's 2-core VM
    train(_cfg(data=str(train_file), eval_data=str(test_file), output_dir=str(tmp_path / "run"), max_steps=100,
               batch_size=16, lr=5e-4, warmup_steps=10, schedule="cosine", log_steps=20, eval_steps=1000))
    last = _metrics(tmp_path / "run")[-1]
    assert last["eval_accuracy"] >= 0.7, last


def test_blind_warning_flags_a_vanished_vision_gradient_only():
    from rewarddance.recipes.train_rm import blind_warning

    # the stalled small preset's numbers (docs/results/pretrain-small-lr1e-3-collapsed), then a healthy run's
    assert "stopped reading the image" in blind_warning({"step": 500, "grad_norm": 0.70, "grad_norm_vision": 9e-5})
    assert blind_warning({"step": 250, "grad_norm": 0.61, "grad_norm_vision": 0.30}) is None
    assert blind_warning({"step": 1, "grad_norm": 0.5}) is None  # no vision gradient logged (freeze_vision)


def test_freeze_vision_keeps_the_vision_encoder_and_logs_no_vision_gradient(fixed_pairs, tmp_path):
    from rewarddance.models.judge import is_vision_parameter

    final = train(_cfg(data=str(fixed_pairs), output_dir=str(tmp_path / "run"), max_steps=2, log_steps=1,
                       freeze_vision=True))
    before, after = (dict(rd.load(p).judge.backbone.named_parameters()) for p in (TINY, final))
    vision = [n for n in before if is_vision_parameter(n)]
    assert vision and all(torch.equal(before[n], after[n]) for n in vision)
    assert not all(torch.equal(before[n], after[n]) for n in before if not is_vision_parameter(n))
    rows = _metrics(tmp_path / "run")
    assert rows[-1]["grad_norm"] > 0 and "grad_norm_vision" not in rows[-1]


def test_lora_adapter_and_merged_checkpoints_score_the_same(fixed_pairs, tmp_path):
    final = train(_cfg(data=str(fixed_pairs), output_dir=str(tmp_path / "run"), max_steps=4, lora=True,
                       lora_save="adapter"))
    assert (final / "adapter_config.json").exists() and not (final / "model.safetensors").exists()
    adapter = rd.load(final)
    assert type(adapter.judge.model).__name__.startswith("Peft")
    adapter.save_pretrained(tmp_path / "merged")  # merges by default
    merged = rd.load(tmp_path / "merged")
    assert not type(merged.judge.model).__name__.startswith("Peft")
    rec = next(r for r in read_manifest(fixed_pairs))
    s_adapter = adapter.score(rec.prompt, [rec.media["b"], rec.media["a"]], references=[rec.media["a"]])
    s_merged = merged.score(rec.prompt, [rec.media["b"], rec.media["a"]], references=[rec.media["a"]])
    np.testing.assert_allclose(s_adapter, s_merged, atol=1e-5)
    base = rd.load(TINY, layout="pairwise")  # LoRA changed something
    assert np.abs(np.array(base.score(rec.prompt, [rec.media["b"]], references=[rec.media["a"]]))
                  - s_merged[0]).max() > 1e-4
    # the adapter recorded its base's weights: pointed at other weights, it refuses to load
    config = json.loads((final / "rewarddance.json").read_text())
    assert config["adapter_base_digest"]
    other = tmp_path / "other-base"
    shutil.copytree(preset_path(TINY), other)
    (final / "rewarddance.json").write_text(json.dumps({**config, "adapter_of": str(other)}))
    rd.load(final)  # the same base files elsewhere: accepted
    judge = rd.load(other, dtype=torch.float32)
    with torch.no_grad():
        next(judge.judge.parameters()).add_(0.01)
    judge.save_pretrained(other)
    with pytest.raises(CheckpointError, match="weight files differ"):
        rd.load(final)


def test_cot_rationale_maps_image_letters_to_positions_in_both_orders(world):
    assert map_rationale("Image A shows x; image B shows y. So image A is better.", image1="a") == \
        "Image 1 shows x; image 2 shows y. So image 1 is better."
    assert map_rationale("Image A shows x; image B shows y. So image A is better.", image1="b") == \
        "Image 2 shows x; image 1 shows y. So image 2 is better."
    rec = next(r for r in read_manifest(world / "train.jsonl") if r.label == "a")
    first, second = make_example(rec, "generative-pairwise", task="t2i-overall").sequences
    # first: image 1 = a, image 2 = b; a is better, so "no" and the reason names image 1
    assert first.target.startswith("no\nReason:") and "So image 1 is better" in first.target
    assert second.target.startswith("yes\nReason:") and "So image 2 is better" in second.target
    assert first.p_yes == 0.0 and second.p_yes == 1.0


def test_cot_training_and_explain(world, tmp_path):
    """With rationales, the rationale's next-token loss falls; explain() answers with P(yes) and text."""
    final = train(_cfg(data=str(world / "train.jsonl"), output_dir=str(tmp_path), max_steps=15, cot=True,
                       log_steps=5))
    rows = _metrics(tmp_path)
    assert rows[-1]["cot_loss"] < rows[0]["cot_loss"]
    rm = rd.load(final)
    rec = next(r for r in read_manifest(world / "train.jsonl"))
    p, text = rm.explain(rec.prompt, rec.media["b"], reference=rec.media["a"], max_new_tokens=12)
    assert 0 < p < 1 and isinstance(text, str) and text
    r = subprocess.run([ENTRY, "score", "--model", str(final), "--prompt", rec.prompt, "--reference",
                        str(rec.media["a"]), "--explain", str(rec.media["b"])], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr
    assert "reason" in r.stdout.splitlines()[0]


def test_bad_rows_are_reported_and_skipped(world, tmp_path):
    rows = (world / "train.jsonl").read_text().splitlines()[:9]
    missing = json.loads(rows[1]) | {"image_a": "img/nope.png"}
    bad_label = json.loads(rows[2]) | {"label": "c"}
    (tmp_path / "img").symlink_to(world / "img")
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join([rows[0], "{not json", json.dumps(missing), json.dumps(bad_label), *rows[3:]]) + "\n")
    # the held-out set: a malformed line, and an image that loads but that the processor refuses
    Image.new("RGB", (400, 1), (200, 10, 10)).save(tmp_path / "thin.png")
    labelled = [json.loads(t) for t in rows if json.loads(t)["label"] != "tie"][:3]
    eval_data = tmp_path / "eval.jsonl"
    eval_data.write_text("\n".join([*map(json.dumps, labelled[:2]), "{not json",
                                    json.dumps(labelled[2] | {"image_b": "thin.png"})]) + "\n")
    r = subprocess.run([ENTRY, "train", f"model={TINY}", f"data={data}", f"output_dir={tmp_path / 'run'}",
                        f"eval_data={eval_data}", "max_steps=2", "batch_size=2", "progress=false",
                        "tensorboard=false"], capture_output=True, text=True, timeout=900, env=os.environ)
    assert r.returncode == 0, r.stderr
    last = _metrics(tmp_path / "run")[-1]
    assert (last["eval_n"], last["eval_failed"]) == (2, 1)  # the accuracy says what it rests on
    assert f"skipped: {eval_data}:3: malformed JSON" in r.stderr and "aspect ratio" in r.stderr
    skipped = [line for line in r.stderr.splitlines() if line.startswith(f"skipped: {data}")]
    assert len(skipped) == 3, r.stderr
    assert f"{data}:2: malformed JSON" in skipped[0]
    assert f"{data}:3" in skipped[1] and "file not found" in skipped[1]
    assert f"{data}:4" in skipped[2] and "label 'c'" in skipped[2]
    assert "3 bad row(s) skipped, 7 used" in r.stderr
    strict = subprocess.run([ENTRY, "train", f"model={TINY}", f"data={data}", "strict=true",
                             f"output_dir={tmp_path / 'strict'}", "max_steps=2", "progress=false"],
                            capture_output=True, text=True, timeout=900)
    assert strict.returncode == 2 and "Traceback" not in strict.stderr
    assert f"{data}:2: malformed JSON" in strict.stderr and "strict" in strict.stderr


def test_video_and_image_to_video_rows_train_one_step(world, tmp_path):
    recs = [r for r in read_manifest(world / "video-train.jsonl")]
    assert {r.task for r in recs} == {"t2v-overall", "i2v-overall"}
    for task in ("t2v-overall", "i2v-overall"):
        rows = [json.loads(t) for t in (world / "video-train.jsonl").read_text().splitlines()]
        data = world / f"only-{task}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows if r["task"] == task))
        out = tmp_path / task
        final = train(_cfg(data=str(data), output_dir=str(out), max_steps=1, batch_size=2, log_steps=1,
                           num_frames=2))
        assert np.isfinite(_metrics(out)[0]["loss"])
        assert rd.load(final).num_frames == 2


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="rationale-first"):
        train(_cfg(data="x.jsonl", cot=True, cot_order="rationale-first", output_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="objective"):
        load_config(TrainConfig, overrides=["objective=magic"])
    with pytest.raises(ConfigError, match="data: a training manifest is required"):
        train(_cfg(output_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="batch_size"):
        train(_cfg(data="x.jsonl", batch_size=3, grad_accum=2, output_dir=str(tmp_path)))


def _train_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return ["-m", "rewarddance.cli", "train", f"model={TINY}", f"data={data}", f"output_dir={out}",
            "batch_size=8", "log_steps=1", "lr=1e-3", "warmup_steps=2", "progress=false", "tensorboard=false",
            *extra]


def test_data_parallel_two_processes_match_one(world, tmp_path):
    """torchrun with 2 CPU processes (gloo): 2 ranks, each with its own share, identical weights after
    training, and the same per-step losses as one process with the same global batch, with tied pairs
    dropped (uneven item counts per rank) and CoT rationales on."""
    data = world / "train.jsonl"
    labels = [json.loads(t)["label"] for t in data.read_text().splitlines()]
    assert "tie" in labels  # dropped ties make the ranks' item counts uneven: the normalisation is tested
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    run_ok([sys.executable, *_train_cmd(data, tmp_path / "one", "max_steps=4")], timeout=600, env=env)
    run_ok([TORCHRUN, "--standalone", "--nproc_per_node", "2", *_train_cmd(data, tmp_path / "two", "max_steps=4")],
           timeout=600, env=env)
    info = json.loads((tmp_path / "two" / "final" / "rewarddance.json").read_text())["training"]
    assert info["num_processes"] == 2
    assert len(info["rank_weight_checksums"]) == 2 and len(set(info["rank_weight_checksums"])) == 1
    l1 = [r["loss"] for r in _metrics(tmp_path / "one")]
    l2 = [r["loss"] for r in _metrics(tmp_path / "two")]
    assert len(l1) == len(l2) == 4
    np.testing.assert_allclose(l2, l1, rtol=1e-4)
    assert abs(l1[-1] - l1[0]) > 1e-3  # the steps moved the weights: equal losses are not a constant


def test_sigkill_then_resume_repeats_the_uninterrupted_losses(fixed_pairs, world, tmp_path):
    data = world / "train.jsonl"
    run_ok([sys.executable, *_train_cmd(data, tmp_path / "whole", "max_steps=8", "save_steps=3")], timeout=600)
    out = tmp_path / "killed"
    cmd = [sys.executable, *_train_cmd(data, out, "max_steps=8", "save_steps=3")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill after step 5: checkpoint step-3 exists, steps 4-5 are lost
        if (out / "metrics.jsonl").exists() and len((out / "metrics.jsonl").read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "checkpoints" / "step-3").exists() and not (out / "final").exists()
    again = run_ok(cmd, timeout=600)
    assert "resuming from" in again.stderr
    a, b = _metrics(tmp_path / "whole"), _metrics(out)
    assert [r["step"] for r in b] == list(range(1, 9))
    np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=1e-6)


def test_pretraining_questions_come_in_both_orders(tmp_path):
    """Pretraining sequences alternate image-first and question-first, so a pretrained backbone can
    answer with the question before the image, as the judge's templates ask."""
    from rewarddance.data.training import make_pretrain_example, read_pretrain
    from rewarddance.models.judge import Judge
    from rewarddance.world.dataset import build_pretrain

    build_pretrain(tmp_path, 2, n_test=1, progress=False)
    row = next(iter(read_pretrain(tmp_path / "pretrain-train.jsonl")))
    ex = make_pretrain_example(row)
    firsts = [s.context.messages[0]["content"][0]["type"] for s in ex.sequences]
    assert len(firsts) >= 4 and firsts[:4] == ["image", "text", "image", "text"]
    processor = Judge.from_pretrained(preset_path(TINY)).processor
    rendered = [processor.apply_chat_template(s.context.messages, add_generation_prompt=True, tokenize=False)
                for s in ex.sequences[:2]]
    # Qwen2.5-VL renders an image as <|vision_start|><|image_pad|><|vision_end|>
    assert rendered[0].index(row.pairs[0][0]) > rendered[0].index("<|vision_start|>")
    assert rendered[1].index(row.pairs[1][0]) < rendered[1].index("<|vision_start|>")


def test_pretrain_learning_rate_defaults_by_size():
    from rewarddance.recipes.pretrain import PretrainConfig, with_default_lr

    assert with_default_lr(PretrainConfig(size="tiny")).lr == 1e-3
    assert with_default_lr(PretrainConfig(size="small")).lr == with_default_lr(PretrainConfig(size="medium")).lr == 3e-4
    assert with_default_lr(PretrainConfig(size="small", lr=5e-4)).lr == 5e-4


def test_pretrain_recipe_continues_from_a_model_and_reports_both_orders(preset_dirs, tmp_path):
    """`rewarddance pretrain init_from=...` starts from that model (lr 0: the written preset has its weights)
    and reports answer accuracy per question order."""
    from safetensors.torch import load_file

    from rewarddance.recipes.pretrain import PretrainConfig, pretrain

    start = preset_dirs("qwen2_5_vl")
    out = pretrain(PretrainConfig(init_from=str(start), out=str(tmp_path / "preset"), work_dir=str(tmp_path / "work"),
                                  n_train=6, n_test=3, max_steps=1, batch_size=2, lr=0.0, warmup_steps=0,
                                  progress=False))
    report = json.loads((out / "pretrain_report.json").read_text())
    assert {"answer_accuracy", "accuracy_image_first", "accuracy_question_first"} <= set(report)
    before, after = load_file(start / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    for k in before:  # the preset is written in float16
        torch.testing.assert_close(after[k].float(), before[k].half().float(), atol=0, rtol=0)
    assert 0 < rd.load(out).score("a red circle", [torch.rand(3, 64, 64)])[0] < 1


def test_resuming_with_another_learning_rate_is_refused(fixed_pairs, tmp_path):
    """The optimizer state would keep the checkpoint's rate while config.yaml says the new one."""
    train(_cfg(data=str(fixed_pairs), output_dir=str(tmp_path), max_steps=1))
    with pytest.raises(ConfigError, match="lr"):
        train(_cfg(data=str(fixed_pairs), output_dir=str(tmp_path), max_steps=2, lr=1e-4))


def test_atomic_write_text_keeps_the_old_file_and_no_temp_on_failure(tmp_path):
    from rewarddance.train.engine import atomic_write_text

    path = atomic_write_text(tmp_path / "a.json", "old")
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(path, "new \ud800")  # a lone surrogate cannot be encoded: fails mid-write
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_training_helpers_doctests():
    import doctest

    from rewarddance.recipes import pretrain, train_rm
    from rewarddance.train import engine

    for module in (train_rm, pretrain, engine):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
