"""The OpenAPI description of the server (/openapi.json, read at /docs and by schemathesis): the
request bodies of both completion endpoints, with every method's options taken from the method
registry, and the response bodies. Validation itself is `protocol.parse_request` (its errors name
the field); these models only describe what it accepts."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from ..config import INT64_MAX, INT64_MIN, SOFT_SCOPES, SamplingConfig
from ..methods import METHODS
from .protocol import IGNORED, MAX_STOPS, ROLES, Settings

Int64 = typing.Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[int] = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal[ROLES]  # type: ignore[valid-type]
    content: Union[str, list[TextPart]]
    name: Optional[str] = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    soft_steps: int = Field(description="tokens emitted at soft steps (the input was a mixture, not the token)")


class SelarInfo(BaseModel):
    method: str
    finish_reason: str = Field(description="selar's own reason: stop, length, stop_string or method")


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str
    reasoning_content: Optional[str] = Field(None, description="thinking models: the text before </think>")
    reasoning: Optional[str] = Field(None, description="the same text, under vLLM's newer field name")


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    selar: SelarInfo


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: None = None
    reasoning_content: Optional[str] = None
    reasoning: Optional[str] = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    selar: SelarInfo


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    capabilities: dict[str, list[str]] = Field(default_factory=dict, description="methods: the decoding methods served")


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    active: int = Field(description="rows decoding")
    queued: int
    prefilling: int
    faults: int = Field(description="decode sessions that faulted since start")


def _option_type(types: set) -> Any:
    """A request field's type from an option's annotation(s)."""
    out = []
    for t in types:
        args = typing.get_args(t)
        if typing.get_origin(t) is Union:  # Optional[X]
            out += [a for a in args if a is not type(None)]
        elif typing.get_origin(t) is tuple:
            out.append(Union[str, list[str]])
        else:
            out.append(t)
    kinds = {Int64 if t is int else float if t is float else t for t in out}
    return Optional[Union[tuple(kinds)]] if len(kinds) > 1 else Optional[kinds.pop()]


def _fields(classes: dict[str, type]) -> dict[str, tuple]:
    """Request fields for the fields of these option dataclasses (by owner name)."""
    types: dict[str, set] = {}
    owners: dict[str, list[str]] = {}
    for owner, cls in classes.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            types.setdefault(f.name, set()).add(hints[f.name])
            owners.setdefault(f.name, []).append(owner)
    return {
        k: (_option_type(t), Field(None, description=f"option of {', '.join(owners[k])}")) for k, t in types.items()
    }


# sampling settings with their ranges (the others are described from SamplingConfig's types)
SAMPLING = {
    "temperature": (Optional[typing.Annotated[float, Field(ge=0, le=1e4)]], Field(None, description="0: greedy")),
    "top_p": (Optional[typing.Annotated[float, Field(gt=0, le=1)]], None),
    "top_k": (Optional[typing.Annotated[int, Field(ge=0, le=INT64_MAX)]], Field(None, description="0: off")),
    "min_p": (Optional[typing.Annotated[float, Field(ge=0, le=1)]], None),
    "presence_penalty": (
        Optional[typing.Annotated[float, Field(ge=-2, le=2)]],
        Field(None, description="minus this for every token already generated (default 0)"),
    ),
    "frequency_penalty": (
        Optional[typing.Annotated[float, Field(ge=-2, le=2)]],
        Field(None, description="minus this times each token's count in the output (default 0)"),
    ),
    "repetition_penalty": (
        Optional[typing.Annotated[float, Field(gt=0, le=1e4)]],
        Field(None, description="tokens of the prompt or output: positive logits / it, others * it (default 1)"),
    ),
    "seed": (Optional[Int64], Field(None, description="default: random")),
    "soft_scope": (Optional[Literal[SOFT_SCOPES]], None),
}


def request_models(settings: Settings) -> tuple[type[BaseModel], type[BaseModel]]:
    """(chat request, completion request), with the options of every registered method."""
    limit = typing.Annotated[int, Field(ge=1, le=settings.max_tokens)]
    common: dict[str, Any] = {
        "model": (Optional[str], Field(None, description=f"'{settings.model_name}' (or 'selar')")),
        "stream": (Optional[bool], None),
        "stream_options": (Optional[StreamOptions], None),
        "n": (Optional[Literal[1]], None),
        "max_tokens": (Optional[limit], None),
        "max_completion_tokens": (Optional[limit], None),
        "max_new_tokens": (Optional[limit], Field(None, description="the same as max_tokens")),
        "method": (Optional[Literal[tuple(METHODS)]], Field(None, description=f"default: {settings.default_method}")),
        "raw": (Optional[bool], Field(None, description="skip the chat template")),
        "stop": (Optional[Union[str, typing.Annotated[list[str], Field(min_length=1, max_length=MAX_STOPS)]]], None),
        "answer_markers": (
            Optional[Union[str, typing.Annotated[list[str], Field(min_length=1, max_length=MAX_STOPS)]]],
            None,
        ),
        **SAMPLING,
        **{k: (Any, Field(None, description="accepted and ignored")) for k in sorted(IGNORED)},
    }
    classes = {"every method": SamplingConfig, **{name: spec.options for name, spec in METHODS.items()}}
    options = {k: v for k, v in _fields(classes).items() if k not in common}
    cfg = ConfigDict(extra="forbid")
    fields: dict[str, Any] = {**common, **options}
    chat: type[BaseModel] = create_model(
        "ChatCompletionRequest",
        __config__=cfg,
        messages=(typing.Annotated[list[Message], Field(min_length=1)], ...),
        **fields,
    )
    completion: type[BaseModel] = create_model(
        "CompletionRequest",
        __config__=cfg,
        prompt=(Union[str, typing.Annotated[list[str], Field(min_length=1, max_length=1)]], ...),
        **fields,
    )
    return chat, completion


ERRORS = {
    s: {"model": ErrorResponse, "description": d}
    for s, d in (
        (400, "invalid request (the error names the field)"),
        (401, "missing or wrong API key"),
        (404, "model not served here"),
        (408, "the request body did not arrive in time"),
        (413, "the request body is too large"),
        (500, "a server fault while decoding this request"),
        (503, "busy (queue full) or shutting down; see Retry-After"),
        (504, "the request did not finish in time"),
        (507, "out of capacity (rows, KV cache or memory) for this request; see Retry-After"),
    )
}


# Before OpenAPI 3.2, the `schema` of an event stream describes one event: each of ours carries a JSON chunk
# (or the final "[DONE]") in `data`.
SSE_EVENT = {
    "type": "object",
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"}},
    "required": ["data"],
}


def completion_responses(model: type[BaseModel]) -> dict:
    return {
        200: {
            "model": model,
            "description": "the completion, or (stream: true) server-sent events",
            "content": {"text/event-stream": {"schema": SSE_EVENT}},
        },
        **ERRORS,
    }


def install(app, settings: Settings) -> None:
    """Make `app.openapi()` describe the request bodies (and the bearer auth, with an API key)."""
    from fastapi.openapi.utils import get_openapi

    chat, completion = request_models(settings)

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        for path, model in (("/v1/chat/completions", chat), ("/v1/completions", completion)):
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            comps.update(js.pop("$defs", {}))
            comps[model.__name__] = js
            schema["paths"][path]["post"]["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
            }
        if settings.api_key is not None:
            schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            for path in ("/v1/chat/completions", "/v1/completions", "/v1/models"):
                for op in schema["paths"][path].values():
                    op["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
