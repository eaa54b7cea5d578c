"""Small components the training recipes wire: data order, checkpoints with exact resume, metrics logs.

- `step_records`: which records a global step uses, a pure function of (step, seed), so a
  resumed run continues at the same data position without saving a loader's state.
- `atomic_dir`, `atomic_write_text`: a directory or a file written so that a run killed half-way
  leaves the old one or the new one, never half of one.
- `Checkpointer`: `step-N` directories written atomically (temp dir + rename), holding a
  loadable model and `trainer_state.pt` (trainable weights, optimizer, scheduler, RNG).
- `MetricsLog`: metrics.jsonl appended and flushed row by row, TensorBoard, a PNG of the curves.

Example:
    >>> step_records(step=0, n_records=10, batch_size=4, seed=0)
    [4, 1, 7, 5]
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch


def step_records(step: int, n_records: int, batch_size: int, seed: int) -> list[int]:
    """Indices of the records global step `step` trains on: epochs are seeded permutations, each cut
    into whole batches (the remainder of an epoch is left out)."""
    per_epoch = n_records // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch_size {batch_size} is larger than the {n_records} usable records")
    epoch, k = divmod(step, per_epoch)
    order = torch.randperm(n_records, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return order[k * batch_size:(k + 1) * batch_size].tolist()


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def atomic_dir(target: Path, write: Callable[[Path], None]) -> Path:
    """Run `write(tmp)` into a fresh temp directory beside `target`, then swap it into place: a reader
    (or a run killed half-way) sees the old directory or the new one, never half of one."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    old = target.with_name(f".{target.name}.old{os.getpid()}")
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to a temp file beside `path`, then rename it into place (atomic on one file system): a
    crash leaves the old file or the new one, never half of one (and no temp file behind)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


class Checkpointer:
    """`output_dir/checkpoints/step-N`, the last `keep` of them; `latest()` is where a run resumes."""

    def __init__(self, output_dir: str | os.PathLike, keep: int = 2) -> None:
        self.root = Path(output_dir) / "checkpoints"
        self.keep = keep

    def steps(self) -> list[int]:
        if not self.root.exists():
            return []
        return sorted(int(m.group(1)) for p in self.root.iterdir() if (m := re.fullmatch(r"step-(\d+)", p.name)))

    def latest(self) -> Path | None:
        steps = self.steps()
        return self.root / f"step-{steps[-1]}" if steps else None

    def save(self, step: int, save_model: Callable[[Path], None], state: dict[str, Any]) -> Path:
        def write(tmp: Path) -> None:
            save_model(tmp)
            torch.save(state, tmp / "trainer_state.pt")
        path = atomic_dir(self.root / f"step-{step}", write)
        for old in self.steps()[:-self.keep]:
            shutil.rmtree(self.root / f"step-{old}", ignore_errors=True)
        return path

    @staticmethod
    def load_state(path: Path) -> dict[str, Any]:
        return torch.load(path / "trainer_state.pt", weights_only=False)


def read_appended_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON rows of a file written a line at a time (metrics, scores); a line cut off by a kill is
    left out (its row is logged or scored again by the resumed run)."""
    rows = []
    for text in Path(path).read_text().splitlines():
        if text.strip():
            try:
                rows.append(json.loads(text))
            except json.JSONDecodeError:
                continue
    return rows


class MetricsLog:
    """metrics.jsonl (one flushed row per logged step), TensorBoard scalars, and curves.png at the end."""

    def __init__(self, output_dir: str | os.PathLike, *, resume_step: int = 0, tensorboard: bool = True) -> None:
        self.dir = Path(output_dir)
        self.path = self.dir / "metrics.jsonl"
        rows = []
        if self.path.exists():  # a resumed run drops rows logged after its checkpoint: they are redone
            rows = [r for r in self.read(self.dir) if r.get("step", 0) <= resume_step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))
        self.rows = rows
        self._file = self.path.open("a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.dir / "tensorboard"))

    @staticmethod
    def read(output_dir: str | os.PathLike) -> list[dict[str, Any]]:
        """The rows of a run's metrics.jsonl (a row cut off by a kill is left out)."""
        return read_appended_rows(Path(output_dir) / "metrics.jsonl")

    def log(self, row: dict[str, Any]) -> None:
        row = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        self.rows.append(row)
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and v is not None:
                    self._tb.add_scalar(k, v, row["step"])
            self._tb.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()

    def plot(self, keys: tuple[str, ...] = ("loss", "accuracy", "eval_accuracy")) -> Path | None:
        """curves.png: one panel per key that was logged."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = [k for k in keys if any(r.get(k) is not None for r in self.rows)]
        if not panels:
            return None
        fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.2), squeeze=False)
        for ax, key in zip(axes[0], panels):
            pts = [(r["step"], r[key]) for r in self.rows if r.get(key) is not None]
            ax.plot(*zip(*pts), marker="." if len(pts) < 40 else None)
            ax.set_title(key)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        out = self.dir / "curves.png"
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out
