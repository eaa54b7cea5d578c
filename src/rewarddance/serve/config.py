"""Server settings, API keys, and the one error type every user-facing failure becomes.

Example:
    >>> from rewarddance.serve.config import ServeConfig
    >>> ServeConfig(max_batch_size=16).queue_capacity
    64
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

API_KEYS_ENV = "REWARDDANCE_API_KEYS"


@dataclass
class ServeConfig:
    """How the server batches, queues and limits requests.

    `max_batch_size`: items (images, or videos) per model call; a batch closes when it holds that
    many or when its first request has waited `max_wait_ms`. `queue_capacity`: requests waiting for
    a model call; one more gets 503 with Retry-After. `request_timeout_s`: a request not answered by
    then gets 504. `max_body_bytes`: larger bodies get 413. `max_images`: images (or videos) per
    request field; `max_pixels` per image or frame and `max_video_pixels` over a video's frames
    (both checked on headers, before decoding: media are decoded whole, as float32). `api_keys`:
    when non-empty, every endpoint but the health checks and the schema needs one of them (kept out
    of repr, so a logged config never shows them).
    """

    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    queue_capacity: int = 64
    request_timeout_s: float = 60.0
    max_body_bytes: int = 32 * 2**20
    max_images: int = 64
    max_rank_images: int = 16  # a pairwise rank judges n(n-1) ordered pairs on one replica
    max_pixels: int = 2048 * 2048
    max_video_pixels: int = 2**26  # e.g. 256 frames of 512x512: 800 MB as float32
    retry_after_s: int = 1
    api_keys: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "queue_capacity", "max_body_bytes", "max_images", "max_rank_images",
                     "max_pixels", "max_video_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.request_timeout_s <= 0:
            raise ValueError("max_wait_ms must be >= 0 and request_timeout_s > 0")


def read_api_keys(path: str | os.PathLike | None = None) -> tuple[str, ...]:
    """API keys from `path` (one per line; blank lines and # comments skipped), else from the
    environment variable REWARDDANCE_API_KEYS (comma-separated); () means auth is off."""
    if path is not None:
        lines = Path(path).read_text().splitlines()
        keys = tuple(k.strip() for k in lines if k.strip() and not k.strip().startswith("#"))
        if not keys:
            raise ValueError(f"{path}: no API keys in the file")
        return keys
    return tuple(k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip())


class ServeError(Exception):
    """A request that cannot be answered: its HTTP status, a `kind` (the metrics label and the
    error body's "type"), a one-line message, the request field it concerns (`param`), headers."""

    def __init__(self, status: int, kind: str, message: str, *, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.param = status, kind, message, param
        self.headers = headers or {}


def bad_input(message: str, param: str | None = None) -> ServeError:
    """422: the request is well-formed JSON but a field is wrong."""
    return ServeError(422, "bad_input", message, param=param)
