"""Tool calls and structured answers of the raw-prompt families (the local model, LLM-Engine/vLLM),
by constrained decoding (``shared/constrained.py`` states the answer's shape).

Such an answer is held until it is whole, then read: its text is delivered, or its calls as tool
calls. Held, it is never delivered in part, so a call made again after a fault starts it afresh;
and an answer delivered before its worker was lost is whole, so the next attempt only finishes
the job (``Constrained.delivered``).
"""

from __future__ import annotations

from shared.constrained import answer_schema, cut_content, read_answer
from worker.providers.base import Completion, GenerationRequest, TextDelta, ToolCallDelta


class Constrained:
    def __init__(self, request: GenerationRequest):
        self.request = request
        self.schema = answer_schema(request.tools, request.output)
        self.held: list[str] = []

    @property
    def active(self) -> bool:
        return self.schema is not None

    def delivered(self, prompt_tokens: int, completion_tokens: int) -> Completion | None:
        """The job's ending when an earlier attempt delivered its answer whole; None otherwise."""
        if self.active and self.request.continuation:
            return Completion("stop", prompt_tokens, completion_tokens)
        return None

    def hold(self, text: str) -> None:
        self.held.append(text)

    def answer(self, finish_reason: str) -> tuple[list[TextDelta | ToolCallDelta], str]:
        """What the whole answer delivers, and its finish reason: the calls it makes (each whole,
        one piece), or its text. An answer cut short by the token bound is delivered as the
        text it is, finishing ``length``."""
        text = "".join(self.held)
        answer = read_answer(text, self.request.tools, self.request.output)
        if answer is None:
            # Cut short: an answer's text so far is delivered as text; a call cut short, not at all.
            cut = cut_content(text) if self.request.output is None else None
            if cut is None and text.lstrip().startswith('{"tool_calls"'):
                cut = ""
            delivered = text if cut is None else cut
            return ([TextDelta(delivered)] if delivered else []), "length" if finish_reason == "stop" else finish_reason
        if answer.calls:
            return [ToolCallDelta(i, arguments, self.request.call_id(i), name)
                    for i, (name, arguments) in enumerate(answer.calls)], "tool_calls"
        return ([TextDelta(answer.content)] if answer.content else []), finish_reason
