"""Mistral's flavour of OpenAI chat: its own error body and response fields, usage on the
finishing chunk, any number of stop sequences, and prefill by ``prefix: true``."""

from __future__ import annotations

from typing import Any

from .family import Req, dumps, final_turn, final_turn_text, random_id
from .generation import Plan
from .openai import OpenAIChat, token_usage


class MistralChat(OpenAIChat):
    name = "mistral"
    id_prefix = ""
    max_stops = None

    def error_body(self, status: int, message: str, etype: str) -> bytes:
        return dumps({"object": "error", "message": message, "type": etype, "param": None, "code": str(status)})

    def prefilled(self, body: dict[str, Any]) -> str:
        messages = body.get("messages")
        # an assistant message continues only when marked ``prefix: true``
        return final_turn_text(messages, "assistant", "content") if final_turn(messages).get("prefix") else ""

    def usage(self, req: Req, plan: Plan) -> dict[str, Any]:
        return token_usage(req, plan)

    def message_extras(self) -> dict[str, Any]:
        return {"tool_calls": None, "prefix": False}

    def choice_extras(self) -> dict[str, Any]:
        return {}

    def completion_extras(self) -> dict[str, Any]:
        return {}

    def chunk_extras(self, req: Req) -> dict[str, Any]:
        return {}

    def role_delta(self) -> dict[str, Any]:
        return {"role": "assistant", "content": ""}

    def new_call_id(self) -> str:
        return random_id()[:9]

    def call_chunks(self, req: Req, call) -> list[bytes]:
        # Mistral sends each call whole, in one delta
        whole = {"id": call.id, "type": "function", "index": 0,
                 "function": {"name": call.name, "arguments": call.json}}
        return [self.chunk(req, {"tool_calls": [whole]}, None)]

    def finishing_chunks(self, req: Req, plan: Plan) -> list[bytes]:
        # usage rides on the finishing chunk, always (no stream_options needed)
        return [self.chunk(req, {"content": ""}, self.FINISH[plan.finish], self.usage(req, plan))]
