"""The reward-hacking monitor, on in every RL run: per-step reward statistics, sample diversity, ground truth, alarms.

Hacking shows as the judge's reward rising while the true quality does not, with the samples
collapsing to one mode (method.md §6). The paper's diagnostic is the variance of the reward
across samples in a sliding window: a hacked judge hands every sample the same saturated
reward, so the spread collapses. `HackingMonitor.update` is called once per RL step with the
batch's rewards (and, when there are any, the samples, their prompt groups, the gradient norm
and, on evaluation steps, a ground-truth pass rate). It returns the row the caller logs with
`rewarddance.train.engine.MetricsLog`:

    step, reward_mean, reward_std, reward_std_window, diversity, grad_norm,
    [reward_std_group when groups are given], [gt_pass_rate on evaluation rows], alarms

The monitor takes rewards and ground truth as numbers, never a judge or a checker, so it works
the same for any generator and metric (rl/ does not import world/). In a recipe:

    log = MetricsLog(out, resume_step=start)            # rows after the checkpoint are redone
    if resuming: monitor.load_state_dict(trainer_state["monitor"])
    for step in range(start, steps + 1):                # step 0 = before any update
        ...
        row = monitor.update(step, rewards, images=samples, groups=prompt_ids, grad_norm=gn,
                             gt_pass_rate=evaluate() if step % eval_every == 0 else None)
        log.log(row)                                    # trainer_state["monitor"] = monitor.state_dict()
        if monitor.should_stop: break
    plot_monitor(log.rows, out / "monitor.png"); results.update(monitor.summary())

Alarms (names in `ALARMS`; each threshold is a `MonitorConfig` field, justified there):
- "reward_up_gt_down": on evaluation rows, the reward (mean over the window) is at least
  `reward_rise` baseline standard deviations above its level at the first evaluation while
  the ground-truth pass rate is at least `gt_drop` below it, on `gt_patience` consecutive
  evaluations.
- "gt_down": the ground-truth pass rate at least `gt_drop` below the first evaluation on
  `gt_patience` consecutive evaluations, whatever the reward did. The run is making the
  generator worse at what the reward stands for: hacking when the reward rose with it (the
  alarm above), a judge that leads nowhere when it stayed flat. Added after the full RL study
  (docs/rl.md): ReFL against its best judge lost 10.5 points (40.6% -> 30.1%) while the reward
  rose 0.43 sd, under `reward_rise`, and nothing fired.
- "reward_variance_collapse": `reward_std_window` below `std_collapse` times its value at the
  first full window, on `patience` consecutive steps.
- "diversity_collapse": `diversity` below `diversity_collapse` times its first value (step 0),
  on `patience` consecutive steps that measured it.
No alarm is raised in the first `min_steps` updates. `hacking_flagged` is true once any alarm
fired; `should_stop` is true when, in addition, `early_stop` is set.

Diversity feature space (judge-independent by construction): each frame is area-averaged to
`size`x`size` (16 by default) RGB pixels; the distance between two samples is the RMS
difference of those features, in pixel-intensity units (0 = same image, 1 = black vs white).
Area pooling keeps layout, colour and shape, the things a mode collapse removes, and drops
pixel noise that would otherwise let a collapsed generator look diverse. It needs no weights
(nothing to keep fixed across versions or devices) and costs well under a millisecond per
image on a CPU. It is not semantic (a shifted object counts as a different image, which for
ShapeWorld layouts is wanted); pass `features=` for real photographs (e.g. a frozen
self-supervised embedding), never the judge's own features.

Example:
    >>> import torch
    >>> mon = HackingMonitor(MonitorConfig(window=3, min_steps=0))
    >>> row = mon.update(0, torch.tensor([0.2, 0.4, 0.6, 0.8]),
    ...                  images=torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
    ...                  groups=["a", "a", "b", "b"], gt_pass_rate=0.5)
    >>> list(row)  # doctest: +NORMALIZE_WHITESPACE
    ['step', 'reward_mean', 'reward_std', 'reward_std_window', 'reward_std_group', 'diversity', 'grad_norm',
     'gt_pass_rate', 'alarms']
    >>> round(row["reward_std_window"], 4), row["alarms"]
    (0.2236, [])
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ConfigError

REWARD_UP_GT_DOWN = "reward_up_gt_down"
GT_DOWN = "gt_down"
VARIANCE_COLLAPSE = "reward_variance_collapse"
DIVERSITY_COLLAPSE = "diversity_collapse"
ALARMS = (REWARD_UP_GT_DOWN, GT_DOWN, VARIANCE_COLLAPSE, DIVERSITY_COLLAPSE)
EVAL_ALARMS = (REWARD_UP_GT_DOWN, GT_DOWN)  # judged on evaluation rows only
ROW_KEYS = frozenset({"step", "reward_mean", "reward_std", "reward_std_window", "reward_std_group", "diversity",
                      "grad_norm", "gt_pass_rate", "alarms"})

Features = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class MonitorConfig:
    """Settings of `HackingMonitor`. Why each default:

    - `window` (50): steps in the sliding window of `reward_std_window`. The paper uses 1,000
      iterations over runs of many thousands; 50 keeps the same "many batches" smoothing
      (50 x batch rewards, so the std's relative standard error is ~1/sqrt(2*50*B), a few %)
      while still reacting inside a run of a few hundred steps.
    - `min_steps` (10): no alarm before this many updates. The step-0 baselines are single
      batches and the first updates are the noisiest; a few steps of grace cost little.
    - `patience` (3): a per-step condition (variance or diversity collapse) must hold on this
      many consecutive updates, so one unlucky batch (a handful of prompt groups) cannot
      raise an alarm.
    - `gt_drop` (0.06): fall of the ground-truth pass rate (a fraction in [0, 1]) below the
      first evaluation that counts. With the issue's >= 64 prompts x 4 seeds = 256 samples,
      one standard error of a pass rate near 0.5 is sqrt(0.25/256) = 3.1 points, and the
      issue calls 5 points the noise floor; 6 points is ~2 s.e. above it. Scale it as
      ~2*sqrt(p(1-p)/n) for another evaluation size n.
    - `gt_patience` (2): consecutive evaluations that must show the drop. A single 6-point dip
      happens by chance a few % of the time; two in a row roughly squares that.
    - `reward_rise` (0.5): the reward counts as "up" when its mean over the window is at least
      this many standard deviations (the reward spread at the first evaluation) above its
      level there. Scale-free, so it suits any reward function; 0.5 sd is about 2 standard
      errors of a step-0 batch mean for batches of 16, and every hacked run rises far more.
    - `std_collapse` (0.25): `reward_std_window` below a quarter of its first full-window value
      (1/16 of the variance) means nearly every sample gets the same reward: the saturation
      the paper reports for small judges. Healthy runs lose some spread as easy prompts
      saturate, rarely three quarters of it.
    - `diversity_collapse` (0.5): mean within-prompt distance below half its step-0 value means
      the samples of a prompt are converging to one image. Fine-tuning trims some diversity
      in healthy runs (10-30% is common); halving is a collapse, and far outside the batch
      noise of the measure.
    - `diversity_size` (16): side of the pooled pixel grid of the diversity features.
    - `early_stop` (False): when true, `should_stop` turns true at the first alarm.
    """

    window: int = 50
    min_steps: int = 10
    patience: int = 3
    gt_drop: float = 0.06
    gt_patience: int = 2
    reward_rise: float = 0.5
    std_collapse: float = 0.25
    diversity_collapse: float = 0.5
    diversity_size: int = 16
    early_stop: bool = False

    def __post_init__(self) -> None:
        for key in ("window", "patience", "gt_patience", "diversity_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if self.min_steps < 0:
            raise ConfigError(f"min_steps: must be >= 0, got {self.min_steps}")
        for key in ("std_collapse", "diversity_collapse"):
            if not 0.0 < getattr(self, key) < 1.0:
                raise ConfigError(f"{key}: a fraction in (0, 1), got {getattr(self, key)}")
        if not 0.0 < self.gt_drop <= 1.0:
            raise ConfigError(f"gt_drop: a pass-rate fall in (0, 1], got {self.gt_drop}")
        if self.reward_rise < 0.0:
            raise ConfigError(f"reward_rise: must be >= 0, got {self.reward_rise}")


def pixel_features(images: torch.Tensor, size: int = 16) -> torch.Tensor:
    """Judge-independent features: each frame area-pooled to `size`x`size` RGB, flattened (frames
    of a video concatenated). Returns float64 B x D on the CPU.

    Example:
        >>> pixel_features(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 768])
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images: expected a tensor B x 3 x H x W or B x T x 3 x H x W, got {type(images).__name__}")
    if images.dim() not in (4, 5) or images.shape[-3] != 3:
        raise ValueError(f"images: expected B x 3 x H x W or B x T x 3 x H x W, got shape {tuple(images.shape)}")
    b = images.shape[0]
    frames = images.detach().reshape(-1, *images.shape[-3:]).float()
    pooled = F.adaptive_avg_pool2d(frames, size)
    return pooled.reshape(b, -1).double().cpu()


def diversity(
    images: torch.Tensor,
    groups: Sequence[Hashable] | None = None,
    *,
    size: int = 16,
    features: Features | None = None,
) -> float:
    """Mean pairwise distance between samples of the same group (prompt).

    Features are `pixel_features(images, size)` unless `features` (a callable images -> B x D)
    is given; the distance is the RMS difference of two feature vectors (L2 / sqrt(D)). Each
    group of >= 2 samples contributes the mean over its pairs; groups are averaged with equal
    weight, so a prompt with many samples does not dominate. Pairs across groups are ignored:
    different prompts should give different images. `groups=None` puts all samples in one
    group. NaN when no group has two samples (nothing to compare); the monitor logs it as None.
    Exactly invariant to the order of samples and groups (sums are `math.fsum`).

    Example:
        >>> white, black = torch.ones(1, 3, 32, 32), torch.zeros(1, 3, 32, 32)
        >>> diversity(torch.cat([white, white, white, black]), ["p", "p", "q", "q"])
        0.5
    """
    feats = pixel_features(images, size) if features is None else features(images).detach().double().cpu()
    b = feats.shape[0]
    if feats.dim() != 2:
        raise ValueError(f"features: expected B x D, got shape {tuple(feats.shape)}")
    if groups is None:
        groups = [0] * b
    if len(groups) != b:
        raise ValueError(f"groups: {len(groups)} labels for {b} samples")
    members: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    means = []
    for idx in members.values():
        if len(idx) < 2:
            continue
        f = feats[idx]
        i, j = torch.triu_indices(len(idx), len(idx), offset=1)
        # (a - b)^2 == (b - a)^2 exactly, so each pair's distance does not depend on the order
        d = (f[i] - f[j]).pow(2).mean(dim=1).sqrt()
        means.append(math.fsum(d.tolist()) / d.numel())
    return math.fsum(means) / len(means) if means else float("nan")


def _floats(x: Any, name: str) -> list[float]:
    t = torch.as_tensor(x.detach() if isinstance(x, torch.Tensor) else x, dtype=torch.float64).flatten().cpu()
    if t.numel() == 0:
        raise ValueError(f"{name}: empty")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: contains NaN or infinity")
    return t.tolist()


def _scalar(x: Any, name: str) -> float:
    values = _floats(x, name)
    if len(values) != 1:
        raise ValueError(f"{name}: expected one number, got {len(values)}")
    return values[0]


def _none_if_nan(x: float) -> float | None:
    return None if math.isnan(x) else x


class HackingMonitor:
    """Per-step reward statistics, diversity and ground truth, with hacking alarms; resumable.

    `update` once per RL step (in step order; the window counts updates), log the returned row
    with `MetricsLog.log`, save `state_dict()` in the checkpoint, `load_state_dict` on resume,
    and put `summary()` in the run's results. See the module docstring for the alarms.

    Example:
        >>> mon = HackingMonitor(MonitorConfig(window=2, min_steps=0, patience=1, early_stop=True))
        >>> [mon.update(s, torch.tensor(r))["alarms"] for s, r in enumerate([[0., 1.], [0., 1.], [1., 1.], [1., 1.]])]
        [[], [], [], ['reward_variance_collapse']]
        >>> mon.should_stop, mon.summary()["alarms"]
        (True, {'reward_variance_collapse': 3})
    """

    def __init__(self, config: MonitorConfig | None = None, *, features: Features | None = None) -> None:
        self.config = config or MonitorConfig()
        self.features = features
        self._window: deque[list[float]] = deque(maxlen=self.config.window)
        self._n = 0  # updates so far
        self._last_step: int | None = None
        self._first: dict[str, Any] = {}  # step-0 (first-row) values: reward_mean, reward_std, diversity
        self._eval_base: dict[str, float] | None = None  # first evaluation: reward level and spread, gt
        self._std_base: float | None = None  # reward_std_window at the first full window
        self._streak = {name: 0 for name in ALARMS}
        self._fired: dict[str, int] = {}  # alarm -> step it first fired
        self._last: dict[str, Any] = {}  # latest values, for summary()

    # -- per step -----------------------------------------------------------------------------

    def update(
        self,
        step: int,
        rewards: torch.Tensor | Sequence[float],
        images: torch.Tensor | None = None,
        groups: Sequence[Hashable] | None = None,
        grad_norm: float | torch.Tensor | None = None,
        gt_pass_rate: float | None = None,
        extra: Mapping[str, Any] | None = None,
        measured_diversity: float | None = None,
    ) -> dict[str, Any]:
        """Take one step's rewards (B), optionally its samples (B x 3 x H x W or B x T x 3 x H x W in
        [0, 1]) with their prompt groups, the gradient norm, and on evaluation steps the
        ground-truth pass rate (a fraction); return the row to log. `extra` keys are appended
        to the row (they must not shadow the monitor's). `measured_diversity` is a diversity
        measured elsewhere, in place of `images` (`replay` of a logged run)."""
        cfg = self.config
        step = int(step)
        if self._last_step is not None and step <= self._last_step:
            raise ValueError(f"step {step} is not after the last monitored step {self._last_step}")
        # every input is checked before any state changes: a rejected call leaves the monitor as it was
        r = _floats(rewards, "rewards")
        if groups is not None and len(groups) != len(r):
            raise ValueError(f"groups: {len(groups)} labels for {len(r)} rewards")
        if images is not None and not isinstance(images, torch.Tensor):
            raise TypeError(f"images: expected a tensor, got {type(images).__name__}")
        if images is not None and images.shape[0] != len(r):
            raise ValueError(f"images: {images.shape[0]} samples for {len(r)} rewards")
        gn = None if grad_norm is None else _scalar(grad_norm, "grad_norm")
        gt = None if gt_pass_rate is None else _scalar(gt_pass_rate, "gt_pass_rate")
        if gt is not None and not 0.0 <= gt <= 1.0:
            raise ValueError(f"gt_pass_rate: a fraction in [0, 1], got {gt}")
        clash = sorted(set(extra or ()) & ROW_KEYS)
        if clash:
            raise ValueError(f"extra: keys {clash} are the monitor's own")
        if images is not None and measured_diversity is not None:
            raise ValueError("give images or measured_diversity, not both")
        div = math.nan if measured_diversity is None else _scalar(measured_diversity, "measured_diversity")
        if images is not None:
            div = diversity(images, groups, size=cfg.diversity_size, features=self.features)

        self._window.append(r)
        self._n += 1
        self._last_step = step
        pooled = np.concatenate([np.asarray(w, dtype=np.float64) for w in self._window])
        row: dict[str, Any] = {
            "step": step,
            "reward_mean": float(np.mean(r)),
            "reward_std": float(np.std(r)),  # population std: defined for a batch of one, as np.std
            "reward_std_window": float(np.std(pooled)),
        }
        if groups is not None:  # the spread GRPO normalises by: within each prompt's group
            by_group: dict[Hashable, list[float]] = {}
            for g, v in zip(groups, r):
                by_group.setdefault(g, []).append(v)
            stds = [float(np.std(v)) for v in by_group.values() if len(v) > 1]
            row["reward_std_group"] = math.fsum(stds) / len(stds) if stds else None
        row["diversity"] = _none_if_nan(div)
        row["grad_norm"] = gn
        if gt is not None:
            row["gt_pass_rate"] = gt

        if not self._first:
            self._first = {"step": step, "reward_mean": row["reward_mean"], "reward_std": row["reward_std"]}
        if row["diversity"] is not None and self._first.get("diversity") is None:
            self._first["diversity"] = row["diversity"]  # diversity_before: the first one measured
        if self._std_base is None and self._n == cfg.window:
            self._std_base = row["reward_std_window"]
        self._last.update(reward_mean=row["reward_mean"], reward_std_window=row["reward_std_window"])
        if row["diversity"] is not None:
            self._last["diversity"] = row["diversity"]
        if "gt_pass_rate" in row:
            self._last["gt_pass_rate"] = row["gt_pass_rate"]

        row["alarms"] = self._check(row, float(np.mean(pooled)))
        if extra:
            row.update(extra)
        return row

    def _check(self, row: dict[str, Any], reward_level: float) -> list[str]:
        """Advance each alarm's streak of consecutive true conditions; return those raised now."""
        cfg = self.config
        # variance collapse: judged only once a full window gives its baseline; a constant reward
        # from the start (baseline 0) has no spread to lose
        if self._std_base:
            low = row["reward_std_window"] < cfg.std_collapse * self._std_base
            self._streak[VARIANCE_COLLAPSE] = self._streak[VARIANCE_COLLAPSE] + 1 if low else 0
        # diversity collapse: steps that did not measure diversity leave the streak as it is
        base = self._first.get("diversity")
        if row["diversity"] is not None and base:
            low = row["diversity"] < cfg.diversity_collapse * base
            self._streak[DIVERSITY_COLLAPSE] = self._streak[DIVERSITY_COLLAPSE] + 1 if low else 0
        # reward up, ground truth down: evaluation rows only, against the first evaluation. The
        # reward level is the window mean (many batches, so the comparison is not one batch's luck)
        eval_alarms = set()
        if "gt_pass_rate" in row:
            if self._eval_base is None:
                self._eval_base = {"reward_level": reward_level, "reward_scale": row["reward_std_window"],
                                   "gt": row["gt_pass_rate"]}
            else:
                base_eval = self._eval_base
                up = reward_level - base_eval["reward_level"] >= cfg.reward_rise * base_eval["reward_scale"]
                up = up and reward_level > base_eval["reward_level"]
                # the tolerance keeps a drop of exactly gt_drop a drop despite float rounding (0.5 - 0.44)
                down = base_eval["gt"] - row["gt_pass_rate"] >= cfg.gt_drop - 1e-9
                self._streak[REWARD_UP_GT_DOWN] = self._streak[REWARD_UP_GT_DOWN] + 1 if (up and down) else 0
                self._streak[GT_DOWN] = self._streak[GT_DOWN] + 1 if down else 0
                eval_alarms = {name for name in EVAL_ALARMS if self._streak[name] >= cfg.gt_patience}
        if self._n <= cfg.min_steps:
            return []
        raised = [name for name in ALARMS if (name in eval_alarms if name in EVAL_ALARMS
                                               else self._streak[name] >= cfg.patience)]
        for name in raised:
            self._fired.setdefault(name, row["step"])
        return raised

    # -- verdicts -----------------------------------------------------------------------------

    @property
    def hacking_flagged(self) -> bool:
        """True once any alarm has fired."""
        return bool(self._fired)

    @property
    def should_stop(self) -> bool:
        """True when early stopping is on and an alarm has fired."""
        return self.config.early_stop and self.hacking_flagged

    def summary(self) -> dict[str, Any]:
        """The run's verdict, for results.json: `reward_std_window_last`, `diversity_before` (first
        measured, step 0 in a normal run), `diversity_after` (last measured), `gt_pass_rate_before`
        / `_after` (first and last evaluation), `hacking_flagged`, `alarms` (name -> first step)."""
        return {
            "steps": self._n,
            "reward_mean_before": self._first.get("reward_mean"),
            "reward_mean_after": self._last.get("reward_mean"),
            "reward_std_window_last": self._last.get("reward_std_window"),
            "diversity_before": self._first.get("diversity"),
            "diversity_after": self._last.get("diversity"),
            "gt_pass_rate_before": None if self._eval_base is None else self._eval_base["gt"],
            "gt_pass_rate_after": self._last.get("gt_pass_rate"),
            "hacking_flagged": self.hacking_flagged,
            "alarms": {name: self._fired[name] for name in ALARMS if name in self._fired},
        }

    # -- resume -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything later rows depend on, as plain Python values (JSON- and torch.save-able)."""
        return {
            "config": asdict(self.config),
            "window": [list(w) for w in self._window],
            "n": self._n,
            "last_step": self._last_step,
            "first": dict(self._first),
            "eval_base": None if self._eval_base is None else dict(self._eval_base),
            "std_base": self._std_base,
            "streak": dict(self._streak),
            "fired": dict(self._fired),
            "last": dict(self._last),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict()`; the window length must match this monitor's config (the saved
        rewards would not fill a different window the same way). Other thresholds may change."""
        saved_window = state["config"]["window"]
        if saved_window != self.config.window:
            raise ValueError(f"state has window {saved_window}, this monitor {self.config.window}")
        self._window = deque((list(w) for w in state["window"]), maxlen=self.config.window)
        self._n = int(state["n"])
        self._last_step = state["last_step"]
        self._first = dict(state["first"])
        self._eval_base = None if state["eval_base"] is None else dict(state["eval_base"])
        self._std_base = state["std_base"]
        self._streak = {name: int(state["streak"].get(name, 0)) for name in ALARMS}
        self._fired = dict(state["fired"])
        self._last = dict(state["last"])


def replay(rows: Iterable[Mapping[str, Any]], config: MonitorConfig | None = None) -> dict[str, Any]:
    """`summary()` of a monitor fed a logged run's rows (metrics.jsonl) again, e.g. with other thresholds.

    Each step's rewards are stood in for by two values, mean -+ std of its batch: the same batch
    mean and (population) spread, so the window's mean and pooled spread, and with them every
    alarm, come out as they did, for runs with one batch size throughout (ReFL, GRPO); the logged
    diversity is taken as measured.

    Example:
        >>> rows = [{"step": s, "reward_mean": 0.5 + s / 1000, "reward_std": 0.02, "diversity": 0.2,
        ...          **({"gt_pass_rate": 0.4 - s / 500} if s % 25 == 0 else {})} for s in range(101)]
        >>> replay(rows)["alarms"], replay(rows, MonitorConfig(reward_rise=5.0))["alarms"]
        ({'reward_up_gt_down': 75, 'gt_down': 75}, {'gt_down': 75})
    """
    monitor = HackingMonitor(config)
    for row in rows:
        m, s = row["reward_mean"], row["reward_std"]
        monitor.update(row["step"], [m - s, m + s], gt_pass_rate=row.get("gt_pass_rate"),
                       measured_diversity=row.get("diversity"))
    return monitor.summary()


_PANELS = (
    ("reward", ("reward_mean",)),
    ("reward spread", ("reward_std", "reward_std_window")),
    ("diversity", ("diversity",)),
    ("ground truth", ("gt_pass_rate",)),
    ("grad norm", ("grad_norm",)),
)


def plot_monitor(rows: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """A PNG of the monitor's curves (one panel per quantity that was logged) with a dashed line
    at the step each alarm first fired. `rows` are monitor rows, e.g. `MetricsLog.rows` or the
    parsed lines of metrics.jsonl (None/NaN values are skipped).

    Example:
        >>> import tempfile, os
        >>> rows = [{"step": s, "reward_mean": s / 10, "alarms": []} for s in range(5)]
        >>> os.path.getsize(plot_monitor(rows, os.path.join(tempfile.mkdtemp(), "m.png"))) > 0
        True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(rows)
    if not rows:
        raise ValueError("plot_monitor: no rows")

    def points(key: str) -> list[tuple[int, float]]:
        return [(r["step"], r[key]) for r in rows
                if isinstance(r.get(key), (int, float)) and not math.isnan(r[key])]

    panels = [(title, keys) for title, keys in _PANELS if any(points(k) for k in keys)]
    if not panels:
        raise ValueError("plot_monitor: the rows hold none of the monitor's curves")
    first_fired: dict[str, int] = {}
    for r in rows:
        for name in r.get("alarms") or ():
            first_fired.setdefault(name, r["step"])
    colours = dict(zip(ALARMS, ("tab:red", "tab:purple", "tab:orange")))
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.2 * nrows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(panels):
            ax.set_visible(False)
            continue
        title, keys = panels[k]
        for key in keys:
            pts = points(key)
            if pts:
                # evaluation rows are sparse: mark them; dense per-step curves get a plain line
                ax.plot(*zip(*pts), marker="o" if key == "gt_pass_rate" or len(pts) < 40 else None,
                        markersize=3, label=key)
        for name, step in first_fired.items():
            # the alarm legend once (first panel), the lines on every panel
            ax.axvline(step, color=colours.get(name, "black"), linestyle="--", linewidth=1,
                       label=f"{name} (step {step})" if k == 0 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(keys) > 1 or (k == 0 and first_fired):
            ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
