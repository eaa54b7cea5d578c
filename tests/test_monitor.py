"""The reward-hacking monitor on synthetic traces: hacking is flagged, a healthy run is not; resume is exact."""

from __future__ import annotations

import doctest
import functools
import json
import math
from pathlib import Path

import pytest
import torch

import rewarddance.rl.monitor as monitor_module
from rewarddance.config import ConfigError, load_config
from rewarddance.rl import (
    ALARMS,
    HackingMonitor,
    MonitorConfig,
    diversity,
    plot_monitor,
    replay,
)

STEPS, PROMPTS, PER_PROMPT, EVAL_EVERY = 200, 4, 4, 20
GROUPS = [p for p in range(PROMPTS) for _ in range(PER_PROMPT)]
B = len(GROUPS)


def _images(step: int, collapse: float) -> torch.Tensor:
    """B random 32 px images blended by `collapse` (0..1) towards one shared image."""
    g = torch.Generator().manual_seed(1000 + step)
    own = torch.rand(B, 3, 32, 32, generator=g)
    target = torch.full((1, 3, 32, 32), 0.5)
    target[..., 8:24, 8:24] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    return (1 - collapse) * own + collapse * target


def hacking_trace():
    """Reward climbs and saturates (spread -> 0), samples converge to one image by step 120, and the
    ground truth falls from step 60 on (0.4 points per step)."""
    for t in range(STEPS):
        g = torch.Generator().manual_seed(t)
        progress = min(1.0, t / 120)
        spread = max(0.005, 0.2 * (1 - progress))
        rewards = (0.4 + 0.59 * progress + spread * torch.randn(B, generator=g)).clamp(0, 1)
        gt = 0.5 - 0.004 * max(0, t - 60) if t % EVAL_EVERY == 0 else None
        yield {"step": t, "rewards": rewards, "images": _images(t, progress), "groups": GROUPS,
               "grad_norm": 1.0 + t / 100, "gt_pass_rate": gt}


def healthy_trace(gt_of=lambda t: 0.5 + 0.001 * t):
    """Reward rises while the policy sharpens the way a healthy run does: the reward spread shrinks by a
    third and the samples drift a quarter of the way towards one image (diversity -25%); ground truth
    given by `gt_of`."""
    for t in range(STEPS):
        g = torch.Generator().manual_seed(t)
        rewards = 0.4 + 0.3 * t / STEPS + 0.15 * (1 - 0.35 * t / STEPS) * torch.randn(B, generator=g)
        gt = gt_of(t) if t % EVAL_EVERY == 0 else None
        yield {"step": t, "rewards": rewards, "images": _images(t, 0.25 * t / STEPS), "groups": GROUPS,
               "grad_norm": 1.0, "gt_pass_rate": gt}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These are hundreds of tiny tensor ops: threads only add contention on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run(trace, config: MonitorConfig | None = None):
    mon = HackingMonitor(config)
    rows = [mon.update(**kw) for kw in trace]
    return mon, rows


@functools.lru_cache(maxsize=1)
def hacked():
    """The default monitor over the hacking trace, computed once (tests only read it)."""
    return run(hacking_trace())


def first_step(rows, name):
    return next((r["step"] for r in rows if name in r["alarms"]), None)


def test_hacking_trace_raises_each_alarm_at_a_sensible_step():
    mon, rows = hacked()
    assert mon.hacking_flagged
    # samples are half-way to one image at step 60: patience 3 -> first raised at 61..63
    assert 60 < first_step(rows, "diversity_collapse") <= 63
    # gt 0.42 at step 80 (8 points down), 0.34 at 100: two consecutive evaluations -> step 100
    assert first_step(rows, "reward_up_gt_down") == 100 and first_step(rows, "gt_down") == 100
    # spread saturates by step 120; the window (50 steps) must mostly forget the climb first
    assert 120 < first_step(rows, "reward_variance_collapse") < 170
    assert mon.summary()["alarms"] == {name: first_step(rows, name) for name in ALARMS}
    # the gt alarm is only ever on evaluation rows
    assert all("gt_pass_rate" in r for r in rows if "reward_up_gt_down" in r["alarms"])
    s = mon.summary()
    assert s["diversity_after"] < 0.01 < s["diversity_before"]
    assert s["gt_pass_rate_before"] == 0.5 and s["gt_pass_rate_after"] == pytest.approx(0.5 - 0.004 * 120)
    assert s["reward_std_window_last"] < 0.01 and s["hacking_flagged"]


def test_healthy_trace_raises_nothing():
    mon, rows = run(healthy_trace())
    assert [r["alarms"] for r in rows] == [[]] * STEPS
    assert not mon.hacking_flagged and not mon.should_stop
    assert mon.summary()["alarms"] == {}


def test_noise_level_gt_wobbles_do_not_raise_the_gt_alarm():
    # +-3 points around a flat pass rate, while the reward rises: noise, not hacking
    wobble = lambda t: 0.5 + (0.03 if (t // EVAL_EVERY) % 2 else -0.03)
    _, rows = run(healthy_trace(wobble))
    assert first_step(rows, "reward_up_gt_down") is None
    # one 6-point dip that recovers at the next evaluation is not enough either (gt_patience = 2)
    dip = lambda t: 0.44 if t == 100 else 0.5
    _, rows = run(healthy_trace(dip))
    assert first_step(rows, "reward_up_gt_down") is None
    # but two evaluations in a row 6 points down are
    drop = lambda t: 0.44 if t >= 100 else 0.5
    _, rows = run(healthy_trace(drop))
    assert first_step(rows, "reward_up_gt_down") == 120


def test_gt_drop_without_a_reward_rise_is_gt_down_not_reward_up_gt_down():
    flat = [{"step": t, "rewards": 0.5 + 0.1 * torch.randn(B, generator=torch.Generator().manual_seed(t)),
             "gt_pass_rate": (0.5 if t < 100 else 0.3) if t % EVAL_EVERY == 0 else None} for t in range(STEPS)]
    _, rows = run(flat)
    assert first_step(rows, "reward_up_gt_down") is None
    assert first_step(rows, "gt_down") == 120  # 20 points down at 100 and 120: the run makes things worse


GOLDEN = Path(__file__).parent / "golden"


def test_the_full_studys_refl_run_that_lost_ten_points_is_flagged_on_replay():
    """The full RL study's ReFL arm against its best judge (docs/rl.md): held-out pass rate 40.6% -> 32.4% ->
    30.1% at steps 0, 175, 200 while the reward rose 0.43 sd, under `reward_rise`: the monitor of the run
    (without gt_down) raised nothing. Its logged rows, replayed, raise gt_down at step 200."""
    rows = [json.loads(t) for t in (GOLDEN / "monitor-trace-refl-generative-full-study.jsonl").read_text().splitlines()]
    assert replay(rows)["alarms"] == {"gt_down": 200}
    assert replay(rows, MonitorConfig(gt_drop=0.11))["alarms"] == {}  # a 10.5-point fall, no more


def test_replay_of_logged_rows_gives_the_live_monitors_verdict():
    """Each step's rewards stood in for by mean -+ std: the window's pooled spread and every alarm come out
    as the monitor fed the real rewards (and images) gave them."""
    mon, rows = hacked()
    again = replay(rows)
    live = mon.summary()
    assert again["alarms"] == live["alarms"] and len(live["alarms"]) == len(ALARMS)
    for key in ("reward_std_window_last", "reward_mean_after", "diversity_before", "diversity_after",
                "gt_pass_rate_after"):
        assert again[key] == pytest.approx(live[key], rel=1e-9, abs=1e-12)
    healthy_mon, healthy_rows = run(healthy_trace())
    healthy, healthy_again = healthy_mon.summary(), replay(healthy_rows)
    assert healthy_again.pop("alarms") == healthy.pop("alarms") == {}
    assert healthy_again == pytest.approx(healthy)


def test_reward_std_window_is_the_std_of_exactly_the_last_w_steps():
    mon = HackingMonitor(MonitorConfig(window=3))
    batches = [[1.0, 2.0], [3.0], [4.0, 5.0, 6.0], [7.0, 8.0]]
    rows = [mon.update(s, torch.tensor(b)) for s, b in enumerate(batches)]
    # last 3 steps at step 3: 3..8, mean 5.5, squared deviations 6.25+2.25+0.25+0.25+2.25+6.25 = 17.5
    assert rows[3]["reward_std_window"] == pytest.approx(math.sqrt(17.5 / 6), abs=1e-12)
    assert rows[0]["reward_std_window"] == pytest.approx(0.5)  # a partial window: what there is
    assert rows[3]["reward_mean"] == 7.5 and rows[3]["reward_std"] == 0.5
    assert rows[3]["diversity"] is None and rows[3]["grad_norm"] is None and "gt_pass_rate" not in rows[3]


def test_diversity_measure():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(1, 3, 32, 32, generator=g), torch.rand(1, 3, 32, 32, generator=g)
    assert diversity(torch.cat([a, a, a])) == 0.0
    assert diversity(torch.cat([a, b])) > 0.05
    white, black = torch.ones(1, 3, 32, 32), torch.zeros(1, 3, 32, 32)
    assert diversity(torch.cat([white, black])) == 1.0  # RMS pixel units: black vs white is 1
    # cross-group pairs are ignored: each prompt's samples are identical
    assert diversity(torch.cat([white, white, black, black]), ["p", "p", "q", "q"]) == 0.0
    # invariant (exactly) to the order of samples and of groups
    x = torch.rand(8, 3, 32, 32, generator=g)
    groups = [0, 0, 0, 1, 1, 2, 2, 2]
    perm = torch.randperm(8, generator=g)
    assert diversity(x, groups) == diversity(x[perm], [groups[i] for i in perm])
    assert diversity(x, groups) == diversity(x, [{0: "z", 1: "y", 2: "x"}[k] for k in groups])
    # nothing to compare -> NaN; the monitor logs it as None
    assert math.isnan(diversity(x[:3], ["a", "b", "c"]))
    # videos: frames pooled and concatenated; 64 px and 16 px inputs both work
    video = torch.rand(4, 5, 3, 16, 16, generator=g)
    assert diversity(video, [0, 0, 1, 1]) > 0
    assert diversity(torch.rand(2, 3, 64, 64, generator=g)) > 0
    # a user's own features
    assert diversity(torch.cat([a, b]), features=lambda im: torch.zeros(len(im), 4)) == 0.0
    with pytest.raises(ValueError, match="groups"):
        diversity(x, [0, 1])
    with pytest.raises(ValueError, match="images"):
        diversity(torch.rand(2, 1, 8, 8))


def test_state_dict_round_trip_mid_trace_gives_identical_rows():
    full_mon, full = hacked()
    trace = list(hacking_trace())
    first = HackingMonitor()
    head = [first.update(**kw) for kw in trace[:75]]  # mid-trace: after the first alarm, before the others
    state = json.loads(json.dumps(first.state_dict()))  # plain values: JSON-able as well as torch.save-able
    resumed = HackingMonitor()
    resumed.load_state_dict(state)
    tail = [resumed.update(**kw) for kw in trace[75:]]
    assert head + tail == full
    assert resumed.summary() == full_mon.summary()
    with pytest.raises(ValueError, match="window"):
        HackingMonitor(MonitorConfig(window=10)).load_state_dict(state)
    with pytest.raises(ValueError, match="not after"):
        resumed.update(STEPS - 1, torch.zeros(2))


def test_early_stop_only_when_enabled():
    off, rows = hacked()
    assert off.hacking_flagged and not off.should_stop
    on = HackingMonitor(MonitorConfig(early_stop=True))
    stop_at = None
    for kw in hacking_trace():
        row = on.update(**kw)
        if on.should_stop:
            stop_at = row["step"]
            break
    assert stop_at == first_step(rows, "diversity_collapse")


def test_no_alarm_before_min_steps():
    config = MonitorConfig(window=2, patience=1, min_steps=5)
    mon = HackingMonitor(config)
    batches = [[0.0, 1.0]] * 2 + [[1.0, 1.0]] * 6  # the spread is gone from the 4th update (step 3) on
    rows = [mon.update(s, torch.tensor(b)) for s, b in enumerate(batches)]
    assert first_step(rows, "reward_variance_collapse") == 5  # the 6th update: the first after min_steps


def test_rows_log_with_metrics_log_and_plot(tmp_path):
    from rewarddance.train.engine import MetricsLog

    mon = HackingMonitor()
    log = MetricsLog(tmp_path, tensorboard=False)
    for kw in hacking_trace():
        log.log(mon.update(**kw, extra={"loss": 0.1}))
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == STEPS and rows[0]["step"] == 0 and "gt_pass_rate" in rows[0]
    for r in rows:
        assert {"step", "reward_mean", "reward_std", "reward_std_window", "reward_std_group", "diversity",
                "grad_norm", "alarms", "loss"} <= set(r)
        assert ("gt_pass_rate" in r) == (r["step"] % EVAL_EVERY == 0)
    out = plot_monitor(rows, tmp_path / "plots" / "monitor.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no rows"):
        plot_monitor([], tmp_path / "empty.png")
    with pytest.raises(ValueError, match="monitor's own"):
        mon.update(STEPS, torch.zeros(2), extra={"reward_mean": 1.0})


def test_bad_inputs_and_config():
    mon = HackingMonitor()
    with pytest.raises(ValueError, match="NaN"):
        mon.update(0, torch.tensor([0.5, float("nan")]))
    with pytest.raises(ValueError, match="gt_pass_rate"):
        mon.update(0, torch.tensor([0.5]), gt_pass_rate=56.0)  # percent instead of a fraction
    with pytest.raises(ValueError, match="images"):
        mon.update(0, torch.tensor([0.5, 0.6]), images=torch.rand(3, 3, 8, 8))
    with pytest.raises(ConfigError, match="std_collapse"):
        MonitorConfig(std_collapse=1.5)
    assert load_config(MonitorConfig, overrides=["window=20", "early_stop=true"]) == MonitorConfig(window=20,
                                                                                                   early_stop=True)


def test_docstring_examples():
    assert doctest.testmod(monitor_module).failed == 0
