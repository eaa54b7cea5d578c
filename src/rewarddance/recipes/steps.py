"""A study's steps: each one `rewarddance` command (the same a user runs) in a subprocess, its output
appended to the study's log, so that every step is resumable on its own and its log is kept; and the
keyed files a study resumes from (a result is reused only under the settings it was made with)."""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..train.engine import atomic_write_text


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


# Studies measure their judges in float32: a judge near chance separates two images by ~1e-3, which bfloat16 (the
# default on CPUs with bf16 matmul) rounds into ties that count as wrong (docs/rm-study.md: 31.2% vs 51.0%).
EVAL_DTYPE = "float32"


def eval_step(model: Path, data: Path, out: Path, log: Path) -> dict[str, Any]:
    """`rewarddance eval` of `model` on `data` in EVAL_DTYPE, its result written to `out` (read from it when there)."""
    if not out.exists():
        run_step([*cli_command(), "eval", "--model", str(model), "--data", str(data), "--dtype", EVAL_DTYPE,
                  "--json", str(out)], log)
    return json.loads(out.read_text())


def key_of(content: Any) -> str:
    """A short hash of `content` (JSON, keys sorted): the key a result is stored under."""
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:12]


def write_json(path: Path, content: dict[str, Any]) -> None:
    """`content` as JSON in `path`, atomically (an interrupted write leaves the old file or none)."""
    atomic_write_text(path, json.dumps(content, indent=1) + "\n")


def read_keyed(path: Path, key: str) -> dict[str, Any] | None:
    """The JSON object in `path` if it was written under `key` (the settings it depends on), else None."""
    if path.exists():
        content = json.loads(path.read_text())
        if content.get("key") == key:
            return content
    return None


def start_folder(folder: Path, key: str) -> Path:
    """Mark `folder` as being filled under `key` and return the marker (unlink it when done). A folder left
    by other settings (a row, checkpoints, an evaluation) is removed first: never mixed into this one; a
    half-done one of the same settings is kept, and its steps resume."""
    started = folder / "started"
    if folder.exists() and not (started.exists() and started.read_text() == key):
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    started.write_text(key)
    return started
