"""Run the reward server in this process: replicas load in the background, uvicorn serves, and
SIGTERM (or Ctrl+C) stops accepting, lets in-flight requests finish, and exits 0.

Example:
    >>> from rewarddance.serve.server import run_server
    >>> run_server("qwen2_5_vl-tiny", port=8000)                            # doctest: +SKIP
"""

from __future__ import annotations

import logging
import signal
from typing import Any, Sequence

import torch

from .app import create_app
from .config import ServeConfig

logger = logging.getLogger("rewarddance.serve")


def replica_devices(replicas: int, devices: Sequence[str] | None = None) -> list[str]:
    """One device per replica: `devices` in turn, else every visible GPU in turn, else the CPU."""
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, got {replicas}")
    if not devices:
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        devices = [f"cuda:{i}" for i in range(n)] or ["cpu"]
    return [devices[i % len(devices)] for i in range(replicas)]


def _drained(signum: int, frame: Any) -> None:
    """Where uvicorn re-raises the signal it shut down on: the requests are drained, nothing to do."""


def run_server(model: str, *, host: str = "127.0.0.1", port: int = 8000, dtype: torch.dtype | None = None,
               replicas: int = 1, devices: Sequence[str] | None = None, config: ServeConfig | None = None,
               log_level: str = "info", **overrides: Any) -> int:
    """Serve `model` (a checkpoint directory or a preset name) until SIGTERM / SIGINT; the exit code:
    0 after a drained shutdown, 1 if the model could not be loaded. `overrides` go to `rd.load`
    (e.g. layout="pairwise")."""
    import uvicorn

    import rewarddance as rd

    config = config or ServeConfig()
    devs = replica_devices(replicas, devices)
    failures: list[Exception] = []
    server: uvicorn.Server | None = None

    def load() -> list:
        return [rd.load(model, device=d, dtype=dtype, **overrides) for d in devs]

    def stop(err: Exception) -> None:
        failures.append(err)
        server.should_exit = True

    app = create_app(load, config, model_name=model, on_load_error=stop)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, server_header=False,
                                           timeout_graceful_shutdown=int(config.request_timeout_s) + 5))
    log = logging.getLogger("rewarddance")
    if not log.handlers:  # uvicorn configures only its own loggers
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(log_level.upper())
    logger.info("loading %s on %s (%d replica(s)); API-key auth %s; %s", model, ", ".join(devs), len(devs),
                f"on ({len(config.api_keys)} key(s))" if config.api_keys else "off", config)
    # uvicorn handles SIGTERM / SIGINT while it runs (stop accepting, drain), then re-raises the signal
    # for the handler it found: a no-op one makes a drained shutdown a clean exit
    previous = {sig: signal.signal(sig, _drained) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if failures else 0
