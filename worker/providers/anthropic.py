"""Anthropic Messages API (the claude-* models), streamed.

A retried call continues where the last one stopped: the delivered text goes back as a final
assistant message (a "prefill"), which the model continues rather than repeats
(``continuation.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from shared.jobspec import Turn
from worker.providers.base import Completion, GenerationRequest, ProviderError, TextDelta, ToolCallDelta
from worker.providers.bodies import (
    arguments_object,
    data_url,
    given,
    merge_blocks,
    merge_extra,
    merge_turns,
    output_tool,
    split_system,
)
from worker.providers.continuation import WhitespaceSkipper, one_call, split_prefill
from worker.providers.faults import mid_stream_error
from worker.providers.http import HTTPProvider, sse_json

ANTHROPIC_VERSION = "2023-06-01"

# Snapshots whose catalogued max_output needs a beta header: without it Anthropic refuses
# max_tokens above 4,096 for claude-3-5-sonnet-20240620.
BETA_HEADERS = {"claude-3-5-sonnet-20240620": "max-tokens-3-5-sonnet-2024-07-15"}

STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                "tool_use": "tool_calls", "refusal": "content_filter"}

# In-band ``error`` events carry a type instead of a status; each is classified as the HTTP
# status Anthropic uses for it, so a mid-stream fault is treated like the same fault up front.
ERROR_STATUS = {"invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
                "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
                "rate_limit_error": 429, "api_error": 500, "timeout_error": 504, "overloaded_error": 529}


class AnthropicProvider(HTTPProvider):
    family = "anthropic"
    display = "Anthropic"

    def _url(self, request: GenerationRequest) -> str:
        return self.endpoint(request, self.settings.anthropic_base_url, "/v1/messages")

    def _headers(self, request: GenerationRequest | None = None) -> dict[str, str]:
        key = self.settings.anthropic_api_key
        assert key is not None  # check_configured: the stream needs its key before it calls
        headers = {"x-api-key": key.get_secret_value(),
                   "anthropic-version": ANTHROPIC_VERSION}
        beta = BETA_HEADERS.get(request.model.upstream) if request is not None else None
        if beta:
            headers["anthropic-beta"] = beta
        return headers

    def _conversation(self, request: GenerationRequest) -> tuple[str, list[dict[str, Any]], str, bool]:
        """(system, messages, whitespace stripped off the prefill, whether a prefill was sent)."""
        system, rest = split_system(request.messages)
        if any(m.tool_calls or m.images or m.role == "tool" for m in rest):
            messages: list[dict[str, Any]] = merge_blocks((_role(m), _blocks(m)) for m in rest)
        else:
            messages = merge_turns((m.role, m.content) for m in rest)
        if not messages:
            raise ProviderError("Anthropic models need at least one user message; the conversation has none",
                                code="invalid_request")
        if messages[0]["role"] != "user":
            raise ProviderError("Anthropic models need the conversation to start with a user message; "
                                "this one starts with an assistant message", code="invalid_request")
        prefill = ""
        if request.continuation:
            if messages[-1]["role"] == "assistant" and isinstance(messages[-1]["content"], str):
                # The first call continued this assistant message, so the delivered text follows it directly.
                prefill = messages.pop()["content"] + request.continuation
            else:
                prefill = request.continuation
        elif messages[-1]["role"] == "assistant" and isinstance(messages[-1]["content"], str):
            # The client's own prefill: same rule, it must not end in whitespace.
            prefill = messages.pop()["content"]
        stripped, trailing = split_prefill(prefill)
        if stripped:
            messages.append({"role": "assistant", "content": stripped})
        return system, messages, trailing, bool(request.continuation) and bool(stripped)

    def _body(self, request: GenerationRequest, system: str, messages: list[dict[str, str]]) -> dict[str, Any]:
        p = request.params
        body: dict[str, Any] = {
            "model": request.model.upstream,
            "max_tokens": request.tokens_left(),
            "messages": messages,
            "stream": True,
            "temperature": p.temperature,
            "metadata": {"user_id": request.upstream_user},
            **given(top_k=p.top_k, top_p=p.top_p),
        }
        if system:
            body["system"] = system
        # Whitespace-only stop sequences are refused upstream; the runner's stop filter still applies them.
        stops = [s for s in p.stop if s.strip()]
        if stops:
            body["stop_sequences"] = stops
        body.update(self._tools(request))
        return merge_extra(body, request.model.extra)

    def _tools(self, request: GenerationRequest) -> dict[str, Any]:
        """``tools`` and ``tool_choice``; a structured answer is asked for as a call to one more
        tool, whose input is the answer (``output_tool``), which the model is made to call."""
        tools = request.tools
        functions = [given(name=f.name, description=f.description, input_schema=f.parameters)
                     for f in (tools.functions if tools else ())]
        choice: dict[str, Any] | None = None
        if tools is not None:
            choice = ({"type": "tool", "name": tools.forced} if tools.forced
                      else {"type": "any" if tools.choice == "required" else "auto"})
        elif request.job.tools is not None and any(m.tool_calls for m in request.messages):
            # tool_choice none, with calls in the history: the tools stay declared, none may be called.
            functions = [given(name=f.name, description=f.description, input_schema=f.parameters)
                         for f in request.job.tools.functions]
            choice = {"type": "none"}
        if request.output is not None:
            answer = output_tool(request.output)
            functions.append({"name": answer["name"], "description": answer["description"],
                              "input_schema": answer["schema"]})
            if tools is None:
                choice = {"type": "tool", "name": answer["name"]}
            elif not tools.forced:  # a function the client forces stays forced
                choice = {"type": "any"}
        if not functions:
            return {}
        if tools is not None and tools.parallel is False and choice is not None and choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
        return {"tools": functions, "tool_choice": choice}

    def _stream_error(self, event: dict[str, Any]) -> ProviderError:
        error = event.get("error")
        err = error if isinstance(error, dict) else {}
        etype = err.get("type") or "api_error"
        status = ERROR_STATUS.get(etype, 500)
        return mid_stream_error(status, event, self.display, etype, err.get("message") or etype)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TextDelta | ToolCallDelta | Completion]:
        self.check_configured()
        if request.output is not None and request.continuation:
            # A structured answer is delivered whole (below): the earlier attempt's was the answer.
            yield Completion("stop", request.job.typical_prompt_tokens, request.continuation_events)
            return
        system, messages, trailing, prefilled = self._conversation(request)
        body = self._body(request, system, messages)
        skip = WhitespaceSkipper(trailing)
        input_tokens = output_tokens = 0
        stop_reason = None
        answer_tool = request.output.name if request.output is not None else None
        calls: dict[int, int] = {}  # content block index -> tool call index
        answer_blocks: set[int] = set()  # the blocks of the structured answer's tool
        # A structured answer is its tool's input, held until the call ends: a tool's input cannot
        # be continued, so a call made again after a fault gives it afresh, none of it delivered.
        answer: list[str] = []
        async with self.upstream.stream(self._url(request), body, self._headers(request)) as response:
            async for sse in self.upstream.events(response):
                if not sse.data:
                    continue
                event = sse_json(sse, self.display)
                if not isinstance(event, dict):
                    continue
                kind = event.get("type") or sse.event
                if kind == "content_block_delta":
                    delta = event.get("delta") or {}
                    block = event.get("index")
                    if delta.get("type") == "text_delta" and delta.get("text"):
                        text = skip.feed(delta["text"])
                        if text and answer_tool is None:  # with a structured answer, text is no part of it
                            yield TextDelta(text)
                    elif delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                        if block in answer_blocks:
                            answer.append(delta["partial_json"])
                        elif block in calls:
                            yield ToolCallDelta(calls[block], delta["partial_json"])
                elif kind == "content_block_start":
                    content = event.get("content_block") or {}
                    if content.get("type") == "tool_use":
                        if content.get("name") == answer_tool:
                            answer_blocks.add(int(event.get("index") or 0))
                        else:
                            calls[int(event.get("index") or 0)] = len(calls)
                            yield ToolCallDelta(len(calls) - 1, "", content.get("id"), content.get("name"))
                elif kind == "message_start":
                    usage = (event.get("message") or {}).get("usage") or {}
                    input_tokens = _input_tokens(usage)
                    output_tokens = int(usage.get("output_tokens") or 0)
                elif kind == "message_delta":
                    usage = event.get("usage") or {}
                    if usage.get("output_tokens") is not None:
                        output_tokens = int(usage["output_tokens"])
                    if usage.get("input_tokens") is not None:
                        input_tokens = _input_tokens(usage)
                    reason = (event.get("delta") or {}).get("stop_reason")
                    if reason:
                        stop_reason = STOP_REASONS.get(reason, reason)
                elif kind == "message_stop":
                    break
                elif kind == "error":
                    raise self._stream_error(event)
                # ping, content_block_start/stop, and event types added later: nothing to do
        self.check_ended(stop_reason)
        assert stop_reason is not None  # check_ended raised otherwise
        if answer:
            yield TextDelta("".join(answer))
        if stop_reason == "tool_calls" and not calls:
            stop_reason = "stop"  # the structured answer's tool was the only one called
        yield one_call(request, stop_reason, input_tokens, output_tokens, prefilled)


def _role(turn: Turn) -> str:
    return "user" if turn.role == "tool" else turn.role


def _blocks(turn: Turn) -> list[dict[str, Any]]:
    """A turn as Anthropic's content blocks: text, images, tool_use, tool_result."""
    if turn.role == "tool":
        return [{"type": "tool_result", "tool_use_id": turn.tool_call_id, "content": turn.content}]
    blocks: list[dict[str, Any]] = []
    for image in turn.images:
        inline = data_url(image.url)
        source = ({"type": "base64", "media_type": inline[0], "data": inline[1]} if inline
                  else {"type": "url", "url": image.url})
        blocks.append({"type": "image", "source": source})
    if turn.content.strip():
        blocks.append({"type": "text", "text": turn.content})
    for call in turn.tool_calls:
        blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": arguments_object(call.arguments)})
    return blocks


def _input_tokens(usage: dict[str, Any]) -> int:
    # Cached prompt tokens are reported apart from ``input_tokens``; the prompt is all of them.
    return sum(int(usage.get(k) or 0)
               for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
