"""ShapeWorld scenes and the prompt grammar (GenEval categories) with machine-readable constraints.

Example:
    >>> from rewarddance.world.scene import parse_prompt
    >>> parse_prompt("a blue square to the left of a yellow triangle").relation
    'left of'
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

# name -> (RGB, hue in degrees). Hues are far apart so a pixel's hue names its colour.
COLOURS: dict[str, tuple[tuple[int, int, int], float]] = {
    "red": ((220, 40, 40), 0.0),
    "orange": ((245, 140, 20), 31.0),
    "yellow": ((235, 215, 30), 54.0),
    "green": ((40, 170, 60), 128.0),
    "cyan": ((30, 195, 210), 184.0),
    "blue": ((40, 80, 220), 227.0),
    "purple": ((140, 50, 200), 276.0),
    "pink": ((235, 70, 170), 322.0),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
PLURALS = {s: (s + "es" if s.endswith("ss") else s + "s") for s in SHAPES}
SIZES = {"small": 0.30, "large": 0.42}  # diameter of the circumscribed circle, as a fraction of the width
NUMBER_WORDS = {1: "a", 2: "two", 3: "three", 4: "four"}
RELATIONS = ("left of", "right of", "above", "below")
_REL_TEXT = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def article(word: str) -> str:
    """The indefinite article before `word` ("an orange", "a red"): the grammar's words sound as spelt."""
    return "an" if word[0] in "aeiou" else "a"


@dataclass(frozen=True)
class Phrase:
    """"two red circles": count 2, colour "red" (None = any), shape "circle", size None = any."""

    count: int
    shape: str
    colour: str | None = None
    size: str | None = None

    def text(self) -> str:
        words = [w for w in (self.size, self.colour) if w]
        noun = self.shape if self.count == 1 else PLURALS[self.shape]
        head = " ".join(words + [noun])
        if self.count == 1:
            return f"{article(head)} {head}"
        return f"{NUMBER_WORDS[self.count]} {head}"

    def describe(self) -> str:
        return self.text()


@dataclass(frozen=True)
class Spec:
    """A parsed prompt: one or two phrases, and optionally a spatial relation between them."""

    phrases: tuple[Phrase, ...]
    relation: str | None = None
    category: str = "colors"

    def prompt(self) -> str:
        if self.relation:
            return f"{self.phrases[0].text()} {_REL_TEXT[self.relation]} {self.phrases[1].text()}"
        return " and ".join(p.text() for p in self.phrases)


@dataclass
class Obj:
    shape: str
    colour: str
    size: str = "small"
    x: float = 0.5  # centre, fraction of width
    y: float = 0.5
    rotation: float = 0.0  # degrees

    @property
    def radius(self) -> float:
        return SIZES[self.size] / 2


@dataclass
class Scene:
    objects: list[Obj] = field(default_factory=list)
    background: tuple[int, int, int] = (245, 245, 240)


# ------------------------------------------------------------------ parsing
_NUM = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4}
_SHAPE_WORDS = {**{s: s for s in SHAPES}, **{p: s for s, p in PLURALS.items()}}
_PHRASE = re.compile(
    r"^(?P<num>a|an|one|two|three|four)\s+(?:(?P<size>small|large)\s+)?(?:(?P<colour>"
    + "|".join(COLOURS) + r")\s+)?(?P<shape>" + "|".join(sorted(_SHAPE_WORDS, key=len, reverse=True)) + r")$"
)
_REL_SPLIT = re.compile(r"\s+(to the left of|to the right of|left of|right of|above|below)\s+")


def _parse_phrase(text: str, prompt: str) -> Phrase:
    m = _PHRASE.match(text.strip())
    if not m:
        raise ValueError(f"cannot parse prompt {prompt!r}: {text.strip()!r} is not '<count> [size] [colour] <shape>'")
    count = _NUM[m["num"]]
    word = m["shape"]
    if (count == 1) != (word in SHAPES):
        raise ValueError(f"cannot parse prompt {prompt!r}: count and noun disagree in {text.strip()!r}")
    return Phrase(count, _SHAPE_WORDS[word], m["colour"], m["size"])


def _category(phrases: tuple[Phrase, ...], relation: str | None) -> str:
    if relation:
        return "position"
    if len(phrases) == 2:
        return "color_attr" if all(p.colour for p in phrases) else "two_object"
    p = phrases[0]
    if p.count > 1:
        return "counting"
    return "colors" if p.colour else "single_object"


def parse_prompt(prompt: str) -> Spec:
    """Parse a ShapeWorld prompt; ValueError naming the prompt when it is not in the grammar."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"cannot parse prompt {prompt!r}: empty")
    text = re.sub(r"\s+", " ", prompt.strip().lower().rstrip("."))
    text = re.sub(r"^(an image of|a photo of|a picture of)\s+", "", text)
    parts = _REL_SPLIT.split(text)
    if len(parts) == 3:
        rel = parts[1].replace("to the ", "")
        phrases = (_parse_phrase(parts[0], prompt), _parse_phrase(parts[2], prompt))
        if any(p.count != 1 for p in phrases):
            raise ValueError(f"cannot parse prompt {prompt!r}: spatial relations take single objects")
        return Spec(phrases, rel, "position")
    if len(parts) != 1:
        raise ValueError(f"cannot parse prompt {prompt!r}: more than one spatial relation")
    chunks = text.split(" and ")
    if len(chunks) > 2:
        raise ValueError(f"cannot parse prompt {prompt!r}: at most two phrases joined by 'and'")
    phrases = tuple(_parse_phrase(c, prompt) for c in chunks)
    return Spec(phrases, None, _category(phrases, None))


# ------------------------------------------------------------------ sampling
def random_spec(rng: np.random.Generator, category: str, *, colours: list[str] | None = None,
                shapes: list[str] | None = None, allowed: set[tuple[str, str]] | None = None) -> Spec:
    """A random prompt of `category`; `allowed` restricts (colour, shape) combinations (OOD holdout)."""
    colours = colours or list(COLOURS)
    shapes = shapes or list(SHAPES)

    def pick(n: int, distinct_colours: bool = True, distinct_shapes: bool = True) -> list[tuple[str, str]]:
        for _ in range(1000):
            cs = rng.choice(colours, n, replace=not distinct_colours).tolist()
            ss = rng.choice(shapes, n, replace=not distinct_shapes).tolist()
            if allowed is None or all((c, s) in allowed for c, s in zip(cs, ss)):
                return list(zip(cs, ss))
        raise ValueError("no allowed colour/shape combination")

    if category == "single_object":
        (c, s), = pick(1)
        return Spec((Phrase(1, s),), None, category)
    if category == "colors":
        (c, s), = pick(1)
        return Spec((Phrase(1, s, c),), None, category)
    if category == "counting":
        (c, s), = pick(1)
        return Spec((Phrase(int(rng.integers(2, 5)), s, c),), None, category)
    if category == "two_object":
        (_, s1), (_, s2) = pick(2)
        return Spec((Phrase(1, s1), Phrase(1, s2)), None, category)
    if category == "color_attr":
        (c1, s1), (c2, s2) = pick(2)
        return Spec((Phrase(1, s1, c1), Phrase(1, s2, c2)), None, category)
    if category == "position":
        (c1, s1), (c2, s2) = pick(2, distinct_colours=True, distinct_shapes=False)
        return Spec((Phrase(1, s1, c1), Phrase(1, s2, c2)), RELATIONS[int(rng.integers(4))], category)
    raise ValueError(f"unknown category {category!r}; choose one of {CATEGORIES}")


def _place(rng: np.random.Generator, objs: list[Obj], fixed: int = 0) -> bool:
    """Random non-overlapping centres for objs[fixed:], inside the frame; False if it failed."""
    gap = 0.04
    for i in range(fixed, len(objs)):
        o = objs[i]
        lo, hi = o.radius + 0.03, 1 - o.radius - 0.03
        for _ in range(300):
            o.x, o.y = rng.uniform(lo, hi, 2)
            if all(np.hypot(o.x - p.x, o.y - p.y) > o.radius + p.radius + gap for p in objs[:i]):
                break
        else:
            return False
    return True


def sample_scene(rng: np.random.Generator, spec: Spec, *, background: tuple[int, int, int] = (245, 245, 240),
                 rotation: float = 0.0, colours: list[str] | None = None) -> Scene:
    """A scene that satisfies `spec`; unnamed colours are random, sizes random (small if crowded)."""
    colours = colours or list(COLOURS)
    for attempt in range(20):
        objs: list[Obj] = []
        total = sum(p.count for p in spec.phrases)
        for p in spec.phrases:
            for _ in range(p.count):
                size = p.size or ("small" if total > 2 or attempt > 5 or rng.random() < 0.5 else "large")
                colour = p.colour or str(rng.choice(colours))
                rot = float(rng.uniform(-rotation, rotation)) if rotation else 0.0
                objs.append(Obj(p.shape, colour, size, rotation=rot))
        if spec.relation:
            a, b = objs
            r_max = max(a.radius, b.radius)
            along, across = rng.uniform(0.2, 0.47 - r_max), rng.uniform(0.35, 0.65)
            jitter = rng.uniform(-0.06, 0.06)
            first, second = 0.5 - along, 0.5 + along  # "a left of b": a has the smaller x
            if spec.relation in ("left of", "above"):
                pa, pb = first, second
            else:
                pa, pb = second, first
            if spec.relation in ("left of", "right of"):
                a.x, a.y, b.x, b.y = pa, across, pb, across + jitter
            else:
                a.y, a.x, b.y, b.x = pa, across, pb, across + jitter
            if np.hypot(a.x - b.x, a.y - b.y) > a.radius + b.radius + 0.03:
                return Scene(objs, background)
        elif _place(rng, objs):
            return Scene(objs, background)
    raise RuntimeError(f"could not place the objects of {spec.prompt()!r}")
