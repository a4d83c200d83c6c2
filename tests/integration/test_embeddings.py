"""``POST /v1/embeddings`` through the official ``openai`` SDK (sync and async, one input and a
batch), each family's embedding API on its fake provider, and the zero-key local model; each
request a job, billed as one."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct

import openai
import pytest

from tests.conftest import DEV_KEY
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

FAMILIES = {"openai": ("text-embedding-3-small", 1536), "gemini": ("gemini-embedding-001", 3072),
            "mistral": ("mistral-embed", 1024), "bedrock": ("titan-embed-text-v2", 1024)}
LOCAL = "all-minilm-l6-v2"


def sdk(stack) -> openai.OpenAI:
    return openai.OpenAI(api_key=DEV_KEY, base_url=f"{stack.base_url}/v1", max_retries=0)


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_embeds_one_input_and_a_batch(stack, fake, family):
    model, dims = FAMILIES[family]
    client = sdk(stack)
    one = client.embeddings.create(model=model, input="the cat sits on the mat")
    (row,) = one.data
    assert row.index == 0 and len(row.embedding) == dims and abs(norm(row.embedding) - 1) < 1e-3
    assert one.model == model and one.usage.prompt_tokens > 0
    batch = client.embeddings.create(model=model, input=["one", "two", "the cat sits on the mat"])
    assert [r.index for r in batch.data] == [0, 1, 2]
    assert batch.data[2].embedding == pytest.approx(row.embedding, abs=1e-6)  # the same text, the same vector
    sent = fake.requests(family=family)
    assert sent, "the call went to the family's embedding API"


def test_dimensions_base64_and_token_ids(stack, fake):
    client = sdk(stack)
    short = client.embeddings.create(model="text-embedding-3-large", input="hello", dimensions=256)
    assert len(short.data[0].embedding) == 256
    (sent,) = fake.requests(family="openai")
    assert sent["body"]["dimensions"] == 256 and sent["body"]["input"] == ["hello"]
    raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input="hello",
                                                     encoding_format="base64")
    encoded = raw.http_response.json()["data"][0]["embedding"]
    decoded = struct.unpack(f"<{len(base64.b64decode(encoded)) // 4}f", base64.b64decode(encoded))
    assert len(decoded) == 1536 and raw.headers["x-chatfleet-job-id"].startswith("job_")
    tokens = client.embeddings.create(model="text-embedding-3-small", input=[[1, 2, 3]])
    assert len(tokens.data[0].embedding) == 1536


def test_the_local_model_embeds_with_no_key_and_means_what_it_says(stack):
    async def go():
        client = openai.AsyncOpenAI(api_key=DEV_KEY, base_url=f"{stack.base_url}/v1", max_retries=0)
        try:
            return await client.embeddings.create(model=LOCAL, input=[
                "The cat sits on the mat.", "A feline rests on a rug.", "Quarterly revenue grew by 12 percent."])
        finally:
            await client.close()

    answer = asyncio.run(go())
    cat, feline, revenue = (r.embedding for r in answer.data)
    assert len(cat) == 384 and abs(norm(cat) - 1) < 1e-4
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    assert dot(cat, feline) > 0.4 > 0.1 > dot(cat, revenue)
    assert answer.usage.prompt_tokens == 28  # its tokenizer's count, [CLS] and [SEP] included


def test_embedding_usage_is_recorded_as_the_jobs(stack, fake):
    raw = sdk(stack).embeddings.with_raw_response.create(model="mistral-embed", input=["a b c", "d e"])
    job_id = raw.headers["x-chatfleet-job-id"]
    with stack.client() as http:
        job = http.get(f"/v4/jobs/{job_id}").json()
    assert job["status"] == "succeeded"
    assert job["usage"]["prompt_tokens"] == raw.parse().usage.prompt_tokens and job["usage"]["completion_tokens"] == 0


@pytest.mark.parametrize("kwargs, param", [
    ({"model": "gpt-4o-mini"}, "model"),
    ({"model": LOCAL, "dimensions": 10}, "dimensions"),
    ({"model": "text-embedding-3-small", "dimensions": 5000}, "dimensions"),
    ({"model": "titan-embed-text-v2", "dimensions": 300}, "dimensions"),
    ({"model": "mistral-embed", "input": [[1, 2]]}, "input[0]"),
    ({"model": LOCAL, "input": ["ok", " "]}, "input[1]"),
    ({"model": LOCAL, "input": "word " * 2000}, "input[0]"),
])
def test_bad_embedding_requests_are_400s_naming_the_param(stack, kwargs, param):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(stack).embeddings.create(**{"input": "hello", **kwargs})
    assert caught.value.body["param"] == param, caught.value.body


def test_an_embedding_model_is_no_chat_model(stack):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(stack).chat.completions.create(model=LOCAL, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["param"] == "model" and "embedding" in caught.value.message


def run_batch(client: openai.OpenAI, tmp_path, endpoint: str, bodies: list[dict]) -> list[dict]:
    path = tmp_path / "lines.jsonl"
    path.write_text("".join(json.dumps({"custom_id": f"l{i}", "method": "POST", "url": endpoint, "body": b}) + "\n"
                            for i, b in enumerate(bodies)))
    upload = client.files.create(file=path.open("rb"), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint=endpoint, completion_window="24h")
    batch = wait_for(lambda: (b := client.batches.retrieve(batch.id)).status in (
        "completed", "failed", "expired", "cancelled") and b, 60, 0.2, "the batch to end")
    assert batch.status == "completed", batch
    return sorted((json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()),
                  key=lambda line: int(line["custom_id"][1:]))


def test_a_batch_of_embedding_lines(stack, fake, tmp_path):
    client = sdk(stack)
    lines = run_batch(client, tmp_path, "/v1/embeddings",
                      [{"model": "text-embedding-3-small", "input": f"text {i}"} for i in range(5)]
                      + [{"model": LOCAL, "input": ["a", "b"]}])
    assert [line["response"]["status_code"] for line in lines] == [200] * 6
    assert len(lines[0]["response"]["body"]["data"][0]["embedding"]) == 1536
    assert [len(r["embedding"]) for r in lines[5]["response"]["body"]["data"]] == [384, 384]


def test_a_batch_line_is_checked_against_its_batchs_endpoint(stack, fake, tmp_path):
    client = sdk(stack)
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}})
                    + "\n" + json.dumps({"custom_id": "b", "method": "POST", "url": "/v1/embeddings",
                                         "body": {"model": "gpt-4o-mini", "input": "x"}}) + "\n")
    upload = client.files.create(file=path.open("rb"), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h")
    batch = wait_for(lambda: (b := client.batches.retrieve(batch.id)).status in ("failed", "completed") and b,
                     60, 0.2, "the batch to be validated")
    assert batch.status == "failed" and {e.line for e in batch.errors.data} == {1, 2}
