"""Defects: quality defects keep the content and lower quality; content defects break a constraint.

Example:
    >>> import numpy as np
    >>> from PIL import Image
    >>> from rewarddance.world.defects import apply_quality_defect
    >>> apply_quality_defect(Image.new("RGB", (64, 64)), "blur").size
    (64, 64)
"""

from __future__ import annotations

import copy
import io

import numpy as np
from PIL import Image, ImageFilter

from .scene import COLOURS, SHAPES, Obj, Scene, Spec, _place

# name -> default strength at severity 1 (the defaults, for 64 px images)
QUALITY_DEFECTS = {"noise": 0.05, "blur": 1.0, "jpeg": 40, "colour_shift": 8.0}
CONTENT_DEFECTS = ("wrong_colour", "wrong_shape", "extra_object", "missing_object", "swapped_position",
                   "swapped_binding", "cropped")


def apply_quality_defect(img: Image.Image, name: str, severity: float = 1.0,
                         rng: np.random.Generator | None = None) -> Image.Image:
    """`img` with quality defect `name` at `severity` (1 = default strength; 0 = none)."""
    rng = rng or np.random.default_rng(0)
    if severity <= 0:
        return img.copy()
    if name == "noise":
        x = np.asarray(img, dtype=np.float32) / 255.0
        x = x + rng.normal(0, QUALITY_DEFECTS["noise"] * severity, x.shape)
        return Image.fromarray((np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8))
    if name == "blur":
        return img.filter(ImageFilter.GaussianBlur(QUALITY_DEFECTS["blur"] * severity * img.width / 64))
    if name == "jpeg":
        buf = io.BytesIO()
        q = int(np.clip(100 - (100 - QUALITY_DEFECTS["jpeg"]) * severity, 5, 95))
        img.save(buf, format="JPEG", quality=q)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if name == "colour_shift":
        hsv = np.asarray(img.convert("HSV"), dtype=np.int16).copy()
        shift = QUALITY_DEFECTS["colour_shift"] * severity * (1 if rng.random() < 0.5 else -1)
        hsv[..., 0] = (hsv[..., 0] + round(shift * 256 / 360)) % 256
        return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")
    raise ValueError(f"unknown quality defect {name!r}; choose one of {list(QUALITY_DEFECTS)}")


def apply_content_defect(rng: np.random.Generator, scene: Scene, spec: Spec, kind: str) -> Scene | None:
    """A copy of `scene` (which satisfies `spec`) that violates it by `kind`; None if `kind` cannot apply."""
    s = copy.deepcopy(scene)
    objs = s.objects
    if not objs:
        return None
    i = int(rng.integers(len(objs)))
    if kind == "wrong_colour":
        named = [k for k, o in enumerate(objs) if _phrase_of(spec, objs, k).colour]
        if not named:
            return None
        k = int(rng.choice(named))
        objs[k].colour = str(rng.choice([c for c in COLOURS if c != objs[k].colour]))
    elif kind == "wrong_shape":
        taken = {p.shape for p in spec.phrases}
        objs[i].shape = str(rng.choice([sh for sh in SHAPES if sh not in taken]))
    elif kind == "extra_object":
        src = objs[i]
        objs.append(Obj(src.shape, src.colour, "small", rotation=src.rotation))
        if not _place(rng, objs, fixed=len(objs) - 1):
            return None
    elif kind == "missing_object":
        objs.pop(i)
    elif kind == "swapped_position":
        if not spec.relation:
            return None
        a, b = objs
        a.x, a.y, b.x, b.y = b.x, b.y, a.x, a.y
    elif kind == "swapped_binding":
        if len(objs) != 2 or not all(p.colour for p in spec.phrases) or objs[0].colour == objs[1].colour:
            return None
        objs[0].colour, objs[1].colour = objs[1].colour, objs[0].colour
    elif kind == "cropped":
        o = objs[i]
        side = int(rng.integers(4))
        edge = -o.radius * 0.1 if side < 2 else 1 + o.radius * 0.1
        if side % 2 == 0:
            o.x = edge
        else:
            o.y = edge
    else:
        raise ValueError(f"unknown content defect {kind!r}; choose one of {CONTENT_DEFECTS}")
    return s


def _phrase_of(spec: Spec, objs: list[Obj], k: int):
    """The phrase object k was placed for (sample_scene places phrases' objects in order)."""
    n = 0
    for p in spec.phrases:
        n += p.count
        if k < n:
            return p
    return spec.phrases[-1]
