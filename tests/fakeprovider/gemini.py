"""Gemini's ``models/{model}:generateContent`` and ``:streamGenerateContent`` (SSE with
``alt=sse``, else one JSON array streamed element by element)."""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from .family import Family, Req, dumps, final_turn_text, text_blocks
from .generation import Plan
from .tools import gemini_tool_use


def field_of(d: dict[str, Any], camel: str, snake: str) -> Any:
    # proto3 JSON accepts both lowerCamelCase and the original snake_case field names
    return d.get(camel, d.get(snake))


class Gemini(Family):
    name = "gemini"
    id_prefix = ""
    stream_content_type = b"text/event-stream"
    missing_key_message = (
        "Method doesn't allow unregistered callers (callers without established identity). "
        "Please use API Key or other form of API consumer identity to call this API."
    )
    not_an_object = "Invalid JSON payload received. Expected an object."
    ERROR_TYPES = {  # the error's status
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
    SERVER_ERROR_TYPE = "UNAVAILABLE"
    CLIENT_ERROR_TYPE = "FAILED_PRECONDITION"
    FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "stop_sequence": "STOP", "tool_calls": "STOP"}

    def key_credential(self, headers, query) -> str:
        return headers.get("x-goog-api-key", "").strip() or query.get("key", "").strip()  # else OAuth Bearer

    def error_body(self, status: int, message: str, etype: str) -> bytes:
        return dumps({"error": {"code": status, "message": message, "status": etype}})

    def new_id(self) -> str:
        return secrets.token_urlsafe(16)  # Gemini's response ids are URL-safe base64, not hex

    def part_texts(self, content: Any, where: str) -> list[str]:
        """A Content object's text: its ``parts`` must be a non-empty list of Part objects."""
        if not isinstance(content, dict):
            raise self.bad_request(f"Invalid value at '{where}': must be a Content object")
        parts = self.require_list(
            content.get("parts"), f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty."
        )
        if not all(isinstance(p, dict) for p in parts):
            raise self.bad_request(f"Invalid value at '{where}.parts': must be a Part object")
        return text_blocks(parts)

    def parse(self, body, params, query, headers) -> Req:
        body = self.require_object(body)
        contents = self.require_list(body.get("contents"),
                                     "* GenerateContentRequest.contents: contents is not specified")
        si = field_of(body, "systemInstruction", "system_instruction")
        system_texts = [] if si is None else self.part_texts(si, "system_instruction")
        conv = self.read_turns(contents, system_texts)
        gc = field_of(body, "generationConfig", "generation_config") or {}
        if not isinstance(gc, dict):
            raise self.bad_request("Invalid value at 'generation_config': must be an object")
        limit = self.int_field(field_of(gc, "maxOutputTokens", "max_output_tokens"), "max_output_tokens")
        if field_of(gc, "candidateCount", "candidate_count") not in (None, 1):
            raise self.bad_request("the fake provider only supports candidateCount=1")
        stops = self.stop_list(field_of(gc, "stopSequences", "stop_sequences"), "stop_sequences", 5)
        stream = params["method"] == "streamGenerateContent"
        req = conv.request(params["model"], stream, limit, stops, sse=query.get("alt") == "sse")
        req.tools = gemini_tool_use(self, body, gc, contents)
        return req

    def turn_not_an_object(self, i: int) -> str:
        return f"Invalid value at 'contents[{i}]': must be a Content object"

    def turn_role(self, i, turn, previous) -> str:
        role = turn.get("role", "user")
        if role not in ("user", "model"):
            raise self.bad_request(f"Please use a valid role: user, model. Got {role!r} at contents[{i}].")
        return role

    def turn_texts(self, i, turn) -> list[str]:
        return self.part_texts(turn, f"contents[{i}]")

    def prefilled(self, body: dict[str, Any]) -> str:
        return final_turn_text(body.get("contents"), "model", "parts")

    def response_headers(self, req: Req) -> list[tuple[bytes, bytes]]:
        return [(b"vary", b"Origin, X-Origin, Referer")]

    def usage(self, req: Req, n: int) -> dict[str, Any]:
        return {
            "promptTokenCount": req.prompt_tokens,
            "candidatesTokenCount": n,
            "totalTokenCount": req.prompt_tokens + n,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": req.prompt_tokens}],
        }

    def response(self, req: Req, text: str, n: int, finish: str | None, call: Any = None) -> dict[str, Any]:
        parts: list[dict[str, Any]] = [{"text": text}]
        if call is not None:  # Gemini sends a call whole, its arguments an object, no id
            parts = [{"functionCall": {"name": call.name, "args": call.arguments}}]
        cand: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if finish:
            cand["finishReason"] = finish
        return {
            "candidates": [cand],
            "usageMetadata": self.usage(req, n),
            "modelVersion": req.model,
            "responseId": req.id,
        }

    def render(self, req: Req, plan: Plan) -> bytes:
        return dumps(self.response(req, plan.text, plan.completion_tokens, self.FINISH[plan.finish], plan.call))

    def frame(self, req: Req, obj: Any) -> bytes:
        if req.opts["sse"]:
            return b"data: " + dumps(obj) + b"\r\n\r\n"
        # without alt=sse Gemini streams one JSON array, element by element
        prefix = b"[" if req.sent_chunks == 0 else b",\r\n"
        req.sent_chunks += 1
        return prefix + dumps(obj)

    def last_frame(self, req: Req, obj: Any) -> bytes:
        return self.frame(req, obj) + (b"" if req.opts["sse"] else b"]")

    def s_delta(self, req: Req, text: str, index: int) -> bytes:
        return self.frame(req, self.response(req, text, index + 1, None))

    def s_end(self, req: Req, plan: Plan, last: str) -> bytes:
        return self.last_frame(req, self.response(req, last, plan.completion_tokens, self.FINISH[plan.finish],
                                                  plan.call))

    def s_error(self, req: Req, status: int, message: str, etype: str) -> bytes:
        return self.last_frame(req, orjson.loads(self.error_body(status, message, etype)))
