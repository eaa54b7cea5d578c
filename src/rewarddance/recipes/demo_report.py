"""The demo's report: one self-contained HTML file (images and plots inlined, no network) from metrics.json.

Every number the page shows is printed by `shown()`, which wraps it in
`<span data-m="PATH" data-f="FORMAT">` where PATH is its place in metrics.json (`judges.0.accuracy_id`)
and FORMAT how it was printed (`format_value`): a reader, or a test, can check each one against the file.

    >>> from rewarddance.recipes.demo_report import format_value
    >>> format_value(0.625, "pct"), format_value(3.14159, "f3"), format_value(12, "int")
    ('62.5%', '3.142', '12')
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from pathlib import Path
from typing import Any

from ..evaluate.report import pct
from ..rl.monitor import ALARMS
from ..train.engine import atomic_write_text
from .search import gain_figure

FORMATS = {
    "pct": pct,
    "passfail": lambda v: "pass" if v else "fail",
    "f3": lambda v: f"{v:.3f}",
    "f1": lambda v: f"{v:.1f}",
    "int": lambda v: f"{int(v)}",
    "text": str,
}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9;
line-height:1.45}
main{max-width:1040px;margin:0 auto;padding:16px}
h1{font-size:1.6rem;margin:.2em 0}h2{font-size:1.2rem;margin-top:1.6em;border-bottom:2px solid #dde1e8;
padding-bottom:.2em}
.sub{color:#5a6272;font-size:.9rem}
.card{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:12px 14px;margin:10px 0}
.headline li{margin:.25em 0}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:.88rem;background:#fff}
th,td{border:1px solid #dde1e8;padding:4px 8px;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
th{background:#eef1f5}
img.plot{max-width:100%;height:auto;background:#fff;border:1px solid #dde1e8;border-radius:6px}
img.px{image-rendering:pixelated;width:72px;height:72px;display:block;border-radius:4px}
.cell{display:inline-block;vertical-align:top;text-align:center;margin:3px;font-size:.72rem;width:88px;
overflow-wrap:break-word}
.cell img.px{margin:0 auto}
.pass img{outline:3px solid #2f9e44}.fail img{outline:3px solid #e03131}
.pass .tag{color:#2f9e44;font-weight:600}.fail .tag{color:#e03131;font-weight:600}
.grid td{text-align:center;vertical-align:top}.grid td:first-child{text-align:left;white-space:normal;
max-width:180px}
.verdict{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.verdict .txt{flex:1 1 260px;font-size:.88rem}
.alarm{color:#e03131;font-weight:600}.ok{color:#2f9e44;font-weight:600}
code{background:#eef1f5;padding:1px 4px;border-radius:3px;font-size:.85em}
"""


def format_value(value: Any, fmt: str) -> str:
    """How the report prints a metrics.json value (`n/a` for a missing or NaN number)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return FORMATS[fmt](value)


def lookup(metrics: dict[str, Any], path: str) -> Any:
    """The value at a dotted path of metrics.json (`rl.0.gt_pass_rate_after`)."""
    value: Any = metrics
    for part in path.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def shown(metrics: dict[str, Any], path: str, fmt: str) -> str:
    """A number (or text) of metrics.json as the page shows it, tagged with its path."""
    text = format_value(lookup(metrics, path), fmt)
    return f'<span data-m="{path}" data-f="{fmt}">{html.escape(text)}</span>'


def _png(path: str | os.PathLike) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def _figure_uri(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def rl_curves(arms: list[dict[str, Any]]) -> str:
    """The RL curves side by side per judge (columns), one row per quantity, a dashed red line where an
    alarm fired; a data URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (("reward mean", ("reward_mean",)), ("reward std (window)", ("reward_std_window",)),
            ("diversity", ("diversity", "eval_diversity")), ("checker pass rate", ("gt_pass_rate",)))
    labels = {"diversity": "training samples", "eval_diversity": "held-out"}
    fig, axes = plt.subplots(len(rows), len(arms), figsize=(3.4 * len(arms), 2.1 * len(rows)), squeeze=False,
                             sharex="col", sharey="row")
    for c, arm in enumerate(arms):
        for r, (title, keys) in enumerate(rows):
            ax = axes[r][c]
            for key in keys:
                pts = [(p["step"], p[key]) for p in arm["curve"] if isinstance(p.get(key), (int, float))]
                if pts:
                    ax.plot(*zip(*pts), marker="o" if len(pts) < 25 else None, markersize=3, label=labels.get(key))
            if len(keys) > 1 and c == 0:
                ax.legend(fontsize=6)
            for name, step in (arm.get("alarms") or {}).items():
                ax.axvline(step, color="tab:red", linestyle="--", linewidth=1.2)
                if r == 0:
                    ax.text(step, 1.0, f" {name}", color="tab:red", fontsize=7, transform=ax.get_xaxis_transform(),
                            va="top")
            ax.grid(alpha=0.3)
            if r == 0:
                ax.set_title(arm["judge"], fontsize=9)
            if c == 0:
                ax.set_ylabel(title, fontsize=8)
            if r == len(rows) - 1:
                ax.set_xlabel("ReFL step", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    return _figure_uri(fig)


def _image_cell(path: str, passed: bool | None = None, caption: str = "", verdict: str = "") -> str:
    """An image, outlined green or red by the checker's verdict `passed`, whose tag `verdict` shows it."""
    cls = "" if passed is None else ("pass" if passed else "fail")
    tag = f'<div class="tag">{verdict}</div>' if verdict else ""
    return (f'<div class="cell {cls}"><img class="px" src="{_png(path)}" alt="{html.escape(caption)}">'
            f'{tag}{html.escape(caption)}</div>')


def _docs_link(report: Path, name: str) -> str:
    """A relative link to the repository's docs/<name> when the report sits in a checkout, else the name."""
    docs = Path(__file__).resolve().parents[3] / "docs" / name
    if not docs.exists():
        return f"<code>docs/{name}</code>"
    href = os.path.relpath(docs, report.resolve().parent)
    return f'<a href="{html.escape(href)}"><code>docs/{name}</code></a>'


def render(metrics: dict[str, Any], report: Path) -> str:
    """The page's HTML."""
    m = metrics
    s = lambda path, fmt: shown(m, path, fmt)  # noqa: E731
    # said only when true of this run: every judge within a few points of a coin flip
    near_chance = ("At this budget every judge is close to chance, and so are the gains below: read them as what "
                   "the loop measures, not as what the method can do." if all(
                       j["accuracy"] is not None and abs(j["accuracy"] - 0.5) < 0.1 for j in m["judges"]) else "")
    parts = [f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>{html.escape(m['title'])}</title><style>{CSS}</style></head><body><main>
<h1>{s('title', 'text')}</h1>
<div class="sub">{s('date', 'text')} &middot; {s('machine.cpus', 'int')} CPU cores
{('&middot; ' + s('machine.gpu', 'text')) if m['machine'].get('gpu') else ''}
&middot; torch {s('machine.torch', 'text')} &middot; {s('total_minutes', 'f1')} min</div>
<div class="card"><p>A vision-language judge is trained to say whether image 2 is better than image 1 for a prompt
(the reward is P("yes")); a small text-to-image generator is then fine-tuned against it with ReFL, and
the judge also picks among samples (Best-of-N, search over paths). ShapeWorld's checker knows the truth
for every image, so each number below is measured against it.</p>
<ul class="headline">{''.join(f'<li>{s(f"headline.{i}", "text")}</li>' for i in range(len(m['headline'])))}</ul>
<p class="sub">These numbers come from a few minutes per stage on this machine, far less than the studies
({_docs_link(report, 'training.md')}, {_docs_link(report, 'rl.md')}, {_docs_link(report, 'evaluation.md')}).
{near_chance}</p></div>"""]

    # judges
    cols = (("train steps", "train_steps", "int"), ("train min", "train_minutes", "f1"),
            ("accuracy ID", "accuracy_id", "pct"), ("accuracy OOD", "accuracy_ood", "pct"),
            ("accuracy", "accuracy", "pct"), ("with ties", "accuracy_with_ties", "pct"),
            ("position consistency", "position_consistency", "pct"), ("ECE", "ece", "f3"))
    head = "".join(f"<th>{c}</th>" for c, _, _ in cols)
    body = "".join(
        f"<tr><td>{s(f'judges.{i}.name', 'text')}<div class='sub'>{s(f'judges.{i}.start', 'text')} start</div></td>"
        + "".join(f"<td>{s(f'judges.{i}.{k}', f)}</td>" for _, k, f in cols) + "</tr>"
        for i in range(len(m["judges"])))
    parts.append(f"""<h2>1. Judges on held-out pairs</h2>
<p class="sub">Test pairs ({s('data.test', 'int')}; half in-distribution, half OOD: held-out colour-shape
combinations, outlines, other backgrounds), labelled by the checker; trained on {s('data.train', 'int')}
pairs with 10% of labels flipped. Accuracy with ties counts a pair as a tie when P is within a threshold
(fitted on the data) of one half; position consistency is the share of pairs judged the same with the images
swapped (a pointwise judge scores each image alone, so it is consistent by construction). A second size, where
there is one, starts from scratch and gets its own step budget (it costs several times more per step).
Best judge: {s('best_judge', 'text')}.</p>
<div class="scroll"><table><tr><th>judge</th>{head}</tr>{body}</table></div>""")

    # references
    refs = "".join(_image_cell(r["image"], r["passed"], r["prompt"], s(f"references.{i}.passed", "passfail"))
                   for i, r in enumerate(m["references"]))
    parts.append(f"""<h2>2. References picked by Best-of-N win counts</h2>
<p class="sub">For each held-out prompt, {s('config.reference_candidates', 'int')} samples of the starting generator
compared all-pairs by {s('best_judge', 'text')}; the one with most wins becomes the prompt's reference
(the checker's verdict on it is shown).</p><div class="card">{refs}</div>""")

    # RL
    rl_cols = (("steps", "steps", "int"), ("pass rate before", "gt_pass_rate_before", "pct"),
               ("after", "gt_pass_rate_after", "pct"), ("reward before", "reward_mean_before", "f3"),
               ("after", "reward_mean_after", "f3"), ("diversity before", "diversity_before", "f3"),
               ("after", "diversity_after", "f3"))
    rl_rows = []
    for i, arm in enumerate(m["rl"]):
        flagged = s(f"rl.{i}.hacking_flagged", "text")
        fired = ", ".join(f"{name} at step {s(f'rl.{i}.alarms.{name}', 'int')}" for name in arm["alarms"])
        alarm = (f'<span class="alarm">{flagged}: {fired}</span>' if arm["hacking_flagged"]
                 else f'<span class="ok">{flagged}</span>')
        rl_rows.append(f"<tr><td>{s(f'rl.{i}.judge', 'text')}</td>"
                       + "".join(f"<td>{s(f'rl.{i}.{k}', f)}</td>" for _, k, f in rl_cols) + f"<td>{alarm}</td></tr>")
    parts.append(f"""<h2>3. ReFL against each judge, the hacking monitor on</h2>
<p class="sub">The committed ShapeWorld generator (a pixel-space diffusers UNet with a flow-matching scheduler),
LoRA, {s('config.refl_steps', 'int')} steps at lr {s('config.refl_lr', 'text')}; held-out compositional prompts ×
{s('config.eval_seeds', 'int')} seeds checked before and after. Alarms ({', '.join(ALARMS)}) are dashed red lines.</p>
<img class="plot" src="{rl_curves(m['rl'])}" alt="RL curves per judge">
<div class="scroll"><table><tr><th>judge</th>{''.join(f'<th>{c}</th>' for c, _, _ in rl_cols)}
<th>hacking flagged</th></tr>
{''.join(rl_rows)}</table></div>""")

    # sample grid
    judges = [a["judge"] for a in m["rl"]]
    root = Path(metrics["report"]).parent / "rl" / "samples"
    header = "<th>prompt</th><th>before</th>" + "".join(f"<th>after ReFL vs {html.escape(j)}</th>" for j in judges)
    grid_rows = []
    for i, prompt in enumerate(m["samples"]["prompts"]):
        cells = [_image_cell(str(root / arm / f"{i:03d}.png"), m["samples"][arm][i],
                             verdict=s(f"samples.{arm}.{i}", "passfail")) for arm in ("before", *judges)]
        grid_rows.append(f"<tr><td>{s(f'samples.prompts.{i}', 'text')}</td>"
                         + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    parts.append(f"""<h2>4. The same held-out prompts before and after RL</h2>
<p class="sub">One seed per prompt, the same seed in every column; green: the checker passes the image, red: it
does not.</p><div class="scroll"><table class="grid"><tr>{header}</tr>{''.join(grid_rows)}</table></div>""")

    # search
    bon = m["search"]["best_of_n"]
    cmp_rows = "".join(
        f"<tr><td>search, {s(f'search.search_vs_best_of_n.{i}.paths', 'int')} paths</td>"
        f"<td>{s(f'search.search_vs_best_of_n.{i}.judge_calls', 'int')}</td>"
        f"<td>{s(f'search.search_vs_best_of_n.{i}.search_gt_pass_rate', 'pct')}</td>"
        f"<td>{s(f'search.search_vs_best_of_n.{i}.best_of_n_gt_pass_rate', 'pct')}</td></tr>"
        for i in range(len(m["search"]["search_vs_best_of_n"])))
    bon_rows = "".join(f"<tr><td>Best-of-{s(f'search.best_of_n.{i}.n', 'int')}</td>"
                       f"<td>{s(f'search.best_of_n.{i}.judge_calls', 'int')}</td>"
                       f"<td>{s(f'search.best_of_n.{i}.gt_pass_rate', 'pct')}</td>"
                       f"<td>{s(f'search.best_of_n.{i}.pass_at_n', 'pct')}</td></tr>" for i in range(len(bon)))
    parts.append(f"""<h2>5. Inference-time scaling with {s('search.judge', 'text')}</h2>
<p class="sub">{s('search.prompts', 'int')} held-out prompts; the checker pass rate of the judge's pick.
pass@n is what a perfect judge would reach with the same samples.</p>
<img class="plot" src="{_figure_uri(gain_figure(m['search']))}" alt="gain curves">
<div class="scroll"><table><tr><th>method</th><th>judge calls</th><th>pass rate</th><th>pass@n</th></tr>{bon_rows}
</table></div><div class="scroll"><table><tr><th>at equal compute</th><th>judge calls</th><th>search</th>
<th>Best-of-N</th></tr>{cmp_rows}</table></div>""")

    # verdicts
    cards = []
    for i, v in enumerate(m["verdicts"]):
        cards.append(f"""<div class="card verdict">{_image_cell(v['image_a'], None, 'image 1 (a)')}
{_image_cell(v['image_b'], None, 'image 2 (b)')}<div class="txt"><b>{s(f'verdicts.{i}.prompt', 'text')}</b>
<span class="sub">({s(f'verdicts.{i}.split', 'text')})</span><br>
judge: P(b better) = {s(f'verdicts.{i}.p_b_better', 'f3')} &rarr; {s(f'verdicts.{i}.verdict', 'text')};
checker: {s(f'verdicts.{i}.truth', 'text')}
<span class="{'ok' if v['correct'] else 'alarm'}">{'right' if v['correct'] else 'wrong'}</span><br>
<i>judge's rationale:</i> {s(f'verdicts.{i}.rationale', 'text')}<br>
<i>the checker's:</i> {s(f'verdicts.{i}.truth_rationale', 'text')}</div></div>""")
    parts.append(f"""<h2>6. The judge's verdicts, with its rationales</h2>
<p class="sub">{s('verdicts_judge', 'text')} on test pairs; the rationale is generated after the judgment token (the
reward is read before it), beside the one written from the checker's result.</p>{''.join(cards)}""")

    # timings
    stage_rows = "".join(f"<tr><td>{k}</td><td>{s(f'stage_seconds.{k}', 'f1')}</td></tr>" for k in m["stage_seconds"])
    parts.append(f"""<h2>Stages</h2><div class="scroll"><table><tr><th>stage</th><th>seconds</th></tr>{stage_rows}
</table></div><p class="sub">{s('machine.platform', 'text')}, Python {s('machine.python', 'text')}. Settings:
<code>config.yaml</code> beside this file; every number here is in <code>metrics.json</code>.</p>
</main></body></html>""")
    return "\n".join(parts)


def write_report(metrics: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write report.html (atomically)."""
    path = Path(path)
    return atomic_write_text(path, render(metrics, path))
