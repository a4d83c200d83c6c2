"""A fake LLM provider: one asyncio process speaking several providers' wire formats.

Families and paths (see README.md beside this file for the full contract):

* ``openai``     ``POST /v1/chat/completions`` (also ``/chat/completions``), ``POST /v1/completions``
* ``mistral``    ``POST /mistral/v1/chat/completions``, or the OpenAI path when the User-Agent
                 names mistral (the ``mistralai`` SDK does): Mistral's flavour of the same format
* ``anthropic``  ``POST /v1/messages``
* ``gemini``     ``POST /{v1,v1beta,v1alpha}/models/{model}:generateContent`` and
                 ``:streamGenerateContent[?alt=sse]``
* ``bedrock``    ``POST /model/{modelId}/converse`` and ``/converse-stream`` (AWS event stream)

Control API under ``/_fake/``: ``config``, ``script``, ``requests``, ``reset``, ``health``, ``stats``.

The app is a bare ASGI callable (no framework on the hot path) served by uvicorn with a
protocol subclass that remembers each connection's transport, so a scripted fault can drop
the connection abruptly (``cut_after``) even before a response has started. All timing is done
with ``asyncio`` sleeps on absolute deadlines; one process holds thousands of streams.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson

from . import eventstream
from .asgi import Receive, Scope, Send, query_of, read_body, send_json, wait_disconnect
from .connections import QuietDrop, drop, tracking_protocol_class, transport_of
from .control import control
from .generation import Plan, build_plan, count_words, reply_begun_in
from .knobs import KNOB_KEYS, error_message
from .state import State

BATCH = 256  # max events coalesced into one write when behind schedule


def prefill_of(family: str, body: Any) -> str:
    """The assistant text a request asks the model to continue (prefill), per family's rules:
    a final assistant turn (Anthropic, Bedrock), a final model turn (Gemini), a final assistant
    message with ``prefix: true`` (Mistral). OpenAI chat has no prefill."""
    if not isinstance(body, dict):
        return ""
    if isinstance(body.get("prompt"), str):
        return reply_begun_in(body["prompt"])
    if family in ("anthropic", "bedrock", "mistral"):
        messages = body.get("messages") or []
        last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
        if last.get("role") != "assistant" or (family == "mistral" and not last.get("prefix")):
            return ""
        content = last.get("content")
        if isinstance(content, str):
            return content
        return "".join(b.get("text", "") for b in content or () if isinstance(b, dict))
    if family == "gemini":
        contents = body.get("contents") or []
        last = contents[-1] if contents and isinstance(contents[-1], dict) else {}
        if last.get("role") != "model":
            return ""
        return "".join(p.get("text", "") for p in last.get("parts") or () if isinstance(p, dict))
    return ""


# --------------------------------------------------------------------------------------
# Families
# --------------------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, message: str, etype: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.etype = etype


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def _rid(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


@dataclass
class Req:
    """What a family parsed from a request, plus per-response state."""

    model: str
    stream: bool
    prompt_tokens: int
    last_user: str
    limit: int | None
    stops: list[str]
    id: str = ""
    created: int = 0
    t0: float = 0.0
    opts: dict[str, Any] = field(default_factory=dict)
    plan: Plan | None = None
    sent_chunks: int = 0


def _req_int(value: Any, name: str, err: Callable[[str], ApiError], minimum: int = 1) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise err(f"{name} must be an integer >= {minimum}")
    return value


def _stops(value: Any, name: str, err: Callable[[str], ApiError], max_n: int | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        if max_n is not None and len(value) > max_n:
            raise err(f"{name}: at most {max_n} stop sequences are allowed")
        return list(value)
    raise err(f"{name} must be a string or a list of strings")


class Family:
    name = ""
    stream_content_type = b"text/event-stream; charset=utf-8"
    id_prefix = "req_"

    # auth ---------------------------------------------------------------------------
    def credential(self, headers: dict[str, str], query: dict[str, str]) -> str | None:
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer " and auth[7:].strip():
            return auth[7:].strip()
        return None

    def check_auth(self, headers: dict[str, str], query: dict[str, str], api_key: str | None) -> ApiError | None:
        cred = self.credential(headers, query)
        if cred is None:
            return ApiError(401, self.missing_key_message, "auth")
        if api_key is not None and cred != api_key:
            return ApiError(401, "Incorrect API key provided.", "auth")
        return None

    missing_key_message = "Missing API key."

    # errors -------------------------------------------------------------------------
    def error_type(self, status: int) -> str:
        raise NotImplementedError

    def error_body(self, status: int, message: str, etype: str) -> bytes:
        raise NotImplementedError

    def error_headers(self, status: int, etype: str) -> list[tuple[bytes, bytes]]:
        return [(b"content-type", b"application/json")]

    # parse / render -----------------------------------------------------------------
    def bad_request(self, message: str) -> ApiError:
        return ApiError(400, message)

    def parse(self, body: Any, params: dict[str, str], query: dict[str, str], headers: dict[str, str]) -> Req:
        raise NotImplementedError

    def response_headers(self, req: Req) -> list[tuple[bytes, bytes]]:
        return []

    def render(self, req: Req, plan: Plan) -> bytes:
        raise NotImplementedError

    # streaming: preamble goes out with the first token, end with the last one ---------
    def s_preamble(self, req: Req) -> bytes:
        return b""

    def s_delta(self, req: Req, text: str, index: int) -> bytes:
        raise NotImplementedError

    def s_end(self, req: Req, plan: Plan, last: str) -> bytes:
        raise NotImplementedError

    def s_error(self, req: Req, status: int, message: str, etype: str) -> bytes:
        raise NotImplementedError


def _sse(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


def _texts_of_content(content: Any, err: Callable[[str], ApiError], where: str) -> list[str]:
    """OpenAI/Anthropic content: a string or a list of typed parts; text parts count."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        out = []
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise err(f"{where}: each content part must be an object with a type")
            if part["type"] == "text":
                if not isinstance(part.get("text"), str):
                    raise err(f"{where}: text part needs a string text")
                out.append(part["text"])
        return out
    raise err(f"{where}: content must be a string or a list of content parts")


class OpenAIChat(Family):
    name = "openai"
    id_prefix = "chatcmpl-"
    missing_key_message = (
        "You didn't provide an API key. You need to provide your API key in an Authorization "
        "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
    )
    ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
    FINISH = {"stop": "stop", "length": "length", "stop_sequence": "stop"}

    def __init__(self, mistral: bool = False):
        self.mistral = mistral
        if mistral:
            self.name = "mistral"
            self.id_prefix = ""

    def error_type(self, status: int) -> str:
        if status == 401:
            return "invalid_request_error"
        if status == 429:
            return "requests"
        if status >= 500:
            return "server_error"
        if status == 403:
            return "permission_error"
        return "invalid_request_error"

    def error_body(self, status: int, message: str, etype: str) -> bytes:
        code: Any = None
        if status == 401:
            code = "invalid_api_key"
        elif status == 429:
            code = "rate_limit_exceeded"
        if self.mistral:
            return dumps({"object": "error", "message": message, "type": etype, "param": None, "code": str(status)})
        return dumps({"error": {"message": message, "type": etype, "param": None, "code": code}})

    def parse(self, body, params, query, headers) -> Req:
        err = self.bad_request
        if not isinstance(body, dict):
            raise err("The request body must be a JSON object.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise err("you must provide a model parameter")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise err("'messages' must be a non-empty array")
        texts: list[str] = []
        last_user = ""
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise err(f"messages[{i}] must be an object")
            role = m.get("role")
            if role not in self.ROLES:
                raise err(f"messages[{i}].role: invalid value {role!r}")
            parts = _texts_of_content(m.get("content"), err, f"messages[{i}]")
            texts.extend(parts)
            if role == "user":
                last_user = " ".join(parts)
        limit = _req_int(body.get("max_completion_tokens"), "max_completion_tokens", err)
        if limit is None:
            limit = _req_int(body.get("max_tokens"), "max_tokens", err)
        stream = bool(body.get("stream") or False)
        so = body.get("stream_options")
        if so is not None and not stream:
            raise err("The 'stream_options' parameter is only allowed when 'stream' is enabled.")
        n = body.get("n")
        if n not in (None, 1):
            raise err("the fake provider only supports n=1")
        return Req(
            model=model,
            stream=stream,
            prompt_tokens=count_words(texts),
            last_user=last_user,
            limit=limit,
            stops=_stops(body.get("stop"), "stop", err, None if self.mistral else 4),
            opts={"include_usage": bool(isinstance(so, dict) and so.get("include_usage"))},
        )

    def _usage(self, req: Req, plan: Plan) -> dict[str, Any]:
        u: dict[str, Any] = {
            "prompt_tokens": req.prompt_tokens,
            "completion_tokens": plan.completion_tokens,
            "total_tokens": req.prompt_tokens + plan.completion_tokens,
        }
        if not self.mistral:
            u["prompt_tokens_details"] = {"cached_tokens": 0, "audio_tokens": 0}
            u["completion_tokens_details"] = {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            }
        return u

    def render(self, req: Req, plan: Plan) -> bytes:
        message: dict[str, Any] = {"role": "assistant", "content": plan.text}
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": self.FINISH[plan.finish]}
        if self.mistral:
            message["tool_calls"] = None
            message["prefix"] = False
        else:
            message["refusal"] = None
            message["annotations"] = []
            choice["logprobs"] = None
        out = {
            "id": req.id,
            "object": "chat.completion",
            "created": req.created,
            "model": req.model,
            "choices": [choice],
            "usage": self._usage(req, plan),
        }
        if not self.mistral:
            out["service_tier"] = "default"
            out["system_fingerprint"] = None
        return dumps(out)

    def _chunk(self, req: Req, delta: dict[str, Any], finish: str | None, usage: Any = ...) -> bytes:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        if not self.mistral:
            choice["logprobs"] = None
        c: dict[str, Any] = {
            "id": req.id,
            "object": "chat.completion.chunk",
            "created": req.created,
            "model": req.model,
            "choices": [choice],
        }
        if not self.mistral:
            c["system_fingerprint"] = None
            if req.opts["include_usage"]:
                c["usage"] = None
        if usage is not ...:
            c["usage"] = usage
        return _sse(dumps(c))

    def s_preamble(self, req: Req) -> bytes:
        delta: dict[str, Any] = {"role": "assistant", "content": ""}
        if not self.mistral:
            delta["refusal"] = None
        return self._chunk(req, delta, None)

    def s_delta(self, req: Req, text: str, index: int) -> bytes:
        return self._chunk(req, {"content": text}, None)

    def s_end(self, req: Req, plan: Plan, last: str) -> bytes:
        out = [self.s_delta(req, last, 0)] if last else []
        if self.mistral:  # Mistral: usage rides on the finishing chunk, always
            out.append(self._chunk(req, {"content": ""}, self.FINISH[plan.finish], self._usage(req, plan)))
        else:
            out.append(self._chunk(req, {}, self.FINISH[plan.finish]))
            if req.opts["include_usage"]:
                c = {
                    "id": req.id,
                    "object": "chat.completion.chunk",
                    "created": req.created,
                    "model": req.model,
                    "system_fingerprint": None,
                    "choices": [],
                    "usage": self._usage(req, plan),
                }
                out.append(_sse(dumps(c)))
        out.append(b"data: [DONE]\n\n")
        return b"".join(out)

    def s_error(self, req: Req, status: int, message: str, etype: str) -> bytes:
        return _sse(self.error_body(status, message, etype))


class OpenAICompletions(OpenAIChat):
    name = "openai"
    id_prefix = "cmpl-"

    def __init__(self) -> None:
        super().__init__(mistral=False)

    def parse(self, body, params, query, headers) -> Req:
        err = self.bad_request
        if not isinstance(body, dict):
            raise err("The request body must be a JSON object.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise err("you must provide a model parameter")
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and not isinstance(prompt[0], int):
            prompt = prompt[0]
        if isinstance(prompt, str):
            texts = [prompt]
            ptoks = count_words(texts)
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            texts = [" ".join(str(t) for t in prompt)]
            ptoks = len(prompt)
        elif isinstance(prompt, list) and len(prompt) > 1:
            raise err("the fake provider supports a single prompt per request")
        else:
            raise err("'prompt' must be a string, a list with one string, or a list of token ids")
        limit = _req_int(body.get("max_tokens"), "max_tokens", err)
        if limit is None:
            limit = 16  # OpenAI's and vLLM's default for /v1/completions
        stream = bool(body.get("stream") or False)
        so = body.get("stream_options")
        if so is not None and not stream:
            raise err("The 'stream_options' parameter is only allowed when 'stream' is enabled.")
        if body.get("n") not in (None, 1):
            raise err("the fake provider only supports n=1")
        return Req(
            model=model,
            stream=stream,
            prompt_tokens=ptoks,
            last_user=texts[0],
            limit=limit,
            stops=_stops(body.get("stop"), "stop", err, 4),
            opts={"include_usage": bool(isinstance(so, dict) and so.get("include_usage"))},
        )

    def render(self, req: Req, plan: Plan) -> bytes:
        return dumps(
            {
                "id": req.id,
                "object": "text_completion",
                "created": req.created,
                "model": req.model,
                "system_fingerprint": None,
                "choices": [
                    {"index": 0, "text": plan.text, "logprobs": None, "finish_reason": self.FINISH[plan.finish]}
                ],
                "usage": {
                    "prompt_tokens": req.prompt_tokens,
                    "completion_tokens": plan.completion_tokens,
                    "total_tokens": req.prompt_tokens + plan.completion_tokens,
                },
            }
        )

    def _tchunk(self, req: Req, text: str, finish: str | None) -> bytes:
        c: dict[str, Any] = {
            "id": req.id,
            "object": "text_completion",
            "created": req.created,
            "model": req.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        }
        if req.opts["include_usage"]:
            c["usage"] = None
        return _sse(dumps(c))

    def s_preamble(self, req: Req) -> bytes:
        return b""

    def s_delta(self, req: Req, text: str, index: int) -> bytes:
        return self._tchunk(req, text, None)

    def s_end(self, req: Req, plan: Plan, last: str) -> bytes:
        out = [self._tchunk(req, last, None)] if last else []
        out.append(self._tchunk(req, "", self.FINISH[plan.finish]))
        if req.opts["include_usage"]:
            out.append(
                _sse(
                    dumps(
                        {
                            "id": req.id,
                            "object": "text_completion",
                            "created": req.created,
                            "model": req.model,
                            "choices": [],
                            "usage": {
                                "prompt_tokens": req.prompt_tokens,
                                "completion_tokens": plan.completion_tokens,
                                "total_tokens": req.prompt_tokens + plan.completion_tokens,
                            },
                        }
                    )
                )
            )
        out.append(b"data: [DONE]\n\n")
        return b"".join(out)


class Anthropic(Family):
    name = "anthropic"
    id_prefix = "msg_fake"
    missing_key_message = "x-api-key header is required"
    TYPES = {
        400: "invalid_request_error",
        401: "authentication_error",
        402: "billing_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        500: "api_error",
        504: "timeout_error",
        529: "overloaded_error",
    }
    STOP = {"stop": "end_turn", "length": "max_tokens", "stop_sequence": "stop_sequence"}

    def credential(self, headers, query):
        key = headers.get("x-api-key", "").strip()
        if key:
            return key
        return super().credential(headers, query)  # the SDK may send api keys / auth tokens as Bearer

    def error_type(self, status: int) -> str:
        return self.TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")

    def error_body(self, status: int, message: str, etype: str) -> bytes:
        return dumps({"type": "error", "error": {"type": etype, "message": message}})

    def parse(self, body, params, query, headers) -> Req:
        err = self.bad_request
        if not headers.get("anthropic-version"):
            raise err("anthropic-version: header is required")
        if not isinstance(body, dict):
            raise err("The request body must be a JSON object.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise err("model: Field required")
        if "max_tokens" not in body:
            raise err("max_tokens: Field required")
        limit = _req_int(body.get("max_tokens"), "max_tokens", err)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise err("messages: Field required" if messages is None else "messages: at least one message is required")
        texts: list[str] = []
        system = body.get("system")
        if system is not None:
            texts.extend(_texts_of_content(system, err, "system"))
        last_user = ""
        prev = None
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise err(f"messages.{i}: Input should be a valid dictionary")
            role = m.get("role")
            if role == "system":
                raise err(
                    f'messages.{i}.role: Unexpected role "system". The Messages API accepts a top-level '
                    "`system` parameter, not \"system\" as an input message role."
                )
            if role not in ("user", "assistant"):
                raise err(f"messages.{i}.role: Input should be 'user' or 'assistant'")
            if role == prev:
                raise err("messages: roles must alternate between \"user\" and \"assistant\"")
            prev = role
            if "content" not in m:
                raise err(f"messages.{i}.content: Field required")
            parts = _texts_of_content(m["content"], err, f"messages.{i}.content")
            texts.extend(parts)
            if role == "user":
                last_user = " ".join(parts)
        return Req(
            model=model,
            stream=bool(body.get("stream") or False),
            prompt_tokens=count_words(texts),
            last_user=last_user,
            limit=limit,
            stops=_stops(body.get("stop_sequences"), "stop_sequences", err, None),
        )

    def response_headers(self, req: Req) -> list[tuple[bytes, bytes]]:
        return [(b"request-id", ("req_fake" + req.id[8:]).encode())]

    def _usage(self, req: Req, out_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": req.prompt_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": out_tokens,
            "service_tier": "standard",
        }

    def render(self, req: Req, plan: Plan) -> bytes:
        return dumps(
            {
                "id": req.id,
                "type": "message",
                "role": "assistant",
                "model": req.model,
                "content": [{"type": "text", "text": plan.text}],
                "stop_reason": self.STOP[plan.finish],
                "stop_sequence": plan.stop_sequence,
                "usage": self._usage(req, plan.completion_tokens),
            }
        )

    @staticmethod
    def _ev(name: bytes, obj: Any) -> bytes:
        return b"event: " + name + b"\ndata: " + dumps(obj) + b"\n\n"

    def s_preamble(self, req: Req) -> bytes:
        msg = {
            "id": req.id,
            "type": "message",
            "role": "assistant",
            "model": req.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self._usage(req, 1),
        }
        return (
            self._ev(b"message_start", {"type": "message_start", "message": msg})
            + self._ev(
                b"content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            )
            + self._ev(b"ping", {"type": "ping"})
        )

    def s_delta(self, req: Req, text: str, index: int) -> bytes:
        return self._ev(
            b"content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
        )

    def s_end(self, req: Req, plan: Plan, last: str) -> bytes:
        out = [self.s_delta(req, last, 0)] if last else []
        out.append(self._ev(b"content_block_stop", {"type": "content_block_stop", "index": 0}))
        out.append(
            self._ev(
                b"message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": self.STOP[plan.finish], "stop_sequence": plan.stop_sequence},
                    "usage": {"output_tokens": plan.completion_tokens},
                },
            )
        )
        out.append(self._ev(b"message_stop", {"type": "message_stop"}))
        return b"".join(out)

    def s_error(self, req: Req, status: int, message: str, etype: str) -> bytes:
        return b"event: error\ndata: " + self.error_body(status, message, etype) + b"\n\n"


class Gemini(Family):
    name = "gemini"
    id_prefix = ""
    missing_key_message = (
        "Method doesn't allow unregistered callers (callers without established identity). "
        "Please use API Key or other form of API consumer identity to call this API."
    )
    STATUS = {
        400: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        409: "ABORTED",
        429: "RESOURCE_EXHAUSTED",
        499: "CANCELLED",
        500: "INTERNAL",
        501: "NOT_IMPLEMENTED",
        503: "UNAVAILABLE",
        504: "DEADLINE_EXCEEDED",
    }
    FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "stop_sequence": "STOP"}

    def credential(self, headers, query):
        key = headers.get("x-goog-api-key", "").strip() or query.get("key", "").strip()
        if key:
            return key
        return super().credential(headers, query)  # OAuth bearer tokens are accepted too

    def error_type(self, status: int) -> str:
        return self.STATUS.get(status, "UNAVAILABLE" if status >= 500 else "FAILED_PRECONDITION")

    def error_body(self, status: int, message: str, etype: str) -> bytes:
        return dumps({"error": {"code": status, "message": message, "status": etype}})

    @staticmethod
    def _get(d: dict[str, Any], camel: str, snake: str) -> Any:
        # proto3 JSON accepts both lowerCamelCase and the original snake_case field names
        return d.get(camel, d.get(snake))

    def _parts(self, content: Any, err, where: str) -> list[str]:
        if not isinstance(content, dict):
            raise err(f"Invalid value at '{where}': must be a Content object")
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            raise err(f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.")
        out = []
        for p in parts:
            if not isinstance(p, dict):
                raise err(f"Invalid value at '{where}.parts': must be a Part object")
            if isinstance(p.get("text"), str):
                out.append(p["text"])
        return out

    def parse(self, body, params, query, headers) -> Req:
        err = self.bad_request
        if not isinstance(body, dict):
            raise err("Invalid JSON payload received. Expected an object.")
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise err("* GenerateContentRequest.contents: contents is not specified")
        texts: list[str] = []
        si = self._get(body, "systemInstruction", "system_instruction")
        if si is not None:
            texts.extend(self._parts(si, err, "system_instruction"))
        last_user = ""
        for i, c in enumerate(contents):
            if not isinstance(c, dict):
                raise err(f"Invalid value at 'contents[{i}]': must be a Content object")
            role = c.get("role", "user")
            if role not in ("user", "model"):
                raise err(
                    f"Please use a valid role: user, model. Got {role!r} at contents[{i}]."
                )
            parts = self._parts(c, err, f"contents[{i}]")
            texts.extend(parts)
            if role == "user":
                last_user = " ".join(parts)
        gc = self._get(body, "generationConfig", "generation_config") or {}
        if not isinstance(gc, dict):
            raise err("Invalid value at 'generation_config': must be an object")
        limit = _req_int(self._get(gc, "maxOutputTokens", "max_output_tokens"), "max_output_tokens", err)
        cc = self._get(gc, "candidateCount", "candidate_count")
        if cc not in (None, 1):
            raise err("the fake provider only supports candidateCount=1")
        return Req(
            model=params["model"],
            stream=params["method"] == "streamGenerateContent",
            prompt_tokens=count_words(texts),
            last_user=last_user,
            limit=limit,
            stops=_stops(self._get(gc, "stopSequences", "stop_sequences"), "stop_sequences", err, 5),
            opts={"sse": query.get("alt") == "sse"},
        )

    def response_headers(self, req: Req) -> list[tuple[bytes, bytes]]:
        return [(b"vary", b"Origin, X-Origin, Referer")]

    def _usage(self, req: Req, n: int) -> dict[str, Any]:
        return {
            "promptTokenCount": req.prompt_tokens,
            "candidatesTokenCount": n,
            "totalTokenCount": req.prompt_tokens + n,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": req.prompt_tokens}],
        }

    def _resp(self, req: Req, text: str, n: int, finish: str | None) -> dict[str, Any]:
        cand: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
        if finish:
            cand["finishReason"] = finish
        return {
            "candidates": [cand],
            "usageMetadata": self._usage(req, n),
            "modelVersion": req.model,
            "responseId": req.id,
        }

    def render(self, req: Req, plan: Plan) -> bytes:
        return dumps(self._resp(req, plan.text, plan.completion_tokens, self.FINISH[plan.finish]))

    @property
    def stream_content_type(self) -> bytes:  # type: ignore[override]
        return b"text/event-stream"

    def _frame(self, req: Req, obj: Any) -> bytes:
        if req.opts["sse"]:
            return b"data: " + dumps(obj) + b"\r\n\r\n"
        # without alt=sse Gemini streams one JSON array, element by element
        prefix = b"[" if req.sent_chunks == 0 else b",\r\n"
        req.sent_chunks += 1
        return prefix + dumps(obj)

    def s_delta(self, req: Req, text: str, index: int) -> bytes:
        return self._frame(req, self._resp(req, text, index + 1, None))

    def s_end(self, req: Req, plan: Plan, last: str) -> bytes:
        out = self._frame(req, self._resp(req, last, plan.completion_tokens, self.FINISH[plan.finish]))
        if not req.opts["sse"]:
            out += b"]"
        return out

    def s_error(self, req: Req, status: int, message: str, etype: str) -> bytes:
        obj = orjson.loads(self.error_body(status, message, etype))
        out = self._frame(req, obj)
        if not req.opts["sse"]:
            out += b"]"
        return out


class Bedrock(Family):
    name = "bedrock"
    id_prefix = ""
    stream_content_type = b"application/vnd.amazon.eventstream"
    TYPES = {
        400: "ValidationException",
        403: "AccessDeniedException",
        404: "ResourceNotFoundException",
        408: "ModelTimeoutException",
        424: "ModelErrorException",
        429: "ThrottlingException",
        500: "InternalServerException",
        503: "ServiceUnavailableException",
    }
    STREAM_EXC = {
        "ThrottlingException": "throttlingException",
        "InternalServerException": "internalServerException",
        "ServiceUnavailableException": "serviceUnavailableException",
        "ValidationException": "validationException",
    }
    STOP = {"stop": "end_turn", "length": "max_tokens", "stop_sequence": "stop_sequence"}

    def check_auth(self, headers, query, api_key):
        auth = headers.get("authorization", "")
        if not auth:
            return ApiError(403, "Missing Authentication Token", "MissingAuthenticationTokenException")
        if auth.startswith("AWS4-HMAC-SHA256 "):
            return None  # the signature itself is not verified
        if auth[:7].lower() == "bearer " and auth[7:].strip():  # Bedrock API keys
            if api_key is not None and auth[7:].strip() != api_key:
                return ApiError(403, "The security token included in the request is invalid.", "UnrecognizedClientException")
            return None
        return ApiError(
            403,
            "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters.",
            "IncompleteSignatureException",
        )

    def error_type(self, status: int) -> str:
        return self.TYPES.get(status, "ServiceUnavailableException" if status >= 500 else "ValidationException")

    def error_body(self, status: int, message: str, etype: str) -> bytes:
        return dumps({"message": message})

    def error_headers(self, status: int, etype: str) -> list[tuple[bytes, bytes]]:
        return [
            (b"content-type", b"application/json"),
            (b"x-amzn-errortype", (etype + ":http://internal.amazon.com/coral/com.amazon.bedrock/").encode()),
            (b"x-amzn-requestid", _rid("").encode()),
        ]

    def parse(self, body, params, query, headers) -> Req:
        err = self.bad_request
        if not isinstance(body, dict):
            raise err("Malformed input request, please reformat your input and try again.")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise err("A conversation must start with a user message. Try again with a conversation that starts with a user message.")
        texts: list[str] = []
        system = body.get("system")
        if system is not None:
            if not isinstance(system, list):
                raise err("1 validation error detected: Value at 'system' failed to satisfy constraint: must be a list")
            texts.extend(b["text"] for b in system if isinstance(b, dict) and isinstance(b.get("text"), str))
        last_user = ""
        prev = None
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise err(f"Value at 'messages.{i + 1}' failed to satisfy constraint: must be an object")
            role = m.get("role")
            if role not in ("user", "assistant"):
                raise err(
                    f"1 validation error detected: Value '{role}' at 'messages.{i + 1}.member.role' failed to "
                    "satisfy constraint: Member must satisfy enum value set: [user, assistant]"
                )
            if i == 0 and role != "user":
                raise err("A conversation must start with a user message. Try again with a conversation that starts with a user message.")
            if role == prev:
                raise err("A conversation must alternate between user and assistant roles. Make sure the conversation alternates between user and assistant roles and try again.")
            prev = role
            content = m.get("content")
            if not isinstance(content, list) or not content:
                raise err(f"The content field in the Message object at messages.{i} is empty. Add a ContentBlock object to the content field and try again.")
            parts = [b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str)]
            texts.extend(parts)
            if role == "user":
                last_user = " ".join(parts)
        ic = body.get("inferenceConfig") or {}
        if not isinstance(ic, dict):
            raise err("inferenceConfig must be an object")
        return Req(
            model=params["model"],
            stream=params["op"] == "converse-stream",
            prompt_tokens=count_words(texts),
            last_user=last_user,
            limit=_req_int(ic.get("maxTokens"), "inferenceConfig.maxTokens", err),
            stops=_stops(ic.get("stopSequences"), "inferenceConfig.stopSequences", err, None),
        )

    def response_headers(self, req: Req) -> list[tuple[bytes, bytes]]:
        return [(b"x-amzn-requestid", req.id.encode())]

    def _usage(self, req: Req, plan: Plan) -> dict[str, Any]:
        return {
            "inputTokens": req.prompt_tokens,
            "outputTokens": plan.completion_tokens,
            "totalTokens": req.prompt_tokens + plan.completion_tokens,
        }

    def _latency(self, req: Req) -> int:
        return int((time.monotonic() - req.t0) * 1000)

    def render(self, req: Req, plan: Plan) -> bytes:
        return dumps(
            {
                "output": {"message": {"role": "assistant", "content": [{"text": plan.text}]}},
                "stopReason": self.STOP[plan.finish],
                "usage": self._usage(req, plan),
                "metrics": {"latencyMs": self._latency(req)},
            }
        )

    def s_preamble(self, req: Req) -> bytes:
        return eventstream.event_frame("messageStart", b'{"role":"assistant"}')

    def s_delta(self, req: Req, text: str, index: int) -> bytes:
        return eventstream.event_frame("contentBlockDelta", dumps({"delta": {"text": text}, "contentBlockIndex": 0}))

    def s_end(self, req: Req, plan: Plan, last: str) -> bytes:
        out = [self.s_delta(req, last, 0)] if last else []
        out.append(eventstream.event_frame("contentBlockStop", b'{"contentBlockIndex":0}'))
        out.append(eventstream.event_frame("messageStop", dumps({"stopReason": self.STOP[plan.finish]})))
        out.append(
            eventstream.event_frame(
                "metadata", dumps({"usage": self._usage(req, plan), "metrics": {"latencyMs": self._latency(req)}})
            )
        )
        return b"".join(out)

    def s_error(self, req: Req, status: int, message: str, etype: str) -> bytes:
        exc = self.STREAM_EXC.get(etype, etype[:1].lower() + etype[1:] if etype[:1].isupper() else etype)
        if exc not in self.STREAM_EXC.values() and exc != "modelStreamErrorException":
            exc = "modelStreamErrorException"
        payload: dict[str, Any] = {"message": message}
        if exc == "modelStreamErrorException":
            payload.update(originalStatusCode=status, originalMessage=message)
        return eventstream.exception_frame(exc, dumps(payload))


OPENAI_CHAT = OpenAIChat()
MISTRAL_CHAT = OpenAIChat(mistral=True)
OPENAI_COMPLETIONS = OpenAICompletions()
ANTHROPIC = Anthropic()
GEMINI = Gemini()
BEDROCK = Bedrock()

# --------------------------------------------------------------------------------------
# The ASGI app
# --------------------------------------------------------------------------------------

_OPENAI_CHAT_PATHS = {"/v1/chat/completions", "/chat/completions", "/openai/v1/chat/completions"}
_OPENAI_COMPLETION_PATHS = {"/v1/completions", "/completions", "/openai/v1/completions"}
_GEMINI_VERSIONS = {"v1", "v1beta", "v1alpha"}


def _route(method: str, path: str, raw_path: bytes, headers: dict[str, str]) -> tuple[Family, dict[str, str]] | None:
    if path in _OPENAI_CHAT_PATHS:
        ua = headers.get("user-agent", "").lower()
        return (MISTRAL_CHAT if "mistral" in ua else OPENAI_CHAT), {}
    if path == "/mistral/v1/chat/completions":
        return MISTRAL_CHAT, {}
    if path in _OPENAI_COMPLETION_PATHS:
        return OPENAI_COMPLETIONS, {}
    if path == "/v1/messages":
        return ANTHROPIC, {}
    if path.startswith("/model/"):
        raw = raw_path.decode("latin-1")
        for op in ("converse-stream", "converse"):
            suffix = "/" + op
            if raw.endswith(suffix):
                model = urllib.parse.unquote(raw[len("/model/") : -len(suffix)])
                if model:
                    return BEDROCK, {"model": model, "op": op}
        return None
    parts = path.split("/", 3)  # ['', 'v1beta', 'models', 'gemini-x:generateContent']
    if len(parts) == 4 and parts[1] in _GEMINI_VERSIONS and parts[2] in ("models", "tunedModels"):
        model, sep, gmethod = parts[3].rpartition(":")
        if sep and model and gmethod in ("generateContent", "streamGenerateContent"):
            return GEMINI, {"model": model, "method": gmethod, "version": parts[1]}
    return None


class FakeProviderApp:
    def __init__(self, state: State):
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path.startswith("/_fake/") or path == "/_fake":
            await control(self.state, scope, receive, send)
            return
        headers: dict[str, str] = {}
        for k, v in scope["headers"]:
            key = k.decode("latin-1")
            val = v.decode("latin-1")
            headers[key] = headers[key] + ", " + val if key in headers else val
        route = _route(scope["method"], path, scope.get("raw_path") or path.encode(), headers)
        if route is None:
            await read_body(receive)
            await send_json(
                send, 404, dumps({"error": {"message": f"Unknown request URL: {scope['method']} {path}", "type": "invalid_request_error", "code": "unknown_url"}})
            )
            return
        if scope["method"] != "POST":
            await read_body(receive)
            await send_json(send, 405, dumps({"error": {"message": "Method not allowed", "type": "invalid_request_error", "code": None}}))
            return
        st = self.state
        st.active += 1
        st.total += 1
        st.peak_active = max(st.peak_active, st.active)
        try:
            await self.provider(scope, receive, send, route[0], route[1], headers)
        finally:
            st.active -= 1

    # ----------------------------------------------------------------------------------
    async def provider(
        self, scope: Scope, receive: Receive, send: Send, fam: Family, params: dict[str, str], headers: dict[str, str]
    ) -> None:
        st = self.state
        t0 = time.monotonic()
        raw = await read_body(receive)
        if raw is None:
            return
        query = query_of(scope)
        path = scope["path"]
        try:
            body: Any = orjson.loads(raw) if raw else None
            body_ok = True
        except orjson.JSONDecodeError:
            body, body_ok = raw.decode("utf-8", "replace"), False
        rec: dict[str, Any] = {
            "id": next(st.ids),
            "time": time.time(),
            "family": fam.name,
            "method": scope["method"],
            "path": path,
            "query": query,
            "headers": headers,
            "body": body if st.config["record_bodies"] else None,
            "stream": None,
            "status": None,
            "behaviour": None,
            # The caller's address: the same one on two requests means a reused connection.
            "client": "%s:%s" % tuple(scope["client"]) if scope.get("client") else None,
        }
        st.record(rec)

        async def fail(e: ApiError, extra: list[tuple[bytes, bytes]] = ()) -> None:  # type: ignore[assignment]
            etype = e.etype if e.etype and e.etype != "auth" else fam.error_type(e.status)
            hdrs = fam.error_headers(e.status, etype) + list(extra)
            rec["status"] = e.status
            await send_json(send, e.status, fam.error_body(e.status, e.message, etype), hdrs)

        auth_err = fam.check_auth(headers, query, st.config["api_key"])
        if auth_err is not None:
            await fail(auth_err)
            return
        if not body_ok:
            await fail(fam.bad_request("Invalid JSON in request body."))
            return
        try:
            req = fam.parse(body, params, query, headers)
        except ApiError as e:
            await fail(e)
            return
        rec["stream"] = req.stream
        beh = st.take_behaviour(fam.name, path, req.stream) or {}
        if beh:
            rec["behaviour"] = {k: v for k, v in beh.items() if k != "times"}
        knobs = st.config
        if any(k in beh for k in KNOB_KEYS):
            knobs = dict(knobs)
            knobs.update({k: beh[k] for k in KNOB_KEYS if k in beh})
        extra_headers = [(k.lower().encode(), str(v).encode()) for k, v in (beh.get("headers") or {}).items()]

        if beh.get("delay_ms"):
            await asyncio.sleep(beh["delay_ms"] / 1000)
        if beh.get("hang"):
            rec["status"] = "hang"
            await wait_disconnect(receive)
            return
        status = beh.get("status")
        if status is not None and beh.get("error_after") is None:
            msg = error_message(beh, status)
            extra = list(extra_headers)
            if beh.get("retry_after") is not None:
                extra.append((b"retry-after", str(beh["retry_after"]).encode()))
            await fail(ApiError(status, msg, beh.get("error_type")), extra)
            return

        req.id = fam.id_prefix + (_rid("") if fam.name != "gemini" else secrets.token_urlsafe(16))
        req.created = int(time.time())
        req.t0 = t0
        plan = build_plan(knobs, req.limit, req.stops, req.last_user, prefill_of(fam.name, body))
        ttft = float(knobs.get("ttft_ms") or 0) / 1000
        rate = float(knobs.get("tokens_per_s") or 0)
        if not req.stream:
            n = len(plan.deltas)
            total = ttft + ((n - 1) / rate if rate and n > 1 else 0)
            if beh.get("cut_after") is not None:
                await asyncio.sleep(ttft)
                rec["status"] = "cut"
                await drop(scope, receive)
                return
            if total:
                await asyncio.sleep(total)
            if beh.get("error_after") is not None:  # no stream to break: answer with the error
                await fail(ApiError(status, error_message(beh, status), beh.get("error_type")))
                return
            rec["status"] = 200
            hdrs = [(b"content-type", b"application/json")] + fam.response_headers(req) + extra_headers
            await send_json(send, 200, fam.render(req, plan), hdrs)
            return
        await self.stream(scope, receive, send, fam, req, plan, beh, ttft, rate, rec, extra_headers)

    async def stream(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        fam: Family,
        req: Req,
        plan: Plan,
        beh: dict[str, Any],
        ttft: float,
        rate: float,
        rec: dict[str, Any],
        extra_headers: list[tuple[bytes, bytes]],
    ) -> None:
        st = self.state
        st.active_streams += 1
        try:
            hdrs = [
                (b"content-type", fam.stream_content_type),
                (b"cache-control", b"no-cache"),
            ]
            hdrs += fam.response_headers(req) + extra_headers
            await send({"type": "http.response.start", "status": 200, "headers": hdrs})
            transport = transport_of(scope)
            loop = asyncio.get_running_loop()
            n = len(plan.deltas)
            cut = beh.get("cut_after")
            err_after = beh.get("error_after")
            stop_at = n
            if cut is not None:
                stop_at = min(stop_at, cut)
            if err_after is not None:
                stop_at = min(stop_at, err_after)
            natural_end = cut is None and err_after is None
            # the last token goes out together with the terminal events
            body_end = stop_at - 1 if natural_end and n > 0 else stop_at
            first = loop.time() + ttft
            interval = 1.0 / rate if rate else 0.0
            preamble_sent = False
            i = 0
            while i < body_end:
                due = first + i * interval
                now = loop.time()
                if due > now:
                    await asyncio.sleep(due - now)
                    now = loop.time()
                if interval:
                    j = int((now - first) / interval) + 1
                    j = max(i + 1, min(j, body_end, i + BATCH))
                else:
                    j = min(body_end, i + BATCH)
                parts = []
                if not preamble_sent:
                    parts.append(fam.s_preamble(req))
                    preamble_sent = True
                for k in range(i, j):
                    d = plan.deltas[k]
                    if d:
                        parts.append(fam.s_delta(req, d, k))
                if transport is not None and transport.is_closing():
                    rec["status"] = "client_gone"
                    return
                await send({"type": "http.response.body", "body": b"".join(parts), "more_body": True})
                if not interval and j < body_end:
                    await asyncio.sleep(0)  # let other streams run between batches
                i = j
            # the terminal step, due when the next token slot comes up: the last token with the
            # end events, or (after stop_at tokens) a cut / an in-band error
            due = first + (max(0, n - 1) if natural_end else stop_at) * interval
            now = loop.time()
            if due > now:
                await asyncio.sleep(due - now)
            if transport is not None and transport.is_closing():
                rec["status"] = "client_gone"
                return
            if cut is not None and (err_after is None or cut <= err_after):
                rec["status"] = "cut"
                await drop(scope, receive)
                return
            if err_after is not None:
                status = beh["status"]
                etype = beh.get("error_type") or fam.error_type(status)
                tail = fam.s_error(req, status, error_message(beh, status), etype)
                rec["status"] = f"error_after:{status}"
            else:
                tail = b"" if preamble_sent else fam.s_preamble(req)
                tail += fam.s_end(req, plan, plan.deltas[-1] if n else "")
                rec["status"] = 200
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        finally:
            st.active_streams -= 1


# --------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------


def make_server(host: str = "127.0.0.1", port: int = 0, log_level: str = "warning", **config: Any):
    """Build (uvicorn.Server, bound socket, State). Bind first so port 0 picks a free port."""
    import socket

    import uvicorn

    state = State(config)
    app = FakeProviderApp(state)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.set_inheritable(True)
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:  # pragma: no cover
        loop = "asyncio"
    cfg = uvicorn.Config(
        app,
        http=tracking_protocol_class(),
        loop=loop,
        lifespan="off",
        access_log=False,
        log_level=log_level,
        backlog=4096,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=1,
        ws="none",
    )
    logging.getLogger("uvicorn.error").addFilter(QuietDrop())
    server = uvicorn.Server(cfg)
    return server, sock, state
