"""The main job: `rewarddance demo --quick` at its smallest settings, end to end, with the committed judge preset
and generator; its report agrees with its metrics; a re-run skips what is finished; the page renders in Chromium."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from rewarddance.cli import main
from rewarddance.recipes.demo import STAGE_SETTINGS, STAGES, DemoConfig, Stages, _stage_keys, demo, judge_specs, \
    load_demo_config
from rewarddance.recipes.demo_report import format_value, lookup

# the smallest settings that still exercise every stage (ID and OOD test pairs, 2 judges, ReFL with an
# evaluation before and after, Best-of-N and a search)
SMALLEST = ["data_n=48", "data_n_test=16", "judge_steps=4", "judge_batch_size=8", "reference_candidates=2",
            "refl_steps=2", "refl_prompts=4", "num_steps=6", "eval_prompts_per_category=1", "eval_seeds=2",
            "search_n=[1,2]", "search_paths=[2]", "search_prompts_per_category=1", "examples=2", "grid_prompts=3",
            "progress=false"]


class Spans(HTMLParser):
    """Collects (data-m, data-f, text) of the report's tagged numbers, and the page's visible text."""

    def __init__(self):
        super().__init__()
        self.spans: list[list[str]] = []
        self.text: list[str] = []
        self._open: list[str] | None = None
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("style", "title"):
            self._skip += 1
        if tag == "span" and "data-m" in a:
            self._open = [a["data-m"], a["data-f"], ""]

    def handle_endtag(self, tag):
        if tag in ("style", "title"):
            self._skip -= 1
        if tag == "span" and self._open is not None:
            self.spans.append(self._open)
            self._open = None

    def handle_data(self, data):
        if self._skip:
            return
        self.text.append(data)
        if self._open is not None:
            self._open[2] += data


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    cfg = load_demo_config(True, None, [*SMALLEST, f"out={out}"])
    metrics = demo(cfg, quick=True)
    return out, cfg, metrics


def test_demo_writes_report_and_metrics_that_agree(demo_run):
    out, cfg, metrics = demo_run
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert [j["objective"] for j in metrics["judges"]] == ["generative-pairwise", "regressive-bt"]
    assert [a["judge"] for a in metrics["rl"]] == [j["name"] for j in metrics["judges"]]
    assert len(metrics["headline"]) == 5

    # the numbers come from the recipes' own outputs on disk
    for j in metrics["judges"]:
        ev = json.loads((out / "evaluate" / f"{j['name']}.json").read_text())
        assert j["accuracy_id"] == ev["splits"]["id"]["accuracy"]
        assert j["accuracy_ood"] == ev["splits"]["ood"]["accuracy"]
    for arm in metrics["rl"]:
        report = json.loads((out / "rl" / arm["judge"] / "report.json").read_text())
        assert arm["gt_pass_rate_after"] == report["gt_pass_rate_after"]
        assert (out / "rl" / arm["judge"] / "final" / "generator.json").exists()
        assert len(metrics["samples"][arm["judge"]]) == cfg.grid_prompts
    search = json.loads((out / "search" / "results.json").read_text())
    assert metrics["search"]["best_of_n"] == search["best_of_n"]
    assert all(v["rationale"] is not None for v in metrics["verdicts"])
    # checker verdicts are JSON booleans (a numpy bool once became the string "False", shown as a pass)
    assert all(type(r["passed"]) is bool for r in metrics["references"])
    assert all(type(v) is bool for arm in ("before", *metrics["samples"]) if arm != "prompts"
               for v in metrics["samples"][arm])

    # every number on the page is a tagged metrics.json value, printed as that value
    page = (out / "report.html").read_text()
    parsed = Spans()
    parsed.feed(page)
    assert len(parsed.spans) > 60
    for path, fmt, text in parsed.spans:
        assert text == format_value(lookup(metrics, path), fmt), path
    shown_paths = {p for p, _, _ in parsed.spans}
    for i, j in enumerate(metrics["judges"]):
        assert {f"judges.{i}.accuracy_id", f"judges.{i}.accuracy_ood", f"judges.{i}.ece"} <= shown_paths
    for line in metrics["headline"]:
        assert line in [t for _, _, t in parsed.spans]
    decimal = re.compile(r"\d+\.\d+%?")
    visible = decimal.findall(" ".join(parsed.text))
    tagged = decimal.findall(" ".join(t for _, _, t in parsed.spans))
    assert sorted(visible) == sorted(tagged)  # no decimal number on the page outside a tagged value
    # self-contained: every image inlined, nothing fetched
    assert not re.search(r"""(src|href)=["'](https?:|//)""", page)
    assert page.count('src="data:image/png;base64,') >= 2 + 3 * cfg.grid_prompts


def test_demo_rerun_skips_finished_stages_and_redoes_changed_ones(demo_run, capsys):
    out, _, metrics = demo_run
    capsys.readouterr()
    again = demo(load_demo_config(True, None, [*SMALLEST, f"out={out}"]), quick=True)
    err = capsys.readouterr().err
    assert all(f"[{s}] finished earlier" in err for s in STAGES), err
    assert again == metrics

    # a changed search budget redoes the search (and the report), nothing else
    changed = demo(load_demo_config(True, None, [*SMALLEST, f"out={out}", "search_n=[1,3]"]), quick=True)
    err = capsys.readouterr().err
    assert all(f"[{s}] finished earlier" in err for s in ("data", "judges", "evaluate", "verdicts", "rl")), err
    assert "[search] done" in err and "[report] done" in err
    assert 3 in [p["n"] for p in changed["search"]["best_of_n"]]
    assert changed["judges"] == metrics["judges"] and changed["rl"] == metrics["rl"]
    # the report re-rendered from the stages' JSON records shows the same checker verdicts
    assert changed["references"] == metrics["references"] and changed["samples"] == metrics["samples"]


def test_stages_resume_force_and_changed_settings(tmp_path):
    calls = []

    def step(folder: Path, fail: bool = False):
        calls.append(folder.name)
        (folder / "partial").write_text(str(len(calls)))  # what a recipe's checkpoint would be
        if fail:
            raise RuntimeError("killed")
        return {"value": len(calls)}

    keys = {s: "k1" for s in STAGES}
    with pytest.raises(RuntimeError):
        Stages(tmp_path, keys, force=False).run("data", lambda f: step(f, fail=True))
    assert (tmp_path / "data" / "partial").read_text() == "1"  # an interrupted stage keeps its folder...
    seen = []
    Stages(tmp_path, keys, force=False).run("data", lambda f: seen.append((f / "partial").exists()) or step(f))
    assert seen == [True]  # ...and the same settings resume in it
    assert Stages(tmp_path, keys, force=False).run("data", step)["result"] == {"value": 2}  # finished: skipped
    assert len(calls) == 2
    assert Stages(tmp_path, keys, force=True).run("data", step)["result"] == {"value": 3}  # --force redoes
    with pytest.raises(RuntimeError):
        Stages(tmp_path, {**keys, "data": "k2"}, force=False).run("data", lambda f: step(f, fail=True))
    seen.clear()
    Stages(tmp_path, {**keys, "data": "k3"}, force=False).run("data", lambda f: seen.append((f / "partial").exists())
                                                              or step(f))
    assert seen == [False]  # other settings never resume a half-done folder


def test_stage_keys_follow_the_settings_they_depend_on(tmp_path):
    base = _stage_keys(load_demo_config(True))

    def redone(*overrides: str) -> list[str]:
        keys = _stage_keys(load_demo_config(True, None, list(overrides)))
        return [s for s in STAGES if keys[s] != base[s]]

    assert redone("refl_steps=3") == ["rl", "report"]  # search does not read the RL stage
    assert redone("examples=5") == ["verdicts", "report"]
    assert redone("judge_steps=7") == ["judges", "evaluate", "verdicts", "rl", "search", "report"]
    assert redone("progress=false") == []
    # every setting but the output folder and the progress bars is some stage's input
    covered = {k for keys in STAGE_SETTINGS.values() for k in keys}
    assert {f.name for f in dataclasses.fields(DemoConfig)} - covered == {"out", "progress"}
    # --quick's settings are a base: a config file still overrides them
    (tmp_path / "c.yaml").write_text("judge_steps: 7\n")
    assert load_demo_config(True, tmp_path / "c.yaml").judge_steps == 7
    assert load_demo_config(True).judge_steps == 30


def test_judge_names_are_unique_folder_names():
    names = [j["name"] for j in judge_specs(DemoConfig())]
    assert names == ["generative-pairwise-tiny", "regressive-bt-tiny", "generative-pairwise-small"]
    same_size = [j["name"] for j in judge_specs(DemoConfig(second_size="smolvlm-tiny-shapeworld"))]
    assert len(set(same_size)) == 3 and "generative-pairwise-smolvlm-tiny" in same_size
    from_dir = judge_specs(DemoConfig(model="runs/my.judge/final", second_size=None))
    assert [j["name"] for j in from_dir] == ["generative-pairwise-my-judge", "regressive-bt-my-judge"]
    with pytest.raises(ValueError, match="second_size"):
        judge_specs(DemoConfig(second_size="qwen2_5_vl-tiny-shapeworld"))


def test_demo_cli_rejects_unknown_keys(capsys):
    assert main(["demo", "--quick", "--out", "unused", "no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
def test_report_renders_in_headless_chromium(demo_run, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("RD_REQUIRE_BROWSER"):
            pytest.fail("RD_REQUIRE_BROWSER is set but no chromium is installed (apt-get install chromium)")
        pytest.skip("no chromium (apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    out, _, _ = demo_run
    url = (out / "report.html").resolve().as_uri()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone
        console, errors, requests = [], [], []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(url, wait_until="load")
        images_ok = page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
        n_images = page.evaluate("document.images.length")
        page_width = page.evaluate("document.documentElement.scrollWidth")
        page.screenshot(path=str(tmp_path / "phone.png"))
        browser.close()
    assert not errors and not [c for c in console if c.startswith(("error", "warning"))], (errors, console)
    assert [u for u in requests if not u.startswith("data:")] == [url]  # nothing leaves the file
    assert images_ok and n_images > 10
    assert page_width <= 390  # readable on a phone: wide tables scroll inside their box, not the page
    assert (tmp_path / "phone.png").stat().st_size > 10_000
