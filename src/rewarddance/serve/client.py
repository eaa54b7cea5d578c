"""`RewardClient`: the reward server from Python, with `score` / `compare` / `rank` shaped like
`RewardModel`'s, so code written against a local model can take a remote one.

Sync and async (`ascore`, `acompare`, `arank`). Retries, with exponential backoff and jitter, only
where retrying is safe and useful: 503 (queue full, model loading; Retry-After honoured) and
connection failures. A 4xx is the caller's error (`RewardRequestError`, a ValueError, like the
MediaError a local model raises) and a 500 or 504 is not retried.

Media are sent in the body: files as their bytes (so the server decodes exactly what a local
`rm.score(path)` would), PIL images, arrays and tensors as 8-bit PNG (a float tensor is rounded
to 8 bits: its reward equals a local `rm.score` of that 8-bit image).

Example:
    >>> from rewarddance.serve.client import RewardClient
    >>> rm = RewardClient("http://127.0.0.1:8000")                          # doctest: +SKIP
    >>> rm.score("a red circle", ["a.png", "b.png"])                        # doctest: +SKIP
    [0.61, 0.42]
    >>> rm.compare("a red circle", "a.png", "b.png")                        # doctest: +SKIP
    0.68
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import random
import time
from pathlib import Path
from typing import Any, Sequence

import httpx
import torch

from ..context import builtin_tasks
from ..media import MediaError, load_image, to_pil

API_KEY_ENV = "REWARDDANCE_API_KEY"
_RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)


class RewardServerError(RuntimeError):
    """The server answered with an error: `status`, its message, the field at fault, the request id."""

    def __init__(self, status: int, message: str, *, param: str | None = None, request_id: str | None = None):
        super().__init__(f"{status}: {message}" + (f" (request id {request_id})" if request_id else ""))
        self.status, self.message, self.param, self.request_id = status, message, param, request_id


class RewardRequestError(RewardServerError, ValueError):
    """A 4xx: the request was wrong (bad media, a missing field, an unknown task, too large)."""


def encode_image(x: Any) -> str:
    """One image as base64: a file's own bytes, anything else `load_image` takes as an 8-bit PNG."""
    if isinstance(x, (str, os.PathLike)):
        if not Path(x).is_file():
            raise MediaError(f"{x}: file not found")
        data = Path(x).read_bytes()
    elif isinstance(x, bytes):
        data = x
    else:
        pixels = load_image(x).detach().float().cpu().clamp(0, 1)
        buf = io.BytesIO()
        to_pil(pixels).save(buf, format="PNG")
        data = buf.getvalue()
    return base64.b64encode(data).decode()


def encode_video(x: Any) -> str | list[str]:
    """One video: a file's bytes (mp4 / webm / gif), or its frames (a list, or a T×3×H×W tensor) as PNGs."""
    if isinstance(x, (str, os.PathLike, bytes)):
        return encode_image(x)  # the same bytes-in-base64 path; the server decodes it as a video
    return [encode_image(f) for f in x]


def _as_list(x: Any) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


class RewardClient:
    """A remote reward model. `api_key` defaults to $REWARDDANCE_API_KEY; `timeout` is per attempt;
    `retries` extra attempts after a 503 or a connection failure, `backoff` seconds doubling each time."""

    def __init__(self, url: str = "http://127.0.0.1:8000", *, api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 5, backoff: float = 0.5, max_backoff: float = 10.0) -> None:
        self.url = url.rstrip("/")
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self._client: httpx.Client | None = None
        self._aclient: httpx.AsyncClient | None = None
        self._info: dict | None = None

    def __repr__(self) -> str:  # never the key
        return f"RewardClient({self.url!r})"

    # ------------------------------------------------------------------ requests: one body builder each
    def _media_field(self, task: str | None, info: dict) -> str:
        name = task or info["task"]
        task_obj = builtin_tasks().get(name)
        video = info["media"] == "video" if name == info["task"] or task_obj is None else task_obj.is_video
        return "videos" if video else "images"

    def _score_body(self, info: dict, prompts: Any, images: Any, references: Any, task: str | None,
                    conditions: Any) -> dict:
        field = self._media_field(task, info)
        encode = encode_video if field == "videos" else encode_image
        body: dict[str, Any] = {"prompts": _as_list(prompts), field: [encode(x) for x in _as_list(images)],
                                "task": task}
        if references is not None:
            body["references"] = [encode(x) for x in _as_list(references)]
        if conditions is not None:
            body["conditions"] = [encode_image(x) for x in _as_list(conditions)]
        return body

    def _compare_body(self, info: dict, prompt: str, image_a: Any, image_b: Any, task: str | None, symmetric: bool,
                      condition: Any) -> dict:
        encode = encode_video if self._media_field(task, info) == "videos" else encode_image
        return {"prompt": prompt, "image_a": encode(image_a), "image_b": encode(image_b), "task": task,
                "symmetric": symmetric, "condition": None if condition is None else encode_image(condition)}

    def _rank_body(self, info: dict, prompt: str, images: Sequence[Any], task: str | None, condition: Any) -> dict:
        field = self._media_field(task, info)
        encode = encode_video if field == "videos" else encode_image
        return {"prompt": prompt, field: [encode(x) for x in images], "task": task,
                "condition": None if condition is None else encode_image(condition)}

    # ------------------------------------------------------------------ sync
    def info(self) -> dict:
        """The served model: {"model", "task", "layout", "media", "replicas"} (GET /readyz, cached)."""
        if self._info is None:
            self._info = self._send("GET", "/readyz")
        return self._info

    def score(self, prompts: Sequence[str] | str, images: Sequence[Any] | Any, *, references: Any = None,
              task: str | None = None, conditions: Any = None) -> list[float]:
        """Reward P(yes) per image (or video), as `RewardModel.score`."""
        body = self._score_body(self.info(), prompts, images, references, task, conditions)
        return self._send("POST", "/v1/score", body)["rewards"]

    def compare(self, prompt: str, image_a: Any, image_b: Any, *, task: str | None = None, symmetric: bool = True,
                condition: Any = None) -> float:
        """P(image_a better than image_b), as `RewardModel.compare`."""
        body = self._compare_body(self.info(), prompt, image_a, image_b, task, symmetric, condition)
        return self._send("POST", "/v1/compare", body)["probability"]

    @property
    def layout(self) -> str:
        """The served judge's layout, "pointwise" or "pairwise" (as `RewardModel.layout`)."""
        return self.info()["layout"]

    def win_matrix(self, prompt: str, images: Sequence[Any], *, task: str | None = None, condition: Any = None,
                   batch_size: int | None = None) -> torch.Tensor:
        """n×n P(image i better than image j), as `RewardModel.win_matrix`, in one /v1/score request
        (`batch_size` is the signature's; the server batches by its own settings)."""
        from ..models.reward_model import win_matrix_from_scores

        return win_matrix_from_scores(self.score, self.layout, prompt, images, task=task, condition=condition)

    def rank(self, prompt: str, images: Sequence[Any], *, task: str | None = None, condition: Any = None) -> list[int]:
        """Indices of `images`, best first, as `RewardModel.rank`."""
        return self._send("POST", "/v1/rank", self._rank_body(self.info(), prompt, images, task, condition))["ranking"]

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> "RewardClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _send(self, method: str, path: str, body: dict | None = None) -> dict:
        if self._client is None:
            self._client = httpx.Client(timeout=self._timeout, headers=self._headers)
        attempt = 0
        while True:
            try:
                response = self._client.request(method, self.url + path, json=body)
            except _RETRYABLE as e:
                delay = self._delay(attempt, e)
            else:
                if response.status_code != 503 or attempt >= self.retries:
                    return self._result(response)
                delay = self._delay(attempt, response)
            time.sleep(delay)
            attempt += 1

    # ------------------------------------------------------------------ async
    async def ainfo(self) -> dict:
        """`info`, awaitable."""
        if self._info is None:
            self._info = await self._asend("GET", "/readyz")
        return self._info

    async def ascore(self, prompts: Sequence[str] | str, images: Sequence[Any] | Any, *, references: Any = None,
                     task: str | None = None, conditions: Any = None) -> list[float]:
        """`score`, awaitable: many in flight at once are batched together by the server."""
        body = self._score_body(await self.ainfo(), prompts, images, references, task, conditions)
        return (await self._asend("POST", "/v1/score", body))["rewards"]

    async def acompare(self, prompt: str, image_a: Any, image_b: Any, *, task: str | None = None,
                       symmetric: bool = True, condition: Any = None) -> float:
        """`compare`, awaitable."""
        body = self._compare_body(await self.ainfo(), prompt, image_a, image_b, task, symmetric, condition)
        return (await self._asend("POST", "/v1/compare", body))["probability"]

    async def arank(self, prompt: str, images: Sequence[Any], *, task: str | None = None,
                    condition: Any = None) -> list[int]:
        """`rank`, awaitable."""
        body = self._rank_body(await self.ainfo(), prompt, images, task, condition)
        return (await self._asend("POST", "/v1/rank", body))["ranking"]

    async def aclose(self) -> None:
        if self._aclient is not None:
            await self._aclient.aclose()
            self._aclient = None

    async def __aenter__(self) -> "RewardClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def _asend(self, method: str, path: str, body: dict | None = None) -> dict:
        if self._aclient is None:
            self._aclient = httpx.AsyncClient(timeout=self._timeout, headers=self._headers)
        attempt = 0
        while True:
            try:
                response = await self._aclient.request(method, self.url + path, json=body)
            except _RETRYABLE as e:
                delay = self._delay(attempt, e)
            else:
                if response.status_code != 503 or attempt >= self.retries:
                    return self._result(response)
                delay = self._delay(attempt, response)
            await asyncio.sleep(delay)
            attempt += 1

    # ------------------------------------------------------------------ shared
    def _delay(self, attempt: int, failure: httpx.Response | httpx.TransportError) -> float:
        """Seconds before the next attempt; a connection failure after the last one is raised here."""
        if isinstance(failure, httpx.TransportError):
            if attempt >= self.retries:
                raise ConnectionError(f"{self.url}: {type(failure).__name__}: {failure} "
                                      f"({attempt + 1} attempts)") from failure
            retry_after = ""
        else:
            retry_after = failure.headers.get("retry-after", "")
        # jitter, so that the many workers of an RL job do not retry in lockstep
        delay = min(self.backoff * 2 ** attempt, self.max_backoff) * (0.5 + random.random())
        return max(delay, float(retry_after)) if retry_after.isdigit() else delay

    @staticmethod
    def _result(response: httpx.Response) -> dict:
        if response.is_success:
            return response.json()
        try:
            err = response.json()["error"]
        except (ValueError, KeyError, TypeError):  # not our JSON error body (a proxy in between, say)
            err = {"message": response.text[:200] or response.reason_phrase}
        cls = RewardRequestError if 400 <= response.status_code < 500 else RewardServerError
        raise cls(response.status_code, err.get("message", ""), param=err.get("param"),
                  request_id=err.get("request_id") or response.headers.get("x-request-id"))
