"""Render ShapeWorld scenes with PIL, anti-aliased by supersampling.

Example:
    >>> import numpy as np
    >>> from rewarddance.world.scene import parse_prompt, sample_scene
    >>> from rewarddance.world.render import render
    >>> img = render(sample_scene(np.random.default_rng(0), parse_prompt("a red circle")), 64)
    >>> img.size
    (64, 64)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image, ImageDraw

from .scene import COLOURS, Obj, Scene

SUPERSAMPLE = 4
# In-domain backgrounds are light and grey; the out-of-domain style uses other palettes.
ID_BACKGROUNDS = [(245, 245, 240), (232, 232, 232), (240, 236, 226)]
OOD_BACKGROUNDS = [(72, 72, 78), (205, 210, 218), (250, 246, 235)]


@dataclass(frozen=True)
class Style:
    """Rendering style. The default is in-domain; `ood()` is the shifted style for OOD tests."""

    outlined: bool = False  # filled shape with a dark border of its own hue
    max_rotation: float = 0.0  # degrees; polygons are rotated by up to this much
    shade_jitter: float = 0.0  # each object's colour scaled by up to +-this (other shades of the same hue)

    @staticmethod
    def ood() -> "Style":
        return Style(outlined=True, max_rotation=20.0)


def _rotate(points: list[tuple[float, float]], cx: float, cy: float, deg: float) -> list[tuple[float, float]]:
    if not deg:
        return points
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return [(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c) for x, y in points]


def shape_polygons(o: Obj, w: int, h: int) -> list[list[tuple[float, float]]]:
    """The polygons (pixel coordinates at size w×h) that draw `o`; circles/rings as fine polygons."""
    cx, cy, r = o.x * w, o.y * h, o.radius * w
    if o.shape in ("circle", "ring"):
        n = 64
        pts = [(cx + r * math.cos(2 * math.pi * k / n), cy + r * math.sin(2 * math.pi * k / n)) for k in range(n)]
        return [pts]
    if o.shape == "square":
        d = r / math.sqrt(2)
        pts = [(cx - d, cy - d), (cx + d, cy - d), (cx + d, cy + d), (cx - d, cy + d)]
    elif o.shape == "triangle":
        pts = [(cx + r * math.cos(math.radians(-90 + 120 * k)), cy + r * math.sin(math.radians(-90 + 120 * k)))
               for k in range(3)]
    elif o.shape == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else 0.45 * r
            ang = math.radians(-90 + 36 * k)
            pts.append((cx + rr * math.cos(ang), cy + rr * math.sin(ang)))
    elif o.shape == "cross":
        a, t = r * 0.9, r * 0.3
        pts = [(cx - t, cy - a), (cx + t, cy - a), (cx + t, cy - t), (cx + a, cy - t), (cx + a, cy + t),
               (cx + t, cy + t), (cx + t, cy + a), (cx - t, cy + a), (cx - t, cy + t), (cx - a, cy + t),
               (cx - a, cy - t), (cx - t, cy - t)]
    else:
        raise ValueError(f"unknown shape {o.shape!r}")
    return [_rotate(pts, cx, cy, o.rotation)]


def draw_object(draw: ImageDraw.ImageDraw, o: Obj, w: int, h: int, background: tuple[int, int, int],
                *, colour: tuple[int, int, int] | None = None, outlined: bool = False) -> None:
    """Draw one object on a (supersampled) canvas of size w×h."""
    rgb = colour or COLOURS[o.colour][0]
    border = tuple(int(c * 0.45) for c in rgb) if outlined else None
    width = max(1, int(o.radius * w * 0.12)) if outlined else 0
    for poly in shape_polygons(o, w, h):
        draw.polygon(poly, fill=rgb, outline=border, width=width)
    if o.shape == "ring":
        ri = 0.55 * o.radius * w
        cx, cy = o.x * w, o.y * h
        n = 48
        pts = [(cx + ri * math.cos(2 * math.pi * k / n), cy + ri * math.sin(2 * math.pi * k / n)) for k in range(n)]
        draw.polygon(pts, fill=background, outline=border, width=width)


def render(scene: Scene, size: int = 64, style: Style = Style(), rng=None) -> Image.Image:
    """Render `scene` to an RGB image of size×size (32 to 256 px); `rng` draws the shade jitter."""
    if not 8 <= size <= 1024:
        raise ValueError(f"render size must be between 8 and 1024 px, got {size}")
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), scene.background)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        colour = None
        if style.shade_jitter and rng is not None:
            k = 1.0 + float(rng.uniform(-style.shade_jitter, style.shade_jitter))
            colour = tuple(int(min(255, max(0, c * k))) for c in COLOURS[o.colour][0])
        draw_object(draw, o, big, big, scene.background, colour=colour, outlined=style.outlined)
    return img.resize((size, size), Image.Resampling.BOX)
