"""The `rewarddance` command, run as a user runs it (subprocesses): exit codes, clear errors, resume."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from rewarddance.cli import main
from rewarddance.examples import EXAMPLE_DIR

ENTRY = str(Path(sys.executable).with_name("rewarddance"))  # the installed console script


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run(capsys):
    """The CLI's main() in this process (a subprocess test below covers the installed entry point)."""
    def call(*args: str) -> Result:
        capsys.readouterr()
        try:
            rc = main(list(args))
        except SystemExit as e:  # argparse usage errors
            rc = e.code
        out = capsys.readouterr()
        return Result(rc, out.out, out.err)
    return call


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "qwen2_vl-tiny"
    r = subprocess.run([ENTRY, "init-model", "--arch", "qwen2_vl", "--size", "tiny", "--out", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    assert "M parameters" in r.stdout
    return out


def test_entry_point_corrupt_image_one_line_no_traceback(model_dir, tmp_path):
    """Contract: `rewarddance score --model DIR --prompt P IMG...` with a corrupt image exits non-zero
    with one line naming the file, no traceback; the good image is still scored."""
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    good = EXAMPLE_DIR / "img" / "0_good.png"
    r = subprocess.run([ENTRY, "score", "--model", str(model_dir), "--prompt", "a red circle", str(good),
                        str(bad)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(bad) in errors[0]
    assert str(good) in r.stdout


def test_score_images_table_and_bad_image(model_dir, tmp_path, run):
    good = EXAMPLE_DIR / "img" / "0_good.png"
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    r = run("score", "--model", str(model_dir), "--prompt", "a red circle", str(good))
    assert r.returncode == 0, r.stderr
    reward = float(r.stdout.splitlines()[1].split()[-1])
    assert 0 < reward < 1
    for path, what in ((bad, "not a readable image"), (tmp_path / "missing.png", "file not found")):
        r = run("score", "--model", str(model_dir), "--prompt", "a red circle", str(path))
        assert r.returncode == 1
        assert "Traceback" not in r.stderr
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and str(path) in errors[0] and what in errors[0]
    # an image that loads but that the processor refuses fails alone, after the batch it was in
    thin = tmp_path / "thin.png"
    Image.new("RGB", (400, 1), (200, 10, 10)).save(thin)
    r = run("score", "--model", str(model_dir), "--prompt", "a red circle", str(good), str(thin), str(good))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(thin) in errors[0] and "aspect ratio" in errors[0]
    assert [float(line.split()[-1]) for line in r.stdout.splitlines()[1:]] == [reward, reward]


def test_usage_errors_exit_2(model_dir, run):
    assert run("score", "--model", str(model_dir), "x.png").returncode == 2  # no --prompt
    r = run("score", "--model", "/does/not/exist", "--prompt", "p", "x.png")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    debug = subprocess.run([ENTRY, "score", "--model", "/does/not/exist", "--prompt", "p", "x.png"],
                           capture_output=True, text=True, timeout=300, env={**os.environ, "REWARDDANCE_DEBUG": "1"})
    assert debug.returncode == 2 and "Traceback" in debug.stderr  # where the one-line error came from
    assert debug.stderr.strip().splitlines()[-1] == r.stderr.strip().splitlines()[-1]
    assert run("init-model", "--arch", "nope", "--size", "tiny", "--out", "x").returncode == 2
    r = run("score", "--model", str(model_dir), "--layout", "pairwise", "--prompt", "p",
            str(EXAMPLE_DIR / "img" / "0_good.png"))
    assert r.returncode == 2 and "--reference" in r.stderr


def _manifest(tmp_path: Path) -> Path:
    shutil.copytree(EXAMPLE_DIR / "img", tmp_path / "img")
    lines = (EXAMPLE_DIR / "manifest.jsonl").read_text().splitlines()
    lines.insert(2, '{"id": "broken", "prompt": "a red circle", "image": "img/missing.png"}')
    lines.insert(4, "{not json")
    lines.insert(5, '{"id": "badlabel", "prompt": "a red circle", "image_a": "img/0_good.png", '
                    '"image_b": "img/0_bad.png", "label": "maybe"}')
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_manifest_skips_bad_rows_and_resumes(model_dir, tmp_path, run):
    manifest = _manifest(tmp_path)
    out = tmp_path / "scores.jsonl"
    r = run("score", "--model", str(model_dir), "--input", str(manifest), "--output", str(out))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    rows = [json.loads(t) for t in out.read_text().splitlines()]
    assert len(rows) == 15  # one per input row
    by_key = {row["key"]: row for row in rows}
    assert "file not found" in by_key["broken"]["error"]
    assert "malformed JSON" in by_key["line 5"]["error"]
    assert "label 'maybe'" in by_key["badlabel"]["error"]
    assert 0 < by_key["0-pair"]["p_b_better"] < 1 and 0 < by_key["0-good"]["reward"] < 1
    import rewarddance as rd

    rm = rd.load(model_dir)  # p_b_better is P(image_b better than image_a), as compare() says
    img = tmp_path / "img"
    assert abs(by_key["0-pair"]["p_b_better"] - rm.compare("a red circle", img / "0_good.png", img / "0_bad.png")) < 1e-6
    assert abs(by_key["0-good"]["reward"] - rm.score("a red circle", [img / "0_good.png"])[0]) < 1e-6
    # a crash mid-file: drop the last rows, cut one line in half; the re-run completes without redoing the rest
    kept = out.read_text().splitlines()[:6]
    out.write_text("\n".join(kept) + "\n" + '{"key": "trunc')
    (tmp_path / "img" / "missing.png").write_bytes((tmp_path / "img" / "0_good.png").read_bytes())
    r = run("score", "--model", str(model_dir), "--input", str(manifest), "--output", str(out))
    rows2 = [json.loads(t) for t in out.read_text().splitlines()]
    assert [row["key"] for row in rows2] == [row["key"] for row in rows]  # input order
    by_key2 = {row["key"]: row for row in rows2}
    for done in (json.loads(t) for t in kept if "error" not in t):
        assert by_key2[done["key"]] == done  # finished rows kept as they were
    assert "reward" in {row["key"]: row for row in rows2}["broken"]  # fixed row retried
    assert r.returncode == 1  # the malformed rows still fail


def test_strict_stops_at_first_bad_row(model_dir, tmp_path, run):
    manifest = _manifest(tmp_path)
    out = tmp_path / "scores.jsonl"
    r = run("score", "--model", str(model_dir), "--input", str(manifest), "--output", str(out), "--strict")
    assert r.returncode == 1
    rows = [json.loads(t) for t in out.read_text().splitlines()]
    assert rows[-1]["key"] == "broken" and "error" in rows[-1] and len(rows) == 3
