"""Measurable quality defects of an image: noise, blur, JPEG blocking, colour drift.

Each is estimated from pixels alone and turned into a penalty (0 = clean); the quality
score is exp(-sum of penalties), in (0, 1].
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Penalty scales: the estimate at which a defect costs a factor e^-1 of quality.
_SCALES = {"noise": 0.03, "blur": 0.25, "jpeg": 0.25, "colour": 12.0}
_CLEAN = {"noise": 0.006, "blur": 0.0, "jpeg": 0.2, "colour": 3.0}  # estimates on clean renders: no penalty


def estimate_noise(gray: np.ndarray, flat: np.ndarray | None = None) -> float:
    """Immerkaer's fast noise sigma estimate (gray in [0,1]), over `flat` pixels (default all):
    restricting it to the background keeps object edges from reading as noise."""
    k = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
    conv = np.abs(ndimage.convolve(gray, k, mode="reflect"))[1:-1, 1:-1]
    if flat is not None and flat[1:-1, 1:-1].sum() >= 16:
        conv = conv[flat[1:-1, 1:-1]]
    return float(np.sqrt(np.pi / 2) * conv.mean() / 6)


def _max3(x: np.ndarray) -> np.ndarray:
    """3x3 maximum filter (edge-replicated), separable with numpy: far cheaper than ndimage at 64 px."""
    p = np.pad(x, 1, mode="edge")
    m = np.maximum(np.maximum(p[:, :-2], p[:, 1:-1]), p[:, 2:])
    return np.maximum(np.maximum(m[:-2], m[1:-1]), m[2:])


def estimate_blur(sat: np.ndarray) -> float:
    """1 - (one-pixel step / 3x3 range) at strong edges of the saturation image (objects are
    saturated, backgrounds grey): 0 when edges are crisp, towards 1 when smeared."""
    rng = _max3(sat) + _max3(-sat)  # 3x3 max - 3x3 min
    step = np.zeros_like(rng)
    step[:, :-1] = np.abs(np.diff(sat, axis=1))
    step[:-1, :] = np.maximum(step[:-1, :], np.abs(np.diff(sat, axis=0)))
    if rng.max() < 0.05:
        return 0.0  # no objects, no edges to judge
    edges = rng > 0.5 * rng.max()  # relative: heavy blur lowers every edge's contrast
    ratio = _max3(step)[edges] / rng[edges]
    return float(max(0.0, 0.85 - np.median(ratio)))


def estimate_blocking(gray: np.ndarray) -> float:
    """Excess of luminance jumps across 8-px block borders over jumps elsewhere (JPEG blocking)."""
    dx = np.abs(np.diff(gray, axis=1))
    dy = np.abs(np.diff(gray, axis=0))
    at = np.concatenate([dx[:, 7::8].ravel(), dy[7::8, :].ravel()])
    mask_x = np.ones(dx.shape[1], bool)
    mask_x[7::8] = False
    mask_y = np.ones(dy.shape[0], bool)
    mask_y[7::8] = False
    off = np.concatenate([dx[:, mask_x].ravel(), dy[mask_y, :].ravel()])
    # compare small (non-edge) jumps only: object edges would otherwise dominate
    at, off = at[at < 0.1], off[off < 0.1]
    if len(at) == 0 or len(off) == 0:
        return 0.0
    return float(at.mean() / max(off.mean(), 1e-4) - 1.0)


def quality_defects(arr: np.ndarray, sat: np.ndarray, detections: list) -> dict[str, float]:
    """Raw defect estimates of an RGB uint8 image, given its saturation and detections."""
    gray = (arr[..., 0].astype(np.float32) + arr[..., 1] + arr[..., 2]) * (1.0 / 765.0)
    background = _max3(_max3(sat)) <= 0.15  # 2 px away from anything coloured
    colour = float(np.mean([d.hue_error for d in detections])) if detections else 0.0
    return {"noise": estimate_noise(gray, background), "blur": estimate_blur(sat), "jpeg": estimate_blocking(gray),
            "colour": colour}


def quality_score(defects: dict[str, float]) -> float:
    """exp(-sum of penalties) in (0, 1]; 1 for a clean render."""
    penalty = sum(max(0.0, defects[k] - _CLEAN[k]) / _SCALES[k] for k in _SCALES)
    return float(np.exp(-penalty))
