"""Build ShapeWorld datasets in the project's manifest format (JSONL + PNG files).

`build_world(out, n, seed)` writes train.jsonl (n pairwise records), test.jsonl (clean
labels, "id" / "ood" splits), pointwise-train/test.jsonl, references.jsonl (the checker's best of
N candidates per prompt) with candidates.jsonl (those N candidates, each with the checker's
verdict), pretrain.jsonl and datasheet.md; `video=True` adds video-train/test.jsonl. Deterministic for a seed.

Out of domain (never in train): some colour×shape combinations (HOLDOUT), counts of four,
and the shifted rendering style (outlined, rotated, other backgrounds).

Example:
    >>> from rewarddance.world.dataset import build_world
    >>> build_world("/tmp/sw", n=20, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .check import CheckResult, check
from .defects import CONTENT_DEFECTS, QUALITY_DEFECTS, apply_content_defect, apply_quality_defect
from .render import ID_BACKGROUNDS, OOD_BACKGROUNDS, Style, render
from .scene import (CATEGORIES, COLOURS, SHAPES, Obj, Phrase, Scene, Spec, article, parse_prompt, random_spec,
                    sample_scene)

# One held-out shape per colour: these combinations appear only in OOD test data.
HOLDOUT = {(c, SHAPES[(2 * i + 1) % len(SHAPES)]) for i, c in enumerate(COLOURS)}
ALLOWED = {(c, s) for c in COLOURS for s in SHAPES} - HOLDOUT
TRAIN_MAX_COUNT = 3
QUALITY_TIE = 0.1  # quality difference under which two equally aligned images tie


@dataclass
class Sample:
    image: Image.Image
    result: CheckResult


def _uses_holdout(spec: Spec) -> bool:
    return any((p.colour, p.shape) in HOLDOUT for p in spec.phrases if p.colour)


def _id_spec(rng: np.random.Generator) -> Spec:
    while True:
        spec = random_spec(rng, CATEGORIES[int(rng.integers(len(CATEGORIES)))], allowed=ALLOWED)
        if all(p.count <= TRAIN_MAX_COUNT for p in spec.phrases):
            return spec


def _ood_spec(rng: np.random.Generator) -> tuple[Spec, Style]:
    """OOD by a held-out combination, a held-out count (four), or the shifted style."""
    kind = int(rng.integers(3))
    if kind == 0:
        while True:
            spec = random_spec(rng, str(rng.choice(["colors", "color_attr", "position", "counting"])))
            if _uses_holdout(spec) and all(p.count <= TRAIN_MAX_COUNT for p in spec.phrases):
                return spec, Style()
    if kind == 1:
        (c, s) = sorted(ALLOWED)[int(rng.integers(len(ALLOWED)))]
        return Spec((Phrase(4, s, c),), None, "counting"), Style()
    return _id_spec(rng), Style.ood()


def make_sample(rng: np.random.Generator, spec: Spec, style: Style, size: int, *, positive: bool,
                defect_prob: float = 0.5, content_defects: tuple[str, ...] = CONTENT_DEFECTS) -> Sample:
    """An image for `spec`: satisfying it (positive) or broken by one of `content_defects`; maybe degraded."""
    backgrounds = OOD_BACKGROUNDS if style.outlined else ID_BACKGROUNDS
    scene = sample_scene(rng, spec, background=backgrounds[int(rng.integers(len(backgrounds)))],
                         rotation=style.max_rotation)
    if not positive:
        for kind in rng.permutation(content_defects):
            broken = apply_content_defect(rng, scene, spec, str(kind))
            if broken is not None:
                scene = broken
                break
    img = render(scene, size, style)
    if rng.random() < defect_prob:
        name = str(rng.choice(list(QUALITY_DEFECTS)))
        img = apply_quality_defect(img, name, float(rng.uniform(0.5, 2.0)), rng)
    return Sample(img, check(img, spec.prompt()))


def preference(a: CheckResult, b: CheckResult) -> str:  # also VideoCheckResult: .score, .quality
    """'a', 'b' or 'tie': alignment score first, then quality."""
    if a.score != b.score:
        return "a" if a.score > b.score else "b"
    if abs(a.quality - b.quality) > QUALITY_TIE:
        return "a" if a.quality > b.quality else "b"
    return "tie"


_DEFECT_WORDS = {"noise": "noisy", "blur": "blurred", "jpeg": "blocky from compression", "colour": "off-colour"}
_DEFECT_LIMITS = {"noise": 0.012, "blur": 0.1, "jpeg": 0.3, "colour": 5.0}


def describe(r: CheckResult) -> str:
    """What an image shows and where it fails, from the checker's findings."""
    text = f"shows {r.summary()}"
    failed = [t for t, held in r.constraints if not held]
    if failed:
        text += "; it fails " + ", ".join(f"'{t}'" for t in failed)
    flaws = [_DEFECT_WORDS[k] for k, v in r.defects.items() if v > _DEFECT_LIMITS[k]]
    if flaws:
        text += "; it looks " + " and ".join(flaws)
    return text


def rationale(prompt: str, a: CheckResult, b: CheckResult, label: str) -> str:
    """A CoT rationale: what the prompt asks, what each image shows, which wins and why."""
    why = ("it follows the prompt more closely" if a.score != b.score else "it is cleaner and sharper")
    verdict = "both images are about equally good" if label == "tie" else f"image {label.upper()} is better: {why}"
    return f"The prompt asks for {prompt}. Image A {describe(a)}. Image B {describe(b)}. So {verdict}."


class _Writer:
    def __init__(self, out: Path):
        self.out = out
        (out / "img").mkdir(parents=True, exist_ok=True)

    def save(self, img: Image.Image, name: str) -> str:
        rel = f"img/{name}.png"
        img.save(self.out / rel)
        return rel


def _pair(rng, spec, style, size):
    pos_a, pos_b = rng.random() < 0.5, rng.random() < 0.5
    return make_sample(rng, spec, style, size, positive=pos_a), make_sample(rng, spec, style, size, positive=pos_b)


def _records(w: _Writer, rid: str, spec: Spec, a: Sample, b: Sample, label: str, split: str,
             label_clean: str | None = None, **extra: str) -> tuple[dict, list[dict]]:
    """Save a pair's images; its pairwise record (rationale from the clean label) and two pointwise ones."""
    pa, pb = w.save(a.image, f"{rid}_a"), w.save(b.image, f"{rid}_b")
    truth = label_clean or label
    pair = {"id": rid, "task": "t2i-overall", "prompt": spec.prompt(), "image_a": pa, "image_b": pb, "label": label}
    if label_clean is not None:
        pair["label_clean"] = label_clean
    pair |= {"rationale": rationale(spec.prompt(), a.result, b.result, truth), "category": spec.category,
             "split": split, **extra}
    points = [{"id": f"{rid}{side}", "task": "t2i-alignment", "prompt": spec.prompt(), "image": path,
               "label": "yes" if sample.result.passed else "no", "category": spec.category, "split": split}
              for sample, path, side in ((a, pa, "a"), (b, pb, "b"))]
    return pair, points


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def build_world(out: str | Path, n: int = 2000, *, seed: int = 0, size: int = 64, label_noise: float = 0.1,
                n_candidates: int = 8, video: bool = False, n_test: int | None = None, n_video: int | None = None,
                progress: bool = True) -> dict[str, int]:
    """Write the ShapeWorld dataset to `out`; returns the number of records per file.

    `n_test` defaults to max(400, n / 5) held-out pairs, `n_video` to max(40, n / 10) video pairs.
    """
    n_test = n_test if n_test is not None else max(400, n // 5)
    n_video = n_video if n_video is not None else max(40, n // 10)
    out = Path(out)
    w = _Writer(out)
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    bar = tqdm(total=n + n_test, desc="pairs", disable=not progress, unit="pair")

    train, pw_train = [], []
    for i in range(n):
        spec = _id_spec(rng)
        a, b = _pair(rng, spec, Style(), size)
        clean = preference(a.result, b.result)
        label = clean
        if clean != "tie" and rng.random() < label_noise:
            label = "b" if clean == "a" else "a"
        pair, points = _records(w, f"train-{i:06d}", spec, a, b, label, "id", label_clean=clean)
        train.append(pair)
        pw_train += points
        bar.update()

    test, pw_test = [], []
    while len(test) < n_test:
        split = "id" if len(test) % 2 == 0 else "ood"
        spec, style = (_id_spec(rng), Style()) if split == "id" else _ood_spec(rng)
        a, b = _pair(rng, spec, style, size)
        label = preference(a.result, b.result)
        if label == "tie":
            continue  # ties carry no accuracy signal
        pair, points = _records(w, f"test-{len(test):06d}", spec, a, b, label, split,
                                style="ood" if style.outlined else "id")
        test.append(pair)
        pw_test += points
        bar.update()
    bar.close()

    # references: the checker's best of N candidates per held-out ID prompt; the candidates are
    # written too, so that a judge's Best-of-N choice (`rewarddance references`) can be checked
    refs, candidates = [], []
    for k, prompt in enumerate(sorted({r["prompt"] for r in test if r["split"] == "id"})[:200]):
        spec = parse_prompt(prompt)
        cands = [make_sample(rng, spec, Style(), size, positive=rng.random() < 0.5) for _ in range(n_candidates)]
        keyed = [(c.result.score, c.result.quality) for c in cands]
        best = max(range(n_candidates), key=lambda j: keyed[j])
        paths = [w.save(c.image, f"ref-{k:06d}-c{j}") for j, c in enumerate(cands)]
        candidates += [{"id": f"ref-{k:06d}-c{j}", "prompt": prompt, "image": path, "group": f"ref-{k:06d}",
                        "passed": bool(c.result.passed), "score": round(float(c.result.score), 4),
                        "quality": round(c.result.quality, 4)} for j, (c, path) in enumerate(zip(cands, paths))]
        refs.append({"id": f"ref-{k:06d}", "prompt": prompt, "image": paths[best],
                     "n_candidates": n_candidates, "scores": [round(s, 4) for s, _ in keyed],
                     "qualities": [round(q, 4) for _, q in keyed], "split": "id"})

    pretrain = _pretrain(rng, w, size)
    files = {"train.jsonl": train, "test.jsonl": test, "pointwise-train.jsonl": pw_train,
             "pointwise-test.jsonl": pw_test, "references.jsonl": refs, "candidates.jsonl": candidates,
             "pretrain.jsonl": pretrain}
    if video:
        from .video import build_video_records

        vtrain, vtest = build_video_records(rng, out, n_video, n_test=max(n_video // 5, 10), size=size)
        files |= {"video-train.jsonl": vtrain, "video-test.jsonl": vtest}
    for name, rows in files.items():
        _write_jsonl(out / name, rows)
        counts[name] = len(rows)
    (out / "datasheet.md").write_text(datasheet(files, seed=seed, n=n, label_noise=label_noise))
    return counts


def build_defect_pairs(out: str | Path, n: int, defect: str, *, seed: int = 0, size: int = 64,
                       name: str = "pairs.jsonl") -> Path:
    """`n` clean pairs that differ by ONE content defect: an image that follows the prompt against one
    broken by `defect` (e.g. "missing_object"), in random order, no quality defects. For learning
    checks on one fault at a time."""
    out = Path(out)
    w = _Writer(out)
    rng = np.random.default_rng(seed)
    rows = []
    while len(rows) < n:
        spec = _id_spec(rng)
        good = make_sample(rng, spec, Style(), size, positive=True, defect_prob=0.0)
        bad = make_sample(rng, spec, Style(), size, positive=False, defect_prob=0.0, content_defects=(defect,))
        if bad.result.score >= good.result.score:
            continue  # the defect could not apply to this scene
        a, b = (good, bad) if rng.random() < 0.5 else (bad, good)
        rid = f"{Path(name).stem}-{len(rows):06d}"
        rows.append({"id": rid, "task": "t2i-overall", "prompt": spec.prompt(), "image_a": w.save(a.image, f"{rid}_a"),
                     "image_b": w.save(b.image, f"{rid}_b"), "label": "a" if a is good else "b",
                     "category": defect, "split": "id"})
    _write_jsonl(out / name, rows)
    return out / name


def _pretrain(rng: np.random.Generator, w: _Writer, size: int, per_combo: int = 4) -> list[dict]:
    """Captions and content questions (no judgments, in-domain style only) for every colour×shape."""
    rows = []
    combos = [(c, s) for c in COLOURS for s in SHAPES]
    specs: list[Spec] = []
    for c, s in combos:
        specs += [Spec((Phrase(1, s, c),), None, "colors")] * per_combo
        specs.append(Spec((Phrase(int(rng.integers(2, 5)), s, c),), None, "counting"))
    for _ in range(len(combos)):
        specs.append(random_spec(rng, str(rng.choice(["position", "color_attr"]))))
    for k, spec in enumerate(specs):
        scene = sample_scene(rng, spec, background=ID_BACKGROUNDS[int(rng.integers(len(ID_BACKGROUNDS)))])
        rid = f"pretrain-{k:06d}"
        rows.append({"id": rid, "image": w.save(render(scene, size), rid), "caption": spec.prompt(),
                     "qa": _content_qa(rng, scene, spec), "category": spec.category})
    return rows


def build_pretrain(out: str | Path, n: int, *, seed: int = 0, size: int = 64, n_test: int = 300,
                   progress: bool = True) -> dict[str, int]:
    """Pretraining data for the `-shapeworld` presets: captions and content questions over scenes of every
    colour x shape combination (held-out ones included, as broad VLM pretraining would see them), in
    varied backgrounds, shades, outlines and rotations. Writes pretrain-train.jsonl (n rows) and
    pretrain-test.jsonl (n_test rows of other scenes)."""
    out = Path(out)
    w = _Writer(out)
    rng = np.random.default_rng(seed)
    combos = [(c, s) for c in COLOURS for s in SHAPES]
    counts = {}
    bar = tqdm(total=n + n_test, desc="pretrain data", unit="row", disable=not progress)
    for name, total in (("pretrain-train.jsonl", n), ("pretrain-test.jsonl", n_test)):
        rows = []
        for k in range(total):
            if k % 3 == 0:  # one object of each combination in turn
                c, s = combos[(k // 3) % len(combos)]
                spec = Spec((Phrase(int(rng.choice([1, 1, 2, 3, 4])), s, c),), None, "counting")
            else:
                spec = random_spec(rng, CATEGORIES[int(rng.integers(len(CATEGORIES)))])
            if rng.random() < 0.5:
                background = ID_BACKGROUNDS[int(rng.integers(len(ID_BACKGROUNDS)))]
            else:
                background = tuple(int(v) for v in rng.integers(0, 256, 3))
                if max(abs(int(a) - int(b)) for a, b in zip(background, background[1:] + background[:1])) > 60:
                    background = OOD_BACKGROUNDS[int(rng.integers(len(OOD_BACKGROUNDS)))]  # keep it colourless
            style = Style(outlined=rng.random() < 0.25, max_rotation=20.0 if rng.random() < 0.3 else 0.0,
                          shade_jitter=0.15)
            scene = sample_scene(rng, spec, background=background, rotation=style.max_rotation)
            rid = f"{name.split('.')[0]}-{k:06d}"
            rows.append({"id": rid, "image": w.save(render(scene, size, style, rng), rid), "caption": spec.prompt(),
                         "qa": _content_qa(rng, scene, spec) + _yes_no_qa(rng, scene), "category": spec.category})
            bar.update()
        _write_jsonl(out / name, rows)
        counts[name] = len(rows)
    bar.close()
    return counts


def _yes_no_qa(rng: np.random.Generator, scene: Scene) -> list[dict[str, str]]:
    """'Is there a red circle in the image?' once with a present object, once with an absent combination."""
    present = {(o.colour, o.shape) for o in scene.objects}
    o = scene.objects[int(rng.integers(len(scene.objects)))]
    absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
    c, s = absent[int(rng.integers(len(absent)))]
    qa = [{"question": f"Is there {article(o.colour)} {o.colour} {o.shape} in the image?", "answer": "yes"},
          {"question": f"Is there {article(c)} {c} {s} in the image?", "answer": "no"}]
    return [qa[i] for i in rng.permutation(2)]


def _content_qa(rng: np.random.Generator, scene: Scene, spec: Spec) -> list[dict[str, str]]:
    objs: list[Obj] = scene.objects
    qa = [{"question": "How many objects are in the image?", "answer": str(len(objs))}]
    o = objs[int(rng.integers(len(objs)))]
    qa.append({"question": f"What colour is the {o.shape}?" if sum(x.shape == o.shape for x in objs) == 1
               else f"What colour are the {o.shape}s?", "answer": o.colour})
    qa.append({"question": f"What shape is the {o.colour} object?" if sum(x.colour == o.colour for x in objs) == 1
               else f"What shape are the {o.colour} objects?", "answer": o.shape})
    if spec.relation:
        a, b = objs
        qa.append({"question": f"Where is the {a.colour} {a.shape} relative to the {b.colour} {b.shape}?",
                   "answer": spec.relation})
    return qa


def datasheet(files: dict[str, list[dict]], *, seed: int, n: int, label_noise: float) -> str:
    """Markdown: counts by file, category, split and label."""
    lines = ["# ShapeWorld datasheet", "",
             f"Built by `rewarddance data world --n {n} --seed {seed}`; label noise {label_noise:.0%} "
             "(train only; `label_clean` keeps the truth).",
             f"Held-out colour x shape combinations (OOD only): {', '.join(f'{c} {s}' for c, s in sorted(HOLDOUT))}.",
             f"Counts above {TRAIN_MAX_COUNT} and the outlined/rotated style appear only in OOD test data.", ""]
    for name, rows in files.items():
        lines += [f"## {name}: {len(rows)} records", ""]
        for key in ("category", "split", "label"):
            c = Counter(str(r.get(key)) for r in rows if key in r)
            if c:
                lines.append(f"- by {key}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
        lines.append("")
    return "\n".join(lines)
