"""ShapeWorld videos: shapes that move (text-to-video) or start from a given image (image-to-video).

Prompts: "<a [colour] shape> moving <to the right | to the left | up | down>". The checker
tracks the object frame by frame: identity in every frame, direction and extent of the
motion, temporal flicker (a quality defect), and for image-to-video that the first frame
is the condition image.

Example:
    >>> import numpy as np
    >>> from rewarddance.world.video import render_clip, check_video
    >>> frames = render_clip(np.random.default_rng(0), "a red circle moving to the right")
    >>> check_video(frames, "a red circle moving to the right").passed
    True
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from .check import Detection, _as_array, detect
from .render import ID_BACKGROUNDS, render
from .scene import COLOURS, SHAPES, Obj, Phrase, Scene, _parse_phrase

DIRECTIONS = {"to the right": (1, 0), "to the left": (-1, 0), "up": (0, -1), "down": (0, 1)}
_MOTION = re.compile(r"^(?P<phrase>.+?)\s+moving\s+(?P<dir>to the right|to the left|right|left|up|down)\.?$")
MIN_EXTENT = 0.15  # fraction of the frame the object must travel
MAX_START_CHANGE = 0.03  # fraction of pixels of frame 0 that may differ clearly from the condition image


def parse_motion(prompt: str) -> tuple[Phrase, str]:
    m = _MOTION.match(prompt.strip().lower())
    if not m:
        raise ValueError(f"cannot parse video prompt {prompt!r}: expected '<object> moving <direction>'")
    direction = m["dir"] if m["dir"] in DIRECTIONS else f"to the {m['dir']}"
    phrase = _parse_phrase(m["phrase"], prompt)
    if phrase.count != 1:
        raise ValueError(f"cannot parse video prompt {prompt!r}: one moving object only")
    return phrase, direction


def start_position(rng: np.random.Generator, direction: str, size: str = "small") -> tuple[float, float]:
    """Where a clip moving in `direction` starts: at the far side along it, anywhere across it."""
    dx, dy = DIRECTIONS[direction]
    r = Obj("circle", "red", size).radius + 0.03
    x = r if dx > 0 else 1 - r if dx < 0 else float(rng.uniform(r, 1 - r))
    y = r if dy > 0 else 1 - r if dy < 0 else float(rng.uniform(r, 1 - r))
    return x, y


def render_clip(rng: np.random.Generator, prompt: str, *, frames: int = 8, size: int = 64, extent: float = 0.35,
                direction: str | None = None, colour: str | None = None, shape: str | None = None,
                flicker: float = 0.0, start: tuple[float, float] | None = None,
                background: tuple[int, int, int] | None = None) -> list[Image.Image]:
    """Frames of the clip `prompt` asks for; direction/colour/shape/start override it (for negatives)."""
    phrase, asked = parse_motion(prompt)
    dx, dy = DIRECTIONS[direction or asked]
    obj = Obj(shape or phrase.shape, colour or phrase.colour or str(rng.choice(list(COLOURS))), "small")
    x0, y0 = start or start_position(rng, direction or asked)
    bg = background or ID_BACKGROUNDS[int(rng.integers(len(ID_BACKGROUNDS)))]
    out = []
    for t in range(frames):
        f = t / max(frames - 1, 1)
        o = Obj(obj.shape, obj.colour, obj.size, x0 + dx * extent * f, y0 + dy * extent * f)
        img = render(Scene([o], bg), size)
        if flicker:
            arr = np.asarray(img, dtype=np.float32) * (1 + flicker * (1 if t % 2 else -1))
            img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        out.append(img)
    return out


@dataclass
class VideoCheckResult:
    prompt: str
    passed: bool
    score: float
    constraints: list[tuple[str, bool]]
    quality: float = 1.0
    track: list[Detection | None] = field(default_factory=list)


def check_video(frames: Sequence[Any], prompt: str, *, condition: Any = None) -> VideoCheckResult:
    """Check a clip (frames: images, or a T×3×H×W tensor in [0,1]) against a motion prompt."""
    phrase, direction = parse_motion(prompt)
    arrs = [_as_array(f) for f in frames]
    if not arrs:
        raise ValueError(f"check_video: no frames for {prompt!r}")
    track: list[Detection | None] = []
    for a in arrs:
        dets = [d for d in detect(a) if not d.cropped]
        match = [d for d in dets if d.shape == phrase.shape and (phrase.colour is None or d.colour == phrase.colour)]
        track.append(match[0] if len(match) == 1 and len(dets) == 1 else None)
    present = sum(t is not None for t in track) >= 0.9 * len(track)
    constraints = [(f"{phrase.describe()} in every frame, alone", bool(present))]
    moved = False
    seen = [t for t in track if t is not None]
    if len(seen) >= 2:
        ux, uy = DIRECTIONS[direction]
        along = (seen[-1].x - seen[0].x) * ux + (seen[-1].y - seen[0].y) * uy
        across = abs((seen[-1].x - seen[0].x) * uy) + abs((seen[-1].y - seen[0].y) * ux)
        moved = along >= MIN_EXTENT and along > 2 * across
    constraints.append((f"moving {direction}", bool(moved)))
    if condition is not None:
        cond = _as_array(condition).astype(np.float32)
        first = arrs[0].astype(np.float32)
        changed = (np.abs(cond - first).max(2) > 0.25 * 255).mean() if cond.shape == first.shape else 1.0
        same = changed < MAX_START_CHANGE
        constraints.append(("starts from the condition image", bool(same)))
    means = np.array([a.mean() for a in arrs]) / 255.0
    flicker = float(np.abs(np.diff(means)).mean()) if len(means) > 1 else 0.0
    held = sum(h for _, h in constraints)
    return VideoCheckResult(prompt, held == len(constraints), held / len(constraints), constraints,
                            float(np.exp(-max(0.0, flicker - 0.005) / 0.02)), track)


def random_motion_prompt(rng: np.random.Generator) -> str:
    c, s = str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))
    return f"{Phrase(1, s, c).text()} moving {list(DIRECTIONS)[int(rng.integers(4))]}"


def _variant(rng: np.random.Generator, prompt: str, size: int, start=None, bg=None) -> list[Image.Image]:
    """A clip that may break the prompt (direction, static, identity) and may flicker."""
    phrase, asked = parse_motion(prompt)
    kind = int(rng.integers(5))
    kw: dict[str, Any] = {"start": start, "background": bg}
    if kind == 1:
        kw["direction"] = str(rng.choice([d for d in DIRECTIONS if d != asked]))
    elif kind == 2:
        kw["extent"] = 0.03
    elif kind == 3:
        kw["colour"] = str(rng.choice([c for c in COLOURS if c != phrase.colour]))
    if rng.random() < 0.3:
        kw["flicker"] = float(rng.uniform(0.05, 0.15))
    return render_clip(rng, prompt, size=size, **kw)


def build_video_records(rng: np.random.Generator, out: Path, n: int, *, n_test: int | None = None,
                        size: int = 64) -> tuple[list, list]:
    """Pairwise text-to-video and image-to-video records (mp4 files under out/video/)."""
    from ..media import write_video
    from .dataset import preference

    (out / "video").mkdir(parents=True, exist_ok=True)

    def save(frames: list[Image.Image], name: str) -> str:
        rel = f"video/{name}.mp4"
        write_video(out / rel, np.stack([np.asarray(f) for f in frames]))
        return rel

    rows: dict[str, list] = {"train": [], "test": []}
    for split, count in (("train", n), ("test", n_test if n_test is not None else max(40, n // 5))):
        while len(rows[split]) < count:
            i2v = len(rows[split]) % 2 == 1
            prompt = random_motion_prompt(rng)
            rid = f"video-{split}-{len(rows[split]):05d}"
            start, bg, cond_rel = None, None, None
            if i2v:
                start = start_position(rng, parse_motion(prompt)[1])
                bg = ID_BACKGROUNDS[int(rng.integers(len(ID_BACKGROUNDS)))]
                cond = render_clip(rng, prompt, start=start, background=bg, size=size, frames=1)[0]
                cond_rel = f"img/{rid}_condition.png"
                cond.save(out / cond_rel)
            a, b = _variant(rng, prompt, size, start, bg), _variant(rng, prompt, size, start, bg)
            cond_img = Image.open(out / cond_rel) if cond_rel else None
            ra, rb = check_video(a, prompt, condition=cond_img), check_video(b, prompt, condition=cond_img)
            label = preference(ra, rb)
            if split == "test" and label == "tie":
                continue
            rec = {"id": rid, "task": "i2v-overall" if i2v else "t2v-overall", "prompt": prompt,
                   "video_a": save(a, f"{rid}_a"), "video_b": save(b, f"{rid}_b"), "label": label,
                   "category": "i2v" if i2v else "t2v", "split": "id" if split == "test" else "train"}
            if cond_rel:
                rec["condition_image"] = cond_rel
            rows[split].append(rec)
    return rows["train"], rows["test"]
