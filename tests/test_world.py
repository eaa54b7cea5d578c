"""ShapeWorld: grammar, checker accuracy on balanced sets (incl. an independent drawing routine),
datasets (deterministic, valid, clean test labels, no leakage into pretraining) and videos."""

from __future__ import annotations

import colorsys
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rewarddance.data import Record, read_manifest
from rewarddance.world import COLOURS, SHAPES, Style, check, parse_prompt
from rewarddance.world.dataset import HOLDOUT, build_world, preference, rationale
from rewarddance.world.defects import QUALITY_DEFECTS, apply_quality_defect
from rewarddance.world.evalset import Case, balanced_cases, checker_metrics
from rewarddance.world.render import OOD_BACKGROUNDS
from rewarddance.world.scene import article
from rewarddance.world.video import check_video, render_clip


@pytest.mark.parametrize("prompt", ["a red circle", "two green stars", "three blue squares",
                                    "a blue square to the left of a yellow triangle", "a red square and a blue circle",
                                    "an orange star", "a pink ring above a cyan cross", "four purple triangles",
                                    "a small green ring below a large red star", "a circle and a star"])
def test_grammar_roundtrip(prompt):
    assert parse_prompt(prompt).prompt() == prompt


@pytest.mark.parametrize("bad", ["a red dog", "two red circle", "an elephant", "", "a red circle and a blue square "
                                 "and a green star", "two red circles to the left of a star"])
def test_unparseable_prompt_names_it(bad):
    with pytest.raises(ValueError, match="cannot parse prompt"):
        parse_prompt(bad)


def _assert_targets(metrics, floor):
    assert metrics["accuracy"] >= floor, metrics
    assert metrics["precision"] >= floor - 0.02 and metrics["recall"] >= floor - 0.04, metrics


def test_checker_accuracy_clean_64px():
    _assert_targets(checker_metrics(balanced_cases(np.random.default_rng(11), 300, size=64)), 0.99)


def test_checker_accuracy_clean_32px():
    _assert_targets(checker_metrics(balanced_cases(np.random.default_rng(12), 300, size=32)), 0.97)


def test_checker_accuracy_ood_style():
    _assert_targets(checker_metrics(balanced_cases(np.random.default_rng(13), 200, style=Style.ood())), 0.97)


@pytest.mark.parametrize("defect", list(QUALITY_DEFECTS))
def test_checker_accuracy_under_default_quality_defects(defect):
    cases = balanced_cases(np.random.default_rng(14), 200, quality_defect=defect, severity=1.0)
    _assert_targets(checker_metrics(cases), 0.95)


# ------------------------------------------------------------------ an independent drawing routine
def _jittered_rgb(rng, name):
    """The named colour with its hue, saturation and value jittered (not the renderer's exact RGB)."""
    r, g, b = (c / 255 for c in COLOURS[name][0])
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    h = (h + rng.uniform(-7, 7) / 360) % 1
    s, v = np.clip(s + rng.uniform(-0.1, 0.05), 0.55, 1), np.clip(v + rng.uniform(-0.1, 0.05), 0.5, 1)
    return np.array(colorsys.hsv_to_rgb(h, s, v)) * 255


def _inside_polygon(xx, yy, poly):
    """Even-odd rule, vectorised over a pixel grid."""
    inside = np.zeros(xx.shape, bool)
    for (x0, y0), (x1, y1) in zip(poly, poly[1:] + poly[:1]):
        crosses = (y0 > yy) != (y1 > yy)
        xcross = x0 + (yy - y0) * (x1 - x0) / (y1 - y0 + 1e-12)
        inside ^= crosses & (xx < xcross)
    return inside


def _mask(shape, cx, cy, r, size):
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    d = np.hypot(xx - cx, yy - cy)
    if shape == "circle":
        return d <= r
    if shape == "ring":
        return (d <= r) & (d >= 0.5 * r)
    if shape == "square":
        return (np.abs(xx - cx) <= 0.7 * r) & (np.abs(yy - cy) <= 0.7 * r)
    if shape == "cross":
        arm, half = 0.33 * r, 0.95 * r
        return ((np.abs(xx - cx) <= arm) & (np.abs(yy - cy) <= half)) | \
               ((np.abs(yy - cy) <= arm) & (np.abs(xx - cx) <= half))
    if shape == "triangle":
        pts = [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in np.radians([-90, 30, 150])]
    else:  # star
        pts = [(cx + (r if k % 2 == 0 else 0.42 * r) * np.cos(np.radians(-90 + 36 * k)),
                cy + (r if k % 2 == 0 else 0.42 * r) * np.sin(np.radians(-90 + 36 * k))) for k in range(10)]
    return _inside_polygon(xx, yy, pts)


def _draw(rng, objects, size=64):
    img = np.zeros((size, size, 3)) + rng.uniform(225, 250) + rng.uniform(-4, 4, 3)
    for shape, colour, cx, cy, r in objects:
        img[_mask(shape, cx, cy, r, size)] = _jittered_rgb(rng, colour)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _independent_cases(rng, n, size=64):
    """Pairs of (image, prompt, truth) drawn with numpy masks; negatives change colour, shape, count or side."""
    cases = []
    names = list(COLOURS)
    for i in range(n):
        kind = i % 4
        c1, c2 = rng.choice(names, 2, replace=False)
        s1, s2 = rng.choice(SHAPES, 2, replace=False)
        r = size * rng.uniform(0.14, 0.2)
        if kind == 0:  # single object, colour / shape
            prompt = f"{article(c1)} {c1} {s1}"
            x, y = size / 2 + rng.uniform(-6, 6), size / 2 + rng.uniform(-6, 6)
            shape, colour = s1, c1
            if i % 8 >= 4:  # the other shape or the other colour, never both
                shape = s2 if rng.random() < 0.5 else s1
                colour = c1 if shape == s2 else c2
            objs = [(shape, colour, x, y, r)]
            defect = "wrong_" + "+".join(w for w, drawn, asked in (("shape", shape, s1), ("colour", colour, c1))
                                         if drawn != asked)
        elif kind == 1:  # counting
            k = int(rng.integers(2, 4))
            prompt = f"{['two', 'three'][k - 2]} {c1} {s1}{'es' if s1 == 'cross' else 's'}"
            cells = [(16, 16), (48, 16), (16, 48), (48, 48)]
            drawn = k if i % 8 < 4 else k + (1 if rng.random() < 0.5 else -1)
            objs = [(s1, c1, x * size / 64, y * size / 64, r * 0.8) for x, y in cells[:drawn]]
            defect = "wrong_count"
        else:  # position
            rel = "to the left of" if kind == 2 else "above"
            a, b = (0.27 * size, 0.73 * size)
            swap = i % 8 >= 4
            pa, pb = (b, a) if swap else (a, b)
            prompt = f"{article(c1)} {c1} {s1} {rel} {article(c2)} {c2} {s2}"
            if kind == 2:
                objs = [(s1, c1, pa, size / 2, r), (s2, c2, pb, size / 2 + 3, r)]
            else:
                objs = [(s1, c1, size / 2, pa, r), (s2, c2, size / 2 + 3, pb, r)]
            defect = "swapped_position"
        truth = i % 8 < 4
        cases.append(Case(_draw(rng, objs, size), prompt, truth, ["colors", "counting", "position", "position"][kind],
                          "clean" if truth else defect))
    return cases


def test_checker_accuracy_on_independent_drawings():
    cases = _independent_cases(np.random.default_rng(15), 240)
    negatives = {c.kind for c in cases if not c.expected}
    assert negatives == {"wrong_shape", "wrong_colour", "wrong_count", "swapped_position"}, negatives
    _assert_targets(checker_metrics(cases), 0.95)


# ------------------------------------------------------------------ checker details
def test_check_contract_and_any_image_type(tmp_path):
    rng = np.random.default_rng(0)
    img = _draw(rng, [("circle", "red", 32, 32, 12)])
    img.save(tmp_path / "c.png")
    for src in (img, np.asarray(img), tmp_path / "c.png"):
        r = check(src, "a red circle")
        assert r.passed and r.score == 1.0 and all(isinstance(t, str) and h for t, h in r.constraints)
    r = check(img, "two blue squares")
    assert not r.passed and 0 <= r.score < 1


def test_rationales_use_the_grammars_article():
    """'an orange circle', never 'a orange circle': the checker's summary (and so every rationale) says
    what the grammar says."""
    img = _draw(np.random.default_rng(0), [("circle", "orange", 18, 32, 11), ("square", "red", 46, 32, 11)])
    r = check(img, "an orange circle")
    assert r.summary() == "an orange circle, a red square"
    assert "Image A shows an orange circle, a red square;" in rationale("an orange circle", r, r, "tie")


def test_quality_score_falls_with_severity():
    cases = balanced_cases(np.random.default_rng(3), 20)
    for defect in QUALITY_DEFECTS:
        q = [np.median([check(apply_quality_defect(c.image, defect, sev, np.random.default_rng(0)), c.prompt).quality
                        for c in cases]) for sev in (0.0, 1.0, 2.0)]
        assert q[0] > q[1] > q[2], (defect, q)


# ------------------------------------------------------------------ datasets
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    kw = dict(seed=5, video=True, n_test=60, n_video=10, progress=False)
    counts = build_world(out / "a", 30, **kw)
    build_world(out / "b", 30, **kw)
    return out, counts


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix != ".mp4":  # mp4 muxers may stamp metadata; frames are checked below
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_dataset_files_counts_and_determinism(world):
    out, counts = world
    assert counts["train.jsonl"] == 30 and counts["test.jsonl"] == 60 and counts["video-train.jsonl"] == 10
    for name in ("train.jsonl", "test.jsonl", "pointwise-train.jsonl", "pointwise-test.jsonl", "references.jsonl",
                 "pretrain.jsonl", "video-train.jsonl", "video-test.jsonl", "datasheet.md"):
        assert (out / "a" / name).exists(), name
    assert _digest(out / "a") == _digest(out / "b")


def test_manifests_validate(world):
    out, _ = world
    for name in ("train.jsonl", "test.jsonl", "pointwise-train.jsonl", "pointwise-test.jsonl", "video-train.jsonl",
                 "video-test.jsonl"):
        rows = list(read_manifest(out / "a" / name))
        assert rows and all(isinstance(r, Record) for r in rows), name
        for r in rows[:5]:
            assert all(p is None or p.exists() for p in r.media.values())


def test_test_labels_are_clean_and_ood_is_held_out(world):
    out, _ = world
    rows = [json.loads(t) for t in (out / "a" / "test.jsonl").read_text().splitlines()]
    for r in rows:
        a, b = (check(out / "a" / r[k], r["prompt"]) for k in ("image_a", "image_b"))
        assert preference(a, b) == r["label"] != "tie"
    assert {r["split"] for r in rows} == {"id", "ood"}
    train = [json.loads(t) for t in (out / "a" / "train.jsonl").read_text().splitlines()]
    for r in train:
        for p in parse_prompt(r["prompt"]).phrases:
            assert (p.colour, p.shape) not in HOLDOUT and p.count <= 3
        assert r["label_clean"] in ("a", "b", "tie") and r["rationale"].startswith("The prompt asks for")


def test_pretrain_has_content_only(world):
    out, _ = world
    rows = [json.loads(t) for t in (out / "a" / "pretrain.jsonl").read_text().splitlines()]
    combos = set()
    for r in rows:
        assert "label" not in r and "rationale" not in r
        text = json.dumps(r["qa"]).lower() + r["caption"]
        for word in ("better", "quality", "blur", "noise", "prefer", "yes", "no\""):
            assert word not in text, (word, r)
        img = np.asarray(Image.open(out / "a" / r["image"]))
        assert tuple(img[0, 0]) not in OOD_BACKGROUNDS[:2]  # never the OOD style's backgrounds
        spec = parse_prompt(r["caption"])
        combos |= {(p.colour, p.shape) for p in spec.phrases}
    assert {(c, s) for c in COLOURS for s in SHAPES} <= combos  # every attribute combination


def test_video_roundtrip_keeps_verdicts(world, tmp_path):
    from rewarddance.media import load_video, write_video

    rng = np.random.default_rng(9)
    for prompt, kw, truth in (("a red circle moving to the right", {}, True),
                              ("a blue square moving up", {"direction": "down"}, False),
                              ("a green star moving to the left", {"extent": 0.02}, False),
                              ("a yellow ring moving down", {"colour": "purple"}, False)):
        frames = render_clip(rng, prompt, **kw)
        assert check_video(frames, prompt).passed is truth
        path = write_video(tmp_path / "v.mp4", np.stack([np.asarray(f) for f in frames]))
        assert check_video(load_video(path), prompt).passed is truth
    out, _ = world
    rec = json.loads((out / "a" / "video-test.jsonl").read_text().splitlines()[1])
    assert rec["task"] == "i2v-overall"
    cond = Image.open(out / "a" / rec["condition_image"])
    results = [check_video(load_video(out / "a" / rec[k]), rec["prompt"], condition=cond) for k in ("video_a", "video_b")]
    assert preference(*results) == rec["label"]
    wrong_start = render_clip(rng, rec["prompt"], start=(0.5, 0.5))
    assert not check_video(wrong_start, rec["prompt"], condition=cond).constraints[-1][1]


def test_data_world_cli(tmp_path, capsys):
    from rewarddance.cli import main

    assert main(["data", "world", "--out", str(tmp_path), "--n", "8", "--seed", "1", "--n-test", "10"]) == 0
    printed = [line.split()[1] for line in capsys.readouterr().out.splitlines()]
    assert str(tmp_path / "train.jsonl") in printed and all(Path(f).is_file() for f in printed)  # the files written
    assert len((tmp_path / "train.jsonl").read_text().splitlines()) == 8
