"""How a provider call continues after the text an earlier call of the job delivered.

A call made again (after a retryable fault, or by a new attempt after a lost worker) must never
repeat what subscribers already have (``GenerationRequest.continuation``, carried by
``continuation_events`` token events). Each family continues as its API allows:

- raw-prompt families (LLM-Engine/vLLM, the local model): the delivered text is appended to the
  prompt, and the model goes on from it;
- Anthropic, Gemini, Mistral, Bedrock: the delivered text goes back as a final assistant turn (a
  prefill; Mistral's ``prefix`` message). Anthropic and Bedrock refuse a prefill that ends in
  whitespace: it is sent without it (``split_prefill``) and the answer's first characters that
  repeat it are dropped (``WhitespaceSkipper``). Mistral's answer repeats the prefix first
  (``EchoStripper``);
- OpenAI cannot continue a partial answer: it is called again with the job's seed, and the
  prefix the subscriber has is dropped from the new answer (``PrefixSkipper``), which ends the job
  if the new answer departs from it.

Whatever the way, the call asks for the tokens the job has left (``GenerationRequest.tokens_left``;
OpenAI, which regenerates whole, for the job's whole bound), and its usage is counted as for one
call (``one_call``): the continued text was prompt to this call but is completion to the job. The
local model counts both exactly with its tokenizer.
"""

from __future__ import annotations

from worker.providers.base import Completion, GenerationRequest, ProviderError


def one_call(request: GenerationRequest, finish_reason: str, prompt_tokens: int, completion_tokens: int,
             prefilled: bool = True) -> Completion:
    """The call's usage as the job's: the delivered text it was given back (when it was:
    ``prefilled``) moves from the prompt to the completion."""
    carried = request.continuation_events if request.continuation else 0
    prompt = max(prompt_tokens - carried, 0) if prefilled else prompt_tokens
    return Completion(finish_reason, prompt, completion_tokens + carried)


def split_prefill(text: str) -> tuple[str, str]:
    """(the prefill to send, the trailing whitespace held back from it), for APIs that refuse a
    final assistant message ending in whitespace (Anthropic, Bedrock)."""
    kept = text.rstrip()
    return kept, text[len(kept):]


class WhitespaceSkipper:
    """Drops, from the start of the continued answer, the whitespace that was held back from the
    end of the prefill: the subscriber already has it.

    "Hello " is sent as "Hello", and the model usually goes on with " world": that " " must not
    be delivered twice. The answer's leading characters are dropped while they match the held
    whitespace, one for one (across deltas); at the first that does not, or once it is used up,
    everything passes unchanged: "world" gives "Hello world", "\\n" gives "Hello \\n..."."""

    def __init__(self, pending: str):
        self.pending = pending

    def feed(self, text: str) -> str:
        if not self.pending:
            return text
        i = 0
        n = min(len(text), len(self.pending))
        while i < n and text[i] == self.pending[i]:
            i += 1
        self.pending = self.pending[i:] if i == len(text) else ""
        return text[i:]


class EchoStripper:
    """Drops the prefix message's text when the answer starts by repeating it (Mistral's
    documented behaviour). Text is held back only while it may still be that echo; once it
    departs from the prefix, everything is passed through (the model continued directly)."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.held = ""
        self.done = not prefix

    def feed(self, text: str) -> str:
        if self.done:
            return text
        self.held += text
        if self.held.startswith(self.prefix):
            self.done = True
            return self.held[len(self.prefix):]
        if self.prefix.startswith(self.held):
            return ""
        self.done = True
        return self.held

    def flush(self) -> str:
        """At the end of the answer: what is still held was the model's own (short) text."""
        if self.done:
            return ""
        self.done = True
        return self.held


class PrefixSkipper:
    """For providers that cannot continue a partial answer: regenerate, and drop the part the
    subscriber already has. If the new text departs from it, the job cannot go on without
    contradicting what was delivered, so it ends with ``stream_interrupted``."""

    def __init__(self, prefix: str, provider: str):
        self.prefix = prefix
        self.matched = 0
        self.provider = provider

    def feed(self, text: str) -> str:
        if self.matched >= len(self.prefix):
            return text
        want = self.prefix[self.matched:self.matched + len(text)]
        if not text.startswith(want) and not want.startswith(text):
            raise ProviderError(
                f"{self.provider}'s stream broke after part of the answer was delivered, and the "
                "retried call answered differently; the job stops here rather than contradict "
                "what was already sent", code="stream_interrupted",
            )
        take = min(len(text), len(self.prefix) - self.matched)
        self.matched += take
        return text[take:]
