"""The ShapeWorld checker: the ground truth for any RGB image, knowing nothing of its scene.

Pixels are segmented by colour (saturated pixels, named by hue band), connected
components are the objects, and each is classified by geometry: a hole makes a ring;
low solidity (area / convex-hull area) a star or a cross; otherwise how much of its
circumscribed circle it fills tells circle, square and triangle apart.

Example:
    >>> import numpy as np
    >>> from rewarddance.world import check
    >>> from rewarddance.world.scene import parse_prompt, sample_scene
    >>> from rewarddance.world.render import render
    >>> img = render(sample_scene(np.random.default_rng(0), parse_prompt("two green stars")), 64)
    >>> check(img, "two green stars").passed
    True
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from .quality import quality_defects, quality_score
from .scene import COLOURS, SIZES, Spec, article, parse_prompt

_NAMES = list(COLOURS)
_HUES = np.array([h for _, h in COLOURS.values()])
# Hue (0..359) -> colour index: nearest palette hue on the circle.
_HUE_LUT = np.argmin(np.abs(((np.arange(360)[:, None] - _HUES[None, :]) + 180) % 360 - 180), axis=1)
MIN_SATURATION, MIN_VALUE = 0.4, 0.3


@dataclass
class Detection:
    colour: str
    shape: str
    x: float  # centroid, fraction of width
    y: float
    diameter: float  # of the circumscribed circle, fraction of width
    area: int
    cropped: bool = False  # touches the frame: truncated, cannot count as a shape
    hue_error: float = 0.0  # degrees from the palette hue

    @property
    def size(self) -> str:
        return "large" if self.diameter >= (SIZES["small"] + SIZES["large"]) / 2 else "small"


@dataclass
class CheckResult:
    prompt: str
    passed: bool
    score: float  # fraction of constraints that hold
    constraints: list[tuple[str, bool]]
    detections: list[Detection] = field(default_factory=list)
    quality: float = 1.0
    defects: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """One sentence of what the image shows, for rationales."""
        if not self.detections:
            return "nothing recognisable"
        return ", ".join(f"{article(d.colour)} {d.colour} {d.shape}" + (" cut off at the edge" if d.cropped else "")
                         for d in sorted(self.detections, key=lambda d: d.x))


def _as_array(image: Any) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        image = Image.open(image)
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if hasattr(image, "detach"):  # torch tensor 3×H×W in [0,1]
        image = image.detach().cpu().numpy()
        if image.ndim == 3 and image.shape[0] == 3:
            image = image.transpose(1, 2, 0)
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"check: expected an RGB image, got an array of shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8) if arr.dtype.kind == "f" else arr.astype(np.uint8)
    return arr


def _hsv(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue (degrees; only meaningful where saturated), saturation and value of an RGB uint8 array."""
    x = arr.astype(np.float32) * (1.0 / 255.0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]  # channel views: faster than reducing over axis 2
    mx = np.maximum(np.maximum(r, g), b)
    delta = mx - np.minimum(np.minimum(r, g), b)
    sat = delta / np.maximum(mx, 1e-6)
    hue = np.zeros_like(sat)
    fg = (sat > MIN_SATURATION) & (mx > MIN_VALUE)
    if fg.any():
        rf, gf, bf, m, d = r[fg], g[fg], b[fg], mx[fg], delta[fg]
        hue[fg] = np.where(m == rf, ((gf - bf) / d) % 6, np.where(m == gf, (bf - rf) / d + 2, (rf - gf) / d + 4)) * 60
    return hue, sat, mx


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with its holes filled: background components that do not reach the crop's border."""
    padded = np.pad(~mask, 1, constant_values=True)
    labels, _ = ndimage.label(padded)
    return ~(labels == labels[0, 0])[1:-1, 1:-1]


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of the mask with a 4-neighbour outside it."""
    p = np.pad(mask, 1)
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~inner


def _classify(mask: np.ndarray) -> tuple[str, float]:
    """Shape name and circumscribed diameter (pixels) of one component's mask (a tight crop)."""
    filled = _fill_holes(mask)
    area_f = filled.sum()
    holes = area_f - mask.sum()
    ys, xs = np.nonzero(filled)
    cy, cx = ys.mean() + 0.5, xs.mean() + 0.5
    # corners of the boundary pixels: radius and angular profile measured on the pixel squares
    ey, ex = np.nonzero(_boundary(filled))
    py = np.concatenate([ey, ey, ey + 1, ey + 1]).astype(np.float64)
    px = np.concatenate([ex, ex + 1, ex, ex + 1]).astype(np.float64)
    r_max = np.sqrt(((py - cy) ** 2 + (px - cx) ** 2).max())
    if holes / area_f > 0.1:
        return "ring", 2 * r_max
    # The polygons differ by rotational symmetry: the strongest of the 3rd, 4th and 5th
    # angular harmonics of the boundary's radius profile (rotation-invariant); a circle has
    # none and fills its circumscribed circle (radius from pixel centres, + half a pixel).
    theta = np.arctan2(py - cy, px - cx)
    rho = np.hypot(py - cy, px - cx)
    harm = [abs(np.mean(rho * np.exp(-1j * k * theta))) for k in (3, 4, 5)]
    r_centres = np.sqrt(((ey + 0.5 - cy) ** 2 + (ex + 0.5 - cx) ** 2).max()) + 0.5
    if area_f / (np.pi * r_centres ** 2) - max(harm) / rho.mean() > 0.67:
        return "circle", 2 * r_max
    order = int(np.argmax(harm)) + 3
    if order == 3:
        return "triangle", 2 * r_max
    if order == 5:
        return "star", 2 * r_max
    solidity = area_f / max(_hull_area(filled), 1.0)  # 4-fold: convex square or concave cross
    return ("square" if solidity > 0.79 else "cross"), 2 * r_max


def _hull_area(filled: np.ndarray) -> float:
    """Area of the convex hull of a mask's pixel squares (monotone chain over row extremes)."""
    rows = np.nonzero(filled.any(1))[0]
    left = filled[rows].argmax(1)
    right = filled.shape[1] - filled[rows, ::-1].argmax(1)
    pts = sorted({(float(x), float(y)) for r, lo, hi in zip(rows, left, right)
                  for x, y in ((lo, r), (lo, r + 1), (hi, r), (hi, r + 1))})
    if len(pts) < 3:
        return 0.0

    def half(points):
        out: list[tuple[float, float]] = []
        for p in points:
            while len(out) >= 2 and ((out[-1][0] - out[-2][0]) * (p[1] - out[-2][1])
                                     - (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0])) <= 0:
                out.pop()
            out.append(p)
        return out

    hull = half(pts)[:-1] + half(pts[::-1])[:-1]
    return 0.5 * abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(hull, hull[1:] + hull[:1])))


def detect(image: Any) -> list[Detection]:
    """Objects in an RGB image (PIL, numpy HxWx3, path or 3×H×W tensor)."""
    return _detect(_as_array(image))[0]


def _detect(arr: np.ndarray) -> tuple[list[Detection], np.ndarray]:
    h, w = arr.shape[:2]
    hue, sat, val = _hsv(arr)
    fg = (sat > MIN_SATURATION) & (val > MIN_VALUE)
    labels, n = ndimage.label(fg)
    if n == 0:
        return [], sat
    min_area = max(4, int(0.003 * h * w))
    hue_idx = np.round(hue).astype(int) % 360
    out = []
    for i, sl in enumerate(ndimage.find_objects(labels)):
        comp = labels[sl] == i + 1
        area = int(comp.sum())
        if area < min_area:
            continue
        hues = hue_idx[sl][comp]
        colour_idx = int(np.bincount(_HUE_LUT[hues], minlength=len(_NAMES)).argmax())
        # circular mean hue distance to the palette hue: colour fidelity, for the quality score
        diff = ((hues - _HUES[colour_idx]) + 180) % 360 - 180
        shape, diam = _classify(comp)
        ys, xs = np.nonzero(comp)
        cropped = sl[0].start == 0 or sl[1].start == 0 or sl[0].stop == h or sl[1].stop == w
        out.append(Detection(_NAMES[colour_idx], shape, (xs.mean() + sl[1].start + 0.5) / w,
                             (ys.mean() + sl[0].start + 0.5) / h, diam / w, area, cropped,
                             float(np.abs(diff.mean()))))
    return out, sat


def _matches(d: Detection, phrase) -> bool:
    return (not d.cropped and d.shape == phrase.shape and (phrase.colour is None or d.colour == phrase.colour)
            and (phrase.size is None or d.size == phrase.size))


def _relation_holds(a: Detection, b: Detection, relation: str) -> bool:
    dx, dy = b.x - a.x, b.y - a.y  # image y grows downwards
    if relation == "left of":
        return dx > 0 and abs(dx) > abs(dy)
    if relation == "right of":
        return dx < 0 and abs(dx) > abs(dy)
    if relation == "above":
        return dy > 0 and abs(dy) > abs(dx)
    return dy < 0 and abs(dy) > abs(dx)


def evaluate(spec: Spec, detections: list[Detection]) -> list[tuple[str, bool]]:
    """The constraints `spec` states and whether `detections` satisfy each."""
    constraints = []
    used: set[int] = set()
    for p in spec.phrases:
        idx = [i for i, d in enumerate(detections) if _matches(d, p)]
        used.update(idx)
        constraints.append((f"{p.count} x {p.describe()}", len(idx) == p.count))
    extra = [d for i, d in enumerate(detections) if i not in used]
    constraints.append(("nothing else in the image", not extra))
    if spec.relation:
        a = [d for d in detections if _matches(d, spec.phrases[0])]
        b = [d for d in detections if _matches(d, spec.phrases[1])]
        held = len(a) == 1 and len(b) == 1 and _relation_holds(a[0], b[0], spec.relation)
        constraints.append((f"{spec.phrases[0].describe()} {spec.relation} {spec.phrases[1].describe()}", held))
    return constraints


def check(image: Any, prompt: str, *, quality: bool = True) -> CheckResult:
    """Which constraints of `prompt` hold in `image`, an alignment score in [0,1], pass/fail, and
    (unless `quality=False`, which is faster) a quality score from measured defects."""
    spec = parse_prompt(prompt)
    arr = _as_array(image)
    dets, sat = _detect(arr)
    constraints = evaluate(spec, dets)
    held = sum(h for _, h in constraints)
    defects = quality_defects(arr, sat, dets) if quality else {}
    return CheckResult(prompt, held == len(constraints), held / len(constraints), constraints, dets,
                       quality_score(defects) if quality else float("nan"), defects)
