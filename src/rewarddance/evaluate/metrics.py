"""Reward-model metrics as pure functions of predicted probabilities and labels.

Pairwise: `p_a` = P(A better than B) per pair, `labels` in "a" | "b" | "tie" (human verdicts).
Pointwise: `p` = P(yes) per image, `labels` in "yes" | "no".

Example:
    >>> from rewarddance.evaluate.metrics import accuracy, tie_calibration
    >>> accuracy([0.9, 0.2, 0.5], ["a", "a", "b"])
    (0.3333333333333333, 3)
    >>> tie_calibration([0.875, 0.5625, 0.125], ["a", "tie", "b"])
    (1.0, 0.0625)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _arrays(p: Sequence[float], labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    p, labels = np.asarray(p, dtype=np.float64), np.asarray(labels, dtype=object)
    if p.shape != labels.shape:
        raise ValueError(f"{len(p)} probabilities but {len(labels)} labels")
    return p, labels


def verdicts(p_a: Sequence[float], threshold: float = 0.0) -> np.ndarray:
    """The model's verdict per pair: "a", "b", or "tie" when |p_a - 0.5| <= threshold
    (with threshold 0 only an exact 0.5 is a tie)."""
    p = np.asarray(p_a, dtype=np.float64)
    out = np.where(p > 0.5, "a", "b").astype(object)
    out[np.abs(p - 0.5) <= threshold] = "tie"
    return out


def accuracy(p_a: Sequence[float], labels: Sequence[str]) -> tuple[float, int]:
    """(accuracy, n) over the pairs a human did not call a tie; a model tie (p_a == 0.5) is wrong.
    NaN accuracy when no pair is left."""
    p, labels = _arrays(p_a, labels)
    keep = (labels == "a") | (labels == "b")
    n = int(keep.sum())
    return (float((verdicts(p[keep]) == labels[keep]).mean()) if n else float("nan")), n


def accuracy_with_ties(p_a: Sequence[float], labels: Sequence[str], threshold: float) -> float:
    """Three-way accuracy over all pairs: the model says "tie" when |p_a - 0.5| <= threshold, and
    a pair is right when the model's verdict equals the human's (tie included)."""
    p, labels = _arrays(p_a, labels)
    return float((verdicts(p, threshold) == labels).mean()) if len(p) else float("nan")


def tie_calibration(p_a: Sequence[float], labels: Sequence[str]) -> tuple[float, float]:
    """(best `accuracy_with_ties`, its threshold): tie calibration (Deutsch et al. 2023,
    arXiv 2305.14324, as VideoAlign reports "accuracy with ties"). The candidate thresholds are
    the data's own |p_a - 0.5| values (and 0): between two of them the verdicts do not change, so
    this search is exact. The smallest best threshold wins a draw."""
    p, labels = _arrays(p_a, labels)
    if not len(p):
        return float("nan"), 0.0
    margin = np.abs(p - 0.5)
    order = np.argsort(margin, kind="stable")
    margin, p, labels = margin[order], p[order], labels[order]
    # right answers at threshold t = pairs with margin <= t that are human ties
    #                              + pairs with margin > t whose strict verdict is right
    strict_right = (verdicts(p) == labels) & (margin > 0)
    tie_right = labels == "tie"
    n = len(p)
    # thresholds: 0, then each distinct margin (all pairs up to the last equal margin become ties)
    cand_t = np.concatenate([[0.0], margin])
    ends = np.concatenate([[int((margin <= 0).sum())], np.searchsorted(margin, margin, side="right")])
    cum_tie = np.concatenate([[0], np.cumsum(tie_right)])
    cum_strict = np.concatenate([[0], np.cumsum(strict_right)])
    right = cum_tie[ends] + (cum_strict[-1] - cum_strict[ends])
    best = int(np.argmax(right))
    return float(right[best] / n), float(cand_t[best])


def position_consistency(p_b_first: Sequence[float], p_b_swapped: Sequence[float]) -> float:
    """How often the verdict survives swapping the two images: per pair, P(B better) read from the
    order (A as image 1, B as image 2) and from the swapped order; consistent when both say the
    same strict verdict (a 0.5 in either order is a tie and counts as inconsistent)."""
    first, swapped = np.asarray(p_b_first, dtype=np.float64), np.asarray(p_b_swapped, dtype=np.float64)
    if first.shape != swapped.shape:
        raise ValueError("position_consistency needs one reading per order for each pair")
    if not len(first):
        return float("nan")
    v1, v2 = verdicts(first), verdicts(swapped)
    return float(((v1 == v2) & (v1 != "tie")).mean())


def calibration_bins(p: Sequence[float], y: Sequence[float], n_bins: int = 10) -> list[dict]:
    """Equal-width bins of the predicted probability: per non-empty bin its range, count, mean
    prediction and observed frequency of the event (y = 1)."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    idx = np.minimum((p * n_bins).astype(int), n_bins - 1)
    bins = []
    for b in range(n_bins):
        m = idx == b
        if m.any():
            bins.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "n": int(m.sum()),
                         "mean_p": float(p[m].mean()), "freq": float(y[m].mean())})
    return bins


def ece(p: Sequence[float], y: Sequence[float], n_bins: int = 10) -> float:
    """Expected calibration error of the probability `p` of a binary event (y in {0, 1}):
    sum over equal-width bins of |mean p - frequency of y| weighted by the bin's share."""
    n = len(p)
    if not n:
        return float("nan")
    return float(sum(b["n"] / n * abs(b["mean_p"] - b["freq"]) for b in calibration_bins(p, y, n_bins)))


def auroc(scores: Sequence[float], y: Sequence[float]) -> float:
    """Area under the ROC curve = P(score of a random positive > that of a random negative),
    ties counted half (Mann-Whitney U with mid-ranks). NaN without both classes."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(y, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return float("nan")
    order = np.argsort(s, kind="stable")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    # mid-ranks for ties: every member of a run of equal scores gets the run's mean rank
    starts = np.flatnonzero(np.concatenate([[True], sorted_s[1:] != sorted_s[:-1]]))
    ends = np.concatenate([starts[1:], [len(s)]])
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + b + 1) / 2.0  # ranks are 1-based: mean of a+1 .. b
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pairwise_metrics(p_a: Sequence[float], labels: Sequence[str], *, p_b_first: Sequence[float] | None = None,
                     p_b_swapped: Sequence[float] | None = None, threshold: float | None = None) -> dict:
    """The standard pairwise table row: accuracy (non-tied pairs, `n` of them), accuracy with ties
    at a calibrated threshold (or the given one), `n_ties` (human ties), position consistency
    (when both orders' readings are given), and ECE of P(A better) over the non-tied pairs."""
    p, labels = _arrays(p_a, labels)
    acc, n = accuracy(p, labels)
    if threshold is None:
        acc_ties, threshold = tie_calibration(p, labels)
    else:
        acc_ties = accuracy_with_ties(p, labels, threshold)
    decided = (labels == "a") | (labels == "b")
    out = {"accuracy": acc, "accuracy_with_ties": acc_ties, "tie_threshold": threshold, "n": n,
           "n_ties": int((labels == "tie").sum()),
           "ece": ece(p[decided], labels[decided] == "a")}
    if p_b_first is not None and p_b_swapped is not None:
        out["position_consistency"] = position_consistency(p_b_first, p_b_swapped)
    return out


def pointwise_metrics(p_yes: Sequence[float], labels: Sequence[str]) -> dict:
    """Accuracy (P(yes) > 0.5 means yes), AUROC and ECE of P(yes) against yes/no labels."""
    p, labels = _arrays(p_yes, labels)
    y = labels == "yes"
    return {"accuracy": float(((p > 0.5) == y).mean()) if len(p) else float("nan"), "n": len(p),
            "auroc": auroc(p, y), "ece": ece(p, y)}
