"""Google Gemini API (the gemini-* models), streamed as server-sent events.

A retried call continues where the last one stopped: the delivered text goes back as a final
``model`` turn, which the model continues rather than repeats (``continuation.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from shared.jobspec import Turn
from worker.providers.base import Completion, Embeddings, GenerationRequest, ProviderError, TextDelta, ToolCallDelta
from worker.providers.bodies import (
    arguments_object,
    data_url,
    given,
    merge_blocks,
    merge_extra,
    merge_turns,
    split_system,
)
from worker.providers.continuation import one_call
from worker.providers.faults import mid_stream_error
from worker.providers.http import HTTPProvider, sse_json

ROLES = {"user": "user", "assistant": "model"}

FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length"}
FILTERED = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"})

# In-band errors carry a google.rpc status name; each is classified as its HTTP status, so a
# mid-stream fault is treated like the same fault up front.
ERROR_STATUS = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400,
                "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404, "ABORTED": 409,
                "RESOURCE_EXHAUSTED": 429, "CANCELLED": 499, "INTERNAL": 500, "NOT_IMPLEMENTED": 501,
                "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}


# The schema fields Gemini's Schema (an OpenAPI 3.0 subset) has; every Gemini model takes them
# (responseJsonSchema and parametersJsonSchema, which take JSON Schema, only the newest).
SCHEMA_FIELDS = frozenset({"type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
                           "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
                           "pattern", "anyOf", "propertyOrdering", "default", "items", "minimum", "maximum"})
MAX_SCHEMA_DEPTH = 24  # a recursive $ref is unrolled this deep, then left an open object


def gemini_schema(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """A JSON Schema as Gemini's Schema: references inlined, ``const`` as a one-value ``enum``,
    ``oneOf`` as ``anyOf``, a ``null`` type as ``nullable``, types upper-cased, and keywords it
    has no field for left out (``additionalProperties``, ``$schema``...)."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > MAX_SCHEMA_DEPTH:
        return {"type": "OBJECT"}
    if isinstance(schema.get("$ref"), str):
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        merged = {**(target if isinstance(target, dict) else {}), **{k: v for k, v in schema.items() if k != "$ref"}}
        return gemini_schema(merged, root, depth + 1)
    out: dict[str, Any] = {}
    if "const" in schema:
        out["enum"] = [schema["const"]]
    kind = schema.get("type")
    if isinstance(kind, list):
        if "null" in kind:
            out["nullable"] = True
        kind = next((k for k in kind if k != "null"), None)
    if isinstance(kind, str) and kind != "null":
        out["type"] = kind.upper()
    for key, value in schema.items():
        if key not in SCHEMA_FIELDS or key in ("type",):
            if key == "oneOf":
                out["anyOf"] = [gemini_schema(v, root, depth + 1) for v in value]
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: gemini_schema(sub, root, depth + 1) for name, sub in value.items()}
        elif key == "items":
            out[key] = gemini_schema(value, root, depth + 1)
        elif key == "anyOf":
            out[key] = [gemini_schema(v, root, depth + 1) for v in value]
        elif key == "enum":
            out[key] = [str(v) for v in value]  # Gemini's enums are strings
        else:
            out[key] = value
    if "allOf" in schema and isinstance(schema["allOf"], list):
        for part in schema["allOf"]:
            for key, value in gemini_schema(part, root, depth + 1).items():
                out.setdefault(key, value)
    return out


#: The most inputs one batchEmbedContents call takes.
EMBED_BATCH = 100


def _parts(turn: Turn) -> list[dict[str, Any]]:
    """A turn as Gemini's parts: text, inline images, function calls and responses."""
    if turn.role == "tool":
        result = arguments_object(turn.content) if turn.content.lstrip().startswith("{") else {"result": turn.content}
        return [{"functionResponse": given(name=turn.name, response=result, id=turn.tool_call_id)}]
    parts: list[dict[str, Any]] = []
    if turn.content.strip():
        parts.append({"text": turn.content})
    for image in turn.images:
        inline = data_url(image.url)
        if inline is not None:  # the API takes Gemini no other kind (prompts.check_images)
            parts.append({"inlineData": {"mimeType": inline[0], "data": inline[1]}})
    for call in turn.tool_calls:
        parts.append({"functionCall": given(name=call.name, args=arguments_object(call.arguments), id=call.id)})
    return parts


def finish_reason(reason: str) -> str:
    if reason in FILTERED:
        return "content_filter"
    return FINISH_REASONS.get(reason, reason.lower())


class GeminiProvider(HTTPProvider):
    family = "gemini"
    display = "Gemini"

    def _url(self, request: GenerationRequest) -> str:
        model = request.model.upstream.removeprefix("models/")
        return self.endpoint(request, self.settings.gemini_base_url, f"/v1beta/models/{model}:streamGenerateContent")

    def _headers(self) -> dict[str, str]:
        key = self.settings.gemini_api_key
        assert key is not None  # check_configured: the stream needs its key before it calls
        return {"x-goog-api-key": key.get_secret_value()}

    def _contents(self, request: GenerationRequest) -> tuple[str, list[dict[str, Any]], bool]:
        """(system instruction, contents, whether a prefill was sent)."""
        system, rest = split_system(request.messages)
        if any(m.tool_calls or m.images or m.role == "tool" for m in rest):
            contents = merge_blocks(((ROLES.get(m.role, "user"), _parts(m)) for m in rest), "parts")
            if not request.continuation:
                return system, contents, False
            if contents and contents[-1]["role"] == "model":
                contents[-1]["parts"].append({"text": request.continuation})
            else:
                contents.append({"role": "model", "parts": [{"text": request.continuation}]})
            return system, contents, True
        turns = merge_turns((ROLES.get(m.role, "user"), m.content) for m in rest)
        prefilled = False
        if request.continuation:
            if turns and turns[-1]["role"] == "model":
                # The first call continued this model turn, so the delivered text follows it directly.
                turns[-1]["content"] += request.continuation
            else:
                turns.append({"role": "model", "content": request.continuation})
            prefilled = True
        contents = [{"role": t["role"], "parts": [{"text": t["content"]}]} for t in turns]
        return system, contents, prefilled

    def _body(self, request: GenerationRequest, system: str, contents: list[dict[str, Any]]) -> dict[str, Any]:
        p = request.params
        config: dict[str, Any] = {
            "temperature": p.temperature, "maxOutputTokens": request.tokens_left(),
            **given(topP=p.top_p, topK=p.top_k, frequencyPenalty=p.frequency_penalty,
                    presencePenalty=p.presence_penalty, seed=p.seed),
        }
        if p.stop:
            config["stopSequences"] = list(p.stop)
        output = request.output
        if output is not None:
            # Gemini's JSON mode, its schema as Gemini's Schema (which every Gemini model takes).
            config["responseMimeType"] = "application/json"
            if output.schema is not None:
                config["responseSchema"] = gemini_schema(output.schema)
        body: dict[str, Any] = {"contents": contents, "generationConfig": config}
        if system:
            body["systemInstruction"] = {"parts": [{"text": system}]}
        tools = request.job.tools
        if tools is not None:
            body["tools"] = [{"functionDeclarations": [
                given(name=f.name, description=f.description, parameters=gemini_schema(f.parameters))
                for f in tools.functions]}]
            mode = {"auto": "AUTO", "required": "ANY", "none": "NONE"}[tools.choice]
            calling: dict[str, Any] = {"mode": mode}
            if tools.forced:
                calling["allowedFunctionNames"] = [tools.forced]
            body["toolConfig"] = {"functionCallingConfig": calling}
        return merge_extra(body, request.model.extra)

    def _stream_error(self, chunk: dict[str, Any]) -> ProviderError:
        err = chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])}
        name = err.get("status") or ""
        status = ERROR_STATUS.get(name)
        if status is None:
            code = err.get("code")
            status = code if isinstance(code, int) and 400 <= code < 600 else 400
        return mid_stream_error(status, chunk, self.display, name or status, err.get("message") or name or status)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TextDelta | ToolCallDelta | Completion]:
        self.check_configured()
        system, contents, prefilled = self._contents(request)
        if not contents:
            raise ProviderError("Gemini models need at least one user message; the conversation has none",
                                code="invalid_request")
        body = self._body(request, system, contents)
        finish = None
        calls = 0
        usage: dict[str, Any] | None = None
        async with self.upstream.stream(self._url(request), body, self._headers(), params={"alt": "sse"}) as response:
            async for sse in self.upstream.events(response):
                if not sse.data.strip():
                    continue
                chunk = sse_json(sse, self.display)
                if not isinstance(chunk, dict):
                    continue
                if "error" in chunk:
                    raise self._stream_error(chunk)
                blocked = (chunk.get("promptFeedback") or {}).get("blockReason")
                if blocked:
                    raise ProviderError(f"{self.display} blocked the prompt ({blocked})", code="content_filter",
                                        details={"block_reason": blocked})
                if chunk.get("usageMetadata"):
                    usage = chunk["usageMetadata"]  # running totals: the last one counts
                candidates = chunk.get("candidates") or ()
                if not candidates:
                    continue
                candidate = candidates[0]
                for part in (candidate.get("content") or {}).get("parts") or ():
                    if part.get("text") and not part.get("thought"):
                        yield TextDelta(part["text"])
                    call = part.get("functionCall")
                    if isinstance(call, dict) and call.get("name"):
                        # Gemini sends each call whole, its arguments an object.
                        index = calls
                        calls += 1
                        yield ToolCallDelta(index, orjson.dumps(call.get("args") or {}).decode(),
                                            call.get("id") or request.call_id(index), call["name"])
                if candidate.get("finishReason"):
                    finish = finish_reason(candidate["finishReason"])
        self.check_ended(finish, usage)
        assert finish is not None and usage is not None  # check_ended raised otherwise
        # Thinking models bill their thoughts as output, reported apart from the answer's tokens.
        completion = int(usage.get("candidatesTokenCount") or 0) + int(usage.get("thoughtsTokenCount") or 0)
        yield one_call(request, finish, int(usage.get("promptTokenCount") or 0), completion, prefilled)

    async def embed(self, request: GenerationRequest) -> Embeddings:
        """``batchEmbedContents``: one request per input; Gemini reports no token count, so the
        inputs are billed at their typical estimate."""
        self.check_configured()
        embed = request.job.embed
        assert embed is not None  # an embedding job
        model = request.model.upstream.removeprefix("models/")
        requests = [{"model": f"models/{model}", "content": {"parts": [{"text": text}]},
                     **given(outputDimensionality=embed.dimensions)} for text in embed.inputs]
        url = self.endpoint(request, self.settings.gemini_base_url, f"/v1beta/models/{model}:batchEmbedContents")
        rows: list = []
        for start in range(0, len(requests), EMBED_BATCH):  # the most one call takes
            part = requests[start:start + EMBED_BATCH]
            answer = await self.upstream.post_json(url, {"requests": part}, self._headers())
            got = answer.get("embeddings") if isinstance(answer, dict) else None
            if not isinstance(got, list) or len(got) != len(part):
                raise ProviderError(f"{self.display} answered {len(got) if isinstance(got, list) else 'no'} "
                                    f"embeddings for {len(part)} inputs", code="upstream_invalid", retryable=True)
            rows += got
        return Embeddings([list(row["values"]) for row in rows], request.job.typical_prompt_tokens)
