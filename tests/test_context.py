"""The context builder: layouts, tasks, examples, custom templates, CoT targets."""

from __future__ import annotations

import pytest
import torch

from rewarddance.context import build_context, builtin_tasks, format_target, get_task

IMG = torch.zeros(3, 8, 8)


def _text(ctx, turn=-1):
    msgs = [m for m in ctx.messages if m["role"] == "user"]
    return "".join(c["text"] if c["type"] == "text" else "<image>" for c in msgs[turn]["content"])


def test_builtin_tasks_present():
    assert {"plain", "t2i-alignment", "t2i-quality", "t2i-overall", "t2v-overall", "i2v-overall"} <= set(builtin_tasks())


def test_plain_has_no_task_wording_and_task_aware_does():
    plain = _text(build_context("plain", "pointwise", "a red circle", IMG))
    aware = _text(build_context("t2i-alignment", "pointwise", "a red circle", IMG))
    assert "text-to-image" not in plain and "Criteria" not in plain
    assert "text-to-image" in aware and "Criteria" in aware


def test_pairwise_order_reference_first():
    ref, cand = torch.zeros(3, 8, 8), torch.ones(3, 8, 8)
    ctx = build_context("t2i-alignment", "pairwise", "a red circle", cand, reference=ref)
    assert ctx.images[0] is ref and ctx.images[1] is cand
    assert "Is image 2 better than image 1?" in _text(ctx)
    with pytest.raises(ValueError, match="image1"):
        build_context("t2i-alignment", "pairwise", "a red circle", cand)


def test_video_frames_and_i2v_condition():
    video = torch.zeros(4, 3, 8, 8)
    ctx = build_context("i2v-overall", "pointwise", "a red circle moving up", video, condition=IMG)
    assert len(ctx.images) == 5 and ctx.images[0] is IMG  # condition image first, then 4 frames


def test_in_context_examples_become_earlier_turns():
    ex = {"prompt": "a blue square", "candidate": IMG, "answer": "no"}
    ctx = build_context("t2i-alignment", "pointwise", "a red circle", IMG, examples=[ex])
    roles = [m["role"] for m in ctx.messages]
    assert roles == ["user", "assistant", "user"] and len(ctx.images) == 2
    with pytest.raises(ValueError, match="no answer"):
        build_context("t2i-alignment", "pointwise", "a red circle", IMG, examples=[{"prompt": "x", "candidate": IMG}])


def test_custom_task_from_yaml(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text('pointwise: "Rate {image} for {prompt}.\\n{criteria}\\nyes or no?"\n'
                    'pairwise: "{image1} vs {image2}: {prompt}?"\ncriteria: [round things only]\n')
    task = get_task(path)
    assert task.name == "mine"
    assert _text(build_context(path, "pointwise", "a red circle", IMG)) == \
        "Rate <image> for a red circle.\n- round things only\nyes or no?"
    with pytest.raises(ValueError, match="unknown task"):
        get_task("no-such-task")


def test_targets_judgment_first_and_reverse():
    assert format_target("yes") == "yes"
    assert format_target("no", "it is blurred").startswith("no\n")
    assert format_target("no", "it is blurred", order="rationale-first").endswith("Answer: no")
    with pytest.raises(ValueError):
        format_target("maybe")


def test_empty_prompt_is_an_error():
    with pytest.raises(ValueError, match="empty prompt"):
        build_context("t2i-alignment", "pointwise", "  ", IMG)
