"""The families' embedding APIs: OpenAI's and Mistral's ``POST /v1/embeddings``, Gemini's
``models/{model}:batchEmbedContents``, Bedrock's ``InvokeModel`` of Titan Text Embeddings. Each
vector is a unit vector fixed by its text (the same text, the same vector), of the model's real
length unless the request asks for fewer dimensions; errors and faults are each family's, as for
its chat."""

from __future__ import annotations

import hashlib
import math
import random
from typing import Any

from .bedrock import Bedrock
from .family import Req, dumps, random_id
from .gemini import Gemini
from .generation import Plan, count_words
from .mistral import MistralChat
from .openai import OpenAIFamily

DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536,
              "gemini-embedding-001": 3072, "text-embedding-004": 768, "mistral-embed": 1024,
              "amazon.titan-embed-text-v2:0": 1024}


def vector(text: str, dims: int) -> list[float]:
    rng = random.Random(hashlib.sha256(text.encode()).digest())
    values = [rng.gauss(0, 1) for _ in range(dims)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 7) for v in values]


def _req(model: str, texts: list[str], dims: int, **opts: Any) -> Req:
    return Req(model=model, stream=False, prompt_tokens=count_words(texts), last_user="", limit=None, stops=[],
               opts={"texts": texts, "dims": dims, **opts})


class OpenAIEmbeddings(OpenAIFamily):
    def parse(self, body, params, query, headers) -> Req:
        body = self.require_object(body)
        model = self.require_model(body, "you must provide a model parameter")
        raw = body.get("input")
        if isinstance(raw, str) or (isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw)):
            raw = [raw]
        if not isinstance(raw, list) or not raw or len(raw) > 2048:
            raise self.bad_request("'input' must be a string, or an array of 1 to 2048 strings or token arrays")
        texts = []
        for i, item in enumerate(raw):
            if isinstance(item, list) and item and all(isinstance(t, int) for t in item):
                texts.append(" ".join(str(t) for t in item))
            elif isinstance(item, str) and item:
                texts.append(item)
            else:
                raise self.bad_request(f"'$.input[{i}]' is invalid: it must be a non-empty string or token array")
        dims = body.get("dimensions")
        if dims is not None and (not isinstance(dims, int) or dims < 1 or model == "text-embedding-ada-002"):
            raise self.bad_request("This model does not support specifying dimensions." if dims is not None
                                   else "dimensions must be a positive integer")
        if body.get("encoding_format") not in (None, "float", "base64"):
            raise self.bad_request("'encoding_format' must be 'float' or 'base64'")
        return _req(model, texts, dims or DIMENSIONS.get(model, 16))

    def render(self, req: Req, plan: Plan) -> bytes:
        data = [{"object": "embedding", "index": i, "embedding": vector(t, req.opts["dims"])}
                for i, t in enumerate(req.opts["texts"])]
        return dumps({"object": "list", "data": data, "model": req.model,
                      "usage": {"prompt_tokens": req.prompt_tokens, "total_tokens": req.prompt_tokens}})


class MistralEmbeddings(MistralChat, OpenAIEmbeddings):
    def parse(self, body, params, query, headers) -> Req:
        return OpenAIEmbeddings.parse(self, body, params, query, headers)

    def render(self, req: Req, plan: Plan) -> bytes:
        data = [{"object": "embedding", "index": i, "embedding": vector(t, req.opts["dims"])}
                for i, t in enumerate(req.opts["texts"])]
        return dumps({"id": self.new_id() or random_id(), "object": "list", "data": data, "model": req.model,
                      "usage": {"prompt_tokens": req.prompt_tokens, "total_tokens": req.prompt_tokens,
                                "completion_tokens": 0}})


class GeminiEmbeddings(Gemini):
    def parse(self, body, params, query, headers) -> Req:
        body = self.require_object(body)
        requests = body.get("requests") if params["method"] == "batchEmbedContents" else [body]
        requests = self.require_list(requests, "* BatchEmbedContentsRequest.requests: requests is not specified")
        texts, dims = [], set()
        for i, item in enumerate(requests):
            parts = ((item or {}).get("content") or {}).get("parts") or []
            text = " ".join(p.get("text", "") for p in parts if isinstance(p, dict))
            if not text.strip():
                raise self.bad_request(f"* BatchEmbedContentsRequest.requests[{i}].content: contents is not specified")
            if item.get("model") not in (None, f"models/{params['model']}"):
                raise self.bad_request(f"* BatchEmbedContentsRequest.requests[{i}].model: the model must be the "
                                       "request's model")
            texts.append(text)
            dims.add(item.get("outputDimensionality"))
        wanted = dims.pop() if len(dims) == 1 else None
        return _req(params["model"], texts, wanted or DIMENSIONS.get(params["model"], 16),
                    batch=params["method"] == "batchEmbedContents")

    def render(self, req: Req, plan: Plan) -> bytes:
        rows = [{"values": vector(t, req.opts["dims"])} for t in req.opts["texts"]]
        return dumps({"embeddings": rows} if req.opts["batch"] else {"embedding": rows[0]})


class BedrockEmbeddings(Bedrock):
    def parse(self, body, params, query, headers) -> Req:
        body = self.require_object(body)
        text = body.get("inputText")
        if not isinstance(text, str) or not text:
            raise self.bad_request("Malformed input request: #: required key [inputText] not found")
        dims = body.get("dimensions")
        if dims not in (None, 256, 512, 1024):
            raise self.bad_request("Malformed input request: #/dimensions: must be one of 256, 512, 1024")
        return _req(params["model"], [text], dims or DIMENSIONS.get(params["model"], 16))

    def render(self, req: Req, plan: Plan) -> bytes:
        return dumps({"embedding": vector(req.opts["texts"][0], req.opts["dims"]),
                      "inputTextTokenCount": req.prompt_tokens})
