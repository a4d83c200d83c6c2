"""What every provider family has in common: the request it parses, its errors, and the checks
each one makes of a request, done here once and called by each family with its own field
names and error text. A family module (openai.py, mistral.py, anthropic.py, gemini.py,
bedrock.py) holds only its wire format.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from .generation import Plan, count_words, reply_begun_in
from .tools import ToolUse


class ApiError(Exception):
    def __init__(self, status: int, message: str, etype: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.etype = etype


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def sse(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


def random_id() -> str:
    return secrets.token_hex(12)


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
    tools: ToolUse | None = None


@dataclass
class Conversation:
    """The input text of a request: system text and turns."""

    texts: list[str]  # every text part, for the prompt token count
    last_user: str  # the last user turn's text, which echo mode replies with

    @property
    def prompt_tokens(self) -> int:
        return count_words(self.texts)

    def request(self, model: str, stream: bool, limit: int | None, stops: list[str], **opts: Any) -> Req:
        return Req(model=model, stream=stream, prompt_tokens=self.prompt_tokens, last_user=self.last_user,
                   limit=limit, stops=stops, opts=opts)


def final_turn(turns: Any) -> dict[str, Any]:
    """The last turn of a conversation ({} if none), where a prefilled answer would stand."""
    return turns[-1] if isinstance(turns, list) and turns and isinstance(turns[-1], dict) else {}


def final_turn_text(turns: Any, role: str, content_key: str) -> str:
    """The text of the conversation's last turn if it is the model's (``role``): the answer the
    request has begun. Its content is a string, or blocks whose ``text`` is joined."""
    last = final_turn(turns)
    if last.get("role") != role:
        return ""
    content = last.get(content_key)
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content or () if isinstance(b, dict))


def text_blocks(blocks: list[Any]) -> list[str]:
    """The texts of the blocks that carry one (``{"text": ...}``); other blocks add no text."""
    return [b["text"] for b in blocks if isinstance(b, dict) and isinstance(b.get("text"), str)]


class Family:
    """One provider family's wire format. The app calls, in order: ``check_auth``, ``parse`` (which
    raises an ``ApiError`` in the family's words), ``prefill``, then ``render`` or the ``s_*`` stream
    pieces; ``error_*`` shape every failure, scripted or not, as the real API would."""

    name = ""
    stream_content_type = b"text/event-stream; charset=utf-8"
    id_prefix = "req_"
    missing_key_message = "Missing API key."
    #: The 400 for a body that is JSON but not an object.
    not_an_object = "The request body must be a JSON object."

    # auth ---------------------------------------------------------------------------
    def key_credential(self, headers: dict[str, str], query: dict[str, str]) -> str:
        """The family's own API-key header or parameter, if it has one; "" when not sent."""
        return ""

    def credential(self, headers: dict[str, str], query: dict[str, str]) -> str | None:
        """The family's key if sent, else a Bearer token (which every family's SDK may send)."""
        key = self.key_credential(headers, query)
        if key:
            return key
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

    # errors -------------------------------------------------------------------------
    #: The family's name for an error (type, status or exception) by HTTP status; a status not
    #: listed gets the server-error name (5xx) or the client-error one.
    ERROR_TYPES: dict[int, str] = {}
    SERVER_ERROR_TYPE = ""
    CLIENT_ERROR_TYPE = ""

    def error_type(self, status: int) -> str:
        return self.ERROR_TYPES.get(status, self.SERVER_ERROR_TYPE if status >= 500 else self.CLIENT_ERROR_TYPE)

    def error_body(self, status: int, message: str, etype: str) -> bytes:
        raise NotImplementedError

    def error_headers(self, status: int, etype: str) -> list[tuple[bytes, bytes]]:
        return [(b"content-type", b"application/json")]

    def bad_request(self, message: str) -> ApiError:
        return ApiError(400, message)

    # parse / render -----------------------------------------------------------------
    def parse(self, body: Any, params: dict[str, str], query: dict[str, str], headers: dict[str, str]) -> Req:
        raise NotImplementedError

    def new_id(self) -> str:
        return self.id_prefix + random_id()

    def new_call_id(self) -> str:
        return "call_" + random_id()

    def prefill(self, body: dict[str, Any]) -> str:
        """The start of the answer that the request hands the model, which the reply continues.
        A string ``prompt`` is read as a raw completion whichever path it came on, as the fake
        always has; otherwise it is the family's own rule (``prefilled``)."""
        if isinstance(body.get("prompt"), str):
            return reply_begun_in(body["prompt"])
        return self.prefilled(body)

    def prefilled(self, body: dict[str, Any]) -> str:
        return ""

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

    # request checks every family makes, each with its own names and messages -----------
    def require_object(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise self.bad_request(self.not_an_object)
        return body

    def require_model(self, body: dict[str, Any], message: str) -> str:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise self.bad_request(message)
        return model

    def require_list(self, value: Any, message: str) -> list[Any]:
        """A non-empty list (messages, contents, content blocks, parts)."""
        if not isinstance(value, list) or not value:
            raise self.bad_request(message)
        return value

    def read_turns(self, turns: list[Any], system_texts: Sequence[str] = ()) -> Conversation:
        """Check each turn (an object, with a role the family allows in that place, and content
        it can read) and collect the text after the system text; the hooks below say what the
        family allows."""
        texts: list[str] = list(system_texts)
        last_user = ""
        previous = None
        for i, turn in enumerate(turns):
            if not isinstance(turn, dict):
                raise self.bad_request(self.turn_not_an_object(i))
            role = self.turn_role(i, turn, previous)
            parts = self.turn_texts(i, turn)
            texts.extend(parts)
            if role == "user":
                last_user = " ".join(parts)
            previous = role
        return Conversation(texts, last_user)

    def turn_not_an_object(self, i: int) -> str:
        raise NotImplementedError

    def turn_role(self, i: int, turn: dict[str, Any], previous: str | None) -> str:
        """The turn's role, once the family has checked it (after ``previous``, for alternation)."""
        raise NotImplementedError

    def turn_texts(self, i: int, turn: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    def typed_part_texts(self, content: Any, where: str) -> list[str]:
        """Content as OpenAI and Anthropic send it: a string, or a list of typed parts of which
        the ``text`` ones count."""
        if content is None:
            return []
        if isinstance(content, str):
            return [content]
        if isinstance(content, list):
            out = []
            for part in content:
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise self.bad_request(f"{where}: each content part must be an object with a type")
                if part["type"] == "text":
                    if not isinstance(part.get("text"), str):
                        raise self.bad_request(f"{where}: text part needs a string text")
                    out.append(part["text"])
            return out
        raise self.bad_request(f"{where}: content must be a string or a list of content parts")

    def int_field(self, value: Any, name: str, minimum: int = 1) -> int | None:
        """An optional integer such as a token limit; ``None`` when absent."""
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise self.bad_request(f"{name} must be an integer >= {minimum}")
        return value

    def stop_list(self, value: Any, name: str, max_n: int | None) -> list[str]:
        """Stop sequences: absent, one string, or a list of at most ``max_n`` strings."""
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(s, str) for s in value):
            if max_n is not None and len(value) > max_n:
                raise self.bad_request(f"{name}: at most {max_n} stop sequences are allowed")
            return list(value)
        raise self.bad_request(f"{name} must be a string or a list of strings")
