"""The FastAPI application: routes, the request gate (ids, auth, size limit, metrics), error bodies.

Every error is JSON `{"error": {"message", "type", "param", "request_id"}}` (OpenAI's shape, so
OpenAI clients show the message); every response carries `X-Request-Id`.

Example:
    >>> import rewarddance as rd
    >>> from rewarddance.serve import ServeConfig, create_app
    >>> app = create_app(lambda: [rd.load("qwen2_5_vl-tiny")], ServeConfig(max_wait_ms=10))  # doctest: +SKIP
    >>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8000)                       # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, Callable, Sequence, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException

from ..models.reward_model import RewardModel
from . import inputs
from .batcher import Batcher
from .config import ServeConfig, ServeError, bad_input
from .metrics import CONTENT_TYPE, Metrics
from .schemas import (
    REQUEST_MODELS,
    ChatCompletion,
    ChatRequest,
    CompareRequest,
    CompareResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
    RankRequest,
    RankResponse,
    ReadyResponse,
    ScoreRequest,
    ScoreResponse,
)

logger = logging.getLogger("rewarddance.serve")

Models = Union[Sequence[RewardModel], Callable[[], Sequence[RewardModel]]]
ENDPOINTS = ("/v1/score", "/v1/compare", "/v1/rank", "/v1/chat/completions", "/v1/models", "/healthz", "/readyz",
             "/metrics", "/openapi.json", "/docs")
OPEN = ("/healthz", "/readyz", "/openapi.json", "/docs")  # reachable without a key: probes and the schema
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_STATUS_TYPES = {404: "not_found", 405: "method_not_allowed"}  # else bad_request (e.g. a malformed form)


class ServerState:
    """What the routes share: settings, metrics, and (once loaded) the models and their batcher."""

    def __init__(self, config: ServeConfig, model_name: str, on_load_error: Callable[[Exception], None] | None):
        self.config, self.model_name, self.on_load_error = config, model_name, on_load_error
        self.metrics = Metrics()
        self.models: list[RewardModel] = []
        self.batcher: Batcher | None = None
        self.load_error: str | None = None
        self.created = int(time.time())

    async def load(self, models: Models) -> None:
        try:
            loaded = list(await asyncio.to_thread(models) if callable(models) else models)
            if not loaded:
                raise ValueError("no model to serve")
        except Exception as e:  # broad on purpose: whatever stops the loading stops the server, said once
            self.load_error = f"{type(e).__name__}: {e}"
            logger.error("could not load the model: %s", self.load_error)
            if self.on_load_error is not None:
                self.on_load_error(e)
            return
        self.models = loaded
        self.batcher = Batcher(loaded, self.config, self.metrics)
        self.batcher.start()
        self.metrics.ready.set(1)
        devices = ", ".join(str(m.device) for m in loaded)
        logger.info("ready: %s (%d replica(s) on %s, %s, layout %s)", self.model_name, len(loaded), devices,
                    loaded[0].dtype, loaded[0].layout)

    def ready(self) -> tuple[RewardModel, Batcher]:
        """Replica 0 (for request checks; every replica has its settings) and the batcher, or a 503."""
        if self.batcher is None:
            raise ServeError(503, "not_ready", "the model is not loaded yet; retry later",
                             headers={"Retry-After": str(self.config.retry_after_s)})
        return self.models[0], self.batcher

    def error_response(self, err: ServeError, request_id: str) -> JSONResponse:
        self.metrics.errors.labels(kind=err.kind).inc()
        body = {"error": {"message": err.message, "type": err.kind, "param": err.param, "request_id": request_id}}
        return JSONResponse(body, status_code=err.status, headers=err.headers)


class Gate:
    """Pure ASGI middleware run before any route: request id, API key (constant-time comparison,
    never logged), body-size limit (declared and streamed), and per-request metrics."""

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        status = 500  # if the app fails before it starts a response

        async def send_with_id(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        metrics, start = self.state.metrics, time.perf_counter()
        metrics.in_flight.inc()
        try:
            refusal = self._refusal(scope["path"], headers)
            if refusal is not None:
                await self.state.error_response(refusal, request_id)(scope, receive, send_with_id)
            else:
                await self.app(scope, self._limited(receive), send_with_id)
        finally:
            metrics.in_flight.dec()
            metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
            metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - start)

    def _refusal(self, path: str, headers: Headers) -> ServeError | None:
        keys = self.state.config.api_keys
        if keys and path not in OPEN:
            auth = headers.get("authorization", "")
            given = auth[7:].strip() if auth.lower().startswith("bearer ") else headers.get("x-api-key", "")
            # compare with every key, so the time taken says nothing about which key (or how much) matched
            ok = False
            for key in keys:
                ok |= hmac.compare_digest(given.encode(), key.encode())
            if not ok:
                return ServeError(401, "unauthorized", "missing or wrong API key (Authorization: Bearer KEY, or "
                                  "X-API-Key: KEY)", headers={"WWW-Authenticate": "Bearer"})
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.state.config.max_body_bytes:
            return self._too_large()
        return None

    def _too_large(self) -> ServeError:
        return ServeError(413, "too_large", f"request body over this server's limit of "
                          f"{self.state.config.max_body_bytes} bytes")

    def _limited(self, receive: Callable) -> Callable:
        """`receive` that refuses a body (chunked, or longer than declared) once it passes the limit."""
        seen = 0

        async def receive_limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.state.config.max_body_bytes:
                    raise self._too_large()
            return message

        return receive_limited


def _field(loc: tuple) -> str:
    """A pydantic error location as the request's field path ("images[2]", "messages[0].role"),
    without the union-member labels pydantic adds ("str", "list[str]")."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.isidentifier() and part not in ("str", "list", "dict", "int", "float", "bool"):
            out += f".{part}" if out else part
    return out or "body"


def parse_body(model: type[BaseModel], body: bytes) -> Any:
    """The JSON body as `model`: malformed JSON is a 400, a missing or mistyped field a 422 naming it."""
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            raise ServeError(400, "bad_json", f"body: not valid JSON ({first['msg']})", param="body") from None
        field = _field(tuple(first["loc"]))
        raise bad_input(f"{field}: {first['msg']}", field) from None


async def _score_fields(request: Request, config: ServeConfig) -> dict:
    """A score request's fields, from a JSON body or a multipart form (files, or base64 text fields)."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        async with request.form(max_files=3 * config.max_images, max_fields=3 * config.max_images + 8,
                                max_part_size=config.max_body_bytes) as form:  # closes the spooled uploads

            async def media(name: str) -> list | None:
                values = [await v.read() if isinstance(v, UploadFile) else v for v in form.getlist(name)]
                return values or None

            prompts = form.getlist("prompts")
            if not prompts or not all(isinstance(p, str) for p in prompts):
                raise bad_input("prompts: required, as text fields (one, or one per image)", "prompts")
            task = form.get("task")
            return {"prompts": prompts, "images": await media("images"), "videos": await media("videos"),
                    "references": await media("references"), "conditions": await media("conditions"),
                    "task": task if isinstance(task, str) else None}
    return parse_body(ScoreRequest, await request.body()).model_dump(exclude={"model"})


def _json_body(model: type[BaseModel], multipart: bool = False) -> dict:
    """OpenAPI for a route that parses its own body (to answer 400/413/422 its way)."""
    content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
    if multipart:
        files = {"type": "array", "items": {"type": "string", "format": "binary"}}
        content["multipart/form-data"] = {"schema": {"type": "object", "required": ["prompts"], "properties": {
            "prompts": {"type": "array", "items": {"type": "string"}}, "images": files, "videos": files,
            "references": files, "conditions": files, "task": {"type": "string"}}}}
    return {"requestBody": {"required": True, "content": content}}


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 413, 422, 500, 503, 504)}


def create_app(models: Models, config: ServeConfig | None = None, *, model_name: str = "rewarddance",
               on_load_error: Callable[[Exception], None] | None = None) -> FastAPI:
    """The reward server's ASGI app.

    `models`: the replicas (one RewardModel per device, same checkpoint), or a function returning
    them, called in the background at start-up so /healthz answers while they load (/readyz says
    when they have). `on_load_error` is called if loading fails (the CLI stops the server).

        >>> app = create_app([rd.load("qwen2_5_vl-tiny")])                 # doctest: +SKIP
    """
    config = config or ServeConfig()
    state = ServerState(config, model_name, on_load_error)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.create_task(state.load(models))
        try:
            yield
        finally:
            await loading
            if state.batcher is not None:
                await state.batcher.stop()

    app = FastAPI(title="rewarddance reward server", version="1", lifespan=lifespan,
                  description="Rewards P(yes) of a generative VLM judge, batched; OpenAI-compatible chat with "
                              "logprobs.")
    app.state.serve = state
    app.add_middleware(Gate, state=state)

    def request_id(request: Request) -> str:
        return request.state.request_id

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, err: ServeError) -> JSONResponse:
        return state.error_response(err, request_id(request))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
        kind = _STATUS_TYPES.get(err.status_code, "bad_request")
        return state.error_response(ServeError(err.status_code, kind, str(err.detail), headers=err.headers),
                                    request_id(request))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        field = _field(tuple(first["loc"]))
        return state.error_response(bad_input(f"{field}: {first['msg']}", field), request_id(request))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        rid = request_id(request)
        logger.error("request %s: internal error: %s: %s", rid, type(err).__name__, err, exc_info=err)
        return state.error_response(ServeError(500, "internal_error", f"internal error; the server log has it "
                                               f"under request id {rid}"), rid)

    # ------------------------------------------------------------------ probes and metrics
    @app.get("/healthz", summary="liveness: 200 while the process serves")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ErrorResponse}},
             summary="readiness: 200 only once the model is loaded")
    async def readyz() -> Any:
        if state.batcher is None:
            status = "failed" if state.load_error else "loading"
            return JSONResponse({"status": status, "error": state.load_error}, status_code=503)
        rm = state.models[0]
        task = inputs.resolve_task(rm, None)
        return ReadyResponse(status="ready", model=state.model_name, task=task.name, layout=rm.layout,
                             media=task.media, replicas=len(state.models))

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    # ------------------------------------------------------------------ rewards
    @app.post("/v1/score", response_model=ScoreResponse, responses=ERRORS,
              openapi_extra=_json_body(ScoreRequest, multipart=True),
              summary="rewards P(yes) for images or videos (one prompt broadcasts)")
    async def score(request: Request) -> ScoreResponse:
        rm, batcher = state.ready()
        with batcher.arriving():
            fields = await _score_fields(request, config)
            task, items = await run_in_threadpool(lambda: inputs.prepare_score(rm, config, **fields))
        rewards = await batcher.score(task, items, request_id(request))
        return ScoreResponse(rewards=rewards, model=state.model_name, task=task.name)

    @app.post("/v1/compare", response_model=CompareResponse, responses=ERRORS, openapi_extra=_json_body(CompareRequest),
              summary="P(image_a better than image_b)")
    async def compare(request: Request) -> CompareResponse:
        rm, batcher = state.ready()
        with batcher.arriving():
            req = parse_body(CompareRequest, await request.body())
            task, items = await run_in_threadpool(inputs.prepare_compare, rm, config, req)
        rewards = await batcher.score(task, items, request_id(request))
        return CompareResponse(probability=rm.pair_probability(rewards), model=state.model_name, task=task.name)

    @app.post("/v1/rank", response_model=RankResponse, responses=ERRORS, openapi_extra=_json_body(RankRequest),
              summary="indices of the images, best first")
    async def rank(request: Request) -> RankResponse:
        rm, batcher = state.ready()
        with batcher.arriving():
            req = parse_body(RankRequest, await request.body())
            task, prompt, images, cond = await run_in_threadpool(inputs.prepare_rank, rm, config, req)
        ranking = await batcher.call(lambda replica: replica.rank(prompt, images, task=task, condition=cond),
                                     request_id(request), size=len(images))
        return RankResponse(ranking=ranking, model=state.model_name, task=task.name)

    # ------------------------------------------------------------------ OpenAI-compatible
    @app.post("/v1/chat/completions", response_model=ChatCompletion, responses=ERRORS,
              openapi_extra=_json_body(ChatRequest),
              summary="OpenAI chat completion: the judgment token with logprobs of yes and no")
    async def chat(request: Request) -> ChatCompletion:
        rm, batcher = state.ready()
        with batcher.arriving():
            req = parse_body(ChatRequest, await request.body())
            task, items = await run_in_threadpool(inputs.prepare_chat, rm, config, req)
        [reward] = await batcher.score(task, items, request_id(request))
        return inputs.chat_completion(req, reward, request_id(request), int(time.time()))

    @app.get("/v1/models", response_model=ModelList, summary="OpenAI model list: the one model served")
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=state.model_name, created=state.created)])

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            _, defs = models_json_schema([(m, "validation") for m in REQUEST_MODELS],
                                         ref_template="#/components/schemas/{model}")
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app
