"""Which family answers a request, by its path (and, for Mistral on the OpenAI path, its
User-Agent), and what the path itself says: the model, Gemini's method, Bedrock's operation.

* ``openai``     ``POST /v1/chat/completions`` (also ``/chat/completions``), ``POST /v1/completions``
* ``mistral``    ``POST /mistral/v1/chat/completions``, or the OpenAI path when the User-Agent
                 names mistral (the ``mistralai`` SDK does): Mistral's flavour of the same format
* ``anthropic``  ``POST /v1/messages``
* ``gemini``     ``POST /{v1,v1beta,v1alpha}/models/{model}:generateContent`` and
                 ``:streamGenerateContent[?alt=sse]``
* ``bedrock``    ``POST /model/{modelId}/converse`` and ``/converse-stream`` (AWS event stream)
* embeddings     ``POST /v1/embeddings`` (OpenAI; Mistral by User-Agent or ``/mistral/v1/embeddings``),
                 Gemini's ``:batchEmbedContents`` / ``:embedContent``, Bedrock's ``/model/{modelId}/invoke``
"""

from __future__ import annotations

import urllib.parse

from .anthropic import Anthropic
from .bedrock import Bedrock
from .embeddings import BedrockEmbeddings, GeminiEmbeddings, MistralEmbeddings, OpenAIEmbeddings
from .family import Family
from .gemini import Gemini
from .mistral import MistralChat
from .openai import OpenAIChat, OpenAICompletions

OPENAI_CHAT = OpenAIChat()
MISTRAL_CHAT = MistralChat()
OPENAI_COMPLETIONS = OpenAICompletions()
ANTHROPIC = Anthropic()
GEMINI = Gemini()
BEDROCK = Bedrock()
OPENAI_EMBEDDINGS = OpenAIEmbeddings()
MISTRAL_EMBEDDINGS = MistralEmbeddings()
GEMINI_EMBEDDINGS = GeminiEmbeddings()
BEDROCK_EMBEDDINGS = BedrockEmbeddings()

_OPENAI_CHAT_PATHS = {"/v1/chat/completions", "/chat/completions", "/openai/v1/chat/completions"}
_OPENAI_COMPLETION_PATHS = {"/v1/completions", "/completions", "/openai/v1/completions"}
_GEMINI_VERSIONS = {"v1", "v1beta", "v1alpha"}
_OPENAI_EMBEDDING_PATHS = {"/v1/embeddings", "/embeddings", "/openai/v1/embeddings"}


def route(method: str, path: str, raw_path: bytes, headers: dict[str, str]) -> tuple[Family, dict[str, str]] | None:
    if path in _OPENAI_CHAT_PATHS:
        ua = headers.get("user-agent", "").lower()
        return (MISTRAL_CHAT if "mistral" in ua else OPENAI_CHAT), {}
    if path == "/mistral/v1/chat/completions":
        return MISTRAL_CHAT, {}
    if path in _OPENAI_EMBEDDING_PATHS:
        ua = headers.get("user-agent", "").lower()
        return (MISTRAL_EMBEDDINGS if "mistral" in ua else OPENAI_EMBEDDINGS), {}
    if path == "/mistral/v1/embeddings":
        return MISTRAL_EMBEDDINGS, {}
    if path in _OPENAI_COMPLETION_PATHS:
        return OPENAI_COMPLETIONS, {}
    if path == "/v1/messages":
        return ANTHROPIC, {}
    if path.startswith("/model/"):
        # the model id may hold an encoded "/" (ARNs, inference profiles): split the raw path
        raw = raw_path.decode("latin-1")
        for op in ("converse-stream", "converse", "invoke"):
            suffix = "/" + op
            if raw.endswith(suffix):
                model = urllib.parse.unquote(raw[len("/model/") : -len(suffix)])
                if model:
                    return (BEDROCK_EMBEDDINGS if op == "invoke" else BEDROCK), {"model": model, "op": op}
        return None
    parts = path.split("/", 3)  # ['', 'v1beta', 'models', 'gemini-x:generateContent']
    if len(parts) == 4 and parts[1] in _GEMINI_VERSIONS and parts[2] in ("models", "tunedModels"):
        model, sep, gmethod = parts[3].rpartition(":")
        if sep and model and gmethod in ("generateContent", "streamGenerateContent"):
            return GEMINI, {"model": model, "method": gmethod, "version": parts[1]}
        if sep and model and gmethod in ("batchEmbedContents", "embedContent"):
            return GEMINI_EMBEDDINGS, {"model": model, "method": gmethod, "version": parts[1]}
    return None
