"""A study's steps: each one `rewarddance` command (the same a user runs) in a subprocess, its output
appended to the study's log, so that every step is resumable on its own and its log is kept."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path


def cli_command() -> list[str]:
    """The `rewarddance` command of this interpreter."""
    return [sys.executable, "-m", "rewarddance.cli"]


def run_step(cmd: list[str], log: Path) -> float:
    """Run `cmd`, its output appended to `log`; its wall minutes. A failure raises with the log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    line = "$ " + " ".join(shlex.quote(c) for c in cmd)
    print(line, file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with log.open("a") as f:
        f.write(line + "\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"study step failed (exit {r.returncode}): {' '.join(cmd)}\n{tail}")
    return (time.perf_counter() - t0) / 60
