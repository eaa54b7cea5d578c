"""The reward server end to end: real uvicorn servers on loopback sockets, real clients (httpx, the
official `openai` client, RewardClient), every answer checked against a direct `rm.score`.

Servers: uvicorn in threads of this process (the main one; others for two replicas, a pairwise
model, a small queue, a slow load), and one `rewarddance serve` subprocess (auth, logs, SIGTERM,
two replicas), started first so that it loads while the others are tested. Faults are injected
into the model (its `score_items`), never into the server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest
import torch
import uvicorn
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

import rewarddance as rd
from rewarddance.media import load_image, write_video
from rewarddance.serve import RewardClient, RewardRequestError, RewardServerError, ServeConfig, create_app

from .conftest import smooth_images


# Requests without their own timeout: httpx's default (5 s) is too short when the test shares its 2 cores
# with the module's CLI server loading its replicas.
def http_get(url: str, **kwargs) -> httpx.Response:
    return httpx.get(url, timeout=60, **kwargs)


def http_post(url: str, **kwargs) -> httpx.Response:
    return httpx.post(url, timeout=60, **kwargs)


PROMPTS = ["a red circle", "two blue squares", "a green star left of a yellow triangle"]
KEY = "sk-test-7f3a9c-never-logged"
TOL = 1e-5


# ------------------------------------------------------------------ helpers
def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def data_url(path: Path) -> str:
    return "data:image/png;base64," + b64(path)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width×height pixels and whose data is empty: what a decompression
    bomb looks like before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def wait_ready(url: str, timeout: float = 180.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def until(check, what: str, timeout: float = 60.0) -> None:
    """Poll `check()` until it is true; fail, never hang, after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def metric(url: str, name: str, headers: dict | None = None, **labels: str) -> float:
    """A sample's value from the server's /metrics (0 when absent), read with Prometheus' own parser."""
    text = httpx.get(f"{url}/metrics", headers=headers or {}, timeout=60).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


async def post_all(url: str, requests: list[tuple[str, dict | bytes]], headers: dict | None = None) -> list:
    """POST every (path, body) at once; the responses in order."""
    async with httpx.AsyncClient(timeout=120, headers=headers or {}) as client:
        return await asyncio.gather(*[
            client.post(url + path, content=body) if isinstance(body, bytes) else client.post(url + path, json=body)
            for path, body in requests])


class ThreadServer:
    """uvicorn serving `app` from a thread of this process on a free loopback port (bound here, so
    no other process can take it between choosing and listening)."""

    def __init__(self, app, *, ready: bool = True) -> None:
        self.app = app
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        if ready:
            wait_ready(self.url)

    @property
    def config(self) -> ServeConfig:
        return self.app.state.serve.config

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module", autouse=True)
def cli_server(preset_dirs, tmp_path_factory):
    """`rewarddance serve` in a subprocess with an API key and two CPU replicas; started before
    everything else."""
    path = preset_dirs("qwen2_5_vl")
    root = tmp_path_factory.mktemp("cli-server")
    (root / "keys").write_text(f"# one key a line\n{KEY}\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(root / "server.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "rewarddance.cli", "serve", "--model", str(path), "--port",
                                 str(port), "--api-key-file", str(root / "keys"), "--max-wait-ms", "50",
                                 "--max-batch-size", "64", "--replicas", "2"], stdout=log, stderr=subprocess.STDOUT)
        yield SimpleNamespace(proc=proc, url=f"http://127.0.0.1:{port}", log=root / "server.log")
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def rm(load_rm):
    return load_rm("qwen2_5_vl")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("serve-images")
    out = []
    for i, img in enumerate(smooth_images(8, size=(48, 48), seed=3)):
        path = root / f"img{i}.png"
        Image.fromarray((img * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()).save(path)
        out.append(path)
    return out


@pytest.fixture(scope="module")
def expected(rm, files) -> dict[tuple[str, int], float]:
    """Direct rm.score of every (prompt, image): what every served answer is checked against."""
    table = {}
    for p in PROMPTS:
        for i, r in enumerate(rm.score(p, files)):
            table[p, i] = r
    return table


@pytest.fixture(scope="module")
def server(rm):
    srv = ThreadServer(create_app([rm], ServeConfig(max_batch_size=8, max_wait_ms=20), model_name="tiny"))
    yield srv
    srv.close()


def score_body(prompt: str, idx: list[int], files: list[Path]) -> dict:
    return {"prompts": [prompt], "images": [b64(files[i]) for i in idx]}


# ------------------------------------------------------------------ endpoints
def test_probes_schema_models_and_request_ids(server):
    assert http_get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = http_get(f"{server.url}/readyz").json()
    assert ready == {"status": "ready", "model": "tiny", "task": "t2i-alignment", "layout": "pointwise",
                     "media": "image", "replicas": 1}
    schema = http_get(f"{server.url}/openapi.json").json()
    for path in ("/v1/score", "/v1/compare", "/v1/rank", "/v1/chat/completions", "/healthz", "/readyz", "/metrics"):
        assert path in schema["paths"]
    score = schema["paths"]["/v1/score"]["post"]
    assert set(score["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert {"ScoreRequest", "ScoreResponse", "ChatRequest", "ChatCompletion", "ErrorResponse"} <= set(
        schema["components"]["schemas"])
    assert http_get(f"{server.url}/v1/models").json()["data"][0]["id"] == "tiny"
    r = http_get(f"{server.url}/healthz", headers={"X-Request-Id": "trainer-step-7"})
    assert r.headers["x-request-id"] == "trainer-step-7"
    assert "rewarddance_queue_depth" in http_get(f"{server.url}/metrics").text


def test_readyz_is_200_only_once_the_model_is_loaded(rm):
    loaded = threading.Event()

    def load():
        loaded.wait(60)
        return [rm]

    srv = ThreadServer(create_app(load), ready=False)
    try:
        r = http_get(f"{srv.url}/readyz")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        assert http_get(f"{srv.url}/healthz").status_code == 200
        r = http_post(f"{srv.url}/v1/score", json={"prompts": ["x"], "images": ["x"]})
        assert r.status_code == 503 and r.json()["error"]["type"] == "not_ready" and "retry-after" in r.headers
        loaded.set()
        wait_ready(srv.url)
    finally:
        loaded.set()
        srv.close()


def test_score_json_and_multipart_equal_direct_scoring(server, files, expected):
    body = {"prompts": [PROMPTS[0]], "images": [b64(files[0]), data_url(files[1]), b64(files[2])]}
    r = http_post(f"{server.url}/v1/score", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "tiny" and r.json()["task"] == "t2i-alignment"
    assert r.json()["rewards"] == pytest.approx([expected[PROMPTS[0], i] for i in range(3)], abs=TOL)
    # one prompt per image
    body = {"prompts": PROMPTS, "images": [b64(files[i]) for i in (3, 4, 5)]}
    rewards = http_post(f"{server.url}/v1/score", json=body).json()["rewards"]
    assert rewards == pytest.approx([expected[p, i] for p, i in zip(PROMPTS, (3, 4, 5))], abs=TOL)
    # multipart: uploaded files, one prompt per image as repeated text fields
    uploads = [("images", (f.name, f.read_bytes(), "image/png")) for f in files[:2]]
    r = http_post(f"{server.url}/v1/score", data={"prompts": PROMPTS[1:], "task": "t2i-alignment"}, files=uploads)
    assert r.status_code == 200, r.text
    assert r.json()["rewards"] == pytest.approx([expected[PROMPTS[1], 0], expected[PROMPTS[2], 1]], abs=TOL)


def test_score_videos_as_files_and_frame_lists(server, rm, files, tmp_path):
    video = write_video(tmp_path / "v.mp4", torch.stack([load_image(f) for f in files[:4]]), fps=4)
    want = rm.score(PROMPTS[0], [video, list(files[:4])], task="t2v-overall")
    body = {"prompts": [PROMPTS[0]], "videos": [b64(video), [b64(f) for f in files[:4]]], "task": "t2v-overall"}
    r = http_post(f"{server.url}/v1/score", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["rewards"] == pytest.approx(want, abs=TOL)
    r = http_post(f"{server.url}/v1/score", json={**body, "images": body["videos"][1], "videos": None})
    assert r.status_code == 422 and r.json()["error"]["param"] == "images"


def test_compare_and_rank_equal_the_model(server, rm, files):
    r = http_post(f"{server.url}/v1/compare", json={"prompt": PROMPTS[2], "image_a": b64(files[0]),
                                                     "image_b": b64(files[1])})
    assert r.status_code == 200, r.text
    assert r.json()["probability"] == pytest.approx(rm.compare(PROMPTS[2], files[0], files[1]), abs=TOL)
    r = http_post(f"{server.url}/v1/rank", json={"prompt": PROMPTS[2], "images": [b64(f) for f in files[:5]]})
    assert r.status_code == 200, r.text
    assert r.json()["ranking"] == rm.rank(PROMPTS[2], files[:5])


def test_pairwise_model_score_compare_rank_and_chat(load_rm, files):
    prm = load_rm("qwen2_5_vl", "pairwise")
    srv = ThreadServer(create_app([prm], ServeConfig(max_wait_ms=5)))
    try:
        body = {"prompts": [PROMPTS[0]], "images": [b64(files[1]), b64(files[2])], "references": [b64(files[0])]}
        r = http_post(f"{srv.url}/v1/score", json=body)
        assert r.status_code == 200, r.text
        want = prm.score(PROMPTS[0], files[1:3], references=[files[0]])
        assert r.json()["rewards"] == pytest.approx(want, abs=TOL)
        r = http_post(f"{srv.url}/v1/score", json={**body, "references": None})
        assert r.status_code == 422 and r.json()["error"]["param"] == "references"
        r = http_post(f"{srv.url}/v1/compare", json={"prompt": PROMPTS[0], "image_a": b64(files[0]),
                                                      "image_b": b64(files[1])})
        assert r.json()["probability"] == pytest.approx(prm.compare(PROMPTS[0], files[0], files[1]), abs=TOL)
        r = http_post(f"{srv.url}/v1/rank", json={"prompt": PROMPTS[0], "images": [b64(f) for f in files[:3]]})
        assert r.json()["ranking"] == prm.rank(PROMPTS[0], files[:3])
        # chat: image 1 is the reference, image 2 the candidate
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused")
        out = client.chat.completions.create(model="judge", max_tokens=1, logprobs=True, top_logprobs=2, messages=[
            {"role": "user", "content": [{"type": "text", "text": PROMPTS[0]},
                                         {"type": "image_url", "image_url": {"url": data_url(files[0])}},
                                         {"type": "image_url", "image_url": {"url": data_url(files[1])}}]}])
        top = {t.token: t.logprob for t in out.choices[0].logprobs.content[0].top_logprobs}
        assert math.exp(top["yes"]) == pytest.approx(want[0], abs=TOL)
    finally:
        srv.close()


def test_openai_client_gets_the_judgment_with_logprobs(server, files, expected):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "system", "content": "You are a judge."},
                {"role": "user", "content": [{"type": "text", "text": PROMPTS[1]},
                                             {"type": "image_url", "image_url": {"url": data_url(files[4])}}]}]
    out = client.chat.completions.create(model="any-name", messages=messages, logprobs=True, top_logprobs=2,
                                         max_tokens=1, temperature=0)
    assert out.model == "any-name"
    token = out.choices[0].logprobs.content[0]
    top = {t.token: t.logprob for t in token.top_logprobs}
    assert set(top) == {"yes", "no"}
    reward = expected[PROMPTS[1], 4]
    assert math.exp(top["yes"]) == pytest.approx(reward, abs=TOL)
    assert math.exp(top["yes"]) + math.exp(top["no"]) == pytest.approx(1.0, abs=1e-6)
    assert out.choices[0].message.content == token.token == ("yes" if reward >= 0.5 else "no")
    assert [m.id for m in client.models.list()] == ["tiny"]
    remote = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    with pytest.raises(openai.UnprocessableEntityError, match="fetches no URLs"):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": [
            {"type": "text", "text": "a cat"}, remote]}])


def test_reward_client_sync_and_async_mirror_the_model(server, rm, files, expected):
    with RewardClient(server.url) as client:
        assert client.score(PROMPTS[0], files[:3]) == pytest.approx([expected[PROMPTS[0], i] for i in range(3)],
                                                                    abs=TOL)
        # tensors travel as 8-bit PNG: equal to the model on the same 8-bit image
        img = torch.rand(3, 40, 40)
        assert client.score(PROMPTS[0], img) == pytest.approx(
            rm.score(PROMPTS[0], (img * 255).round() / 255), abs=TOL)
        assert client.compare(PROMPTS[1], files[0], files[1]) == pytest.approx(
            rm.compare(PROMPTS[1], files[0], files[1]), abs=TOL)
        assert client.rank(PROMPTS[1], files[:4]) == rm.rank(PROMPTS[1], files[:4])
        with pytest.raises(RewardRequestError) as err:
            client.score(PROMPTS[0], [files[0], b"not an image"])
        assert isinstance(err.value, ValueError) and err.value.status == 422 and err.value.param == "images[1]"

    async def many() -> list[list[float]]:
        async with RewardClient(server.url) as client:
            return await asyncio.gather(*[client.ascore(p, files[:2]) for p in PROMPTS])

    for p, got in zip(PROMPTS, asyncio.run(many())):
        assert got == pytest.approx([expected[p, 0], expected[p, 1]], abs=TOL)


def test_fifty_concurrent_requests_equal_direct_scoring_and_are_batched(server, files, expected):
    jobs = [(PROMPTS[k % 3], [k % 8, (3 * k + 1) % 8][: 1 + k % 2]) for k in range(50)]
    before = metric(server.url, "rewarddance_batch_requests_count")
    responses = asyncio.run(post_all(server.url, [("/v1/score", score_body(p, idx, files)) for p, idx in jobs]))
    for (p, idx), r in zip(jobs, responses):
        assert r.status_code == 200, r.text
        assert r.json()["rewards"] == pytest.approx([expected[p, i] for i in idx], abs=TOL)
    batches = metric(server.url, "rewarddance_batch_requests_count") - before
    assert 0 < batches < 50  # requests shared model calls


# ------------------------------------------------------------------ bad input, faults, load
def test_each_bad_input_is_a_4xx_naming_its_field_while_good_requests_succeed(server, files, expected):
    good_jobs = [(PROMPTS[k % 3], k % 8) for k in range(8)]
    good = [("/v1/score", score_body(p, [i], files)) for p, i in good_jobs]
    img = b64(files[0])
    bad = [  # (path, body, status, param, what the message says)
        ("/v1/score", b'{"prompts": ["a"], "images": [', 400, "body", "not valid JSON"),
        ("/v1/score", {"images": [img]}, 422, "prompts", "Field required"),
        ("/v1/score", {"prompts": ["a"], "images": img}, 422, "images", "valid array"),
        ("/v1/score", {"prompts": [1], "images": [img]}, 422, "prompts[0]", "valid string"),
        ("/v1/score", {"prompts": ["a"], "imagez": [img]}, 422, "imagez", "Extra inputs"),
        ("/v1/score", {"prompts": ["a"], "images": [img, "AAAA"]}, 422, "images[1]", "not a readable image"),
        ("/v1/score", {"prompts": ["a"], "images": [str(files[0])]}, 422, "images[0]", "reads no paths"),
        ("/v1/score", {"prompts": ["a"], "images": [img] * 65}, 422, "images", "limit of 64"),
        ("/v1/score", {"prompts": ["a"], "images": [img], "task": "no-such-task"}, 422, "task", "unknown task"),
        ("/v1/score", {"prompts": ["a"], "images": [img], "task": "/etc/task.yaml"}, 422, "task", "unknown task"),
        ("/v1/score", {"prompts": ["  "], "images": [img]}, 422, "prompts[0]", "empty prompt"),
        ("/v1/score", {"prompts": ["a", "b"], "images": [img] * 3}, 422, "prompts", "2 values for 3"),
        ("/v1/score", {"prompts": ["a"], "images": [img], "references": [img]}, 422, "references", "pointwise"),
        ("/v1/score", {"prompts": ["a"], "images": [base64.b64encode(png_header(3000, 3000)).decode()]},
         422, "images[0]", "3000x3000 pixels, over this server's limit"),
        ("/v1/score", {"prompts": ["a"], "images": [base64.b64encode(png_header(30000, 30000)).decode()]},
         422, "images[0]", "decompression bomb"),
        ("/v1/compare", {"prompt": "a", "image_a": img}, 422, "image_b", "Field required"),
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "no image"}]},
         422, "messages[0].content", "takes 1 image"),
        ("/v1/score", b"x" * (32 * 2**20 + 1), 413, None, "over this server's limit"),
    ]
    responses = asyncio.run(post_all(server.url, good + [(p, b) for p, b, *_ in bad]))
    for (p, i), r in zip(good_jobs, responses):
        assert r.status_code == 200 and r.json()["rewards"] == pytest.approx([expected[p, i]], abs=TOL), r.text
    for (_, _, status, param, says), r in zip(bad, responses[len(good):]):
        assert r.status_code == status, (param, r.text)
        err = r.json()["error"]
        assert err["param"] == param and err["request_id"] == r.headers["x-request-id"]
        assert says in err["message"] and "\n" not in err["message"]

    # a body streamed without a length is cut off at the limit too
    def chunks():
        for _ in range(33):
            yield b"x" * 2**20

    assert http_post(f"{server.url}/v1/score", content=chunks()).status_code == 413


def test_a_model_error_fails_only_its_request_and_the_server_keeps_serving(server, rm, files, expected,
                                                                           monkeypatch):
    real, calls, first_call, release = rm.score_items, [], threading.Event(), threading.Event()

    def out_of_memory_on_boom(task, items, batch_size=16):
        calls.append([item[0] for item in items])
        if len(calls) == 1:  # hold the first call, so that the next requests queue up and share one batch
            first_call.set()
            release.wait(60)
        if any(item[0] == "boom" for item in items):
            raise RuntimeError("CUDA out of memory (injected)")
        return real(task, items, batch_size)

    monkeypatch.setattr(rm, "score_items", out_of_memory_on_boom)
    errors, status_500 = (metric(server.url, "rewarddance_errors_total", kind="model_error"),
                          metric(server.url, "rewarddance_requests_total", endpoint="/v1/score", status="500"))
    good = [score_body(PROMPTS[k % 3], [k], files) for k in range(6)]

    async def batch_with_boom() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            first = asyncio.create_task(client.post(f"{server.url}/v1/score", json=good[0]))
            assert await asyncio.to_thread(first_call.wait, 30)
            rest = [asyncio.create_task(client.post(f"{server.url}/v1/score", json=b)) for b in good[1:3]]
            rest.append(asyncio.create_task(client.post(f"{server.url}/v1/score", json={
                "prompts": ["boom"], "images": [b64(files[0])]})))
            rest += [asyncio.create_task(client.post(f"{server.url}/v1/score", json=b)) for b in good[3:]]
            await asyncio.to_thread(until, lambda: metric(server.url, "rewarddance_queue_depth") == 6,
                                    "six requests queued")
            release.set()
            return [await first, *await asyncio.gather(*rest)]

    responses = asyncio.run(batch_with_boom())
    boom = responses.pop(3)
    assert sorted(calls[1]) == sorted(["boom", *PROMPTS, *PROMPTS[1:]])  # the next batch: all six, boom among them
    assert boom.status_code == 500 and boom.json()["error"]["type"] == "model_error"
    rid = boom.headers["x-request-id"]
    assert boom.json()["error"]["request_id"] == rid and rid in boom.json()["error"]["message"]
    for k, r in enumerate(responses):
        assert r.status_code == 200 and r.json()["rewards"] == pytest.approx([expected[PROMPTS[k % 3], k]], abs=TOL)
    # the client does not retry a 500
    with pytest.raises(RewardServerError) as err:
        RewardClient(server.url, retries=3).score("boom", files[0])
    assert err.value.status == 500 and not isinstance(err.value, ValueError)
    assert metric(server.url, "rewarddance_errors_total", kind="model_error") == errors + 2
    assert metric(server.url, "rewarddance_requests_total", endpoint="/v1/score", status="500") == status_500 + 2
    assert http_post(f"{server.url}/v1/score", json=good[0]).status_code == 200


def test_full_queue_is_503_with_retry_after_and_a_slow_request_504(rm, files, expected, monkeypatch):
    srv = ThreadServer(create_app([rm], ServeConfig(max_batch_size=1, max_wait_ms=0, queue_capacity=2)))
    real, entered, release = rm.score_items, threading.Event(), threading.Event()

    def held(task, items, batch_size=16):
        entered.set()
        release.wait(60)
        return real(task, items, batch_size)

    monkeypatch.setattr(rm, "score_items", held)
    body = score_body(PROMPTS[0], [0], files)
    want = [expected[PROMPTS[0], 0]]

    async def overflow() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            running = [asyncio.create_task(client.post(f"{srv.url}/v1/score", json=body))]
            assert await asyncio.to_thread(entered.wait, 30)  # one request in the model...
            running += [asyncio.create_task(client.post(f"{srv.url}/v1/score", json=body)) for _ in range(2)]
            await asyncio.to_thread(until, lambda: metric(srv.url, "rewarddance_queue_depth") == 2,
                                    "two requests queued")  # ...and two waiting: the queue is full
            refused = await client.post(f"{srv.url}/v1/score", json=body)
            release.set()
            return [refused, *await asyncio.gather(*running)]

    try:
        refused, *served = asyncio.run(overflow())
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "queue_full"
        assert all(r.status_code == 200 and r.json()["rewards"] == pytest.approx(want, abs=TOL) for r in served)

        # RewardClient retries a 503 (with backoff) until the queue has room
        entered.clear()
        release.clear()
        filled = []

        def fill(n: int) -> threading.Thread:
            thread = threading.Thread(target=lambda: filled.extend(asyncio.run(post_all(srv.url,
                                                                                      [("/v1/score", body)] * n))))
            thread.start()
            return thread

        # one request in the model first, then two more: all three at once could find the first still in the
        # queue and refuse the third (a race a loaded machine loses)
        fills = [fill(1)]
        assert entered.wait(30)
        fills.append(fill(2))
        until(lambda: metric(srv.url, "rewarddance_queue_depth") == 2, "two requests queued")
        full = metric(srv.url, "rewarddance_errors_total", kind="queue_full")
        result = []
        retrying = threading.Thread(target=lambda: result.append(
            RewardClient(srv.url, retries=50, backoff=0.05, max_backoff=0.2).score(PROMPTS[0], files[0])))
        retrying.start()
        until(lambda: metric(srv.url, "rewarddance_errors_total", kind="queue_full") > full, "a refused attempt")
        release.set()
        retrying.join(120)
        for thread in fills:
            thread.join(120)
        assert not retrying.is_alive() and not any(t.is_alive() for t in fills), "the clients did not finish"
        assert result[0] == pytest.approx(want, abs=TOL)
        assert [r.status_code for r in filled] == [200] * 3

        # a request not answered within the timeout is a 504; the server goes on
        release.clear()
        monkeypatch.setattr(srv.config, "request_timeout_s", 0.5)
        r = httpx.post(f"{srv.url}/v1/score", json=body, timeout=30)
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"
        release.set()
        monkeypatch.setattr(srv.config, "request_timeout_s", 60.0)
        assert httpx.post(f"{srv.url}/v1/score", json=body, timeout=30).json()["rewards"] == pytest.approx(want,
                                                                                                        abs=TOL)
        with pytest.raises(ConnectionError):  # nothing listens there: retried, then raised
            RewardClient("http://127.0.0.1:9", retries=2, backoff=0.01).score(PROMPTS[0], files[0])
    finally:
        release.set()
        srv.close()


def test_two_replicas_give_the_answers_of_one_and_both_serve(server, preset_dirs, rm, files):
    second = rd.load(preset_dirs("qwen2_5_vl"))
    two = ThreadServer(create_app([rm, second], ServeConfig(max_batch_size=4, max_wait_ms=20)))
    try:
        jobs = [("/v1/score", score_body(PROMPTS[k % 3], [k % 8, (k + 3) % 8], files)) for k in range(24)]
        one_answers = asyncio.run(post_all(server.url, jobs))
        two_answers = asyncio.run(post_all(two.url, jobs))
        for a, b in zip(one_answers, two_answers):
            assert a.status_code == b.status_code == 200
            assert b.json()["rewards"] == pytest.approx(a.json()["rewards"], abs=TOL)
        assert http_get(f"{two.url}/readyz").json()["replicas"] == 2
        for replica in ("0", "1"):
            assert metric(two.url, "rewarddance_replica_batches_total", replica=replica) > 0
    finally:
        two.close()


# ------------------------------------------------------------------ the command: auth, logs, SIGTERM
def test_api_keys_come_from_a_file_or_the_environment_and_bad_arguments_exit_2(tmp_path, monkeypatch, capsys):
    from rewarddance.cli import main
    from rewarddance.serve import read_api_keys

    monkeypatch.setenv("REWARDDANCE_API_KEYS", "k1, k2")
    assert read_api_keys() == ("k1", "k2")
    (tmp_path / "keys").write_text("# comment\n\nk3\n")
    assert read_api_keys(tmp_path / "keys") == ("k3",)
    assert "k3" not in repr(ServeConfig(api_keys=("k3",)))
    (tmp_path / "empty").write_text("\n")
    assert main(["serve", "--model", "qwen2_5_vl-tiny", "--api-key-file", str(tmp_path / "empty")]) == 2
    assert main(["serve", "--model", str(tmp_path / "no-such-model")]) == 2
    assert main(["serve", "--model", "qwen2_5_vl-tiny", "--queue-capacity", "0"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("rewarddance serve: error: ") for line in errors)


def test_cli_server_requires_the_api_key(cli_server, files, expected):
    url = cli_server.url
    wait_ready(url, proc=cli_server.proc)  # probes need no key
    assert http_get(f"{url}/readyz").json()["replicas"] == 2
    body = score_body(PROMPTS[0], [0], files)
    r = http_post(f"{url}/v1/score", json=body)
    assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
    assert http_post(f"{url}/v1/score", json=body, headers={"Authorization": "Bearer sk-wrong"}).status_code == 401
    assert http_get(f"{url}/metrics").status_code == 401
    for headers in ({"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}):
        r = httpx.post(f"{url}/v1/score", json=body, headers=headers, timeout=60)
        assert r.status_code == 200 and r.json()["rewards"] == pytest.approx([expected[PROMPTS[0], 0]], abs=TOL)
    out = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY).chat.completions.create(
        model="m", logprobs=True, top_logprobs=2, max_tokens=1, messages=[{"role": "user", "content": [
            {"type": "text", "text": PROMPTS[0]}, {"type": "image_url", "image_url": {"url": data_url(files[0])}}]}])
    top = {t.token: t.logprob for t in out.choices[0].logprobs.content[0].top_logprobs}
    assert math.exp(top["yes"]) == pytest.approx(expected[PROMPTS[0], 0], abs=TOL)


def test_sigterm_drains_in_flight_requests_and_exits_0(cli_server, files, expected):
    """Runs last: it stops the module's CLI server. The requests upload half their body, the server
    gets SIGTERM and stops accepting connections, then the bodies complete: every one is answered."""
    url, auth = cli_server.url, {"Authorization": f"Bearer {KEY}"}
    wait_ready(url, proc=cli_server.proc)
    jobs = [(PROMPTS[k % 3], k) for k in range(4)]

    def refused() -> bool:  # a new connection is refused, or (accepted just before) closed unanswered
        try:
            httpx.get(f"{url}/healthz", timeout=5)
        except httpx.TimeoutException:  # a busy server that still accepts: not refused yet, ask again
            return False
        except httpx.TransportError:  # refused, reset while closing, or accepted and closed unanswered
            return True
        return False

    async def drain() -> list[httpx.Response]:
        rest_of_bodies = asyncio.Event()

        async def slowly(body: bytes):
            yield body[:len(body) // 2]
            await rest_of_bodies.wait()
            yield body[len(body) // 2:]

        async with httpx.AsyncClient(timeout=120, headers={**auth, "content-type": "application/json"}) as client:
            running = [asyncio.create_task(client.post(f"{url}/v1/score", content=slowly(
                json.dumps(score_body(p, [i], files)).encode()))) for p, i in jobs]
            await asyncio.to_thread(until, lambda: metric(url, "rewarddance_requests_in_flight", auth) == len(jobs) + 1,
                                    "the requests in flight")  # (+1: the /metrics request itself)
            os.kill(cli_server.proc.pid, signal.SIGTERM)
            await asyncio.to_thread(until, refused, "the server to stop accepting connections")
            rest_of_bodies.set()
            return await asyncio.gather(*running)

    for (p, i), r in zip(jobs, asyncio.run(drain())):
        assert r.status_code == 200 and r.json()["rewards"] == pytest.approx([expected[p, i]], abs=TOL)
    assert cli_server.proc.wait(60) == 0
    log = cli_server.log.read_text()
    assert "Shutting down" in log and "API-key auth on (1 key(s))" in log
    assert KEY not in log
