"""ShapeWorld-style preference pairs drawn by a second, independent renderer (a generalisation check).

A reward model trained on our renders (``rewarddance.world.render``) could learn the renderer's
quirks rather than the prompts. This script draws an evaluation set with code that shares nothing
with ours but the vocabulary and prompt grammar (colour names, shapes, "a/two/three", the four
relations) and the list of held-out colour x shape combinations (``dataset.HOLDOUT``, the only
import from the project). It does not import the project's render, scene, defects or check modules.

How it differs from our renderer:

* shades: each object's colour is sampled in HSV around the named hue (hue +-6 degrees,
  saturation 0.55-1.0, value 0.6-1.0) instead of one fixed RGB per name;
* sizes: the circumscribed diameter is continuous, 18%-48% of the width (smaller caps when
  there are three or four objects) instead of two sizes;
* backgrounds: light greys, off-whites, pale tints (saturation < 0.15) and mid greys;
* geometry: stars with a sharper inner radius (0.34-0.41 of the outer), rings with a larger hole
  (0.38-0.48), thinner crosses (half-thickness 0.19-0.26 of the radius), mild rotation
  (up to +-15 degrees) of polygons when anti-aliased;
* rasterisation: PIL.ImageDraw primitives drawn at 64 px directly (no anti-aliasing), or at
  2x / 4x and downsampled with LANCZOS, chosen per pair.

Each pair is a prompt, a "good" image that satisfies it exactly and a "bad" image that is the
same scene (background, layout, rasterisation) with one violation: missing_object, wrong_colour
(a named hue at least 50 degrees away), wrong_shape, wrong_count (+-1), swapped_position or
swapped_binding (the prompt category is drawn uniformly, then a fault it admits, each fault
weighted by 1 / the number of categories that admit it). Labels hold by construction; no checker is involved. The good image is image_a or
image_b at random. About 25% of prompts name a held-out colour x shape combination and carry
``"split": "other-renderer-holdout"``; the rest use allowed combinations only (in both images) and
carry ``"split": "other-renderer"``. Rows follow the manifest format of
``rewarddance.data.records`` with ``"category"`` = the fault kind and ``"prompt_category"`` = the
GenEval-style prompt category; PNG paths are relative to ``pairs.jsonl``.

Pair i depends only on (seed, i), so the output is deterministic for a seed and a larger --n
extends a smaller one.

Command:
    python bench/other_renderer.py --out DIR --n 400 --seed 0
"""

from __future__ import annotations

import argparse
import colorsys
import json
import math
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from rewarddance.world.dataset import HOLDOUT  # the held-out (colour, shape) combinations only

SIZE = 64
HUES = {"red": 0.0, "orange": 31.0, "yellow": 54.0, "green": 128.0, "cyan": 184.0, "blue": 227.0,
        "purple": 276.0, "pink": 322.0}
COLOURS = tuple(HUES)
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
NUMBER = {1: "a", 2: "two", 3: "three"}
REL_TEXT = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
PROMPT_CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COLOURED = ("counting", "colors", "position", "color_attr")  # categories whose prompts name colours
FAULTS = {
    "single_object": ("missing_object", "wrong_shape"),
    "two_object": ("missing_object", "wrong_shape"),
    "counting": ("wrong_count", "wrong_colour", "wrong_shape"),
    "colors": ("missing_object", "wrong_colour", "wrong_shape"),
    "position": ("swapped_position", "wrong_colour", "wrong_shape", "missing_object"),
    "color_attr": ("swapped_binding", "wrong_colour", "missing_object"),
}
HOLDOUT_FRACTION = 0.25
MIN_HUE_GAP = 50.0  # a "wrong colour" is a named hue at least this far from the prompt's
MARGIN = 0.05  # free space between objects and the frame, fraction of width
GAP = 0.05  # free space between two objects' circumscribed circles


# ------------------------------------------------------------------ prompts
@dataclass(frozen=True)
class Phrase:
    count: int
    shape: str
    colour: str | None = None

    def text(self) -> str:
        head = f"{self.colour} {self.shape}" if self.colour else self.shape
        if self.count == 1:
            return ("an " if head[0] in "aeiou" else "a ") + head
        return f"{NUMBER[self.count]} {head}{'es' if head.endswith('ss') else 's'}"


@dataclass(frozen=True)
class Prompt:
    phrases: tuple[Phrase, ...]
    relation: str | None
    category: str

    def text(self) -> str:
        if self.relation:
            return f"{self.phrases[0].text()} {REL_TEXT[self.relation]} {self.phrases[1].text()}"
        return " and ".join(p.text() for p in self.phrases)

    def holdout(self) -> bool:
        return any((p.colour, p.shape) in HOLDOUT for p in self.phrases if p.colour)


def _hue_gap(a: str, b: str) -> float:
    d = abs(HUES[a] - HUES[b]) % 360
    return min(d, 360 - d)


def _allowed(colour: str, shape: str, holdout_ok: bool) -> bool:
    return holdout_ok or (colour, shape) not in HOLDOUT


def sample_prompt(rng: np.random.Generator, holdout: bool, cat: str) -> Prompt:
    """A random prompt of category `cat`; with `holdout` it names at least one held-out
    combination, else none."""
    while True:
        cs = [str(c) for c in rng.choice(COLOURS, 2, replace=False)]
        ss = [str(s) for s in rng.choice(SHAPES, 2, replace=False)]
        if cat == "single_object":
            p = Prompt((Phrase(1, ss[0]),), None, cat)
        elif cat == "two_object":
            p = Prompt((Phrase(1, ss[0]), Phrase(1, ss[1])), None, cat)
        elif cat == "colors":
            p = Prompt((Phrase(1, ss[0], cs[0]),), None, cat)
        elif cat == "counting":
            p = Prompt((Phrase(int(rng.integers(2, 4)), ss[0], cs[0]),), None, cat)
        elif cat == "color_attr":
            p = Prompt((Phrase(1, ss[0], cs[0]), Phrase(1, ss[1], cs[1])), None, cat)
        else:  # position: distinct colours, shapes may repeat
            s2 = ss[1] if rng.random() < 0.7 else ss[0]
            rel = ("left of", "right of", "above", "below")[int(rng.integers(4))]
            p = Prompt((Phrase(1, ss[0], cs[0]), Phrase(1, s2, cs[1])), rel, cat)
        if p.holdout() == holdout:
            return p


# ------------------------------------------------------------------ scenes
@dataclass(frozen=True)
class Thing:
    shape: str
    colour: str
    rgb: tuple[int, int, int]
    diameter: float  # circumscribed, fraction of width
    x: float = 0.5
    y: float = 0.5
    rotation: float = 0.0  # degrees
    param: float = 0.0  # star inner ratio / ring hole ratio / cross half-thickness ratio


def shade(rng: np.random.Generator, colour: str) -> tuple[int, int, int]:
    h = (HUES[colour] + rng.uniform(-6, 6)) % 360 / 360
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(0.55, 1.0), rng.uniform(0.6, 1.0))
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def background(rng: np.random.Generator) -> tuple[int, int, int]:
    kind = rng.choice(["light_grey", "off_white", "pale_tint", "mid_grey"], p=[0.3, 0.3, 0.25, 0.15])
    if kind == "light_grey":
        h, s, v = 0.0, 0.0, rng.uniform(0.80, 0.95)
    elif kind == "off_white":
        h, s, v = rng.uniform(0, 1), rng.uniform(0.02, 0.07), rng.uniform(0.94, 1.0)
    elif kind == "pale_tint":
        h, s, v = rng.uniform(0, 1), rng.uniform(0.07, 0.14), rng.uniform(0.85, 0.98)
    else:
        h, s, v = 0.0, 0.0, rng.uniform(0.45, 0.68)
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def _param(rng: np.random.Generator, shape: str) -> float:
    return {"star": rng.uniform(0.34, 0.41), "ring": rng.uniform(0.38, 0.48),
            "cross": rng.uniform(0.19, 0.26)}.get(shape, 0.0)


def make_thing(rng: np.random.Generator, shape: str, colour: str, max_d: float) -> Thing:
    rot = float(rng.uniform(-15, 15)) if shape in ("square", "triangle", "star", "cross") and rng.random() < 0.6 else 0.0
    return Thing(shape, colour, shade(rng, colour), float(rng.uniform(0.18, max_d)), rotation=rot,
                 param=_param(rng, shape))


def _max_diameter(n: int) -> float:
    return {1: 0.48, 2: 0.40, 3: 0.32}.get(n, 0.28)


def _fits(t: Thing, x: float, y: float, others: list[Thing]) -> bool:
    r = t.diameter / 2
    if not (r + MARGIN <= x <= 1 - r - MARGIN and r + MARGIN <= y <= 1 - r - MARGIN):
        return False
    return all(math.hypot(x - o.x, y - o.y) > r + o.diameter / 2 + GAP for o in others)


def place(rng: np.random.Generator, t: Thing, others: list[Thing]) -> Thing | None:
    r = t.diameter / 2
    for _ in range(400):
        x, y = rng.uniform(r + MARGIN, 1 - r - MARGIN, 2)
        if _fits(t, x, y, others):
            return replace(t, x=float(x), y=float(y))
    return None


def place_all(rng: np.random.Generator, things: list[Thing]) -> list[Thing] | None:
    out: list[Thing] = []
    for t in things:
        p = place(rng, t, out)
        if p is None:
            return None
        out.append(p)
    return out


def place_relation(rng: np.random.Generator, a: Thing, b: Thing, relation: str) -> tuple[Thing, Thing] | None:
    """a `relation` b, clearly apart along the relation's axis; the two centres are chosen so that
    either object fits at either centre (a swap stays inside the frame and without overlap)."""
    r = max(a.diameter, b.diameter) / 2
    lo, hi = r + MARGIN, 1 - r - MARGIN
    for _ in range(400):
        p1, p2 = sorted(rng.uniform(lo, hi, 2))
        if p2 - p1 < max(0.3, a.diameter / 2 + b.diameter / 2 + GAP):
            continue
        across = rng.uniform(lo, hi)
        jitter = rng.uniform(-0.08, 0.08) * (p2 - p1)
        q1, q2 = across, float(np.clip(across + jitter, lo, hi))
        first, second = (p1, q1), (p2, q2)
        pa, pb = (first, second) if relation in ("left of", "above") else (second, first)
        if relation in ("left of", "right of"):
            return replace(a, x=float(pa[0]), y=float(pa[1])), replace(b, x=float(pb[0]), y=float(pb[1]))
        return replace(a, y=float(pa[0]), x=float(pa[1])), replace(b, y=float(pb[0]), x=float(pb[1]))
    return None


def good_scene(rng: np.random.Generator, prompt: Prompt, holdout_ok: bool) -> list[Thing] | None:
    n = sum(p.count for p in prompt.phrases)
    things = []
    for p in prompt.phrases:
        for _ in range(p.count):
            colour = p.colour
            while colour is None:
                c = str(rng.choice(COLOURS))
                colour = c if _allowed(c, p.shape, holdout_ok) else None
            things.append(make_thing(rng, p.shape, colour, _max_diameter(n)))
    if prompt.relation:
        placed = place_relation(rng, things[0], things[1], prompt.relation)
        return list(placed) if placed else None
    return place_all(rng, things)


def _other_colour(rng: np.random.Generator, colour: str, shape: str, holdout_ok: bool) -> str | None:
    options = [c for c in COLOURS if _hue_gap(c, colour) >= MIN_HUE_GAP and _allowed(c, shape, holdout_ok)]
    return str(rng.choice(options)) if options else None


def _other_shape(rng: np.random.Generator, avoid: set[str], colour: str, holdout_ok: bool) -> str | None:
    options = [s for s in SHAPES if s not in avoid and _allowed(colour, s, holdout_ok)]
    return str(rng.choice(options)) if options else None


def bad_scene(rng: np.random.Generator, prompt: Prompt, good: list[Thing], fault: str,
              holdout_ok: bool) -> list[Thing] | None:
    """The good scene with exactly one violation of `prompt`."""
    things = list(good)
    k = int(rng.integers(len(things)))
    if fault == "missing_object":
        return [t for i, t in enumerate(things) if i != k]  # may leave an empty canvas
    if fault == "wrong_colour":
        if prompt.category == "counting":  # all of them in one other colour
            colour = _other_colour(rng, things[0].colour, things[0].shape, holdout_ok)
            return None if colour is None else [replace(t, colour=colour, rgb=shade(rng, colour)) for t in things]
        t = things[k]
        colour = _other_colour(rng, t.colour, t.shape, holdout_ok)
        if colour is None:
            return None
        things[k] = replace(t, colour=colour, rgb=shade(rng, colour))
        return things
    if fault == "wrong_shape":
        if prompt.category == "counting":  # all of them another shape
            shape = _other_shape(rng, {things[0].shape}, things[0].colour, holdout_ok)
            return None if shape is None else [replace(t, shape=shape, param=_param(rng, shape)) for t in things]
        t = things[k]
        shape = _other_shape(rng, {p.shape for p in prompt.phrases}, t.colour, holdout_ok)
        if shape is None:
            return None
        rot = float(rng.uniform(-15, 15)) if shape in ("square", "triangle", "star", "cross") else 0.0
        things[k] = replace(t, shape=shape, param=_param(rng, shape), rotation=rot)
        return things
    if fault == "wrong_count":  # one fewer (drop the last) or one more (same colour and shape)
        if rng.random() < 0.5:
            return things[:-1]
        extra = make_thing(rng, things[0].shape, things[0].colour, _max_diameter(len(things) + 1))
        extra = place(rng, extra, things)
        return None if extra is None else things + [extra]
    if fault == "swapped_position":
        a, b = things
        return [replace(a, x=b.x, y=b.y), replace(b, x=a.x, y=a.y)]
    if fault == "swapped_binding":
        a, b = things
        if not (_allowed(b.colour, a.shape, holdout_ok) and _allowed(a.colour, b.shape, holdout_ok)):
            return None
        return [replace(a, colour=b.colour, rgb=b.rgb), replace(b, colour=a.colour, rgb=a.rgb)]
    raise ValueError(f"unknown fault {fault!r}")


# ------------------------------------------------------------------ drawing
def _poly(cx: float, cy: float, radii: list[float], start: float, rotation: float) -> list[tuple[float, float]]:
    n = len(radii)
    return [(cx + r * math.cos(math.radians(start + rotation + 360 * i / n)),
             cy + r * math.sin(math.radians(start + rotation + 360 * i / n))) for i, r in enumerate(radii)]


def _cross(cx: float, cy: float, r: float, t: float, rotation: float) -> list[tuple[float, float]]:
    a, h = 0.95 * r, t * r  # arm half-length, arm half-thickness
    pts = [(h, -a), (h, -h), (a, -h), (a, h), (h, h), (h, a), (-h, a), (-h, h), (-a, h), (-a, -h), (-h, -h), (-h, -a)]
    c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def draw(scene: list[Thing], bg: tuple[int, int, int], scale: int) -> Image.Image:
    w = SIZE * scale
    img = Image.new("RGB", (w, w), bg)
    d = ImageDraw.Draw(img)
    for t in scene:
        cx, cy, r = t.x * w, t.y * w, t.diameter / 2 * w
        box = (cx - r, cy - r, cx + r, cy + r)
        if t.shape == "circle":
            d.ellipse(box, fill=t.rgb)
        elif t.shape == "ring":
            d.ellipse(box, fill=t.rgb)
            ri = t.param * r
            d.ellipse((cx - ri, cy - ri, cx + ri, cy + ri), fill=bg)
        elif t.shape == "square":
            d.regular_polygon((cx, cy, r), 4, rotation=t.rotation, fill=t.rgb)
        elif t.shape == "triangle":
            d.polygon(_poly(cx, cy, [r] * 3, -90, t.rotation), fill=t.rgb)
        elif t.shape == "star":
            d.polygon(_poly(cx, cy, [r, t.param * r] * 5, -90, t.rotation), fill=t.rgb)
        elif t.shape == "cross":
            d.polygon(_cross(cx, cy, r, t.param, t.rotation), fill=t.rgb)
        else:
            raise ValueError(t.shape)
    return img if scale == 1 else img.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


# ------------------------------------------------------------------ pairs
def make_pair(seed: int, i: int) -> tuple[dict, Image.Image, Image.Image]:
    rng = np.random.default_rng([seed, i])
    holdout = bool(rng.random() < HOLDOUT_FRACTION)
    cats = COLOURED if holdout else PROMPT_CATEGORIES
    cat = cats[int(rng.integers(len(cats)))]
    # a fault a category shares with many others is drawn less often, so the rare ones
    # (wrong_count, swapped_position, swapped_binding) are not starved
    weights = np.array([1 / sum(f in fs for fs in FAULTS.values()) for f in FAULTS[cat]])
    fault = FAULTS[cat][int(rng.choice(len(weights), p=weights / weights.sum()))]
    while True:
        prompt = sample_prompt(rng, holdout, cat)
        good = good_scene(rng, prompt, holdout)
        if good is None:
            continue
        bad = bad_scene(rng, prompt, good, fault, holdout)
        if bad is not None:
            break
    bg = background(rng)
    scale = int(rng.choice([1, 2, 4], p=[0.25, 0.5, 0.25]))
    if scale == 1:  # PIL fills rotated thin polygons at 64 px raggedly: no rotation without anti-aliasing
        good, bad = ([replace(t, rotation=0.0) for t in s] for s in (good, bad))
    good_first = bool(rng.random() < 0.5)
    row = {"id": f"other-{seed}-{i:05d}", "task": "t2i-overall", "prompt": prompt.text(),
           "label": "a" if good_first else "b", "category": fault, "prompt_category": prompt.category,
           "split": "other-renderer-holdout" if holdout else "other-renderer"}
    return row, draw(good, bg, scale), draw(bad, bg, scale)


def build(out: str | Path, n: int, seed: int) -> list[dict]:
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        row, good, bad = make_pair(seed, i)
        a, b = (good, bad) if row["label"] == "a" else (bad, good)
        for side, img in (("a", a), ("b", b)):
            rel = f"images/{row['id']}_{side}.png"
            img.save(out / rel)
            row[f"image_{side}"] = rel
        rows.append({k: row[k] for k in ("id", "task", "prompt", "image_a", "image_b", "label", "category",
                                         "prompt_category", "split")})
    with (out / "pairs.jsonl").open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder (pairs.jsonl and images/)")
    ap.add_argument("--n", type=int, default=400, help="number of pairs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rows = build(args.out, args.n, args.seed)
    print(f"wrote {len(rows)} pairs to {Path(args.out) / 'pairs.jsonl'}")
    for key in ("category", "prompt_category", "split", "label"):
        counts = Counter(r[key] for r in rows)
        print(f"{key}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    main()
