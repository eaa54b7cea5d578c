"""Recipe: the RL study — does a better judge give a larger ground-truth gain, and is a weak one hacked?

    rewarddance study rl --out runs/study-rl                  # full (resumable; judges cached)
    rewarddance study rl --quick --out runs/study-rl-quick    # <= 15 minutes on 2 CPU cores
    rewarddance study rl --rm generative=runs/j1/final --rm regressive-bt=runs/j2/final --out ...

Every arm starts from the same committed ShapeWorld generator, with the same prompts, steps and
held-out evaluation (the checker's pass rate on fixed compositional prompts x seeds):
- `refl-<judge>`: `rewarddance rl refl` against each judge (the monitor on);
- `grpo-<judge>`: `rewarddance rl grpo` against the judges in `grpo_judges` (the best and, in the
  full study, the weak one: is GRPO hacked where ReFL is?) and, in the full study, against the
  checker itself (`grpo-checker`, the rule reward: what the algorithm does with a correct reward);
- `best-of-n` and `search`: `rewarddance rl search` with the best judge (Best-of-N at the search's
  judge calls is measured in the same run; its files are copied into each arm's folder).
The judges, unless given with `--rm NAME=DIR`, are trained by the study through `rewarddance
train` on ShapeWorld preference data (`rewarddance data world`) and measured with `rewarddance
eval`; they are cached in the user's cache (`$REWARDDANCE_CACHE/study-rl/`, keyed by their
settings), not in the output directory. Since only the tiny backbone has a committed pretrained
start, judge quality is varied by training budget: `generative` (the full budget), `generative-weak`
(a tenth of it) and the `regressive-bt` baseline (the full budget).

Every step runs as its own command (the same ones a user runs), so each is resumable on its own:
a re-run skips finished judges and arms and resumes a half-finished ReFL run from its checkpoint. A
finished arm's row (OUT/<arm>/row.json) carries a key of everything it depends on (its judge's settings
or weights, the arm's settings, the generator's weights): a row under another key is run again, and
rows copied into a fresh OUT on another machine are reused without retraining their judges, so a study
longer than one sitting can be carried over in its rows.
Writes OUT/results.json (`{"arms": [...]}`, the contract), OUT/results.md, OUT/curves.png, and
each arm's own files in OUT/<arm>/.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..generators import generator_path
from ..models.checkpoint import weights_file_digest
from ..models.presets import cache_root, preset_path
from ..train.engine import MetricsLog
from .steps import EVAL_DTYPE, cli_command, eval_step, key_of, read_keyed, run_step, start_folder, write_json
from .train_rm import TrainConfig


@dataclass
class StudySettings:
    """What differs between the quick and the full study (everything else is the recipes' defaults)."""

    data_n: int = 4000  # ShapeWorld preference pairs (train) for the judges
    data_n_test: int = 800
    judge_steps: int = 1000
    judge_overrides: list[str] = field(default_factory=lambda: ["objective=generative-pairwise"])
    weak_fraction: float = 0.1  # the weak judge's share of judge_steps
    refl_steps: int = 300
    # the full study's budget is 180 minutes on 2 cores, so its arms are capped by wall clock: about 20 min of
    # judges, 3 ReFL arms x 25, 3 GRPO arms x 12 (GRPO with the checker itself gained nothing in 10-15 min here:
    # docs/rl.md), the search, and each arm's final evaluation: 2 h 54 min in all, measured in sessions 12-13
    refl_overrides: list[str] = field(default_factory=lambda: ["max_minutes=25"])
    eval_prompts_per_category: int = 16
    eval_seeds: int = 4
    eval_steps: int = 25
    grpo_steps: int = 100
    grpo_overrides: list[str] = field(default_factory=lambda: ["max_minutes=12", "lr=2e-3"])
    grpo_judges: list[str] = field(default_factory=lambda: ["generative", "generative-weak", "checker"])
    search_n: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    search_paths: list[int] = field(default_factory=lambda: [4, 8])
    generator: str = "shapeworld-flow"  # every arm's starting generator
    num_steps: int = 20  # sampling steps, every arm


FULL = StudySettings()
# The quick study, 2 cores, empty cache (2026-11-22): 17.2 min for judges (4.5) + 3 ReFL arms of 25 steps (~3.0 each, 4
# evaluations) + search (1.7). Now: 20 ReFL steps with 2 evaluations and Best-of-2 references, and one
# GRPO arm (8 steps of 2 prompts x 4 samples). lr=1e-3: at the recipe's 1e-4 a fresh LoRA barely moves in
# 30 steps (held-out samples unchanged to 3 decimals in that run).
QUICK = StudySettings(data_n=1000, data_n_test=200, judge_steps=120, refl_steps=20,
                      refl_overrides=["n_prompts=32", "lr=1e-3", "reference_candidates=2"],
                      eval_prompts_per_category=8, eval_seeds=2, eval_steps=20, search_n=[1, 2, 4], search_paths=[2],
                      grpo_steps=8, grpo_judges=["generative"],
                      grpo_overrides=["n_prompts=32", "prompts_per_step=2", "group_size=4", "lr=2e-3",
                                      "reference_candidates=2"])


def judge_specs(s: StudySettings) -> dict[str, list[str]]:
    """Judge name -> `rewarddance train` overrides."""
    weak = max(1, round(s.judge_steps * s.weak_fraction))
    return {
        "generative": [*s.judge_overrides, f"max_steps={s.judge_steps}"],
        "generative-weak": [*s.judge_overrides, f"max_steps={weak}"],
        "regressive-bt": ["objective=regressive-bt", f"max_steps={s.judge_steps}"],
    }


class Judges:
    """The study's judges by name: given (`--rm NAME=DIR`), or trained by the study through `rewarddance train`
    (cached in `$REWARDDANCE_CACHE/study-rl/`) and measured with `rewarddance eval`. A judge is made only when
    an unfinished arm needs it: a study resumed from its finished arms' rows (another machine, a fresh cache)
    trains nothing it does not use."""

    def __init__(self, s: StudySettings, rms: dict[str, str] | None, log: Path):
        self.s, self.rms, self.log = s, rms, log
        self.names = list(rms) if rms else list(judge_specs(s))
        self._made: dict[str, tuple[Path, dict | None]] = {}
        self._keys: dict[str, list] = {}

    def key(self, name: str) -> list:
        """What an arm's result depends on through its judge: a given judge's weights and checkpoint config (not
        its path: the same judge elsewhere is the same judge), a trained one's settings and starting weights; the
        rule reward ("checker") is itself."""
        if name == "checker":
            return ["checker"]
        if name not in self._keys:  # hashing weights takes a while: once per judge
            if self.rms:
                path = Path(self.rms[name])
                self._keys[name] = [weights_file_digest(path), json.loads((path / "rewarddance.json").read_text())]
            else:  # the training settings and the weights training starts from (a preset re-pretrained in place)
                overrides = judge_specs(self.s)[name]
                start = next((o.split("=", 1)[1] for o in reversed(overrides) if o.startswith("model=")),
                             TrainConfig.model)
                start_dir = Path(start) if Path(start).is_dir() else preset_path(start)
                self._keys[name] = [overrides, self.s.data_n, self.s.data_n_test, weights_file_digest(start_dir)]
        return self._keys[name]

    def get(self, name: str) -> tuple[Path, dict | None]:
        """(the judge's directory, its test accuracy or None for a given judge), made on first use."""
        if name not in self._made:
            self._made[name] = (Path(self.rms[name]), None) if self.rms else self._train(name)
        return self._made[name]

    def folder(self, name: str) -> Path:
        """Where the study trains judge `name`: named by everything the judge and its test accuracy depend on
        (the key its arms use), so a changed start preset or test set never reuses an old judge."""
        return cache_root() / "study-rl" / f"judge-{name}-{key_of(self.key(name))}"

    def measured(self, name: str) -> dict | None:
        """The EVAL_DTYPE test accuracy of a judge the study trained, when its cache holds one (measures nothing)."""
        if self.rms or name not in self.names:
            return None
        cached = self.folder(name) / f"study-eval-{EVAL_DTYPE}.json"
        return _accuracies(json.loads(cached.read_text())) if cached.exists() else None

    def _train(self, name: str) -> tuple[Path, dict]:
        root = cache_root() / "study-rl"
        data = root / f"world-{self.s.data_n}-{self.s.data_n_test}"
        if not (data / "test.jsonl").exists():
            run_step([*cli_command(), "data", "world", "--out", str(data), "--n", str(self.s.data_n),
                      "--n-test", str(self.s.data_n_test)], self.log)
        out = self.folder(name)
        if not (out / "final" / "rewarddance.json").exists():
            run_step([*cli_command(), "train", f"data={data / 'train.jsonl'}", f"output_dir={out}", "progress=false",
                      "eval_steps=100000", *judge_specs(self.s)[name]], self.log)
        return out / "final", evaluate_judge(out / "final", data / "test.jsonl", self.log)


def evaluate_judge(judge: Path, test: Path, log: Path) -> dict:
    """Accuracy of a judge on the clean-labelled ShapeWorld test pairs (`rewarddance eval` in EVAL_DTYPE), cached
    beside it."""
    return _accuracies(eval_step(judge, test, judge.parent / f"study-eval-{EVAL_DTYPE}.json", log))


def _accuracies(result: dict) -> dict:
    splits = result.get("splits", {})
    return {"accuracy": result["overall"].get("accuracy"),
            "accuracy_id": splits.get("id", {}).get("accuracy"), "accuracy_ood": splits.get("ood", {}).get("accuracy")}


def generation_settings(s: StudySettings) -> dict[str, Any]:
    """What every arm's samples and held-out evaluation depend on: the generator by its weights (a generator
    retrained in place starts every arm elsewhere; the same one under another path does not)."""
    return {"generator_weights": weights_file_digest(generator_path(s.generator), recursive=True),
            "num_steps": s.num_steps, "eval_prompts_per_category": s.eval_prompts_per_category,
            "eval_seeds": s.eval_seeds, "eval_steps": s.eval_steps}


def training_arm(method: str, name: str, judge_name: str, judges: Judges, s: StudySettings, out: Path,
                 log: Path, generation: dict[str, Any], run: bool = True) -> dict | None:
    """A ReFL or GRPO arm (`rewarddance rl refl|grpo`, resumable) against a judge or, for GRPO, the checker
    ("checker"); its results.json row, kept in OUT/<name>/row.json under the arm's key (None when it is not
    finished and not to be `run`)."""
    folder = out / name
    steps, overrides = (s.refl_steps, s.refl_overrides) if method == "refl" else (s.grpo_steps, s.grpo_overrides)
    key = key_of([method, judges.key(judge_name), steps, overrides, generation])
    if (row := read_keyed(folder / "row.json", key)) is not None or not run:
        return row
    started = start_folder(folder, key)
    judge, judge_eval = ("checker", None) if judge_name == "checker" else judges.get(judge_name)
    if not (folder / "report.json").exists():
        if method == "refl":
            cmd = ["rl", "refl", f"rm={judge}", f"num_steps={s.num_steps}"]
        else:
            reward = "reward.checker=shapeworld" if judge_name == "checker" else f"reward.rm={judge}"
            cmd = ["rl", "grpo", reward, f"eval_num_steps={s.num_steps}"]
        run_step([*cli_command(), *cmd, f"output_dir={folder}", f"max_steps={steps}", f"generator={s.generator}",
                  f"eval_steps={s.eval_steps}", f"eval_prompts_per_category={s.eval_prompts_per_category}",
                  f"eval_seeds={s.eval_seeds}", "progress=false", *overrides], log)
    row = _arm_row(name, str(judge), method, json.loads((folder / "report.json").read_text()))
    row |= {"judge": judge_name, "judge_eval": judge_eval, "key": key}
    write_json(folder / "row.json", row)
    started.unlink()
    return row


def _arm_row(name: str, judge: str, method: str, r: dict) -> dict:
    """The contract's row of a training arm (ReFL or GRPO) from its report.json."""
    return {"name": name, "rm": judge, "method": method, "gt_pass_rate_before": r["gt_pass_rate_before"],
            "gt_pass_rate_after": r["gt_pass_rate_after"], "reward_std_window_last": r["reward_std_window_last"],
            "diversity_before": r["diversity_before"], "diversity_after": r["diversity_after"],
            "hacking_flagged": r["hacking_flagged"], "alarms": r.get("alarms", {}), "steps": r["steps"],
            "train_minutes": r["train_minutes"], "reward_mean_before": r.get("reward_mean_before"),
            "reward_mean_after": r.get("reward_mean_after")}


def search_arms(judge_name: str, judges: Judges, s: StudySettings, out: Path, log: Path,
                generation: dict[str, Any], run: bool = True) -> list[dict]:
    """Best-of-N and search over paths with one judge (one `rewarddance rl search` run in OUT/search, its files
    copied into each arm's folder); their rows, kept in OUT/search/row.json under the run's key (none when
    the run is not finished and not to be `run`)."""
    arm = out / "search"
    key = key_of(["search", judges.key(judge_name), s.search_n, s.search_paths, generation])
    if (done := read_keyed(arm / "row.json", key)) is None and not run:
        return []
    if done is None:
        started = start_folder(arm, key)
        judge, judge_eval = judges.get(judge_name)
        if not (arm / "results.json").exists():
            run_step([*cli_command(), "rl", "search", f"rm={judge}", f"output_dir={arm}", f"n={s.search_n}",
                      f"generator={s.generator}", f"num_steps={s.num_steps}", f"paths={s.search_paths}",
                      f"eval_prompts_per_category={s.eval_prompts_per_category}", "progress=false"], log)
        done = {"key": key, "rows": search_rows(json.loads((arm / "results.json").read_text()), str(judge),
                                                judge_name, judge_eval)}
        write_json(arm / "row.json", done)
        started.unlink()
    for row in done["rows"]:  # one run measures them all: each arm's folder holds its files (also when carried)
        (out / row["name"]).mkdir(exist_ok=True)
        for f in arm.iterdir():
            if f.is_file() and f.name not in ("started", "row.json"):
                shutil.copy2(f, out / row["name"] / f.name)
    return done["rows"]


def search_rows(r: dict, judge: str, judge_name: str, judge_eval: dict | None) -> list[dict]:
    """The contract's rows of Best-of-N (its largest N) and of each search configuration from the search
    run's results.json."""
    before = r["random_sample_gt_pass_rate"]
    best_n = max(r["best_of_n"], key=lambda p: p["n"])
    common = {"rm": judge, "judge": judge_name, "judge_eval": judge_eval, "gt_pass_rate_before": before,
              "reward_std_window_last": None, "diversity_before": None, "diversity_after": None,
              "hacking_flagged": False}
    rows = [{"name": "best-of-n", "method": "best-of-n", **common, "gt_pass_rate_after": best_n["gt_pass_rate"],
             "judge_calls": best_n["judge_calls"]}]
    for c in r["search_vs_best_of_n"]:
        rows.append({"name": f"search-paths{c['paths']}", "method": "search", **common,
                     "gt_pass_rate_after": c["search_gt_pass_rate"], "judge_calls": c["judge_calls"],
                     "best_of_n_same_calls": c["best_of_n_gt_pass_rate"]})
    return rows


def study_rl(out: str | Path, *, quick: bool = False, rms: dict[str, str] | None = None,
             settings: StudySettings | None = None, only: set[str] | None = None) -> dict:
    """Run (or resume) the study; returns results.json's content. `settings` replaces the quick/full ones.
    Finished arms are read from their rows (OUT/<arm>/row.json, OUT/search/row.json) when their key (judge,
    settings, generator weights) matches, so a study also resumes from rows copied from another machine.
    With `only` (arm names; "search" is Best-of-N and search together), the other arms are not run: their
    finished rows stay in the table, unfinished ones are left out.

        >>> study_rl("runs/study-rl-quick", quick=True)["arms"][0]["gt_pass_rate_after"]  # doctest: +SKIP
        0.40625
    """
    t0 = time.perf_counter()
    s = settings or (QUICK if quick else FULL)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "study.log"
    judges = Judges(s, rms, log)
    generation = generation_settings(s)
    plan = [("refl", f"refl-{name}", name) for name in judges.names]
    plan += [("grpo", f"grpo-{name}", name) for name in s.grpo_judges if name == "checker" or name in judges.names]
    if only is not None and (unknown := only - {name for _, name, _ in plan} - {"search"}):
        raise ValueError(f"--arms: no arm named {', '.join(sorted(unknown))} in this study (arms: "
                         f"{', '.join(name for _, name, _ in plan)}, search)")
    arms = [training_arm(method, name, judge, judges, s, out, log, generation, run=only is None or name in only)
            for method, name, judge in plan]
    arms = [row for row in arms if row is not None]
    best = "generative" if "generative" in judges.names else judges.names[0]
    arms += search_arms(best, judges, s, out, log, generation, run=only is None or "search" in only)
    for row in arms:  # rows written before the judges were measured in float32 carry a bf16 accuracy
        row["judge_eval"] = judges.measured(row["judge"]) or row["judge_eval"]
    result = {"arms": arms, "quick": quick, "settings": asdict(s), "generation": generation,
              "minutes_this_run": round((time.perf_counter() - t0) / 60, 2),
              "command": "rewarddance study rl" + (" --quick" if quick else "") + f" --out {out}"}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(markdown(result) + "\n")
    plot_curves(out, [a["name"] for a in arms if a["method"] in ("refl", "grpo")], out / "curves.png")
    print(markdown(result), file=sys.stderr)
    return result


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _budget(a: dict) -> str:
    """What an arm spent: steps and training minutes (ReFL, GRPO) or judge calls per prompt (Best-of-N, search)."""
    if "steps" in a:
        return f"{a['steps']} steps ({a['train_minutes']} min)"
    return f"{a['judge_calls']} judge calls per prompt" if a.get("judge_calls") is not None else ""


def _alarms(a: dict) -> str:
    """The monitor's alarms with the step each first fired (hacking_flagged is "any alarm fired")."""
    return ", ".join(f"{k} @ {v}" for k, v in (a.get("alarms") or {}).items()) or "none"


def markdown(result: dict) -> str:
    lines = ["# RL study: ground-truth gain per judge and method", "", f"`{result['command']}`", "",
             "| arm | method | judge accuracy (ID / OOD) | budget | gt pass before | gt pass after | gain "
             "| Best-of-N at equal judge calls | reward mean before -> after | reward_std_window (last) "
             "| diversity before -> after | alarms |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in result["arms"]:
        ev = a.get("judge_eval") or {}
        acc = f"{_pct(ev.get('accuracy_id'))} / {_pct(ev.get('accuracy_ood'))}" if ev else ""
        gain = (None if a["gt_pass_rate_after"] is None or a["gt_pass_rate_before"] is None
                else a["gt_pass_rate_after"] - a["gt_pass_rate_before"])
        div = "" if a["diversity_before"] is None else f"{_num(a['diversity_before'])} -> {_num(a['diversity_after'])}"
        reward = ("" if a.get("reward_mean_before") is None
                  else f"{_num(a['reward_mean_before'])} -> {_num(a['reward_mean_after'])}")
        same_calls = _pct(a["best_of_n_same_calls"]) if "best_of_n_same_calls" in a else ""
        lines.append(f"| {a['name']} | {a['method']} | {acc} | {_budget(a)} | {_pct(a['gt_pass_rate_before'])} | "
                     f"{_pct(a['gt_pass_rate_after'])} | {'n/a' if gain is None else f'{gain:+.1%}'} | {same_calls} | "
                     f"{reward} | {_num(a['reward_std_window_last'])} | {div} | {_alarms(a)} |")
    return "\n".join(lines)


def plot_curves(out: Path, arms: list[str], path: Path) -> Path | None:
    """The training arms (ReFL, GRPO) side by side: reward mean, reward_std_window, diversity, gt_pass_rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not arms:
        return None
    keys = ("reward_mean", "reward_std_window", "diversity", "gt_pass_rate")
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2))
    for name in arms:
        rows = MetricsLog.read(out / name)
        flagged = [r["step"] for r in rows if r.get("alarms")]
        for ax, key in zip(axes, keys):
            pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                line, = ax.plot(*zip(*pts), label=name, marker="." if key == "gt_pass_rate" else None)
                if flagged and key == "reward_mean":
                    ax.axvline(flagged[0], color=line.get_color(), ls=":", lw=1)
    for ax, key in zip(axes, keys):
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
