"""Media in, validated: every bad input gives one clear error naming the file; odd modes are converted."""

from __future__ import annotations

import struct
import zlib
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from rewarddance.media import MAX_SIDE, MediaError, load_image, load_video, validate_prompt, write_video


def test_missing_empty_corrupt_unsupported(tmp_path):
    cases = {
        "missing.png": None,
        "empty.png": b"",
        "corrupt.png": b"\x89PNG\r\n\x1a\n" + b"garbage" * 10,
        "notes.txt": b"hello",
        "truncated.jpg": None,
    }
    for name, data in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
    buf = tmp_path / "full.jpg"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buf)
    (tmp_path / "truncated.jpg").write_bytes(buf.read_bytes()[:200])
    expected = {"missing.png": "file not found", "empty.png": "empty file", "corrupt.png": "corrupt",
                "notes.txt": "unsupported image format", "truncated.jpg": "corrupt image"}
    for name, msg in expected.items():
        with pytest.raises(MediaError, match=msg) as e:
            load_image(tmp_path / name)
        assert name in str(e.value) and "\n" not in str(e.value)


def _png_header_only(path, width, height):
    """A PNG whose header claims width×height: what a decompression bomb looks like before decoding."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
                     + chunk(b"IEND", b""))


def test_decompression_bomb_refused_and_large_image_resized(tmp_path):
    _png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(MediaError, match="decompression bomb"):
        load_image(tmp_path / "bomb.png")
    Image.new("RGB", (5000, 4000), (10, 200, 10)).save(tmp_path / "big.jpg", quality=50)
    x = load_image(tmp_path / "big.jpg")
    assert max(x.shape[1:]) <= MAX_SIDE and abs(x[1].mean().item() - 200 / 255) < 0.05


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "I;16", "P", "1", "LA"])
def test_modes_are_converted_not_rejected(tmp_path, mode):
    img = Image.new("RGB", (16, 12), (120, 60, 30)).convert(mode)
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "I;16") else "x.png")
    img.save(path)
    for src in (path, img):
        x = load_image(src)
        assert x.shape == (3, 12, 16) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1


def test_sixteen_bit_scaled(tmp_path):
    arr = np.full((4, 4), 65535, dtype=np.uint16)
    assert torch.allclose(load_image(arr), torch.ones(3, 4, 4))
    Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16)).save(tmp_path / "a.png")
    assert abs(load_image(tmp_path / "a.png").mean().item() - 0.5) < 0.01


def test_rgba_composited_on_white():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)  # fully transparent black
    assert torch.allclose(load_image(rgba), torch.ones(3, 2, 2))


@settings(max_examples=60, deadline=None)
@given(arrays(st.sampled_from([np.uint8, np.uint16, np.float32, np.float64]),
              st.tuples(st.integers(1, 9), st.integers(1, 9), st.sampled_from([1, 3, 4])),
              elements=st.integers(0, 255)))
def test_array_normalisation_properties(arr):
    if arr.dtype.kind == "f":
        arr = arr / 255.0
    x = load_image(arr)
    h, w = arr.shape[:2]
    assert x.shape == (3, h, w) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.equal(load_image(arr), x)  # deterministic


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 40), st.integers(1, 12), st.one_of(st.none(), st.integers(1, 12)))
def test_frame_sampling_properties(n, k, fps_frames):
    frames = torch.rand(n, 3, 4, 4)
    out = load_video(frames, num_frames=k)
    assert len(out) == min(n, k)
    assert torch.equal(out[0], frames[0])  # sampling keeps the first frame


def test_channels_first_arrays():
    chw = np.zeros((3, 6, 8), dtype=np.uint8)
    assert load_image(chw).shape == (3, 6, 8)


def test_tensor_passthrough_keeps_graph():
    x = torch.rand(3, 8, 8, requires_grad=True)
    assert load_image(x) is x


@pytest.mark.parametrize("kind", ["tensor", "array", "video"])
def test_float_pixels_are_checked_for_tensors_arrays_and_videos(kind):
    """NaN, 0-255 and [-1, 1] data are refused whatever carries them; resampling overshoot is not."""
    def load(x: torch.Tensor):
        if kind == "video":
            return load_video(torch.stack([x, x.clamp(0, 1)]))
        return load_image(x if kind == "tensor" else x.numpy())

    x = torch.rand(3, 8, 8)
    for bad, match in ((x.clone().index_fill_(1, torch.tensor([2]), float("nan")), "NaN"),
                       (x * 255, "divide by 255"), (x * 2 - 1, r"\(x \+ 1\) / 2")):
        with pytest.raises(MediaError, match=match):
            load(bad)
    overshoot = x * 1.08 - 0.04  # what bicubic resampling of a [0, 1] image produces
    assert torch.isfinite(load(overshoot)).all()


def test_bad_arrays_and_prompts():
    with pytest.raises(MediaError, match="channels"):
        load_image(np.zeros((4, 4, 2), dtype=np.uint8))
    with pytest.raises(MediaError, match="NaN"):
        load_image(np.full((4, 4, 3), np.nan, dtype=np.float32))
    with pytest.raises(MediaError, match="not an image"):
        load_image(42)
    for bad in ("", "   ", None):
        with pytest.raises(MediaError, match="empty prompt"):
            validate_prompt(bad)


def test_video_roundtrip_and_bad_videos(tmp_path):
    frames = torch.linspace(0, 1, 8)[:, None, None, None].expand(8, 3, 32, 32).contiguous()
    write_video(tmp_path / "ok.mp4", frames)
    got = load_video(tmp_path / "ok.mp4")
    assert got.shape == (8, 3, 32, 32) and (got - frames).abs().mean() < 0.03
    assert load_video(tmp_path / "ok.mp4", num_frames=4).shape[0] == 4
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "junk.mp4").write_bytes(b"\x00\x01" * 500)
    for name, msg in (("empty.mp4", "empty file"), ("junk.mp4", "no decodable video frames"),
                      ("missing.mp4", "file not found")):
        with pytest.raises(MediaError, match=msg) as e:
            load_video(tmp_path / name)
        assert name in str(e.value)
    with pytest.raises(MediaError, match="no frames"):
        load_video([])
    # a file cut off part-way (an interrupted download): webm decodes its first part without an error
    noise = torch.rand(32, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    data = write_video(tmp_path / "full.webm", noise).read_bytes()
    assert load_video(tmp_path / "full.webm").shape[0] == 32
    (tmp_path / "cut.webm").write_bytes(data[:len(data) // 2])
    with pytest.raises(MediaError, match=r"truncated video: its frames end at 1\.[5-9]\d s of the 4\.00 s") as e:
        load_video(tmp_path / "cut.webm")
    assert "cut.webm" in str(e.value)
    (tmp_path / "cut90.webm").write_bytes(data[:len(data) * 9 // 10])
    with pytest.raises(MediaError, match="truncated video"):
        load_video(tmp_path / "cut90.webm")
    # a variable frame rate (a screen recording): 40 frames at 30 fps, then 10 at 1 fps, is whole
    vfr = tmp_path / "vfr.webm"
    with av.open(str(vfr), "w") as container:
        stream = container.add_stream("libvpx", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for k, t in enumerate([i / 30 for i in range(40)] + [40 / 30 + i for i in range(10)]):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 5 * k, np.uint8), format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    assert load_video(vfr).shape[0] == 50
