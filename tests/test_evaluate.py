"""Evaluation: metrics on hand-computed cases, resumable scoring (row errors, fingerprints),
`rewarddance eval` (JSON contract, markdown, reliability PNG), data-parallel eval under torchrun
with a rank killed mid-run, and references by Best-of-N win counts."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rewarddance.evaluate import metrics
from rewarddance.evaluate.references import best_of_n, select, select_references
from rewarddance.evaluate.scoring import ScoreFileMismatch, read_rows, score_manifest

from .conftest import run_ok, smooth_images

ENTRY = str(Path(sys.executable).parent / "rewarddance")


# ------------------------------------------------------------------ metrics, by hand
def test_accuracy_counts_model_ties_wrong_and_skips_human_ties():
    assert metrics.accuracy([0.9, 0.2, 0.5, 0.7], ["a", "a", "b", "tie"]) == (pytest.approx(1 / 3), 3)


def test_accuracy_with_ties_and_its_calibration():
    p, labels = [0.9, 0.2, 0.5, 0.7], ["a", "a", "b", "tie"]
    # threshold 0.25: verdicts a, b, tie, tie -> right, wrong, wrong, right
    assert metrics.accuracy_with_ties(p, labels, 0.25) == 0.5
    # candidates: 0 -> 1/4; 0.2 -> 2/4; 0.3 -> 2/4; 0.4 -> 1/4: the smallest best threshold wins
    acc, t = metrics.tie_calibration(p, labels)
    assert acc == 0.5 and t == pytest.approx(0.2)
    # a human tie the model cannot separate from a decided pair costs one of them
    assert metrics.tie_calibration([0.6, 0.6], ["tie", "a"])[0] == 0.5


def test_position_consistency_ece_auroc():
    # P(B better) read in both orders: b/b agree; a/b, b/a disagree; a 0.5 is a tie, never consistent
    assert metrics.position_consistency([0.8, 0.4, 0.6, 0.5], [0.7, 0.6, 0.4, 0.5]) == 0.25
    # bins 0.9 (freq 0.5) and 0.1 (freq 0): 0.5 * 0.4 + 0.5 * 0.1
    assert metrics.ece([0.9, 0.9, 0.1, 0.1], [1, 0, 0, 0]) == pytest.approx(0.25)
    # pos/neg pairs: 0.9>0.8, 0.9>0.1, 0.8=0.8 (half), 0.8>0.1
    assert metrics.auroc([0.9, 0.8, 0.8, 0.1], [1, 1, 0, 0]) == pytest.approx(0.875)
    assert np.isnan(metrics.auroc([0.3, 0.4], [1, 1]))


def test_tie_calibration_search_is_exact():
    """The sorted-margin search equals brute force over a fine grid of thresholds."""
    rng = np.random.default_rng(0)
    p = np.round(rng.random(200), 2)
    labels = rng.choice(["a", "b", "tie"], 200)
    best, t = metrics.tie_calibration(p, labels)
    grid = max(metrics.accuracy_with_ties(p, labels, g) for g in np.linspace(0, 0.5, 2001))
    assert best == pytest.approx(grid) and metrics.accuracy_with_ties(p, labels, t) == pytest.approx(best)


# ------------------------------------------------------------------ data on disk
def _save(img: torch.Tensor, path: Path) -> str:
    Image.fromarray((img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(path)
    return path.name


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    """24 labelled pairs of 8 smooth images under 3 prompts, with splits and categories."""
    root = tmp_path_factory.mktemp("pairs")
    names = [_save(img, root / f"i{k}.png") for k, img in enumerate(smooth_images(8, seed=31))]
    rng = np.random.default_rng(1)
    rows = []
    for k in range(24):
        a, b = rng.choice(8, 2, replace=False)
        rows.append({"id": f"p{k}", "prompt": ["a red circle", "two blue squares", "a green star"][k % 3],
                     "image_a": names[a], "image_b": names[b], "label": ["a", "b", "tie"][k % 3],
                     "split": "id" if k % 2 else "ood", "category": "colour" if k % 4 < 2 else "count"})
    path = root / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------ scoring
def test_a_row_the_processor_rejects_fails_alone_and_resume_keeps_the_rest(preset_dirs, tmp_path):
    """An image that loads but that Qwen's processor refuses (aspect ratio 400) used to abort its
    whole batch, and every resume died on it: now only that row fails."""
    import rewarddance as rd

    rm = rd.load(preset_dirs("qwen2_5_vl"))
    good = [_save(img, tmp_path / f"g{k}.png") for k, img in enumerate(smooth_images(3, seed=32))]
    Image.new("RGB", (400, 1), (200, 10, 10)).save(tmp_path / "thin.png")
    rows = [{"id": f"r{k}", "prompt": "a red circle", "image": name} for k, name in enumerate(good)]
    rows.insert(1, {"id": "thin", "prompt": "a red circle", "image": "thin.png"})
    manifest = tmp_path / "rows.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scores.jsonl"
    assert score_manifest(rm, manifest, out, progress=False) == (3, 1)
    got = read_rows([out])
    assert [r["key"] for r in got] == ["r0", "thin", "r1", "r2"]  # input order
    assert "aspect ratio" in got[1]["error"] and "thin" in got[1]["error"]
    np.testing.assert_allclose([r["reward"] for r in got if "reward" in r],
                               rm.score("a red circle", [tmp_path / n for n in good]), atol=1e-5)
    first = out.read_text()
    assert score_manifest(rm, manifest, out, progress=False) == (3, 1)  # resume: only the bad row again
    assert out.read_text() == first


def test_resume_refuses_another_models_scores(preset_dirs, pairs_file, tmp_path):
    import rewarddance as rd

    out = tmp_path / "scores.jsonl"
    rm = rd.load(preset_dirs("qwen2_5_vl"), layout="pairwise")
    assert score_manifest(rm, pairs_file, out, progress=False) == (24, 0)
    rows = read_rows([out])
    for r in rows:  # p_b_better averages its two order readings
        assert r["p_b_better"] == pytest.approx(sum(r["p_b_better_orders"]) / 2)
    assert score_manifest(rm, pairs_file, out, progress=False) == (24, 0)  # same model: resumes
    with pytest.raises(ScoreFileMismatch, match="another model"):
        score_manifest(rd.load(preset_dirs("qwen2_vl"), layout="pairwise"), pairs_file, out, progress=False)
    with pytest.raises(ScoreFileMismatch):  # the same weights asked another task score differently
        score_manifest(rm, pairs_file, out, task="plain", progress=False)
    with pytest.raises(ScoreFileMismatch):  # a video is sampled at another number of frames
        score_manifest(rd.load(preset_dirs("qwen2_5_vl"), layout="pairwise", num_frames=rm.num_frames + 2),
                       pairs_file, out, progress=False)
    assert read_rows([out]) == rows  # nothing lost
    # a custom task is the task its file holds: edited in place, it is another task
    import yaml

    from rewarddance.context import get_task

    plain, task_file, mine = get_task("plain"), tmp_path / "mine.yaml", tmp_path / "mine.jsonl"
    task_file.write_text(yaml.safe_dump({"pointwise": plain.pointwise, "pairwise": plain.pairwise}))
    assert score_manifest(rm, pairs_file, mine, task=str(task_file), progress=False) == (24, 0)
    task_file.write_text(yaml.safe_dump({"pointwise": plain.pointwise, "pairwise": "Be strict. " + plain.pairwise}))
    with pytest.raises(ScoreFileMismatch):
        score_manifest(rm, pairs_file, mine, task=str(task_file), progress=False)


def test_rows_of_two_custom_tasks_with_one_name_are_scored_each_with_its_own(pairs_file, tmp_path):
    """Rows are batched by task (shared prefixes): by the task's templates, not its name."""
    import yaml

    import rewarddance as rd
    from rewarddance.data import read_manifest
    from rewarddance.evaluate.scoring import score_records

    files = []
    for k, question in enumerate(("Is there a {prompt}?", "How many objects are there? {prompt}")):
        files.append(tmp_path / f"t{k}" / "judge.yaml")  # both tasks are named "judge" (the file stem)
        files[-1].parent.mkdir()
        files[-1].write_text(yaml.safe_dump({"pointwise": "{image}\n" + question,
                                             "pairwise": "{prompt} {image1} {image2}"}))
    image = json.loads(pairs_file.read_text().splitlines()[0])["image_a"]
    manifest = pairs_file.parent / "two-tasks.jsonl"  # beside the image its rows name
    rows = [{"id": f"t{k}", "prompt": "red circle", "image": image, "task": str(f)} for k, f in enumerate(files)]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rm = rd.load("qwen2_5_vl-tiny-shapeworld", layout="pointwise")  # pretrained: it reads the question
    together = [r["reward"] for r in score_records(rm, list(read_manifest(manifest)))]
    alone = [score_records(rm, [rec])[0]["reward"] for rec in read_manifest(manifest)]
    assert together == pytest.approx(alone, abs=1e-6)
    assert abs(alone[0] - alone[1]) > 1e-2  # the two tasks do score differently


# ------------------------------------------------------------------ rewarddance eval
def test_eval_cli_writes_the_contract(preset_dirs, pairs_file, tmp_path):
    out = tmp_path / "eval.json"
    r = subprocess.run([ENTRY, "eval", "--model", str(preset_dirs("qwen2_5_vl")), "--layout", "pairwise",
                        "--data", str(pairs_file), "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    overall = result["overall"]
    for key in ("accuracy", "accuracy_with_ties", "n", "n_ties", "position_consistency", "ece", "tie_threshold"):
        assert key in overall
    assert overall["n"] == 16 and overall["n_ties"] == 8  # 24 pairs labelled a, b, tie in turn
    assert set(result["splits"]) == {"id", "ood"} and set(result["by_category"]) == {"colour", "count"}
    assert sum(s["n"] for s in result["splits"].values()) == 16
    assert 0 <= overall["accuracy"] <= 1 and 0 <= overall["position_consistency"] <= 1
    # the numbers are the metrics of the score rows it kept beside the JSON
    rows = read_rows([tmp_path / "eval-scores" / "0-pairs.jsonl"])
    records = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    p_a = [1 - r["p_b_better"] for r in rows]
    assert overall["accuracy"] == pytest.approx(metrics.accuracy(p_a, [x["label"] for x in records])[0])
    assert (tmp_path / "eval-reliability.png").stat().st_size > 1000
    assert "| overall |" in out.with_suffix(".md").read_text() and "| overall |" in r.stdout


def test_eval_pointwise_rows_and_bad_rows(preset_dirs, tmp_path):
    names = [_save(img, tmp_path / f"g{k}.png") for k, img in enumerate(smooth_images(4, seed=33))]
    rows = [json.dumps({"prompt": "a red circle", "image": n, "label": ["yes", "no"][k % 2]})
            for k, n in enumerate(names)]
    rows.insert(2, "{not json")
    rows.append(json.dumps({"prompt": "a red circle", "image": "missing.png", "label": "yes"}))
    data = tmp_path / "points.jsonl"
    data.write_text("\n".join(rows) + "\n")
    r = subprocess.run([ENTRY, "eval", "--model", str(preset_dirs("qwen2_5_vl")), "--data", str(data),
                        "--json", str(tmp_path / "e.json")], capture_output=True, text=True, timeout=900)
    assert r.returncode == 1 and "Traceback" not in r.stderr  # bad rows: reported, skipped, exit 1
    assert f"{data}:3: malformed JSON" in r.stderr and "missing.png" in r.stderr
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["overall"]["n"] == 4 and set(result["overall"]) >= {"accuracy", "auroc", "ece"}
    strict = subprocess.run([ENTRY, "eval", "--model", str(preset_dirs("qwen2_5_vl")), "--data", str(data),
                             "--strict"], capture_output=True, text=True, timeout=900)
    assert strict.returncode == 1 and "strict" in strict.stderr and "Traceback" not in strict.stderr


# ------------------------------------------------------------------ data parallel
def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out += [int(d.name), *_children(int(d.name))]
    return out


def _rank_pid(torchrun_pid: int, rank: int) -> int | None:
    for pid in _children(torchrun_pid):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"TORCHELASTIC_RUN_ID" in b" ".join(env):
            return pid
    return None


def test_eval_data_parallel_equals_one_process_and_survives_a_dead_rank(preset_dirs, pairs_file, tmp_path):
    """torchrun, 2 CPU ranks: rank 1 is SIGKILLed mid-run; the rows both ranks finished stay on
    disk; the same command then resumes, each rank scoring a non-empty shard, and the merged
    scores are the one-process rows in the same order (1e-6), with the same metrics."""
    import rewarddance as rd
    from rewarddance.recipes.evaluate_rm import evaluate

    model = str(preset_dirs("qwen2_5_vl"))
    single = evaluate(rd.load(model, layout="pairwise"), [pairs_file], json_out=tmp_path / "one.json", batch_size=2,
                      progress=False)
    out = tmp_path / "ddp.json"
    cmd = ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "rewarddance.cli", "eval", "--model", model,
           "--layout", "pairwise", "--data", str(pairs_file), "--json", str(out), "--batch-size", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    scores = tmp_path / "ddp-scores" / "0-pairs.jsonl"
    part1 = scores.with_name(scores.name + ".rank1")
    proc = subprocess.Popen([str(Path(sys.executable).parent / c) if c == "torchrun" else c for c in cmd],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 240
    while time.time() < deadline and not (part1.exists() and part1.read_text().count("\n") >= 1):
        time.sleep(0.05)
    victim = _rank_pid(proc.pid, 1)
    assert victim is not None, "rank 1 not found"
    os.kill(victim, signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    left = read_rows([scores.with_name(scores.name + ".rank0"), part1])
    assert 0 < len(left) < 24 and not out.exists()  # finished rows kept, nothing merged yet

    again = run_ok([str(Path(sys.executable).parent / "torchrun"), *cmd[1:]], env=env)
    # each rank reports its shard (the lines may interleave with rank 0's progress bar)
    shards = {int(r): int(n) for r, n in re.findall(r"rank (\d)/2: scored (\d+) rows", again.stderr)}
    assert set(shards) == {0, 1} and all(n > 0 for n in shards.values()), again.stderr[-2000:]
    assert sum(shards.values()) == 24 - len(left)
    one, ddp = read_rows([tmp_path / "one-scores" / "0-pairs.jsonl"]), read_rows([scores])
    assert [r["key"] for r in ddp] == [r["key"] for r in one]
    np.testing.assert_allclose([r["p_b_better"] for r in ddp], [r["p_b_better"] for r in one], atol=1e-6)
    assert np.ptp([r["p_b_better"] for r in one]) > 1e-3  # the rows differ by far more than the tolerance
    assert not list(scores.parent.glob("*.rank*"))
    result = json.loads(out.read_text())
    assert result["overall"]["accuracy"] == pytest.approx(single["overall"]["accuracy"])


# ------------------------------------------------------------------ references
def test_select_picks_the_all_pairs_winner():
    # 0 beats 1 and 2 narrowly; 3 beats 0 hugely but loses to 1 and 2: most wins, not most probability
    beats = torch.tensor([[0.5, 0.6, 0.6, 0.1],
                          [0.4, 0.5, 0.7, 0.8],
                          [0.4, 0.3, 0.5, 0.8],
                          [0.9, 0.2, 0.2, 0.5]], dtype=torch.float64)
    pick = select(beats)
    assert pick.index == 1 and pick.wins == 2 and pick.runner_up == 0  # 1 and 0 both win 2: probability breaks it
    assert pick.order == [1, 0, 2, 3]


def test_references_cli_matches_pairwise_comparisons(preset_dirs, tmp_path):
    """The chosen reference is the winner of separate `compare` calls (another code path); bad
    rows are reported and skipped."""
    import rewarddance as rd

    rm = rd.load(preset_dirs("qwen2_5_vl"), layout="pairwise")
    imgs = smooth_images(8, seed=34)
    names = [_save(img, tmp_path / f"c{k}.png") for k, img in enumerate(imgs)]
    rows = [{"id": f"c{k}", "prompt": ["a red circle", "a blue star"][k // 4], "image": n} for k, n in enumerate(names)]
    Image.new("RGB", (400, 1), (200, 10, 10)).save(tmp_path / "thin.png")  # loads; the processor refuses it
    lines = [json.dumps(r) for r in rows] + ["{broken", json.dumps({"prompt": "a red circle", "image": "nope.png"}),
                                             json.dumps({"id": "thin", "prompt": "a blue star", "image": "thin.png"})]
    cands = tmp_path / "candidates.jsonl"
    cands.write_text("\n".join(lines) + "\n")
    r = subprocess.run([ENTRY, "references", "--model", str(preset_dirs("qwen2_5_vl")), "--layout", "pairwise",
                        "--input", str(cands), "--out", str(tmp_path / "refs.jsonl")],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 1 and r.stderr.count("skipped:") == 3 and "Traceback" not in r.stderr
    assert "thin.png (candidate thin of 'a blue star'): ValueError" in r.stderr  # its group is picked without it
    refs = [json.loads(line) for line in (tmp_path / "refs.jsonl").read_text().splitlines()]
    assert [x["prompt"] for x in refs] == ["a red circle", "a blue star"]
    for ref, group in zip(refs, (imgs[:4], imgs[4:])):
        prompt = ref["prompt"]
        wins = np.zeros(4)
        for i in range(4):
            for j in range(i + 1, 4):
                p = rm.compare(prompt, group[i], group[j])
                wins[i] += p > 0.5
                wins[j] += p < 0.5
        assert ref["n_candidates"] == 4 and set(ref) >= {"id", "image", "wins", "runner_up"}
        assert ref["wins"] == wins.max() and wins[int(ref["candidate"][1:]) % 4] == wins.max()
        assert (tmp_path / ref["image"]).exists()
    assert best_of_n(rm, "a red circle", imgs[:4]).index == int(refs[0]["candidate"][1:])
    assert select_references(rm, cands, tmp_path / "n2.jsonl", n=2, progress=False) == (2, 2)


# ------------------------------------------------------------------ public formats through eval
def test_eval_reads_a_benchmark_file_and_reports_its_headline(preset_dirs, tmp_path, monkeypatch, capsys):
    """An ImageReward-format test.json (THUDM/ImageReward data/test.json) evaluates through the same
    recipe: detected, scored, and its headline metric (pooled pair accuracy) next to ours; `data
    convert` turns it into a manifest that evaluates to the same accuracy."""
    import rewarddance as rd
    from rewarddance.cli import main
    from rewarddance.recipes.evaluate_rm import evaluate

    names = [_save(img, tmp_path / f"g{k}.png") for k, img in enumerate(smooth_images(6, seed=35))]
    items = [{"id": "p0", "prompt": "a red circle", "generations": names[:3], "ranking": [1, 3, 2]},
             {"id": "p1", "prompt": "a blue star", "generations": names[3:], "ranking": [2, 1, 2]}]
    (tmp_path / "test.json").write_text(json.dumps(items))
    rm = rd.load(preset_dirs("qwen2_5_vl"), layout="pairwise")
    result = evaluate(rm, [tmp_path / "test.json"], json_out=tmp_path / "ir.json", progress=False)
    bench = result["benchmark"]
    assert bench["name"] == "imagereward" and bench["metric"] == "pooled_pair_accuracy"
    assert result["overall"]["n"] == 5 and result["overall"]["n_ties"] == 1  # 3 + 3 pairs, one tied in p1
    assert bench["value"] == pytest.approx(result["overall"]["accuracy"])  # ImageReward's metric is pooled accuracy
    monkeypatch.chdir(tmp_path)  # a relative --out: the files it prints are the files it wrote
    capsys.readouterr()
    assert main(["data", "convert", "test.json", "--out", "conv"]) == 0
    printed = [line.split()[1] for line in capsys.readouterr().out.splitlines()]
    assert printed and all(Path(f).is_file() for f in printed)
    manifest = next((tmp_path / "conv").glob("imagereward*.jsonl"))
    again = evaluate(rm, [manifest], progress=False)
    assert again["overall"]["accuracy"] == pytest.approx(result["overall"]["accuracy"], abs=1e-9)


def test_eval_video_and_image_to_video_rows(world, preset_dirs):
    """ShapeWorld video pairs (text-to-video and image-to-video rows, each naming its task) go
    through the same recipe and are all scored."""
    import rewarddance as rd
    from rewarddance.data import read_manifest
    from rewarddance.recipes.evaluate_rm import evaluate

    data = world / "video-test.jsonl"
    records = list(read_manifest(data))
    assert any(r.media["condition"] is not None for r in records) and any(r.media["condition"] is None for r in records)
    result = evaluate(rd.load(preset_dirs("qwen2_5_vl"), layout="pairwise"), [data], progress=False)
    assert result["n_rows_failed"] == 0
    assert result["overall"]["n"] + result["overall"]["n_ties"] == len(records)
