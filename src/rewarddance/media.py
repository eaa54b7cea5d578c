"""Images and videos in, validated and normalised.

Everything the reward model sees passes through here and comes out as a float tensor in
[0, 1]: images as 3×H×W, videos as T×3×H×W. Every bad input becomes a `MediaError`
whose message is one line naming the file (or argument) and the problem.

Example:
    >>> import numpy as np
    >>> from rewarddance.media import load_image
    >>> load_image(np.zeros((8, 8), dtype=np.uint8)).shape
    torch.Size([3, 8, 8])
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".webm", ".gif", ".mkv", ".mov", ".avi"}
# Images larger than this are decoded at reduced size (or refused beyond BOMB_PIXELS):
# a judge never needs more than a few megapixels, and a crafted PNG can claim gigapixels.
MAX_PIXELS = 4096 * 4096
BOMB_PIXELS = 8 * MAX_PIXELS  # below PIL's own hard limit, so our message is the one users see
MAX_SIDE = 2048
# Float pixels may overshoot [0, 1] a little (bicubic or Lanczos resampling of a [0, 1] image
# does) and are clipped; 0-255 or [-1, 1] data lie far outside, and clipping them is silently wrong.
OVERSHOOT = 0.1


class MediaError(ValueError):
    """A bad image, video or prompt; the message names the source and the problem."""


def _name(src: Any) -> str:
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    return f"<{type(src).__name__}>"


def validate_prompt(prompt: Any) -> str:
    """Return `prompt` stripped; raise MediaError if it is not a non-empty string."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise MediaError(f"prompt {prompt!r}: empty prompt (a non-empty string is required)")
    return prompt.strip()


def _pil_to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB: alpha is composited on white, 16-bit is rescaled."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8))
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.asarray(img) * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    return img.convert("RGB")


def _open_image_file(path: Path) -> Image.Image:
    if not path.exists():
        raise MediaError(f"{path}: file not found")
    if path.is_dir():
        raise MediaError(f"{path}: is a directory, not an image")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: empty file (0 bytes)")
    try:
        img = Image.open(path)
    except Image.DecompressionBombError:
        raise MediaError(f"{path}: image is over the {BOMB_PIXELS} pixel limit (decompression bomb?)") from None
    except UnidentifiedImageError:
        raise MediaError(f"{path}: not a readable image (corrupt or unsupported format)") from None
    except OSError as e:
        raise MediaError(f"{path}: corrupt image ({e})") from None
    w, h = img.size
    if w * h > BOMB_PIXELS:
        raise MediaError(f"{path}: image is {w}x{h} pixels, over the {BOMB_PIXELS} limit (decompression bomb?)")
    if w * h > MAX_PIXELS:
        img.draft("RGB", (MAX_SIDE, MAX_SIDE))  # JPEG decodes at reduced scale; others are resized below
    try:
        with warnings.catch_warnings():  # sizes between PIL's warning and our limit are handled here
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise MediaError(f"{path}: corrupt image ({e})") from None
    if max(img.size) > MAX_SIDE and img.size[0] * img.size[1] > MAX_PIXELS:
        img.thumbnail((MAX_SIDE, MAX_SIDE))
    return ImageOps.exif_transpose(img)


def _check_float_pixels(x: torch.Tensor, name: str) -> None:
    """Float pixels must be finite and in [0, 1] (up to OVERSHOOT); tensors and arrays alike."""
    x = x.detach()
    if x.numel() == 0:
        raise MediaError(f"{name}: image has zero size {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise MediaError(f"{name}: image contains NaN or infinite values")
    lo, hi = x.min().item(), x.max().item()
    if lo < -OVERSHOOT or hi > 1 + OVERSHOOT:
        hint = "0-255 data: divide by 255" if hi > 1 + OVERSHOOT else "[-1, 1] data: map with (x + 1) / 2"
        raise MediaError(f"{name}: float pixel values must lie in [0, 1], got [{lo:.3g}, {hi:.3g}] ({hint})")


def _array_to_tensor(arr: np.ndarray, name: str) -> torch.Tensor:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise MediaError(f"{name}: image array must be HxW, HxWxC or CxHxW, got shape {arr.shape}")
    if arr.shape[0] in (1, 3, 4) and arr.shape[2] > 4:
        arr = arr.transpose(1, 2, 0)  # CHW -> HWC
    if arr.shape[2] not in (1, 3, 4):
        raise MediaError(f"{name}: image must have 1, 3 or 4 channels, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise MediaError(f"{name}: image has zero size {arr.shape}")
    if arr.dtype == np.uint8:
        x = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        x = arr.astype(np.float32) / 65535.0
    elif arr.dtype == np.bool_:
        x = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.floating):
        x = arr.astype(np.float32)
        _check_float_pixels(torch.from_numpy(x), name)
        x = np.clip(x, 0.0, 1.0)
    else:
        raise MediaError(f"{name}: unsupported image dtype {arr.dtype}")
    if x.shape[2] == 4:  # composite on white, like RGBA files
        alpha = x[:, :, 3:4]
        x = x[:, :, :3] * alpha + (1.0 - alpha)
    elif x.shape[2] == 1:
        x = np.repeat(x, 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def to_pil(image: torch.Tensor) -> Image.Image:
    """A 3×H×W image in [0, 1] (values outside are clipped) as an 8-bit RGB PIL image; the inverse of
    `load_image` up to rounding.

        >>> to_pil(torch.zeros(3, 2, 4)).size
        (4, 2)
    """
    return Image.fromarray((image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy())


def load_image(src: Any) -> torch.Tensor:
    """Any image source -> float tensor 3×H×W in [0, 1].

    Accepts a path, a PIL image (any mode: grayscale, RGBA, CMYK, 16-bit are converted),
    a numpy array (HxW / HxWxC / CxHxW; uint8, uint16, bool or float in [0,1]) or a
    tensor (3×H×W float in [0,1] is checked like a float array, then passed through untouched,
    keeping its autograd graph).
    """
    if isinstance(src, torch.Tensor):
        if src.ndim == 3 and src.shape[0] == 3 and src.is_floating_point():
            _check_float_pixels(src, _name(src))
            return src  # already normalised; may carry gradients (ReFL)
        return _array_to_tensor(src.detach().cpu().numpy(), _name(src))
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise MediaError(f"{path}: unsupported image format {path.suffix or '(no extension)'!r}")
        src = _open_image_file(path)
    if isinstance(src, Image.Image):
        return _array_to_tensor(np.asarray(_pil_to_rgb(src)), _name(src))
    if isinstance(src, np.ndarray):
        return _array_to_tensor(src, _name(src))
    raise MediaError(f"{_name(src)}: not an image (expected a path, PIL image, numpy array or tensor)")


def _sample_indices(n: int, num_frames: int | None, fps: float | None, src_fps: float | None) -> list[int]:
    if fps is not None and src_fps:
        step = max(src_fps / fps, 1.0)
        idx = [int(i * step) for i in range(int(n / step))] or [0]
    else:
        idx = list(range(n))
    if num_frames is not None and len(idx) > num_frames:
        idx = [idx[round(i * (len(idx) - 1) / max(num_frames - 1, 1))] for i in range(num_frames)]
    return idx


def load_video(src: Any, *, num_frames: int | None = None, fps: float | None = None) -> torch.Tensor:
    """A video path (mp4/webm/gif/...) or a sequence of frames -> float tensor T×3×H×W in [0, 1].

    Frames are sampled uniformly down to `num_frames`, or at `fps` frames per second.
    """
    if isinstance(src, torch.Tensor) and src.ndim == 4:
        frames, src_fps = src, None
        if not src.is_floating_point():
            frames = torch.stack([load_image(f) for f in src])
    elif isinstance(src, (str, os.PathLike)):
        frames, src_fps = _decode_video(Path(src))
    elif isinstance(src, (list, tuple)):
        frames, src_fps = [load_image(f) for f in src], None
        if not frames:
            raise MediaError(f"{_name(src)}: video has no frames")
        if len({f.shape for f in frames}) > 1:
            raise MediaError(f"{_name(src)}: frames have different sizes")
        frames = torch.stack(frames)
    else:
        raise MediaError(f"{_name(src)}: not a video (expected a path or a list of frames)")
    if len(frames) == 0:
        raise MediaError(f"{_name(src)}: video has no frames")
    if frames is src:  # float frames passed straight through: the checks load_image makes
        _check_float_pixels(frames, _name(src))
    return frames[_sample_indices(len(frames), num_frames, fps, src_fps)]


def _decode_video(path: Path) -> tuple[torch.Tensor, float | None]:
    import av

    if not path.exists():
        raise MediaError(f"{path}: file not found")
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise MediaError(f"{path}: unsupported video format {path.suffix or '(no extension)'!r}")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: empty file (0 bytes)")
    frames, announced, end = [], None, None
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = float(stream.average_rate) if stream.average_rate else None
            start = float(stream.start_time * stream.time_base) if stream.start_time and stream.time_base else 0.0
            announced = _announced_seconds(container, stream, start)
            for frame in container.decode(stream):
                frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1))
                end = _frame_end(frame, stream, rate, start)
    except (av.error.FFmpegError, IndexError) as e:
        if not frames:
            raise MediaError(f"{path}: no decodable video frames ({e})") from None
        raise MediaError(f"{path}: corrupt video: decoding failed after {len(frames)} frames ({e})") from None
    if not frames:
        raise MediaError(f"{path}: no decodable video frames")
    # a cut-off file (an interrupted download) decodes its first part without an error: judged as a
    # shorter clip, it would be scored on frames it does not have. Times, not frame counts: a frame count
    # in the header over-counts trimmed (edit-listed) files, and a variable frame rate breaks count = time x rate
    if announced and end is not None and end < 0.95 * announced:
        raise MediaError(f"{path}: truncated video: its frames end at {end:.2f} s of the {announced:.2f} s "
                         "its header announces")
    return torch.stack(frames).float() / 255.0, rate


def _announced_seconds(container: Any, stream: Any, start: float) -> float | None:
    """The video's duration from its header, from the stream's start (the container's only when the video is
    its one stream: an audio track may be longer)."""
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration and len(container.streams) == 1:
        return container.duration / 1e6 - start
    return None


def _frame_end(frame: Any, stream: Any, rate: float | None, start: float) -> float | None:
    """When `frame` stops showing, from the stream's start at `start` seconds (None when it carries no time)."""
    if frame.time is None:
        return None
    shown = float(frame.duration * stream.time_base) if frame.duration and stream.time_base else \
        (1 / rate if rate else 0.0)
    return frame.time - start + shown


def write_video(path: str | os.PathLike, frames: torch.Tensor | np.ndarray, *, fps: int = 8) -> Path:
    """Write T×3×H×W frames in [0,1] (or T×H×W×3 uint8) to an mp4/webm file with PyAV."""
    import av

    arr = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)
    if arr.shape[1] == 3:
        arr = arr.transpose(0, 2, 3, 1)
    path = Path(path)
    codec = "libvpx-vp9" if path.suffix == ".webm" else "libx264"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = arr.shape[1], arr.shape[2]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "12", "preset": "ultrafast"}
        for a in arr:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")))
        container.mux(stream.encode())
    return path


def load_media(src: Any, *, video: bool, num_frames: int | None = None) -> torch.Tensor:
    """`load_video` when `video`, else `load_image`."""
    return load_video(src, num_frames=num_frames) if video else load_image(src)


def broadcast(values: Sequence[Any] | Any, n: int, what: str) -> list[Any]:
    """One value (or a list of one) repeated n times; a list of n kept; else a clear error."""
    if isinstance(values, (str, os.PathLike)) or not isinstance(values, (list, tuple)):
        return [values] * n
    if len(values) == 1:
        return list(values) * n
    if len(values) != n:
        raise MediaError(f"{what}: got {len(values)} values for {n} items")
    return list(values)
