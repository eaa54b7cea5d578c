"""Each public benchmark's headline metric, computed the way its authors compute it.

`headline(benchmark, p_a)` takes a Benchmark from `rewarddance.data.benchmarks.read_benchmark`
and the model's P(A better than B) per Record key (rows that failed to score are simply absent)
and returns {"name", "metric", "value", ...extra fields}. The authors' code each metric follows:

- imagereward  "pooled_pair_accuracy": THUDM/ImageReward test.py `acc`: every pair i < j of every
  prompt, pooled; human ties skipped; right only when the model's order is strictly right.
- hpdv2  "inversion_score": tgxs002/HPSv2 hpsv2/src/training/train.py `inversion_score`, averaged
  over prompts as hpsv2/evaluation.py `evaluate_rank` does: per prompt 1 - discordant / pairs.
- pickapic  "pickscore_accuracy": yuvalkirstain/PickScore trainer/scripts/eval_preference_predictor.py:
  tie when |prob_1 - prob_0| <= t, 1 for a match, 0.5 when either side is a tie; t from the grid
  0, 0.1, ..., 1 chosen on one split (validation_unique) and reported on the other.
- genai-bench and videogen-rewardbench  "accuracy_without_ties": KwaiVGI/VideoAlign calc_accuracy.py:
  C / (C + D) over pairs the humans did not tie, and accuracy with ties by tie calibration
  (Deutsch et al. 2023) alongside, via `rewarddance.evaluate.metrics`.

Example:
    >>> from rewarddance.data.benchmarks import read_benchmark
    >>> from rewarddance.evaluate.headline import headline
    >>> bench = read_benchmark("data/test.json", images="data/test_images")     # doctest: +SKIP
    >>> headline(bench, {r.key: 0.7 for r in bench.records})                    # doctest: +SKIP
    {'name': 'imagereward', 'metric': 'pooled_pair_accuracy', 'value': 0.52, 'n': 5730, ...}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..data.benchmarks import Benchmark
from ..data.records import Record
from .metrics import accuracy, tie_calibration

# PickScore's threshold grid (eval_preference_predictor.py main: thresholds = [0, 0.1, ..., 1]).
PICKSCORE_THRESHOLDS = tuple(i / 10 for i in range(11))


def _scored(benchmark: Benchmark, p_a: Mapping[str, float]) -> list[tuple[Record, float]]:
    """(record, p_a) for the Records that were scored; RecordErrors and unscored rows drop out."""
    return [(r, float(p_a[r.key])) for r in benchmark.records
            if isinstance(r, Record) and r.key in p_a and p_a[r.key] is not None and not math.isnan(float(p_a[r.key]))]


def headline(benchmark: Benchmark, p_a: Mapping[str, float], *, calibration_split: str | None = None) -> dict:
    """The benchmark's headline metric from P(A better than B) per Record key.

    Returns {"name": benchmark.name, "metric": benchmark.metric, "value": float, "n": pairs used,
    ...} with extra fields per benchmark (e.g. "threshold", "calibrated_on", "accuracy_with_ties").
    `calibration_split` (Pick-a-Pic only) names the split the tie threshold is chosen on; by default
    validation_unique, else the first split whose name starts with "val"; with one split only, the
    threshold is chosen and reported on it ("calibrated_on": "same split").

    Example:
        >>> headline(bench, {"005658-0040:0-1": 0.8, ...})   # doctest: +SKIP
        {'name': 'imagereward', 'metric': 'pooled_pair_accuracy', 'value': 1.0, 'n': 1, 'n_ties_skipped': 0}
    """
    scored = _scored(benchmark, p_a)
    out: dict[str, Any] = {"name": benchmark.name, "metric": benchmark.metric}
    name = benchmark.name
    if name == "imagereward":
        out.update(pooled_pair_accuracy(scored))
    elif name == "hpdv2":
        out.update(inversion_score(scored))
    elif name == "pickapic":
        out.update(pickscore_accuracy(scored, calibration_split=calibration_split))
    elif name in ("genai-bench", "videogen-rewardbench"):
        out.update(accuracy_without_ties(scored, dimensions=name == "videogen-rewardbench"))
    else:
        raise ValueError(f"no headline metric for benchmark {name!r}")
    return out


def pooled_pair_accuracy(scored: Sequence[tuple[Record, float]]) -> dict:
    """ImageReward's test accuracy: all pairs of all prompts in one count; a human tie is skipped and
    a model tie (p_a == 0.5) is wrong, as `acc` in ImageReward's test.py counts `>=` / `<=` as wrong."""
    labels = [r.label for r, _ in scored]
    value, n = accuracy([p for _, p in scored], labels)
    return {"value": value, "n": n, "n_ties_skipped": sum(lab == "tie" for lab in labels)}


def inversion_score(scored: Sequence[tuple[Record, float]]) -> dict:
    """HPSv2's inversion score, averaged over prompts (`group`): per prompt 1 - discordant / pairs.

    Discordant = the model orders the pair strictly against the human ranking. As in HPSv2, a pair
    the humans tie is never discordant. HPSv2 ranks by scores, where a model tie cannot occur
    (argsort breaks it); a P(A better) of exactly 0.5 on a ranked pair is counted as discordant
    here, so that a constant model cannot score 1. The denominator is the prompt's scored pairs
    (C(n, 2) when all were scored)."""
    per_group: dict[str, list[int]] = {}
    for r, p in scored:
        g = per_group.setdefault(str(r.raw.get("group", r.key)), [0, 0])
        g[0] += 1
        g[1] += (r.label == "a" and p <= 0.5) or (r.label == "b" and p >= 0.5)
    scores = [1.0 - disc / pairs for pairs, disc in per_group.values()]
    return {"value": sum(scores) / len(scores) if scores else float("nan"), "n": len(scored),
            "n_prompts": len(scores)}


def _pickscore_pred(p: float, threshold: float) -> str:
    prob_0, prob_1 = p, 1.0 - p  # their two-way softmax: prob_0 + prob_1 = 1
    return "tie" if abs(prob_1 - prob_0) <= threshold else "a" if prob_0 > prob_1 else "b"


def pickscore_score(p_a: Sequence[float], labels: Sequence[str], threshold: float) -> float:
    """Mean PickScore score at one threshold: 1 for an exact match, 0.5 when the prediction or the
    label is a tie (but not both), 0 otherwise. NaN for no pairs."""
    total = 0.0
    for p, label in zip(p_a, labels):
        pred = _pickscore_pred(p, threshold)
        total += 1.0 if pred == label else 0.5 if "tie" in (pred, label) else 0.0
    return total / len(labels) if len(labels) else float("nan")


def _calibration_split(splits: list[str], asked: str | None) -> str | None:
    if asked is not None:
        if asked not in splits:
            raise ValueError(f"calibration split {asked!r} is not in this benchmark (splits: {', '.join(splits)})")
        return asked
    if len(splits) < 2:
        return None
    if "validation_unique" in splits:  # the authors' choice (eval_preference_predictor.py main)
        return "validation_unique"
    return next((s for s in splits if s.lower().startswith("val")), None)


def pickscore_accuracy(scored: Sequence[tuple[Record, float]], *, calibration_split: str | None = None,
                       thresholds: Sequence[float] = PICKSCORE_THRESHOLDS) -> dict:
    """PickScore's protocol: t maximising the mean score on the calibration split (the first of equal
    maxima, as np.argmax), the score at t reported on the other split(s)."""
    by_split: dict[str, list[tuple[float, str]]] = {}
    for r, p in scored:
        by_split.setdefault(str(r.raw.get("split", "")), []).append((p, r.label))
    splits = sorted(by_split)
    cal = _calibration_split(splits, calibration_split)
    if cal is None:  # one split (or none named like validation): choose and report on the same pairs
        cal_pairs = rep_pairs = [x for s in splits for x in by_split[s]]
        calibrated_on, reported_on = "same split", splits
    else:
        cal_pairs = by_split[cal]
        reported_on = [s for s in splits if s != cal]
        rep_pairs = [x for s in reported_on for x in by_split[s]]
        calibrated_on = cal
        if not rep_pairs:
            rep_pairs, calibrated_on, reported_on = cal_pairs, "same split", [cal]
    cal_scores = [pickscore_score([p for p, _ in cal_pairs], [lab for _, lab in cal_pairs], t) for t in thresholds]
    best = max(range(len(thresholds)), key=lambda i: (cal_scores[i], -i)) if cal_pairs else 0
    t = thresholds[best]
    value = pickscore_score([p for p, _ in rep_pairs], [lab for _, lab in rep_pairs], t)
    return {"value": value, "n": len(rep_pairs), "threshold": t, "calibrated_on": calibrated_on,
            "calibration_value": cal_scores[best] if cal_pairs else float("nan"), "reported_on": reported_on,
            "n_ties": sum(lab == "tie" for _, lab in rep_pairs)}


def accuracy_without_ties(scored: Sequence[tuple[Record, float]], *, dimensions: bool = False) -> dict:
    """VideoAlign's pair of numbers: accuracy without ties (value; human ties dropped, a model tie is
    wrong) and accuracy with ties at the calibrated threshold (chosen on the same pairs, as
    VideoAlign's calc_accuracy_with_ties does). With `dimensions`, the same for each labelled
    dimension of VideoGen-RewardBench (VQ, MQ, TA, Overall) against the one P(A better)."""
    p = [x for _, x in scored]
    labels = [r.label for r, _ in scored]
    value, n = accuracy(p, labels)
    with_ties, threshold = tie_calibration(p, labels)
    out: dict[str, Any] = {"value": value, "n": n, "n_ties": len(labels) - n, "accuracy_with_ties": with_ties,
                           "tie_threshold": threshold, "n_with_ties": len(labels)}
    if dimensions:
        per: dict[str, dict] = {}
        names = sorted({d for r, _ in scored for d in r.raw.get("dimensions", {})})
        for d in names:
            pairs = [(x, r.raw["dimensions"][d]) for r, x in scored if d in r.raw.get("dimensions", {})]
            acc, n_d = accuracy([x for x, _ in pairs], [lab for _, lab in pairs])
            acc_t, t_d = tie_calibration([x for x, _ in pairs], [lab for _, lab in pairs])
            per[d] = {"accuracy_without_ties": acc, "n": n_d, "accuracy_with_ties": acc_t, "tie_threshold": t_d}
        out["dimensions"] = per
    return out
