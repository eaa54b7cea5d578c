"""Typed request and response bodies of the HTTP API (they are also its OpenAPI schema).

Media are strings: base64 bytes or data URLs (`data:image/png;base64,...`); a video is one such
string (mp4 / webm / gif) or a list of frames. Unknown fields are refused (a misspelt field is a
422 naming it, not a silently ignored option), except in the OpenAI-compatible chat request,
which accepts and ignores the sampling options the judge has no use for.

Example:
    >>> from rewarddance.serve.schemas import ScoreRequest
    >>> ScoreRequest.model_validate({"prompts": ["a red circle"], "images": ["iVBORw0..."]}).task is None
    True
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

Video = Union[str, list[str]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScoreRequest(_Strict):
    """Rewards for images (or videos): one prompt broadcasts over all of them."""

    prompts: list[str] = Field(min_length=1, description="one prompt, or one per image")
    images: list[str] | None = Field(None, description="base64 images or data URLs")
    videos: list[Video] | None = Field(None, description="base64 mp4/webm/gif, or lists of base64 frames")
    references: list[Video] | None = Field(
        None, description="pairwise models: image 1 of each comparison (one, or one per image)")
    conditions: list[str] | None = Field(None, description="image-to-video tasks: the first frame given")
    task: str | None = Field(None, description="a built-in task name (default: the model's)")
    model: str | None = Field(None, description="ignored: the server answers with the model it serves")

    @field_validator("prompts", mode="before")
    @classmethod
    def _one_prompt(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v  # "prompts": "a red circle" means one prompt for all


class ScoreResponse(BaseModel):
    rewards: list[float] = Field(description="P(yes) per image, in the request's order")
    model: str
    task: str


class CompareRequest(_Strict):
    """P(image_a better than image_b) for one prompt (position bias cancelled when symmetric)."""

    prompt: str
    image_a: Video
    image_b: Video
    task: str | None = None
    symmetric: bool = True
    condition: str | None = None
    model: str | None = None


class CompareResponse(BaseModel):
    probability: float = Field(description="P(image_a better than image_b)")
    model: str
    task: str


class RankRequest(_Strict):
    """Images (or videos) of one prompt, ranked best first."""

    prompt: str
    images: list[str] | None = None
    videos: list[Video] | None = None
    task: str | None = None
    condition: str | None = None
    model: str | None = None


class RankResponse(BaseModel):
    ranking: list[int] = Field(description="indices into the request's images, best first")
    model: str
    task: str


class ReadyResponse(BaseModel):
    status: Literal["ready"]
    model: str
    task: str
    layout: str
    media: Literal["image", "video"]
    replicas: int


# ------------------------------------------------------------------ OpenAI-compatible chat
class ChatMessage(BaseModel):
    """An OpenAI chat message; `content` is a string or a list of parts ({"type": "text", ...},
    {"type": "image_url", "image_url": {"url": "data:..."}}), checked by the chat mapping."""

    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """An OpenAI chat completion request. Sampling options (temperature, seed, ...) are accepted and
    ignored: the answer is the judgment token. `task` (a rewarddance extension, `extra_body`)
    picks the judging task."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    n: int = 1
    stream: bool = False
    task: str | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: Literal["stop"] = "stop"


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "rewarddance"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str = Field(description="error kind: bad_json, bad_input, too_large, unauthorized, queue_full, "
                                  "timeout, not_ready, model_error, ...")
    param: str | None = Field(description="the request field at fault")
    request_id: str


class ErrorResponse(BaseModel):
    error: ErrorBody


REQUEST_MODELS = (ScoreRequest, CompareRequest, RankRequest, ChatRequest)
