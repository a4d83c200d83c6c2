"""From a validated request to what a provider is asked: history, instructions, raw prompt.

The order is the contract's: apply ``memory_strategy`` (keep the last k messages), then put
``instructions`` first as a system message, then render (the request's ``chat_template``, the
model's default template, or the provider's own chat format).
"""

from __future__ import annotations

import math
import re
import time

import msgspec
from jinja2 import TemplateError, TemplateSyntaxError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from api.request import CompletionRequest
from shared.catalog import FAMILIES_FETCHING_IMAGES, ModelSpec
from shared.constrained import prompt_turns
from shared.jobspec import (
    BYTES_PER_TOKEN_AT_LEAST,
    BYTES_PER_TOKEN_TYPICAL,
    JobSpec,
    Sampling,
    Turn,
    completion_bound,
    prompt_tokens_at_least,
)

TEMPLATE_RENDER_SECONDS = 1.0
TEMPLATE_OUTPUT_CHARS = 2_000_000
TEMPLATE_MAX_RANGE = 10_000
MAX_INT_BITS = 4096
_FORMAT_WIDTH = re.compile(r"%[-#0 +]*(\d+)")


class RequestError(ValueError):
    """The request cannot be served as asked; the message says what to change (HTTP 400).
    ``param`` names the request field at fault, ``code`` the kind of fault, where known."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


class _TemplateLimit(SecurityError):
    pass


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """A sandbox that also bounds render time and the size of what it builds.

    The deadline is checked on every call, attribute lookup, operator and loop step the
    template makes, so a template that loops without output is stopped too.
    """

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self) -> None:
        super().__init__(trim_blocks=True, lstrip_blocks=True, autoescape=False)
        self.deadline = 0.0
        self.globals["raise_exception"] = _raise_exception
        self.globals["range"] = self._range
        for name in ("center", "indent", "wordwrap", "truncate", "format", "filesizeformat", "round"):
            if name in self.filters:
                self.filters[name] = _bounded_filter(name, self.filters[name])

    def _check(self) -> None:
        if time.monotonic() > self.deadline:
            raise _TemplateLimit(f"chat_template took longer than {TEMPLATE_RENDER_SECONDS:g} s to render")

    def _range(self, *args: int):
        rng = range(*args)
        if len(rng) > TEMPLATE_MAX_RANGE:
            raise _TemplateLimit(f"chat_template range() is limited to {TEMPLATE_MAX_RANGE} items")
        for item in rng:
            self._check()
            yield item

    def call(self, __context, __obj, *args, **kwargs):  # jinja's signature
        self._check()
        for value in (*args, *kwargs.values()):
            if isinstance(value, int) and abs(value) > TEMPLATE_OUTPUT_CHARS:
                raise _TemplateLimit("chat_template passes a number too large to a call")
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj, attribute):
        self._check()
        return super().getattr(obj, attribute)

    def unsafe_undefined(self, obj, attribute):
        # Refuse at once instead of rendering an empty value, so the client learns why.
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__} is not allowed")

    def getitem(self, obj, argument):
        self._check()
        return super().getitem(obj, argument)

    def call_binop(self, context, operator, left, right):
        self._check()
        if isinstance(left, int) and isinstance(right, int):
            # Big-integer arithmetic holds the GIL until it is done: bound it before it starts.
            if operator == "**" and right > 0 and max(left.bit_length(), 1) * right > MAX_INT_BITS:
                raise _TemplateLimit("chat_template computes a number too large")
            if operator == "*" and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise _TemplateLimit("chat_template computes a number too large")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (isinstance(seq, (str, list, tuple)) and isinstance(times, int)
                        and len(seq) * times > TEMPLATE_OUTPUT_CHARS):
                    raise _TemplateLimit("chat_template builds a value larger than allowed")
        if operator == "%" and isinstance(left, str):
            widths = [int(w) for w in _FORMAT_WIDTH.findall(left)]
            if widths and max(widths) > TEMPLATE_OUTPUT_CHARS:
                raise _TemplateLimit("chat_template formats a value wider than allowed")
        result = super().call_binop(context, operator, left, right)
        if isinstance(result, (str, list, tuple)) and len(result) > TEMPLATE_OUTPUT_CHARS:
            raise _TemplateLimit("chat_template builds a value larger than allowed")
        return result


def _bounded_filter(name: str, original):
    """A width-taking filter that refuses widths beyond the output bound before allocating."""
    def bounded(value, *args, **kwargs):
        for arg in (*args, *kwargs.values()):
            if isinstance(arg, int) and abs(arg) > TEMPLATE_OUTPUT_CHARS:
                raise _TemplateLimit(f"chat_template asks the {name} filter for too much")
        return original(value, *args, **kwargs)
    return bounded


def _raise_exception(message: str) -> None:
    raise RequestError(f"chat_template raised an error: {message}")


def render_template(source: str, messages: list[dict[str, str]], spec: ModelSpec) -> str:
    """Render an untrusted chat template in the sandbox, within time and size bounds."""
    env = _BoundedSandbox()
    try:
        template = env.from_string(source)
    except TemplateSyntaxError as exc:
        raise RequestError(f"chat_template has a syntax error on line {exc.lineno}: {exc.message}") from exc
    env.deadline = time.monotonic() + TEMPLATE_RENDER_SECONDS
    out: list[str] = []
    size = 0
    try:
        for piece in template.generate(
            messages=messages, bos_token=spec.bos_token, eos_token=spec.eos_token,
            add_generation_prompt=True,
        ):
            size += len(piece)
            if size > TEMPLATE_OUTPUT_CHARS:
                raise _TemplateLimit(
                    f"chat_template output is longer than {TEMPLATE_OUTPUT_CHARS} characters"
                )
            env._check()
            out.append(piece)
    except RequestError:
        raise
    except _TemplateLimit as exc:
        raise RequestError(str(exc)) from exc
    except SecurityError as exc:
        raise RequestError(f"chat_template tried something the sandbox forbids: {exc}") from exc
    except TemplateError as exc:
        raise RequestError(f"chat_template failed to render: {exc}") from exc
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError,
            OverflowError, RecursionError, MemoryError) as exc:
        raise RequestError(f"chat_template failed to render: {type(exc).__name__}: {exc}") from exc
    prompt = "".join(out)
    if not prompt.strip():
        raise RequestError("chat_template rendered an empty prompt")
    return prompt


def build_messages(request: CompletionRequest) -> list[Turn]:
    messages = list(request.messages)
    if request.instructions is not None and any(m.role == "system" for m in messages):
        raise RequestError(
            "instructions cannot be combined with a system message: send one or the other", param="instructions",
        )
    if request.last_k is not None:
        messages = messages[-request.last_k:]
    if request.instructions is not None:
        messages.insert(0, Turn("system", request.instructions))
    return messages


def check_parameters(request: CompletionRequest, spec: ModelSpec) -> None:
    parameters = request.parameters
    unsupported = sorted(parameters.given() - set(spec.parameters))
    if unsupported:
        raise RequestError(
            f"model {spec.id!r} does not support the parameter(s) {', '.join(unsupported)}; "
            f"it accepts: {', '.join(spec.parameters) or 'none'}", param=unsupported[0],
            code="unsupported_parameter",
        )
    if parameters.max_tokens is not None and parameters.max_tokens > spec.max_output:
        raise RequestError(
            f"max_tokens {parameters.max_tokens} is above the limit of model {spec.id!r} ({spec.max_output})",
            param="max_tokens", code="invalid_value",
        )
    temperature = parameters.temperature
    if temperature is not None and temperature > spec.temperature_limit:
        raise RequestError(
            f"temperature {temperature:g} is above the limit of model {spec.id!r} ({spec.temperature_limit:g})",
            param="temperature", code="invalid_value",
        )
    check_images(request.messages, spec)
    if not spec.tools and (request.tools is not None or request.output is not None):
        param = "tools" if request.tools is not None else "response_format"
        raise RequestError(f"model {spec.id!r} takes no tools and no response_format through its provider's API: "
                           f"remove {param}, or pick a model that takes them", param=param,
                           code="unsupported_parameter")
    if request.chat_template is not None and not spec.chat_template:
        raise RequestError(
            f"model {spec.id!r} ({spec.family}) takes no chat_template: its provider renders the "
            "chat itself; remove chat_template or pick an LLM-Engine/vLLM or local model", param="chat_template",
        )


def check_images(messages: tuple[Turn, ...], spec: ModelSpec) -> None:
    """Images only for a model that takes them; an http(s) URL only for a family whose API
    fetches it (the fleet itself fetches none)."""
    for i, message in enumerate(messages):
        for image in message.images:
            if not spec.vision:
                raise RequestError(
                    f"model {spec.id!r} does not take images: remove the image_url part of messages[{i}], "
                    "or pick a model that takes images (GET /v1/models lists them)", param=f"messages[{i}].content",
                    code="unsupported_content")
            if image.url.startswith(("http://", "https://")) and spec.family not in FAMILIES_FETCHING_IMAGES:
                raise RequestError(
                    f"model {spec.id!r} ({spec.family}) takes images as data URLs only: send the image_url of "
                    f"messages[{i}] as data:image/...;base64,... (the fleet fetches no URL)",
                    param=f"messages[{i}].content", code="unsupported_content")


def check_context(spec: ModelSpec, estimate: int, max_tokens: int, requested: bool) -> None:
    """Refuse what certainly does not fit: the prompt's lowest estimate plus the completion bound
    beyond the context window (one that passes but does not fit is refused by the provider with
    a context_length_exceeded error; the local model's worker counts exactly before generating)."""
    if estimate + max_tokens <= spec.context_window:
        return
    if not requested and estimate >= spec.context_window:
        raise RequestError(
            f"the prompt (at least {estimate} tokens) leaves no room for an answer in the "
            f"{spec.context_window}-token context window of model {spec.id!r}: shorten the messages "
            "(memory_strategy last_k keeps the last k)", param="messages", code="context_length_exceeded",
        )
    raise RequestError(
            f"the prompt (at least {estimate} tokens) plus max_tokens ({max_tokens}) exceeds the "
            f"{spec.context_window}-token context window of model {spec.id!r}: shorten the messages "
            "(memory_strategy last_k keeps the last k) or lower max_tokens", param="messages",
            code="context_length_exceeded",
        )


#: The temperature of a raw-prompt model's constrained answer (tools, response_format) when the
#: client sets none: sampled at the doors' default inside a grammar, a small model wanders on and
#: on (arrays that never close) until the token bound cuts the JSON short.
CONSTRAINED_TEMPERATURE = 0.2


def sampling(request: CompletionRequest, spec: ModelSpec, bound: int) -> Sampling:
    p = request.parameters
    # The door's default, within what the model takes (a client's own is refused above it).
    default_temperature = min(request.default_temperature, spec.temperature_limit)
    if spec.raw_prompt and (request.output is not None or request.tools is not None):
        default_temperature = min(default_temperature, CONSTRAINED_TEMPERATURE)
    return Sampling(
        temperature=default_temperature if p.temperature is None else p.temperature,
        max_tokens=bound, stop=p.stop_sequences or (), top_k=p.top_k, top_p=p.top_p,
        frequency_penalty=p.frequency_penalty, presence_penalty=p.presence_penalty,
        reasoning_effort=p.reasoning_effort, seed=p.seed)


#: The families whose embedding APIs take inputs as token ids (the others: text only).
FAMILIES_TAKING_TOKEN_IDS = frozenset({"openai"})
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's bound on one request's inputs


def embedding_spec(request: CompletionRequest, spec: ModelSpec) -> JobSpec:
    embed = request.embed
    assert embed is not None  # an embedding request
    if spec.kind != "embedding":
        raise RequestError(f"model {spec.id!r} is a chat model, not an embedding model: pick one whose kind is "
                           "embedding (GET /v1/models)", param="model", code="invalid_model")
    if not embed.inputs or len(embed.inputs) > MAX_EMBEDDING_INPUTS:
        raise RequestError(f"input must hold 1 to {MAX_EMBEDDING_INPUTS} items", param="input")
    if embed.dimensions is not None:
        if "dimensions" not in spec.parameters:
            raise RequestError(f"model {spec.id!r} does not take dimensions: remove it", param="dimensions",
                               code="unsupported_parameter")
        if spec.dimension_choices and embed.dimensions not in spec.dimension_choices:
            raise RequestError(f"model {spec.id!r} takes dimensions of {', '.join(map(str, spec.dimension_choices))} "
                               f"only, not {embed.dimensions}", param="dimensions", code="invalid_value")
        if spec.dimensions is not None and embed.dimensions > spec.dimensions:
            raise RequestError(f"dimensions {embed.dimensions} is above the {spec.dimensions} of model {spec.id!r}",
                               param="dimensions", code="invalid_value")
    for i, item in enumerate(embed.inputs):
        if isinstance(item, tuple) and spec.family not in FAMILIES_TAKING_TOKEN_IDS:
            raise RequestError(f"model {spec.id!r} ({spec.family}) takes input as text, not token ids",
                               param=f"input[{i}]", code="invalid_value")
        if isinstance(item, str) and not item.strip():
            raise RequestError(f"input[{i}] is empty: each input needs text", param=f"input[{i}]")
        at_least = len(item) if isinstance(item, tuple) else math.ceil(len(item.encode()) / BYTES_PER_TOKEN_AT_LEAST)
        if at_least > spec.context_window:
            raise RequestError(f"input[{i}] (at least {at_least} tokens) is longer than the {spec.context_window} "
                               f"tokens model {spec.id!r} reads of one input", param=f"input[{i}]",
                               code="context_length_exceeded")
    try:
        size = sum(len(i) * BYTES_PER_TOKEN_TYPICAL if isinstance(i, tuple) else len(i.encode()) for i in embed.inputs)
    except UnicodeEncodeError:
        raise RequestError("input holds text that is not valid Unicode (a lone surrogate)", param="input") from None
    return JobSpec(model=spec.id, messages=(), params=Sampling(temperature=0.0, max_tokens=1), prompt_bytes=size,
                   embed=embed)


def job_spec(request: CompletionRequest, spec: ModelSpec, reservation: int) -> JobSpec:
    """Everything the worker needs to make the call, validated; raises RequestError.
    ``reservation``: the completion bound of a request that sets none and whose model has no
    ``default_max_tokens`` (``CHATFLEET_DEFAULT_COMPLETION_RESERVATION``)."""
    if request.embed is not None:
        return embedding_spec(request, spec)
    if spec.kind != "chat":
        raise RequestError(f"model {spec.id!r} is an embedding model: send it to POST /v1/embeddings, or pick a "
                           "chat model", param="model", code="invalid_model")
    check_encodable(request)
    check_parameters(request, spec)
    messages = build_messages(request)
    prompt = None
    if spec.raw_prompt:
        source = request.chat_template or spec.template
        if source is None:
            raise RequestError(f"model {spec.id!r} has no template configured; send a chat_template")
        size = sum(m.text_bytes for m in messages)
        if size > TEMPLATE_OUTPUT_CHARS:
            # Said of what the client sent, not of the template that would have failed on it.
            raise RequestError(
                f"the messages hold {size} characters, more than the {TEMPLATE_OUTPUT_CHARS} a prompt of model "
                f"{spec.id!r} may hold: shorten them (memory_strategy last_k keeps the last k)", param="messages",
                code="context_length_exceeded")
        prompt = render_template(source, prompt_turns(messages, request.tools, request.output), spec)
    requested = request.parameters.max_tokens
    bound = completion_bound(spec, messages, prompt, requested, reservation)
    check_context(spec, prompt_tokens_at_least(messages, prompt), bound, requested is not None)
    job = JobSpec(model=spec.id, messages=tuple(messages), params=sampling(request, spec, bound),
                  prompt_bytes=0, prompt=prompt, tools=request.tools, output=request.output)
    prompt_bytes = (len(prompt.encode()) if prompt is not None
                    else sum(m.text_bytes for m in messages) + job.tool_definition_bytes)
    return msgspec.structs.replace(job, prompt_bytes=prompt_bytes)


def check_encodable(request: CompletionRequest) -> None:
    """Text UTF-8 can carry, in every field the job's record will hold (a lone surrogate, which
    JSON's escapes can spell, cannot be)."""
    try:
        msgspec.json.encode((request.messages, request.tools, request.output, request.instructions,
                             request.chat_template, request.parameters.stop_sequences))
    except (UnicodeEncodeError, msgspec.EncodeError):
        raise RequestError("the request holds text that is not valid Unicode (a lone surrogate): send it as "
                           "UTF-8 text") from None
