"""OpenAI's wire format: ``/v1/chat/completions`` and the raw ``/v1/completions`` that vLLM and
LLM-Engine serve too. Mistral's flavour of chat is in mistral.py."""

from __future__ import annotations

from typing import Any

from .family import Family, Req, dumps, sse
from .generation import Plan, count_words
from .tools import openai_tool_use

DONE = b"data: [DONE]\n\n"


def token_usage(req: Req, plan: Plan) -> dict[str, Any]:
    return {
        "prompt_tokens": req.prompt_tokens,
        "completion_tokens": plan.completion_tokens,
        "total_tokens": req.prompt_tokens + plan.completion_tokens,
    }


def envelope(req: Req, obj: str) -> dict[str, Any]:
    """The fields every response and chunk starts with."""
    return {"id": req.id, "object": obj, "created": req.created, "model": req.model}


class OpenAIFamily(Family):
    """What chat and completions share: auth, errors, and the options around the prompt."""

    name = "openai"
    missing_key_message = (
        "You didn't provide an API key. You need to provide your API key in an Authorization "
        "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
    )
    ERROR_TYPES = {401: "invalid_request_error", 403: "permission_error", 429: "requests"}
    SERVER_ERROR_TYPE = "server_error"
    CLIENT_ERROR_TYPE = "invalid_request_error"
    FINISH = {"stop": "stop", "length": "length", "stop_sequence": "stop", "tool_calls": "tool_calls"}
    max_stops: int | None = 4  # most stop sequences a request may give; None: any number

    def error_body(self, status: int, message: str, etype: str) -> bytes:
        code: Any = None
        if status == 401:
            code = "invalid_api_key"
        elif status == 429:
            code = "rate_limit_exceeded"
        return dumps({"error": {"message": message, "type": etype, "param": None, "code": code}})

    def s_error(self, req: Req, status: int, message: str, etype: str) -> bytes:
        return sse(self.error_body(status, message, etype))

    def request(self, body: dict[str, Any], model: str, prompt_tokens: int, last_user: str, limit: int | None) -> Req:
        """The Req, once the options both endpoints take (stream, stream_options, n, stop) pass."""
        stream = bool(body.get("stream") or False)
        so = body.get("stream_options")
        if so is not None and not stream:
            raise self.bad_request("The 'stream_options' parameter is only allowed when 'stream' is enabled.")
        if body.get("n") not in (None, 1):
            raise self.bad_request("the fake provider only supports n=1")
        return Req(
            model=model,
            stream=stream,
            prompt_tokens=prompt_tokens,
            last_user=last_user,
            limit=limit,
            stops=self.stop_list(body.get("stop"), "stop", self.max_stops),
            opts={"include_usage": bool(isinstance(so, dict) and so.get("include_usage"))},
        )


class OpenAIChat(OpenAIFamily):
    id_prefix = "chatcmpl-"
    ROLES = {"system", "developer", "user", "assistant", "tool", "function"}

    def parse(self, body, params, query, headers) -> Req:
        body = self.require_object(body)
        model = self.require_model(body, "you must provide a model parameter")
        messages = self.require_list(body.get("messages"), "'messages' must be a non-empty array")
        conv = self.read_turns(messages)
        limit = self.int_field(body.get("max_completion_tokens"), "max_completion_tokens")
        if limit is None:
            limit = self.int_field(body.get("max_tokens"), "max_tokens")
        req = self.request(body, model, conv.prompt_tokens, conv.last_user, limit)
        req.tools = openai_tool_use(self, body, messages, any_choice=self.name == "mistral")
        return req

    def turn_not_an_object(self, i: int) -> str:
        return f"messages[{i}] must be an object"

    def turn_role(self, i, turn, previous) -> str:
        role = turn.get("role")
        if role not in self.ROLES:
            raise self.bad_request(f"messages[{i}].role: invalid value {role!r}")
        return role

    def turn_texts(self, i, turn) -> list[str]:
        return self.typed_part_texts(turn.get("content"), f"messages[{i}]")

    # the fields OpenAI adds around the common ones (Mistral adds others) -----------------
    def usage(self, req: Req, plan: Plan) -> dict[str, Any]:
        u = token_usage(req, plan)
        u["prompt_tokens_details"] = {"cached_tokens": 0, "audio_tokens": 0}
        u["completion_tokens_details"] = {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        }
        return u

    def message_extras(self) -> dict[str, Any]:
        return {"refusal": None, "annotations": []}

    def choice_extras(self) -> dict[str, Any]:
        return {"logprobs": None}

    def completion_extras(self) -> dict[str, Any]:
        return {"service_tier": "default", "system_fingerprint": None}

    def chunk_extras(self, req: Req) -> dict[str, Any]:
        # with include_usage every chunk says usage: null until the usage chunk
        return {"system_fingerprint": None, **({"usage": None} if req.opts["include_usage"] else {})}

    def role_delta(self) -> dict[str, Any]:
        return {"role": "assistant", "content": "", "refusal": None}

    def render(self, req: Req, plan: Plan) -> bytes:
        message = {"role": "assistant", "content": plan.text, **self.message_extras()}
        if plan.call is not None:
            call = plan.call
            message.update(content=None, tool_calls=[
                {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.json}}])
        choice = {"index": 0, "message": message, "finish_reason": self.FINISH[plan.finish], **self.choice_extras()}
        out = {**envelope(req, "chat.completion"), "choices": [choice], "usage": self.usage(req, plan)}
        return dumps({**out, **self.completion_extras()})

    def chunk(self, req: Req, delta: dict[str, Any], finish: str | None, usage: Any = ...) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, **self.choice_extras()}
        c = {**envelope(req, "chat.completion.chunk"), "choices": [choice], **self.chunk_extras(req)}
        if usage is not ...:
            c["usage"] = usage
        return sse(dumps(c))

    def s_preamble(self, req: Req) -> bytes:
        return self.chunk(req, self.role_delta(), None)

    def s_delta(self, req: Req, text: str, index: int) -> bytes:
        return self.chunk(req, {"content": text}, None)

    def s_end(self, req: Req, plan: Plan, last: str) -> bytes:
        out = [self.s_delta(req, last, 0)] if last else []
        if plan.call is not None:
            out += self.call_chunks(req, plan.call)
        out += self.finishing_chunks(req, plan)
        out.append(DONE)
        return b"".join(out)

    def call_chunks(self, req: Req, call) -> list[bytes]:
        """A tool call as OpenAI streams one: its id and name first, then its arguments in pieces."""
        first = {"index": 0, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
        out = [self.chunk(req, {"tool_calls": [first]}, None)]
        for piece in call.pieces():
            out.append(self.chunk(req, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}, None))
        return out

    def finishing_chunks(self, req: Req, plan: Plan) -> list[bytes]:
        out = [self.chunk(req, {}, self.FINISH[plan.finish])]
        if req.opts["include_usage"]:
            usage_chunk = {**envelope(req, "chat.completion.chunk"), "system_fingerprint": None, "choices": []}
            out.append(sse(dumps({**usage_chunk, "usage": self.usage(req, plan)})))
        return out


class OpenAICompletions(OpenAIFamily):
    id_prefix = "cmpl-"

    def parse(self, body, params, query, headers) -> Req:
        body = self.require_object(body)
        model = self.require_model(body, "you must provide a model parameter")
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and not isinstance(prompt[0], int):
            prompt = prompt[0]
        if isinstance(prompt, str):
            text, prompt_tokens = prompt, count_words([prompt])
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            text, prompt_tokens = " ".join(str(t) for t in prompt), len(prompt)
        elif isinstance(prompt, list) and len(prompt) > 1:
            raise self.bad_request("the fake provider supports a single prompt per request")
        else:
            raise self.bad_request("'prompt' must be a string, a list with one string, or a list of token ids")
        limit = self.int_field(body.get("max_tokens"), "max_tokens")
        if limit is None:
            limit = 16  # OpenAI's and vLLM's default for /v1/completions
        return self.request(body, model, prompt_tokens, text, limit)

    def render(self, req: Req, plan: Plan) -> bytes:
        choice = {"index": 0, "text": plan.text, "logprobs": None, "finish_reason": self.FINISH[plan.finish]}
        out = {**envelope(req, "text_completion"), "system_fingerprint": None, "choices": [choice]}
        return dumps({**out, "usage": token_usage(req, plan)})

    def chunk(self, req: Req, text: str, finish: str | None) -> bytes:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        c: dict[str, Any] = {**envelope(req, "text_completion"), "system_fingerprint": None, "choices": [choice]}
        if req.opts["include_usage"]:
            c["usage"] = None
        return sse(dumps(c))

    def s_delta(self, req: Req, text: str, index: int) -> bytes:
        return self.chunk(req, text, None)

    def s_end(self, req: Req, plan: Plan, last: str) -> bytes:
        out = [self.chunk(req, last, None)] if last else []
        out.append(self.chunk(req, "", self.FINISH[plan.finish]))
        if req.opts["include_usage"]:
            out.append(sse(dumps({**envelope(req, "text_completion"), "choices": [], "usage": token_usage(req, plan)})))
        out.append(DONE)
        return b"".join(out)
