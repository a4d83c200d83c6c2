"""Bedrock's Converse API: ``/model/{modelId}/converse`` and ``/converse-stream``, whose events
are AWS event-stream frames (eventstream.py)."""

from __future__ import annotations

import time
from typing import Any

from . import eventstream
from .family import ApiError, Family, Req, dumps, final_turn_text, random_id, text_blocks
from .generation import Plan
from .tools import bedrock_tool_use

MUST_START_WITH_USER = (
    "A conversation must start with a user message. Try again with a conversation that starts with a user message."
)


class Bedrock(Family):
    name = "bedrock"
    id_prefix = ""
    stream_content_type = b"application/vnd.amazon.eventstream"
    not_an_object = "Malformed input request, please reformat your input and try again."
    ERROR_TYPES = {  # the exception's name
        400: "ValidationException",
        403: "AccessDeniedException",
        404: "ResourceNotFoundException",
        408: "ModelTimeoutException",
        424: "ModelErrorException",
        429: "ThrottlingException",
        500: "InternalServerException",
        503: "ServiceUnavailableException",
    }
    SERVER_ERROR_TYPE = "ServiceUnavailableException"
    CLIENT_ERROR_TYPE = "ValidationException"
    STREAM_EXC = {
        "ThrottlingException": "throttlingException",
        "InternalServerException": "internalServerException",
        "ServiceUnavailableException": "serviceUnavailableException",
        "ValidationException": "validationException",
    }
    STOP = {"stop": "end_turn", "length": "max_tokens", "stop_sequence": "stop_sequence", "tool_calls": "tool_use"}

    def check_auth(self, headers, query, api_key):
        auth = headers.get("authorization", "")
        if not auth:
            return ApiError(403, "Missing Authentication Token", "MissingAuthenticationTokenException")
        if auth.startswith("AWS4-HMAC-SHA256 "):
            return None  # the signature itself is not verified
        if auth[:7].lower() == "bearer " and auth[7:].strip():  # Bedrock API keys
            if api_key is not None and auth[7:].strip() != api_key:
                return ApiError(403, "The security token included in the request is invalid.",
                                "UnrecognizedClientException")
            return None
        return ApiError(
            403,
            "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters.",
            "IncompleteSignatureException",
        )

    def error_body(self, status: int, message: str, etype: str) -> bytes:
        return dumps({"message": message})

    def error_headers(self, status: int, etype: str) -> list[tuple[bytes, bytes]]:
        return [
            (b"content-type", b"application/json"),
            (b"x-amzn-errortype", (etype + ":http://internal.amazon.com/coral/com.amazon.bedrock/").encode()),
            (b"x-amzn-requestid", random_id().encode()),
        ]

    def parse(self, body, params, query, headers) -> Req:
        body = self.require_object(body)
        messages = self.require_list(body.get("messages"), MUST_START_WITH_USER)
        system = body.get("system")
        system_texts: list[str] = []
        if system is not None:
            if not isinstance(system, list):
                raise self.bad_request(
                    "1 validation error detected: Value at 'system' failed to satisfy constraint: must be a list"
                )
            system_texts = text_blocks(system)
        conv = self.read_turns(messages, system_texts)
        ic = body.get("inferenceConfig") or {}
        if not isinstance(ic, dict):
            raise self.bad_request("inferenceConfig must be an object")
        limit = self.int_field(ic.get("maxTokens"), "inferenceConfig.maxTokens")
        stops = self.stop_list(ic.get("stopSequences"), "inferenceConfig.stopSequences", None)
        req = conv.request(params["model"], params["op"] == "converse-stream", limit, stops)
        req.tools = bedrock_tool_use(self, body, messages)
        return req

    def turn_not_an_object(self, i: int) -> str:
        return f"Value at 'messages.{i + 1}' failed to satisfy constraint: must be an object"

    def turn_role(self, i, turn, previous) -> str:
        role = turn.get("role")
        if role not in ("user", "assistant"):
            raise self.bad_request(
                f"1 validation error detected: Value '{role}' at 'messages.{i + 1}.member.role' failed to "
                "satisfy constraint: Member must satisfy enum value set: [user, assistant]"
            )
        if i == 0 and role != "user":
            raise self.bad_request(MUST_START_WITH_USER)
        if role == previous:
            raise self.bad_request(
                "A conversation must alternate between user and assistant roles. Make sure the conversation "
                "alternates between user and assistant roles and try again."
            )
        return role

    def turn_texts(self, i, turn) -> list[str]:
        content = self.require_list(
            turn.get("content"),
            f"The content field in the Message object at messages.{i} is empty. Add a ContentBlock object to the "
            "content field and try again.",
        )
        return text_blocks(content)

    def prefilled(self, body: dict[str, Any]) -> str:
        return final_turn_text(body.get("messages"), "assistant", "content")

    def response_headers(self, req: Req) -> list[tuple[bytes, bytes]]:
        return [(b"x-amzn-requestid", req.id.encode())]

    def usage(self, req: Req, plan: Plan) -> dict[str, Any]:
        return {
            "inputTokens": req.prompt_tokens,
            "outputTokens": plan.completion_tokens,
            "totalTokens": req.prompt_tokens + plan.completion_tokens,
        }

    def metrics(self, req: Req) -> dict[str, Any]:
        return {"latencyMs": int((time.monotonic() - req.t0) * 1000)}

    def new_call_id(self) -> str:
        return "tooluse_" + self.new_id()[-20:]

    def render(self, req: Req, plan: Plan) -> bytes:
        content: list[dict[str, Any]] = [{"text": plan.text}]
        if plan.call is not None:
            content = [{"toolUse": {"toolUseId": plan.call.id, "name": plan.call.name, "input": plan.call.arguments}}]
        return dumps(
            {
                "output": {"message": {"role": "assistant", "content": content}},
                "stopReason": self.STOP[plan.finish],
                "usage": self.usage(req, plan),
                "metrics": self.metrics(req),
            }
        )

    def s_preamble(self, req: Req) -> bytes:
        return eventstream.event_frame("messageStart", b'{"role":"assistant"}')

    def s_delta(self, req: Req, text: str, index: int) -> bytes:
        return eventstream.event_frame("contentBlockDelta", dumps({"delta": {"text": text}, "contentBlockIndex": 0}))

    def s_end(self, req: Req, plan: Plan, last: str) -> bytes:
        out = [self.s_delta(req, last, 0)] if last else []
        out.append(eventstream.event_frame("contentBlockStop", b'{"contentBlockIndex":0}'))
        if plan.call is not None:
            call = plan.call
            start = {"start": {"toolUse": {"toolUseId": call.id, "name": call.name}}, "contentBlockIndex": 1}
            out.append(eventstream.event_frame("contentBlockStart", dumps(start)))
            for piece in call.pieces():
                delta = {"delta": {"toolUse": {"input": piece}}, "contentBlockIndex": 1}
                out.append(eventstream.event_frame("contentBlockDelta", dumps(delta)))
            out.append(eventstream.event_frame("contentBlockStop", b'{"contentBlockIndex":1}'))
        out.append(eventstream.event_frame("messageStop", dumps({"stopReason": self.STOP[plan.finish]})))
        metadata = {"usage": self.usage(req, plan), "metrics": self.metrics(req)}
        out.append(eventstream.event_frame("metadata", dumps(metadata)))
        return b"".join(out)

    def s_error(self, req: Req, status: int, message: str, etype: str) -> bytes:
        exc = self.STREAM_EXC.get(etype, etype[:1].lower() + etype[1:] if etype[:1].isupper() else etype)
        if exc not in self.STREAM_EXC.values() and exc != "modelStreamErrorException":
            exc = "modelStreamErrorException"
        payload: dict[str, Any] = {"message": message}
        if exc == "modelStreamErrorException":
            payload.update(originalStatusCode=status, originalMessage=message)
        return eventstream.exception_frame(exc, dumps(payload))
