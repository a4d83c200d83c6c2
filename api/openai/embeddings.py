"""``POST /v1/embeddings``: OpenAI's embeddings, each request a job like a chat completion (the same
admission, limits, usage and ``x-chatfleet-job-id``), run by the family's embedding API or, with no
key at all, by the local workers' all-MiniLM-L6-v2."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from api.completion import Answer, complete
from api.deps import CurrentAccount, HubDep, ScopedCatalogDep, SettingsDep, StoreDep
from api.openai.errors import error_response
from api.openai.wire import UnsupportedParameter
from api.openapi import answers
from api.request import CompletionRequest
from shared.jobspec import Embedding
from shared.results import embedding_vectors


def _token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31


class EmbeddingRequest(BaseModel):
    """What the fleet serves of OpenAI's embeddings request."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=200)
    # A string, strings, token ids, or lists of token ids (as OpenAI's API takes them).
    input: str | list[Any]
    dimensions: int | None = Field(None, ge=1, le=65536)
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = Field(None, max_length=256)

    @field_validator("input")
    @classmethod
    def _input(cls, value: str | list[Any]) -> str | list[Any]:
        if isinstance(value, str):
            return value
        if not value:
            raise ValueError("input must hold 1 to 2048 items")
        if all(_token(t) for t in value):
            return value  # one list of token ids
        for i, item in enumerate(value):
            if isinstance(item, str):
                continue
            if isinstance(item, list) and item and all(_token(t) for t in item):
                continue
            raise ValueError(f"input[{i}] is neither a string nor a non-empty list of token ids (integers 0 to "
                             "2^31-1): input is a string, a list of strings, a list of token ids, or a list of them")
        return value

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> EmbeddingRequest:
        extra = sorted(self.model_extra or {})
        if extra:
            raise UnsupportedParameter(extra[0])
        return self

    def inputs(self) -> tuple[str | tuple[int, ...], ...]:
        value = self.input
        if isinstance(value, str):
            return (value,)
        if value and isinstance(value[0], int):
            return (tuple(value),)  # one list of token ids
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)

    def to_request(self) -> CompletionRequest:
        return CompletionRequest(model=self.model, messages=(), default_temperature=0.0,
                                 embed=Embedding(self.inputs(), self.dimensions))


def embedding_list(model: str, body: dict[str, Any], encoding: str) -> dict[str, Any]:
    """An embedding job's result as OpenAI's answer (``encoding``: float or base64)."""
    if encoding == "base64":
        vectors: list[Any] = list(body["embeddings"])
    else:
        vectors = embedding_vectors(body)
    usage = body.get("token_usage") or {}
    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": usage.get("prompt", 0), "total_tokens": usage.get("prompt", 0)}}


class EmbeddingAnswer(Answer):
    route = "/v1/embeddings"

    def __init__(self, model: str, encoding: str):
        self.model = model
        self.encoding = encoding

    def failure(self, status, message, code=None, headers=None, **extra):
        return error_response(status, message, None, code, headers)

    def result(self, body, headers):
        return JSONResponse(embedding_list(self.model, body, self.encoding), headers=headers)


router = APIRouter()


@router.post("/embeddings", responses=answers(description="the embeddings"))
async def create_embeddings(
    body: EmbeddingRequest, request: Request, account: CurrentAccount,
    catalog: ScopedCatalogDep, store: StoreDep, hub: HubDep, settings: SettingsDep,
):
    return await complete(body.to_request(), request, account, catalog, store, hub, settings,
                          EmbeddingAnswer(body.model, body.encoding_format))

