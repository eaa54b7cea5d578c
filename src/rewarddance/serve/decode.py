"""Request media (base64, data URLs, uploaded bytes) -> tensors, through rewarddance.media.

The server never reads a path or fetches a URL named in a request: media come only in the body.
The bytes are checked against the server's limits on their header (pixels, frames) before any
decoding, then decoded by `rewarddance.media` exactly as a local `rm.score` on the same file
would be (same format checks, decompression-bomb refusal, colour conversion), so a response
equals a direct `rm.score` of the same file.

Example:
    >>> import base64, io
    >>> from PIL import Image
    >>> from rewarddance.serve.config import ServeConfig
    >>> from rewarddance.serve.decode import decode_image
    >>> buf = io.BytesIO(); Image.new("RGB", (8, 8), "red").save(buf, format="PNG")
    >>> decode_image(base64.b64encode(buf.getvalue()).decode(), "images[0]", ServeConfig()).shape
    torch.Size([3, 8, 8])
"""

from __future__ import annotations

import base64
import binascii
import io
import tempfile
import warnings
from typing import Union

import torch
from PIL import Image, UnidentifiedImageError

from ..media import MediaError, load_image, load_video
from .config import ServeConfig, bad_input

Media = Union[str, bytes]  # base64 text or a data: URL (JSON), or raw bytes (multipart upload)


def media_bytes(value: Media, field: str) -> bytes:
    """The bytes of a base64 string or a `data:<mime>;base64,<data>` URL; uploads pass through."""
    if isinstance(value, bytes):
        return value
    text = value
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma or not header.endswith(";base64"):
            raise bad_input(f"{field}: a data URL must be base64: data:<type>;base64,<data>", field)
    try:
        data = base64.b64decode("".join(text.split()), validate=True)  # line-wrapped base64 is common
    except (binascii.Error, ValueError):
        raise bad_input(f"{field}: not base64 data or a data: URL (media are sent in the body; the server "
                        "reads no paths and fetches no URLs)", field) from None
    if not data:
        raise bad_input(f"{field}: empty media (0 bytes)", field)
    return data


def _decoded(data: bytes, field: str, suffix: str, load, **kwargs) -> torch.Tensor:
    """`load(path)` on the bytes written to a private temporary file: rewarddance.media decodes files,
    and doing it here keeps one decoder (and one set of checks) for local and served scoring.
    The suffix only passes media's extension check; PIL and PyAV read the format from the content."""
    with tempfile.NamedTemporaryFile(prefix="rewarddance-", suffix=suffix) as f:
        f.write(data)
        f.flush()
        try:
            return load(f.name, **kwargs)
        except MediaError as e:  # name the request field, not our temporary file
            raise bad_input(str(e).replace(f.name, field), field) from None


def _image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image header alone; None when PIL cannot read it (media names why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                return img.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError):
        return None


def _checked_image_bytes(value: Media, field: str, config: ServeConfig) -> tuple[bytes, int]:
    """(bytes, pixel count from the header) of one image, refused over the server's pixel limit."""
    data = media_bytes(value, field)
    w, h = _image_size(data) or (0, 0)
    if w * h > config.max_pixels:
        raise bad_input(f"{field}: image is {w}x{h} pixels, over this server's limit of {config.max_pixels} "
                        "pixels", field)
    return data, w * h


def decode_image(value: Media, field: str, config: ServeConfig) -> torch.Tensor:
    """One image -> float 3×H×W in [0, 1]; a MediaError or a limit becomes a 422 naming `field`."""
    data, _ = _checked_image_bytes(value, field, config)
    return _decoded(data, field, ".png", load_image)


def _video_shape(data: bytes) -> tuple[int, int, int | None] | None:
    """(width, height, frame count or None) from the container's header; None if PyAV cannot read it."""
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            frames = stream.frames or None
            if frames is None and container.duration and stream.average_rate:
                frames = int(container.duration / av.time_base * float(stream.average_rate)) + 1
            return stream.codec_context.width, stream.codec_context.height, frames
    except (av.error.FFmpegError, IndexError):
        return None


def _video_suffix(data: bytes) -> str:
    if data[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska / WebM
        return ".webm"
    return ".gif" if data[:4] == b"GIF8" else ".mp4"


def _video_budget(field: str, pixels: int, config: ServeConfig) -> None:
    if pixels > config.max_video_pixels:
        raise bad_input(f"{field}: the video's frames hold {pixels} pixels in all, over this server's limit of "
                        f"{config.max_video_pixels}", field)


def decode_video(value: Media | list[Media], field: str, config: ServeConfig, num_frames: int | None) -> torch.Tensor:
    """A video (mp4 / webm / gif bytes) or a list of frames -> float T×3×H×W in [0, 1]."""
    if isinstance(value, list):
        frames, total = [], 0
        for j, f in enumerate(value):
            data, pixels = _checked_image_bytes(f, f"{field}[{j}]", config)
            total += pixels
            _video_budget(field, total, config)
            frames.append(_decoded(data, f"{field}[{j}]", ".png", load_image))
        try:
            return load_video(frames, num_frames=num_frames)
        except MediaError as e:
            raise bad_input(f"{field}: {str(e).split(': ', 1)[-1]}", field) from None
    data = media_bytes(value, field)
    shape = _video_shape(data)
    if shape is not None:
        w, h, n = shape
        if w * h > config.max_pixels:
            raise bad_input(f"{field}: video frames are {w}x{h} pixels, over this server's limit of "
                            f"{config.max_pixels} pixels", field)
        if n is None:  # decoding is the only way to count, and a small file can hold a huge number of frames
            raise bad_input(f"{field}: the video's header gives no frame count or duration; send it as a list "
                            "of frames", field)
        _video_budget(field, n * w * h, config)
    return _decoded(data, field, _video_suffix(data), load_video, num_frames=num_frames)
