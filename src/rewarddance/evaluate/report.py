"""Evaluation output a person reads: a plain-text/markdown table and a reliability diagram.

Example:
    >>> from rewarddance.evaluate.report import markdown_table
    >>> print(markdown_table({"overall": {"accuracy": 0.75, "n": 4}}))
    | subset | accuracy | n |
    |---|---|---|
    | overall | 0.750 | 4 |
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

COLUMNS = ("accuracy", "accuracy_with_ties", "tie_threshold", "n", "n_ties", "position_consistency", "ece", "auroc")


def table_rows(result: dict[str, Any]) -> list[tuple[str, dict]]:
    """(subset name, metrics) for the overall row, each split and each category, in that order."""
    rows = [("overall", result["overall"])] if result.get("overall") else []
    rows += [(f"split {k}", v) for k, v in result.get("splits", {}).items()]
    rows += [(f"category {k}", v) for k, v in result.get("by_category", {}).items()]
    if result.get("pointwise"):
        rows.append(("pointwise", result["pointwise"]))
    return rows


def pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal; "n/a" for a missing or NaN value.

        >>> pct(0.625), pct(None)
        ('62.5%', 'n/a')
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:.1f}%"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if value != value else f"{value:.3f}"
    return str(value)


def markdown_table(result: dict[str, Any]) -> str:
    """The metrics of `result` (rewarddance eval's JSON) as a markdown table, plus the benchmark's
    headline metric when there is one."""
    rows = table_rows(result)
    cols = [c for c in COLUMNS if any(c in m for _, m in rows)]
    lines = ["| subset | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    lines += ["| " + name + " | " + " | ".join(_cell(m.get(c, "")) for c in cols) + " |" for name, m in rows]
    bench = result.get("benchmark")
    if bench:
        lines += ["", f"benchmark {bench['name']}: {bench['metric']} = {_cell(bench['value'])}"]
    return "\n".join(lines)


def reliability_diagram(bins: Sequence[dict], path: str | Path, *, title: str, xlabel: str) -> Path:
    """Plot observed frequency against mean predicted probability per bin (`metrics.calibration_bins`),
    with the bins' counts as bars, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, hist) = plt.subplots(2, 1, figsize=(4.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    ax.plot([b["mean_p"] for b in bins], [b["freq"] for b in bins], "o-", label="model")
    ax.set_ylabel("observed frequency")
    ax.set_title(title)
    ax.legend(loc="upper left")
    hist.bar([(b["lo"] + b["hi"]) / 2 for b in bins], [b["n"] for b in bins],
             width=[b["hi"] - b["lo"] for b in bins], edgecolor="black")
    hist.set_xlabel(xlabel)
    hist.set_ylabel("pairs")
    hist.set_xlim(0, 1)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
