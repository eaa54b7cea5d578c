"""The reward server (HTTP, dynamic batching, OpenAI-compatible chat with logprobs) and its client.

    rewarddance serve --model runs/judge/final --port 8000          # needs: pip install "rewarddance[serve]"

Endpoints: POST /v1/score, /v1/compare, /v1/rank, /v1/chat/completions; GET /v1/models,
/healthz, /readyz, /metrics, /openapi.json. docs/serving.md has the API and its behaviour.

Example:
    >>> from rewarddance.serve import RewardClient
    >>> rm = RewardClient("http://127.0.0.1:8000")                          # doctest: +SKIP
    >>> rm.score("a red circle", ["a.png", "b.png"])                        # doctest: +SKIP
    [0.61, 0.42]

Names are imported on first use, so a process that only calls a server (an RL trainer) does not
import FastAPI and uvicorn.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .config import ServeConfig, read_api_keys

# where each public name lives; imported on first use (the CLI's parser reads ServeConfig's defaults
# without importing httpx, FastAPI or torch)
_LAZY = {"RewardClient": "client", "RewardRequestError": "client", "RewardServerError": "client",
         "create_app": "app", "run_server": "server"}
__all__ = ["RewardClient", "RewardRequestError", "RewardServerError", "ServeConfig", "create_app", "read_api_keys",
           "run_server"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
