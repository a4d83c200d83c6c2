"""Amazon Bedrock Runtime ConverseStream, SigV4-signed, answered as an AWS event stream.

``POST {endpoint}/model/{modelId}/converse-stream`` with the Converse body (``messages`` of
content blocks, ``system``, ``inferenceConfig``, ``additionalModelRequestFields``); the answer
is ``application/vnd.amazon.eventstream``: binary frames, each an event (``messageStart``,
``contentBlockDelta``, ``contentBlockStop``, ``messageStop``, ``metadata``) or a modelled
exception. botocore signs the request and decodes the frames; httpx carries them.

A retried call continues the delivered text as an assistant prefill, sent without its trailing
whitespace, which Bedrock refuses (``continuation.py``).
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.eventstream import EventStreamBuffer, ParserError

from shared.jobspec import Turn
from worker.providers.base import Completion, Embeddings, GenerationRequest, ProviderError, TextDelta, ToolCallDelta
from worker.providers.bodies import arguments_object, data_url, given, merge_blocks, merge_turns, output_tool
from worker.providers.continuation import WhitespaceSkipper, one_call, split_prefill
from worker.providers.faults import classify, shown_kind
from worker.providers.http import HTTPProvider

log = logging.getLogger(__name__)

SIGNING_SERVICE = "bedrock"
EMBED_CONCURRENCY = 8  # Titan embedding calls in flight for one job
STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                "content_filtered": "content_filter", "guardrail_intervened": "content_filter",
                "tool_use": "tool_calls"}
# In-stream exceptions (lower-cased ``:exception-type`` / ``:error-code``) -> (code, retryable, status)
STREAM_EXCEPTIONS = {
    "throttlingexception": ("upstream_rate_limited", True, 429),
    "serviceunavailableexception": ("upstream_unavailable", True, 503),
    "internalserverexception": ("upstream_unavailable", True, 500),
    "modelstreamerrorexception": ("upstream_unavailable", True, 424),
    "validationexception": ("upstream_rejected", False, 400),
}


def converse_messages(turns: tuple[Turn, ...]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(messages, system) in Converse form. System messages become top-level ``system`` blocks;
    consecutive turns of the same role are merged into one (joined by a blank line), since
    Converse requires user and assistant to alternate; empty turns are left out (Converse
    rejects blank text blocks). The conversation must start with a user turn."""
    system = [{"text": m.content} for m in turns if m.role == "system" and m.content.strip()]
    rest = [m for m in turns if m.role != "system"]
    if any(m.tool_calls or m.images or m.role == "tool" for m in rest):
        messages = merge_blocks(("user" if m.role == "tool" else m.role, _blocks(m)) for m in rest)
        if not messages or messages[0]["role"] != "user":
            raise ProviderError("Bedrock requires the conversation to start with a user message (after any system "
                                "messages)", code="invalid_request")
        return messages, system
    merged = merge_turns((m.role, m.content) for m in rest)
    if not merged or merged[0]["role"] != "user":
        raise ProviderError(
            "Bedrock requires the conversation to start with a user message (after any system "
            "messages); this one starts with " + ("no user or assistant message" if not merged else
                                                 "an assistant message"),
            code="invalid_request",
        )
    return [{"role": m["role"], "content": [{"text": m["content"]}]} for m in merged], system


def _blocks(turn: Turn) -> list[dict[str, Any]]:
    """A turn as Converse content blocks: text, image, toolUse, toolResult."""
    if turn.role == "tool":
        return [{"toolResult": {"toolUseId": turn.tool_call_id, "content": [{"text": turn.content}]}}]
    blocks: list[dict[str, Any]] = []
    for image in turn.images:
        inline = data_url(image.url)
        if inline is not None:  # the API takes Bedrock no other kind (prompts.check_images)
            blocks.append({"image": {"format": inline[0].removeprefix("image/"), "source": {"bytes": inline[1]}}})
    if turn.content.strip():
        blocks.append({"text": turn.content})
    for call in turn.tool_calls:
        blocks.append({"toolUse": {"toolUseId": call.id, "name": call.name, "input": arguments_object(call.arguments)}})
    return blocks


def tool_config(request: GenerationRequest) -> dict[str, Any] | None:
    """Converse's ``toolConfig``: the tools, and a structured answer as one more tool the model
    is made to call (its input is the answer)."""
    specs = []
    job_tools = request.job.tools
    history_calls = any(m.tool_calls for m in request.messages)
    if job_tools is not None and (request.tools is not None or history_calls):
        # With tool_choice none the tools stay declared for the calls in the history (Converse
        # refuses toolUse blocks without them), and nothing forces a call.
        specs = [{"toolSpec": given(name=f.name, description=f.description, inputSchema={"json": f.parameters})}
                 for f in job_tools.functions]
    choice: dict[str, Any] | None = None
    tools = request.tools
    if tools is not None:
        if tools.forced:
            choice = {"tool": {"name": tools.forced}}
        elif tools.choice == "required":
            choice = {"any": {}}
    if request.output is not None:
        answer = output_tool(request.output)
        specs.append({"toolSpec": {"name": answer["name"], "description": answer["description"],
                                   "inputSchema": {"json": answer["schema"]}}})
        if tools is None:
            choice = {"tool": {"name": answer["name"]}}
        elif not tools.forced:  # a function the client forces stays forced
            choice = {"any": {}}
    if not specs:
        return None
    config: dict[str, Any] = {"tools": specs}
    if choice is not None:
        config["toolChoice"] = choice
    return config


class BedrockProvider(HTTPProvider):
    family = "bedrock"
    display = "Bedrock"

    @property
    def region(self) -> str:
        return self.settings.bedrock_region

    def _url(self, request: GenerationRequest) -> str:
        model_id = urllib.parse.quote(request.model.upstream, safe="")
        return self.endpoint(request, self.settings.bedrock_endpoint_url
                             or f"https://bedrock-runtime.{self.region}.amazonaws.com",
                             f"/model/{model_id}/converse-stream")

    def _headers(self, url: str, content: bytes) -> dict[str, str]:
        """SigV4 headers for exactly this URL and these body bytes (host, content type, date,
        session token and the signature itself)."""
        settings = self.settings
        # check_configured: the stream needs both before it signs.
        assert settings.aws_access_key_id is not None and settings.aws_secret_access_key is not None
        credentials = Credentials(
            settings.aws_access_key_id.get_secret_value(),
            settings.aws_secret_access_key.get_secret_value(),
            settings.aws_session_token.get_secret_value() if settings.aws_session_token else None,
        )
        headers = {"host": httpx.URL(url).netloc.decode("ascii"), "content-type": "application/json"}
        aws_request = AWSRequest(method="POST", url=url, data=content, headers=headers)
        SigV4Auth(credentials, SIGNING_SERVICE, self.region).add_auth(aws_request)
        return {name.lower(): value for name, value in aws_request.headers.items()}

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        p = request.params
        messages, system = converse_messages(request.messages)
        if messages[-1]["role"] == "assistant" and "text" in messages[-1]["content"][-1]:
            # The conversation ends with an assistant turn: the model continues it (Bedrock's
            # prefill), so the delivered text, if any, extends that turn directly.
            block = messages[-1]["content"][-1]
            block["text"] = (block["text"].rstrip() + request.continuation).rstrip()
        elif request.continuation:
            text, _ = split_prefill(request.continuation)
            if text:  # an all-whitespace continuation is held back entirely (see WhitespaceSkipper)
                messages.append({"role": "assistant", "content": [{"text": text}]})
        config: dict[str, Any] = {"maxTokens": request.tokens_left(), "temperature": p.temperature,
                                  **given(topP=p.top_p)}
        if p.stop:
            config["stopSequences"] = list(p.stop)
        body: dict[str, Any] = {"messages": messages, "inferenceConfig": config}
        if system:
            body["system"] = system
        tools = tool_config(request)
        if tools is not None:
            body["toolConfig"] = tools
        if request.model.extra:
            body["additionalModelRequestFields"] = dict(request.model.extra)
        return body

    def _exception(self, headers: dict[str, Any], payload: bytes) -> ProviderError:
        name = str(headers.get(":exception-type") or headers.get(":error-code") or "unknown")
        try:
            data = orjson.loads(payload) if payload else {}
        except orjson.JSONDecodeError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        message = data.get("message") or data.get("Message") or headers.get(":error-message") or "no message"
        code, retryable, status = STREAM_EXCEPTIONS.get(name.lower(), ("upstream_rejected", False, None))
        if name.lower() == "validationexception":
            # The same reading as an HTTP 400: a context overflow is told apart from other refusals.
            exc = classify(400, orjson.dumps({"message": message}), httpx.Headers(), self.display)
            exc.message += " (in the stream)"
            return exc
        log.warning("%s failed mid-stream (%s): %s", self.display, name, message)
        return ProviderError(f"{self.display} failed mid-stream{shown_kind(name, self.display)}", code=code,
                             status=status, retryable=retryable)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TextDelta | ToolCallDelta | Completion]:
        self.check_configured()
        if request.output is not None and request.continuation:
            # A structured answer is delivered whole (below): the earlier attempt's was the answer.
            yield Completion("stop", request.job.typical_prompt_tokens, request.continuation_events)
            return
        url = self._url(request)
        content = orjson.dumps(self._body(request))
        headers = self._headers(url, content)
        joiner = WhitespaceSkipper(split_prefill(request.continuation)[1])
        frames = EventStreamBuffer()
        finish_reason = None
        usage = None
        answer_tool = request.output.name if request.output is not None else None
        calls: dict[int, int] = {}  # content block index -> tool call index
        answer_blocks: set[int] = set()
        answer: list[str] = []  # a structured answer, held until the call ends (as Anthropic's)
        # orjson.Fragment: Upstream serializes the body itself; a fragment comes out as exactly
        # these bytes, the ones that were signed.
        async with self.upstream.stream(url, orjson.Fragment(content), headers) as response:
            async for data in self.upstream.with_timeouts(response.aiter_bytes()):
                frames.add_data(data)
                try:
                    messages = list(frames)
                except ParserError as exc:
                    raise ProviderError(f"{self.display} sent an unreadable event-stream frame: {exc}",
                                        code="upstream_invalid", retryable=True) from None
                for message in messages:
                    kind = message.headers.get(":message-type")
                    if kind in ("exception", "error"):
                        raise self._exception(message.headers, message.payload)
                    if kind != "event":
                        continue
                    event = message.headers.get(":event-type")
                    if event not in ("contentBlockStart", "contentBlockDelta", "messageStop", "metadata"):
                        continue  # messageStart, contentBlockStop
                    try:
                        payload = orjson.loads(message.payload)
                    except orjson.JSONDecodeError:
                        payload = None
                    if not isinstance(payload, dict):
                        raise ProviderError(f"{self.display} sent an unreadable {event} event",
                                            code="upstream_invalid", retryable=True)
                    block = int(payload.get("contentBlockIndex") or 0)
                    if event == "contentBlockStart":
                        use = (payload.get("start") or {}).get("toolUse")
                        if isinstance(use, dict):
                            if use.get("name") == answer_tool:
                                answer_blocks.add(block)
                            elif request.tools is not None:  # tool_choice none: no call is taken
                                calls[block] = len(calls)
                                yield ToolCallDelta(len(calls) - 1, "", use.get("toolUseId"), use.get("name"))
                    elif event == "contentBlockDelta":
                        delta = payload.get("delta") or {}
                        text = delta.get("text")
                        if text and answer_tool is None:  # with a structured answer, text is no part of it
                            text = joiner.feed(text)
                            if text:
                                yield TextDelta(text)
                        piece = (delta.get("toolUse") or {}).get("input")
                        if piece:
                            if block in answer_blocks:
                                answer.append(piece)
                            elif block in calls:
                                yield ToolCallDelta(calls[block], piece)
                    elif event == "messageStop":
                        reason = payload.get("stopReason") or "end_turn"
                        finish_reason = STOP_REASONS.get(reason, reason)
                    else:
                        usage = payload.get("usage") or usage
        self.check_ended(finish_reason, usage)
        assert finish_reason is not None and usage is not None  # check_ended raised otherwise
        if answer:
            yield TextDelta("".join(answer))
        if finish_reason == "tool_calls" and not calls:
            finish_reason = "stop"  # the structured answer's tool was the only one called
        yield one_call(request, finish_reason, int(usage.get("inputTokens", 0)), int(usage.get("outputTokens", 0)))

    async def embed(self, request: GenerationRequest) -> Embeddings:
        """Titan Text Embeddings by ``InvokeModel``: one call per input (the model takes one)."""
        self.check_configured()
        embed = request.job.embed
        assert embed is not None  # an embedding job
        model_id = urllib.parse.quote(request.model.upstream, safe="")
        url = self.endpoint(request, self.settings.bedrock_endpoint_url
                            or f"https://bedrock-runtime.{self.region}.amazonaws.com", f"/model/{model_id}/invoke")
        gate = asyncio.Semaphore(EMBED_CONCURRENCY)

        async def one(text: str | tuple[int, ...]) -> tuple[list[float], int]:
            content = orjson.dumps({"inputText": text, "normalize": True, **given(dimensions=embed.dimensions)})
            async with gate:
                answer = await self.upstream.post_json(url, orjson.Fragment(content), self._headers(url, content))
            if not isinstance(answer, dict) or not isinstance(answer.get("embedding"), list):
                raise ProviderError(f"{self.display} answered an embedding without a vector", code="upstream_invalid",
                                    retryable=True)
            return list(answer["embedding"]), int(answer.get("inputTextTokenCount") or 0)

        # Titan takes one input a call: the calls go in parallel, a few at a time.
        done = await asyncio.gather(*(one(text) for text in embed.inputs))
        vectors = [vector for vector, _ in done]
        tokens = sum(count for _, count in done)
        return Embeddings(vectors, tokens)
