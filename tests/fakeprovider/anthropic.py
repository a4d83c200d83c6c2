"""Anthropic's Messages API: ``POST /v1/messages`` and its named SSE events."""

from __future__ import annotations

from typing import Any

from .family import Family, Req, dumps, final_turn_text
from .generation import Plan
from .tools import anthropic_tool_use


def event(name: bytes, obj: Any) -> bytes:
    return b"event: " + name + b"\ndata: " + dumps(obj) + b"\n\n"


class Anthropic(Family):
    name = "anthropic"
    id_prefix = "msg_fake"
    missing_key_message = "x-api-key header is required"
    ERROR_TYPES = {
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
    SERVER_ERROR_TYPE = "api_error"
    CLIENT_ERROR_TYPE = "invalid_request_error"
    STOP = {"stop": "end_turn", "length": "max_tokens", "stop_sequence": "stop_sequence", "tool_calls": "tool_use"}

    def key_credential(self, headers, query) -> str:
        return headers.get("x-api-key", "").strip()  # else Bearer: the SDK may send keys and auth tokens so

    def error_body(self, status: int, message: str, etype: str) -> bytes:
        return dumps({"type": "error", "error": {"type": etype, "message": message}})

    def parse(self, body, params, query, headers) -> Req:
        if not headers.get("anthropic-version"):
            raise self.bad_request("anthropic-version: header is required")
        body = self.require_object(body)
        model = self.require_model(body, "model: Field required")
        if "max_tokens" not in body:
            raise self.bad_request("max_tokens: Field required")
        limit = self.int_field(body.get("max_tokens"), "max_tokens")
        messages = body.get("messages")
        messages = self.require_list(
            messages, "messages: Field required" if messages is None else "messages: at least one message is required"
        )
        system = body.get("system")
        system_texts = [] if system is None else self.typed_part_texts(system, "system")
        conv = self.read_turns(messages, system_texts)
        stream = bool(body.get("stream") or False)
        req = conv.request(model, stream, limit, self.stop_list(body.get("stop_sequences"), "stop_sequences", None))
        req.tools = anthropic_tool_use(self, body, messages)
        return req

    def turn_not_an_object(self, i: int) -> str:
        return f"messages.{i}: Input should be a valid dictionary"

    def turn_role(self, i, turn, previous) -> str:
        role = turn.get("role")
        if role == "system":
            raise self.bad_request(
                f'messages.{i}.role: Unexpected role "system". The Messages API accepts a top-level '
                "`system` parameter, not \"system\" as an input message role."
            )
        if role not in ("user", "assistant"):
            raise self.bad_request(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if role == previous:
            raise self.bad_request("messages: roles must alternate between \"user\" and \"assistant\"")
        return role

    def turn_texts(self, i, turn) -> list[str]:
        if "content" not in turn:
            raise self.bad_request(f"messages.{i}.content: Field required")
        return self.typed_part_texts(turn["content"], f"messages.{i}.content")

    def prefilled(self, body: dict[str, Any]) -> str:
        return final_turn_text(body.get("messages"), "assistant", "content")

    def response_headers(self, req: Req) -> list[tuple[bytes, bytes]]:
        return [(b"request-id", ("req_fake" + req.id[8:]).encode())]

    def usage(self, req: Req, out_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": req.prompt_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": out_tokens,
            "service_tier": "standard",
        }

    def message(self, req: Req, content: list[Any], stop_reason: str | None, stop_sequence: str | None,
                out_tokens: int) -> dict[str, Any]:
        return {
            "id": req.id,
            "type": "message",
            "role": "assistant",
            "model": req.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": self.usage(req, out_tokens),
        }

    def new_call_id(self) -> str:
        return "toolu_" + self.new_id()[8:]

    def render(self, req: Req, plan: Plan) -> bytes:
        content = [{"type": "text", "text": plan.text}]
        if plan.call is not None:
            content = [{"type": "tool_use", "id": plan.call.id, "name": plan.call.name, "input": plan.call.arguments}]
        return dumps(self.message(req, content, self.STOP[plan.finish], plan.stop_sequence, plan.completion_tokens))

    def s_preamble(self, req: Req) -> bytes:
        # message_start reports one output token, as the API does before any text
        msg = self.message(req, [], None, None, 1)
        return (
            event(b"message_start", {"type": "message_start", "message": msg})
            + event(
                b"content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            )
            + event(b"ping", {"type": "ping"})
        )

    def s_delta(self, req: Req, text: str, index: int) -> bytes:
        return event(
            b"content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
        )

    def s_end(self, req: Req, plan: Plan, last: str) -> bytes:
        out = [self.s_delta(req, last, 0)] if last else []
        out.append(event(b"content_block_stop", {"type": "content_block_stop", "index": 0}))
        if plan.call is not None:  # after the (empty) text block, as Claude's replies do
            call = plan.call
            block = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
            start = {"type": "content_block_start", "index": 1, "content_block": block}
            out.append(event(b"content_block_start", start))
            for piece in call.pieces():
                delta = {"type": "input_json_delta", "partial_json": piece}
                out.append(event(b"content_block_delta", {"type": "content_block_delta", "index": 1, "delta": delta}))
            out.append(event(b"content_block_stop", {"type": "content_block_stop", "index": 1}))
        out.append(
            event(
                b"message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": self.STOP[plan.finish], "stop_sequence": plan.stop_sequence},
                    "usage": {"output_tokens": plan.completion_tokens},
                },
            )
        )
        out.append(event(b"message_stop", {"type": "message_stop"}))
        return b"".join(out)

    def s_error(self, req: Req, status: int, message: str, etype: str) -> bytes:
        return b"event: error\ndata: " + self.error_body(status, message, etype) + b"\n\n"
