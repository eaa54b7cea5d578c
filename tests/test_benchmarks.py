"""Readers for public reward-model benchmarks, each tested on a tiny file written in exactly the
format its authors publish (the source of each format is cited in each test), and each benchmark's
headline metric on small hand-computed cases."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rewarddance.data import Record, RecordError, read_manifest
from rewarddance.data.benchmarks import (
    FORMATS,
    Benchmark,
    convert,
    detect_format,
    read_benchmark,
)
from rewarddance.evaluate.headline import headline, pickscore_score


# ------------------------------------------------------------------ helpers
def _pa():
    """pyarrow comes with the `eval` extra: without it only the parquet tests are skipped."""
    return pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")


def _png_bytes(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (shade, 255 - shade, 7)).save(buf, format="PNG")
    return buf.getvalue()


def _png(path: Path, shade: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png_bytes(shade))
    return path


@pytest.fixture(scope="module")
def mp4_bytes(tmp_path_factory) -> bytes:
    """One tiny real video (what media.py decodes), copied wherever a benchmark names a video."""
    from rewarddance.media import write_video

    path = tmp_path_factory.mktemp("video") / "v.mp4"
    write_video(path, np.zeros((2, 16, 16, 3), dtype=np.uint8), fps=2)
    return path.read_bytes()


def _errors(bench: Benchmark) -> list[RecordError]:
    return [r for r in bench.records if isinstance(r, RecordError)]


def _ok(bench: Benchmark) -> list[Record]:
    return [r for r in bench.records if isinstance(r, Record)]


def _roundtrip(fmt, src, tmp_path, **kw) -> tuple[Benchmark, dict[str, Record]]:
    """convert -> read_manifest gives back the same pairs (key, label, prompt, media files)."""
    bench = read_benchmark(src, fmt, **kw)
    counts = convert(fmt, src, tmp_path / "converted", **kw)
    back = {}
    for f in counts:
        if f.endswith(".jsonl"):
            for r in read_manifest(f):
                assert isinstance(r, Record), r
                back[r.key] = r
    ok = _ok(bench)
    assert sum(n for f, n in counts.items() if f.endswith(".jsonl")) == len(ok) == len(back)
    for r in ok:
        b = back[r.key]
        assert (b.label, b.prompt, b.video) == (r.label, r.prompt, r.video)
        for k in ("a", "b", "condition"):
            assert (b.media[k] is None) == (r.media[k] is None)
            if r.media[k] is not None:
                assert b.media[k].resolve() == r.media[k].resolve()
    errs = [f for f in counts if f.endswith("-errors.txt")]
    assert len(errs) == (1 if _errors(bench) else 0)
    return bench, back


# ------------------------------------------------------------------ ImageReward
def _imagereward(root: Path, images: Path) -> Path:
    """THUDM/ImageReward `data/test.json` (read at commit c1392c6): a JSON list of
    {id, prompt, generations: [paths], ranking: [ints]}, lower rank better, ties and gaps allowed."""
    items = [
        {"id": "005658-0040", "prompt": "deathly portal to the abyss",
         "generations": ["part-005658/images/0040/a.webp", "part-005658/images/0040/b.webp",
                         "part-005658/images/0040/c.webp"],
         "ranking": [1, 5, 1]},  # a tie (1, 1) and a gap (no 2-4)
        {"id": "005664-0153", "prompt": "cola made from cockroaches",
         "generations": ["part-005664/images/0153/a.webp", "part-005664/images/0153/b.webp"],
         "ranking": [2, 1]},
    ]
    for it in items:
        for i, g in enumerate(it["generations"]):
            _png((images / g).with_suffix(".webp"), 40 * i)
    path = root / "test.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(items, indent=4))
    return path


def test_imagereward_pairs_labels_keys_and_relative_paths(tmp_path):
    """Format: THUDM/ImageReward data/test.json; pairs i<j as test.py's `acc` walks them."""
    src = _imagereward(tmp_path / "data", tmp_path / "data")
    assert detect_format(src) == "imagereward"
    bench = read_benchmark(src)
    assert (bench.name, bench.metric, bench.task) == ("imagereward", "pooled_pair_accuracy", "t2i-overall")
    assert not _errors(bench)
    got = {r.key: r.label for r in bench.records}
    assert got == {"005658-0040:0-1": "a", "005658-0040:0-2": "tie", "005658-0040:1-2": "b", "005664-0153:0-1": "b"}
    r = bench.records[1]
    assert r.media["a"] == tmp_path / "data/part-005658/images/0040/a.webp"
    assert r.media["b"] == tmp_path / "data/part-005658/images/0040/c.webp"
    assert (r.raw["group"], r.line, r.prompt) == ("005658-0040", 1, "deathly portal to the abyss")
    assert bench.records[3].line == 2
    _roundtrip("imagereward", src, tmp_path)


def test_imagereward_images_root_override_and_authors_layout_hint(tmp_path):
    """Format: THUDM/ImageReward data/test.json with the images in data/test_images/ (test.py's --img_prefix)."""
    src = _imagereward(tmp_path / "data", tmp_path / "data" / "test_images")
    bench = read_benchmark(src, "imagereward", images=tmp_path / "data" / "test_images")
    assert not _errors(bench)
    assert bench.records[0].media["a"] == tmp_path / "data/test_images/part-005658/images/0040/a.webp"
    # without images=, paths resolve beside the JSON, where they are not: every row says so and how to fix it
    bench = read_benchmark(src)
    errs = _errors(bench)
    assert len(errs) == 4 and not _ok(bench)
    assert "test.json: row 1" in str(errs[0]) and "file not found" in str(errs[0])
    assert "images=" in str(errs[0]) and "test_images" in str(errs[0])


def test_imagereward_bad_rows_name_file_and_row(tmp_path):
    """Format: THUDM/ImageReward data/test.json, with broken items among good ones."""
    src = _imagereward(tmp_path / "data", tmp_path / "data")
    items = json.loads(src.read_text())
    items += [
        {"id": "x-missing-prompt", "generations": items[1]["generations"], "ranking": [1, 2]},
        {"id": "x-length", "prompt": "p", "generations": items[1]["generations"], "ranking": [1]},
        "not an object",
        {"id": "x-no-path", "prompt": "p", "generations": ["part-005664/images/0153/a.webp", ""], "ranking": [1, 2]},
    ]
    src.write_text(json.dumps(items))
    bench = read_benchmark(src)
    assert len(_ok(bench)) == 4
    errs = {e.line: str(e) for e in _errors(bench)}
    assert set(errs) == {3, 4, 5, 6}
    assert "test.json: row 3 (x-missing-prompt): missing or empty 'prompt'" in errs[3]
    assert "row 4" in errs[4] and "2 generations but 1 ranks" in errs[4]
    assert "row 5" in errs[5] and "expected a JSON object" in errs[5]
    assert "row 6" in errs[6] and "generations" in errs[6]
    assert len({r.key for r in bench.records}) == len(bench.records)  # errors have keys too (the scorer joins on them)
    src.write_text("[{not json")
    with pytest.raises(ValueError, match="test.json: not valid JSON"):
        read_benchmark(src, "imagereward")


# ------------------------------------------------------------------ HPDv2
def _hpdv2(root: Path) -> Path:
    """tgxs002/HPSv2 README.md ("The annotation file, `test.json`, is organized as") and
    hpsv2/src/training/data.py RankingDataset: a JSON list of
    {prompt, image_path: [...], rank: [...], raw_annotations: [{rank, user_hash}]}."""
    items = [
        {"prompt": "a cat wearing a hat", "image_path": ["00000.jpg", "00001.jpg", "00002.jpg"], "rank": [2, 1, 3],
         "raw_annotations": [{"rank": [2, 1, 3], "user_hash": "u1"}, {"rank": [2, 1, 3], "user_hash": "u2"}]},
        {"prompt": "a red bicycle", "image_path": ["00003.jpg", "00004.jpg"], "rank": [1, 1],
         "raw_annotations": [{"rank": [1, 2], "user_hash": "u1"}, {"rank": [2, 1], "user_hash": "u3"}]},
        {"image_path": ["00003.jpg", "00004.jpg"], "rank": [1, 2], "raw_annotations": []},  # no prompt
    ]
    for i in range(5):
        _png(root / "test" / f"{i:05d}.jpg", i * 30)
    path = root / "test.json"
    path.write_text(json.dumps(items))
    return path


def test_hpdv2_pairs_keys_images_root_and_bad_row(tmp_path):
    """Format: tgxs002/HPSv2 README.md test.json; images in HPD/test/ as evaluate_rank's --image-path."""
    src = _hpdv2(tmp_path)
    assert detect_format(src) == "hpdv2"
    bench = read_benchmark(src, images=tmp_path / "test")
    assert (bench.name, bench.metric) == ("hpdv2", "inversion_score")
    got = {r.key: (r.label, r.raw["group"]) for r in _ok(bench)}
    assert got == {"1:0-1": ("b", "1"), "1:0-2": ("a", "1"), "1:1-2": ("a", "1"), "2:0-1": ("tie", "2")}
    assert _ok(bench)[0].media["b"] == tmp_path / "test" / "00001.jpg"
    (err,) = _errors(bench)
    assert "test.json: row 3" in str(err) and "prompt" in str(err) and err.line == 3
    # without images=, the rows say where the images are (the README's HPD/test/ layout)
    errs = _errors(read_benchmark(src))
    assert len(errs) == 5 and f"pass images={tmp_path / 'test'}" in str(errs[0])
    _roundtrip("hpdv2", src, tmp_path, images=tmp_path / "test")


# ------------------------------------------------------------------ Pick-a-Pic v2
def _pickapic_shard(path: Path, rows: list[tuple]) -> Path:
    """The Pick-a-Pic v2 parquet columns yuvalkirstain/PickScore reads (trainer/datasetss/clip_hf_dataset.py
    CLIPHFDatasetConfig; trainer/scripts/eval_preference_predictor.py): caption, jpg_0/jpg_1 as image bytes,
    label_0/label_1 (0.5/0.5 = tie), has_label, are_different, ranking_id."""
    pa, pq = _pa()
    cols = ["caption", "jpg_0", "jpg_1", "label_0", "label_1", "has_label", "are_different", "ranking_id"]
    table = pa.table({c: [r[i] for r in rows] for i, c in enumerate(cols)},
                     schema=pa.schema([("caption", pa.string()), ("jpg_0", pa.binary()), ("jpg_1", pa.binary()),
                                       ("label_0", pa.float64()), ("label_1", pa.float64()),
                                       ("has_label", pa.bool_()), ("are_different", pa.bool_()),
                                       ("ranking_id", pa.int64())]))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def _pickapic(root: Path) -> Path:
    a, b, c = _png_bytes(10), _png_bytes(120), _png_bytes(240)
    _pickapic_shard(root / "data" / "validation_unique-00000-of-00001-c2396290184ff49d.parquet", [
        ("a fox in snow", a, b, 1.0, 0.0, True, True, 11),
        ("a fox in snow", b, c, 0.0, 1.0, True, True, 12),
        ("two owls", a, c, 0.5, 0.5, True, True, 13),
        ("unlabelled", a, b, 0.0, 0.0, False, True, 14),      # has_label false: skipped, not an error
        ("odd labels", a, b, 0.3, 0.7, True, True, 15),       # neither a win nor a tie: bad row
    ])
    _pickapic_shard(root / "data" / "test_unique-00000-of-00001-e852c19ead276a89.parquet", [
        ("a lighthouse", c, a, 1.0, 0.0, True, True, 21),
        ("", c, a, 1.0, 0.0, True, True, 22),                   # empty caption: bad row
    ])
    return root / "data"


def test_pickapic_folder_of_shards_splits_labels_and_extraction(tmp_path):
    """Format: Pick-a-Pic v2 parquet shards (`data/<split>-00000-of-00001-<hash>.parquet`), columns as
    yuvalkirstain/PickScore trainer/datasetss/clip_hf_dataset.py reads them."""
    data = _pickapic(tmp_path)
    assert detect_format(data) == "pickapic"
    assert detect_format(next(data.glob("test_unique*.parquet"))) == "pickapic"
    bench = read_benchmark(data)
    assert (bench.name, bench.metric, bench.skipped) == ("pickapic", "pickscore_accuracy", {"has_label false": 1})
    ok = {r.key: (r.label, r.raw["split"]) for r in _ok(bench)}
    assert ok == {"test_unique:00000:1": ("a", "test_unique"),
                  "validation_unique:00000:1": ("a", "validation_unique"),
                  "validation_unique:00000:2": ("b", "validation_unique"),
                  "validation_unique:00000:3": ("tie", "validation_unique")}
    errs = {(Path(str(e).split(":")[0]).name, e.line): str(e) for e in _errors(bench)}
    assert set(errs) == {("test_unique-00000-of-00001-e852c19ead276a89.parquet", 2),
                         ("validation_unique-00000-of-00001-c2396290184ff49d.parquet", 5)}
    assert "row 5" in errs[("validation_unique-00000-of-00001-c2396290184ff49d.parquet", 5)]
    # bytes land beside each shard in <stem>-images/, one file per distinct image
    r = next(r for r in _ok(bench) if r.key == "validation_unique:00000:1")
    folder = data / "validation_unique-00000-of-00001-c2396290184ff49d-images"
    assert r.media["a"].parent == folder and r.media["a"].read_bytes() == _png_bytes(10)
    assert r.media["a"].suffix == ".png" and len(list(folder.iterdir())) == 3
    # content-addressed: reading again rewrites nothing
    stamps = {p: p.stat().st_mtime_ns for p in folder.iterdir()}
    read_benchmark(data, "pickapic")
    assert {p: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps
    # images= puts them elsewhere
    bench2 = read_benchmark(data, "pickapic", images=tmp_path / "pap-images")
    assert all(r.media["a"].parent == tmp_path / "pap-images" for r in _ok(bench2))
    _, back = _roundtrip("pickapic", data, tmp_path, images=tmp_path / "pap-images")
    assert back["validation_unique:00000:3"].raw["split"] == "validation_unique"
    assert sorted(Path(f).name for f in convert("pickapic", data, tmp_path / "c2", images=tmp_path / "pap-images")) == [
        "pickapic-errors.txt", "pickapic-test_unique.jsonl", "pickapic-validation_unique.jsonl"]


def test_pickapic_unwritable_image_folder_is_a_clear_error(tmp_path):
    """Format: one Pick-a-Pic v2 shard (yuvalkirstain/PickScore clip_hf_dataset.py columns)."""
    shard = next(_pickapic(tmp_path).glob("test_unique*.parquet"))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="cannot write the images.*images=DIR"):
        read_benchmark(shard, "pickapic", images=blocker / "img")
    # a shard missing the label columns is not Pick-a-Pic at all
    pa, pq = _pa()
    bad = tmp_path / "other.parquet"
    pq.write_table(pa.table({"caption": ["x"]}), bad)
    assert detect_format(bad) is None
    with pytest.raises(ValueError, match="not a Pick-a-Pic shard"):
        read_benchmark(bad, "pickapic")


# ------------------------------------------------------------------ GenAI-Bench
def _genai_image_parquet(root: Path) -> Path:
    """TIGER-AI-Lab/GenAI-Bench inference.py / inference_configs.json (image_generation: prompt, left_image,
    right_image, vote_type in leftvote/rightvote/tievote/bothbad_vote), stored as the HF dataset's parquet
    `image_generation/test_v1-00000-of-00001.parquet` with images as HF Image structs {bytes, path}."""
    pa, pq = _pa()
    img = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    rows = [("a cute dog is playing a ball", 10, 200, "leftvote"), ("a mom holding a baby's hand", 20, 30, "rightvote"),
            ("buildings on fire", 40, 50, "tievote"), ("a bowl of soup", 60, 70, "bothbad_vote"),
            ("a blue car", 80, 90, "maybevote")]
    table = pa.table({
        "prompt": pa.array([r[0] for r in rows]),
        "left_model": pa.array(["m1"] * len(rows)),
        "left_image": pa.array([{"bytes": _png_bytes(r[1]), "path": None} for r in rows], type=img),
        "right_model": pa.array(["m2"] * len(rows)),
        "right_image": pa.array([{"bytes": _png_bytes(r[2]), "path": None} for r in rows], type=img),
        "vote_type": pa.array([r[3] for r in rows]),
    })
    path = root / "image_generation" / "test_v1-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(table, path)
    return path


def test_genai_bench_image_parquet_votes_and_bad_vote(tmp_path):
    """Format: TIGER-AI-Lab/GenAI-Bench inference.py + inference_configs.json, HF parquet of TIGER-Lab/GenAI-Bench."""
    src = _genai_image_parquet(tmp_path)
    assert detect_format(src) == "genai-bench"
    bench = read_benchmark(src)
    assert (bench.name, bench.metric, bench.task) == ("genai-bench", "accuracy_without_ties", "t2i-overall")
    got = {r.key: (r.label, r.raw["vote_type"]) for r in _ok(bench)}
    assert got == {"1": ("a", "leftvote"), "2": ("b", "rightvote"), "3": ("tie", "tievote"),
                   "4": ("tie", "bothbad_vote")}
    r = _ok(bench)[0]
    assert r.media["a"].parent == src.parent / "test_v1-00000-of-00001-images"
    assert r.media["a"].read_bytes() == _png_bytes(10) and r.raw["split"] == "test_v1"
    assert (r.raw["model_a"], r.raw["model_b"]) == ("m1", "m2")
    (err,) = _errors(bench)
    assert "test_v1-00000-of-00001.parquet: row 5" in str(err) and "unknown vote_type 'maybevote'" in str(err)
    _roundtrip("genai-bench", src, tmp_path)


def test_genai_bench_video_jsonl_urls_paths_and_malformed_line(tmp_path, mp4_bytes):
    """Format: TIGER-AI-Lab/GenAI-Bench inference_configs.json video_generation (prompt, left_video,
    right_video as URLs or paths, genaibench/utils.py process_video_into_frames), one object per line."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("79e4e57959b4411e8d7532d655cbd6c6.mp4", "b.mp4", "c.mp4"):
        (videos / name).write_bytes(mp4_bytes)
    url = "https://huggingface.co/datasets/tianleliphoebe/genai-arena-video-mp4/blob/main/dir/79e4e57959b4411e8d7532d655cbd6c6.mp4"
    lines = [json.dumps({"prompt": "a corgi surfing", "left_model": "m1", "left_video": url,
                         "right_model": "m2", "right_video": "b.mp4", "vote_type": "rightvote"}),
             "{this is not json",
             json.dumps({"prompt": "a falling leaf", "left_video": "c.mp4", "right_video": "missing.mp4",
                         "vote_type": "leftvote"})]
    src = tmp_path / "genai_video.jsonl"
    src.write_text("\n".join(lines) + "\n")
    assert detect_format(src) == "genai-bench"
    bench = read_benchmark(src, images=videos)
    assert bench.task == "t2v-overall"
    (r,) = _ok(bench)
    assert r.video and r.label == "b" and r.key == "1"
    assert r.media["a"] == videos / "79e4e57959b4411e8d7532d655cbd6c6.mp4" and r.media["b"] == videos / "b.mp4"
    errs = {e.line: str(e) for e in _errors(bench)}
    assert set(errs) == {2, 3}
    assert "genai_video.jsonl:2: malformed JSON" in errs[2]
    assert "row 3" in errs[3] and "missing.mp4" in errs[3] and "file not found" in errs[3]
    _roundtrip("genai-bench", src, tmp_path, images=videos)


def test_genai_bench_json_list_with_paths_and_image_editing(tmp_path):
    """Format: TIGER-AI-Lab/GenAI-Bench inference_configs.json columns for image_generation and image_edition
    (source_prompt, target_prompt, instruct_prompt, source_image, left_output_image, right_output_image),
    as a JSON list with image paths instead of embedded bytes."""
    for name in ("l.png", "r.png", "src.png"):
        _png(tmp_path / "img" / name)
    gen = tmp_path / "genai_image.json"
    gen.write_text(json.dumps([{"prompt": "a red kite", "left_image": "img/l.png", "right_image": "img/r.png",
                                "vote_type": "tievote"}]))
    assert detect_format(gen) == "genai-bench"
    (r,) = read_benchmark(gen).records
    assert (r.label, r.media["a"], r.raw["genai_task"]) == ("tie", tmp_path / "img" / "l.png", "image_generation")
    edit = tmp_path / "genai_edit.json"
    edit.write_text(json.dumps([{"source_prompt": "a cat", "target_prompt": "a dog", "instruct_prompt": "make it a dog",
                                 "source_image": "src.png", "left_output_image": "l.png",
                                 "right_output_image": "r.png", "vote_type": "leftvote"}]))
    (r,) = read_benchmark(edit, images=tmp_path / "img").records
    assert (r.label, r.prompt, r.raw["genai_task"]) == ("a", "make it a dog", "image_edition")
    assert r.media["condition"] == tmp_path / "img" / "src.png" and r.media["b"] == tmp_path / "img" / "r.png"
    _roundtrip("genai-bench", edit, tmp_path, images=tmp_path / "img")


# ------------------------------------------------------------------ VideoGen-RewardBench
def test_videogen_rewardbench_csv_dimensions_and_bad_row(tmp_path, mp4_bytes):
    """Format: KwaiVGI/VideoAlign eval_videogen_rewardbench.py (datasets/eval/videogen-rewardbench.csv, paths
    joined with the CSV's folder, labels A/B/same for VQ, MQ, TA, Overall) and datasets/train/README.md."""
    root = tmp_path / "eval"
    (root / "videos").mkdir(parents=True)
    for name in ("1_A.mp4", "1_B.mp4", "2_A.mp4", "2_B.mp4"):
        (root / "videos" / name).write_bytes(mp4_bytes)
    header = ["path_A", "path_B", "A_model", "B_model", "prompt", "fps_A", "num_frames_A", "fps_B", "num_frames_B",
              "VQ", "MQ", "TA", "Overall"]
    rows = [["videos/1_A.mp4", "./videos/1_B.mp4", "kling", "gen3", "A girl, braided hair, sits on a chair",
             "24.0", "126.0", "30.0", "152.0", "B", "B", "A", "B"],
            ["videos/2_A.mp4", "videos/2_B.mp4", "kling", "gen3", "An explorer, at night", "24.0", "144.0", "24.0",
             "128.0", "same", "A", "same", "same"],
            ["videos/2_A.mp4", "videos/2_B.mp4", "kling", "gen3", "bad overall", "24", "1", "24", "1", "A", "A", "A",
             "maybe"]]
    src = root / "videogen-rewardbench.csv"
    with src.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    assert detect_format(src) == "videogen-rewardbench"
    bench = read_benchmark(src)
    assert (bench.name, bench.metric, bench.task) == ("videogen-rewardbench", "accuracy_without_ties", "t2v-overall")
    ok = _ok(bench)
    assert [(r.key, r.label, r.video) for r in ok] == [("1", "b", True), ("2", "tie", True)]
    assert ok[0].media["b"] == root / "videos" / "1_B.mp4"
    assert ok[0].raw["dimensions"] == {"VQ": "b", "MQ": "b", "TA": "a", "Overall": "b"}
    (err,) = _errors(bench)
    assert "videogen-rewardbench.csv: row 3" in str(err) and "'maybe'" in str(err)
    # images= moves the root of the relative paths
    moved = tmp_path / "elsewhere"
    shutil.copytree(root / "videos", moved / "videos")
    assert _ok(read_benchmark(src, images=moved))[0].media["a"] == moved / "videos" / "1_A.mp4"
    _roundtrip("videogen-rewardbench", src, tmp_path)


# ------------------------------------------------------------------ detection and top-level errors
def test_detect_format_own_manifest_missing_and_unknown(tmp_path):
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text(json.dumps({"prompt": "p", "image_a": "a.png", "image_b": "b.png", "label": "a"}) + "\n")
    assert detect_format(manifest) is None
    with pytest.raises(ValueError, match="not a benchmark file"):
        read_benchmark(manifest)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_benchmark(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError):
        detect_format(tmp_path / "nope.json")
    with pytest.raises(ValueError, match="unknown benchmark format 'parti'"):
        read_benchmark(manifest, "parti")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    assert detect_format(tmp_path / "other.csv") is None
    (tmp_path / "bom.csv").write_text("\ufeffpath_A,path_B,prompt,Overall\n", encoding="utf-8")
    assert detect_format(tmp_path / "bom.csv") == "videogen-rewardbench"
    (tmp_path / "config.json").write_text('{"lr": 1}')
    assert detect_format(tmp_path / "config.json") is None
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        detect_format(tmp_path / "broken.json")
    assert set(FORMATS) == {"imagereward", "hpdv2", "pickapic", "genai-bench", "videogen-rewardbench"}


# ------------------------------------------------------------------ headline metrics, hand-computed
def _rec(key, label, group="g", split=None, dims=None) -> Record:
    raw = {"id": key, "group": group}
    if split:
        raw["split"] = split
    if dims:
        raw["dimensions"] = dims
    return Record(key, 1, "pairwise", "p", {"a": Path("a.png"), "b": Path("b.png"), "reference": None,
                                             "condition": None}, False, label, None, raw)


def test_imagereward_pooled_vs_hpdv2_per_prompt():
    """ImageReward pools every pair (test.py `acc`); HPSv2 averages 1 - discordant/C(n,2) per prompt
    (train.py `inversion_score`, evaluation.py `evaluate_rank`): the same pairs give different numbers."""
    recs = [_rec("1:0-1", "a", "1"), _rec("1:0-2", "a", "1"), _rec("1:0-3", "b", "1"), _rec("1:1-2", "b", "1"),
            _rec("1:1-3", "tie", "1"), _rec("2:0-1", "a", "2"), _rec("2:0-2", "a", "2")]
    p = {"1:0-1": 0.9,   # right
         "1:0-2": 0.2,   # wrong (discordant)
         "1:0-3": 0.1,   # right
         "1:1-2": 0.5,   # model tie: wrong for ImageReward, discordant for HPDv2
         "1:1-3": 0.7,   # human tie: skipped (IR), never discordant (HPDv2)
         "2:0-1": 0.6}   # right; "2:0-2" was not scored (a failed row) and is left out
    ir = headline(Benchmark("imagereward", recs, "pooled_pair_accuracy"), p)
    assert ir == {"name": "imagereward", "metric": "pooled_pair_accuracy", "value": 3 / 5, "n": 5, "n_ties_skipped": 1}
    hp = headline(Benchmark("hpdv2", recs, "inversion_score"), p)
    # prompt 1: 5 scored pairs, 2 discordant -> 0.6; prompt 2: 1 pair, 0 discordant -> 1.0; mean 0.8
    assert hp["value"] == pytest.approx(0.8) and (hp["n"], hp["n_prompts"]) == (6, 2)
    assert hp["metric"] == "inversion_score"


def test_pickscore_scoring_half_point_for_ties():
    """yuvalkirstain/PickScore eval_preference_predictor.py calc_score: 1 match, 0.5 if either side ties."""
    # p=0.5 -> |p1-p0| = 0 <= 0 -> predicted tie vs label a: 0.5; p=0.9 vs human tie: 0.5; exact match 1; miss 0
    assert pickscore_score([0.5, 0.9, 0.9, 0.1], ["a", "tie", "a", "a"], 0.0) == 0.5
    assert pickscore_score([0.5, 0.75], ["tie", "tie"], 0.0) == 0.75


def test_pickscore_threshold_chosen_on_validation_reported_on_test():
    """PickScore's protocol (eval_preference_predictor.py main): t from [0, 0.1, ..., 1] maximising the
    validation_unique score (first maximum), reported on test_unique."""
    val = [("v1", "tie", 0.5625), ("v2", "tie", 0.4375), ("v3", "a", 0.9375), ("v4", "b", 0.0625)]
    test = [("t1", "tie", 0.5625), ("t2", "a", 0.75), ("t3", "a", 0.25), ("t4", "tie", 0.4375)]
    recs = [_rec(k, lab, split="validation_unique") for k, lab, _ in val] + \
           [_rec(k, lab, split="test_unique") for k, lab, _ in test]
    p = {k: x for k, _, x in val + test}
    bench = Benchmark("pickapic", recs, "pickscore_accuracy")
    # validation: |p1-p0| = 0.125 for the ties, 0.875 for the wins: t in 0.2..0.8 gets all four right; first is 0.2
    # test at t=0.2: t1 tie=tie 1, t2 a 1, t3 b vs a 0, t4 tie 1 -> 0.75 (at t=0 it would be 0.5)
    out = headline(bench, p)
    assert (out["value"], out["threshold"], out["calibrated_on"], out["reported_on"]) == (
        0.75, 0.2, "validation_unique", ["test_unique"])
    assert out["calibration_value"] == 1.0 and out["n"] == 4
    # the other way round: t chosen on test (0.2 first reaches its best 0.75), reported on validation
    swapped = headline(bench, p, calibration_split="test_unique")
    assert (swapped["value"], swapped["threshold"], swapped["calibrated_on"]) == (1.0, 0.2, "test_unique")
    # one split only: chosen and reported on the same pairs, and the result says so
    only_val = headline(Benchmark("pickapic", recs[:4], "pickscore_accuracy"), p)
    assert (only_val["value"], only_val["calibrated_on"]) == (1.0, "same split")
    with pytest.raises(ValueError, match="calibration split 'train'"):
        headline(bench, p, calibration_split="train")


def test_accuracy_without_and_with_ties_genai_and_videogen():
    """KwaiVGI/VideoAlign calc_accuracy.py: without ties C/(C+D) over human-decided pairs (a model tie is
    discordant); with ties by tie calibration over the data's own margins."""
    recs = [_rec("1", "a", dims={"VQ": "a", "Overall": "a"}), _rec("2", "b", dims={"VQ": "tie", "Overall": "b"}),
            _rec("3", "tie", dims={"VQ": "tie", "Overall": "tie"}), _rec("4", "a", dims={"VQ": "b", "Overall": "a"})]
    p = {"1": 0.875, "2": 0.125, "3": 0.5625, "4": 0.25}
    out = headline(Benchmark("genai-bench", recs, "accuracy_without_ties"), p)
    # without ties: 1 right, 2 right, 4 wrong -> 2/3; with ties at t=1/16: 3 becomes a right tie -> 3/4
    assert out["value"] == pytest.approx(2 / 3) and (out["n"], out["n_ties"]) == (3, 1)
    assert out["accuracy_with_ties"] == 0.75 and out["tie_threshold"] == 0.0625
    vg = headline(Benchmark("videogen-rewardbench", recs, "accuracy_without_ties"), p)
    assert vg["value"] == out["value"] and vg["dimensions"]["Overall"]["accuracy_without_ties"] == out["value"]
    # VQ: decided pairs 1 (a, right) and 4 (b, p=0.25 right) -> 1.0
    assert vg["dimensions"]["VQ"]["accuracy_without_ties"] == 1.0 and vg["dimensions"]["VQ"]["n"] == 2
    # RecordErrors and unscored keys are skipped
    with_err = Benchmark("genai-bench", recs + [RecordError("x: row 9: bad", key="9", line=9)], "accuracy_without_ties")
    assert headline(with_err, {**p, "9": 0.9})["value"] == out["value"]
