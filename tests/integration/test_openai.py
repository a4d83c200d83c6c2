"""The OpenAI front door, driven by the official ``openai`` SDK (sync and async) against the running
fleet: chat completions, streams, errors, models, files and batches."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import ADMIN_KEY, DEV_KEY, OTHER_KEY
from tests.helpers import poll_until_done, wait_for

pytestmark = pytest.mark.integration

MODEL = "gpt-4o-mini"
Q = [{"role": "user", "content": "four words go here"}]


def sdk(stack, key: str = DEV_KEY, **kwargs) -> openai.OpenAI:
    kwargs.setdefault("max_retries", 0)
    return openai.OpenAI(api_key=key, base_url=f"{stack.base_url}/v1", **kwargs)


# --- chat completions -----------------------------------------------------------------------------


def test_a_completion_has_openais_shape_and_is_a_job(stack, fake):
    client = sdk(stack)
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=Q, max_tokens=5)
    job_id = raw.headers["x-chatfleet-job-id"]
    reply = raw.parse()
    assert reply.object == "chat.completion" and reply.model == MODEL
    assert reply.id == "chatcmpl-" + job_id.removeprefix("job_")
    assert abs(reply.created - time.time()) < 60 and reply.system_fingerprint
    (choice,) = reply.choices
    assert (choice.index, choice.message.role, choice.message.content, choice.finish_reason) == \
        (0, "assistant", "tok0 tok1 tok2 tok3 tok4", "length")
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (4, 5, 9)
    with stack.client() as http:
        job = http.get(f"/v4/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["usage"]["completion_tokens"] == 5


def test_parameters_are_mapped_onto_the_provider_call(stack, fake):
    client = sdk(stack)
    client.chat.completions.create(
        model=MODEL, messages=[{"role": "developer", "content": "be brief"},
                               {"role": "user", "content": [{"type": "text", "text": "four words "},
                                                            {"type": "text", "text": "go here"}]}],
        temperature=1.7, top_p=0.5, max_completion_tokens=3, stop="tok9", seed=7, user="end-user-1",
        frequency_penalty=0.5, presence_penalty=-0.5, n=1)
    (sent,) = fake.requests()
    body = sent["body"]
    assert body["messages"] == [{"role": "system", "content": "be brief"},
                                {"role": "user", "content": "four words go here"}]
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["stop"], body["seed"]) == \
        (1.7, 0.5, 3, ["tok9"], 7)
    assert (body["frequency_penalty"], body["presence_penalty"]) == (0.5, -0.5)
    # OpenAI's defaults where the request sets nothing
    client.chat.completions.create(model=MODEL, messages=Q)
    assert fake.requests()[-1]["body"]["temperature"] == 1.0


def test_a_stream_is_openai_chunks_ending_with_done(stack, fake):
    client = sdk(stack)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=Q, max_tokens=4, stream=True, stream_options={"include_usage": True})
    assert raw.headers["x-chatfleet-job-id"].startswith("job_")
    chunks = list(raw.parse())
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "tok0 tok1 tok2 tok3"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert {c.id for c in chunks} == {"chatcmpl-" + raw.headers["x-chatfleet-job-id"].removeprefix("job_")}
    *_, last = chunks
    assert last.choices == [] and (last.usage.prompt_tokens, last.usage.completion_tokens) == (4, 4)
    assert all(c.usage is None for c in chunks[:-1])
    # Without include_usage: no usage chunk; and the stream ends with data: [DONE].
    with httpx.Client(base_url=stack.base_url, timeout=30) as http:
        with http.stream("POST", "/v1/chat/completions", headers={"authorization": f"Bearer {DEV_KEY}"},
                         json={"model": MODEL, "messages": Q, "max_tokens": 2, "stream": True}) as response:
            text = response.read().decode()
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert all("usage" not in json.loads(e) for e in events[:-1])


def test_the_async_client_works_alike(stack, fake):
    async def go():
        client = openai.AsyncOpenAI(api_key=DEV_KEY, base_url=f"{stack.base_url}/v1", max_retries=0)
        try:
            reply = await client.chat.completions.create(model=MODEL, messages=Q, max_tokens=3)
            stream = await client.chat.completions.create(model=MODEL, messages=Q, max_tokens=3, stream=True)
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            return reply.choices[0].message.content, text
        finally:
            await client.close()

    assert asyncio.run(go()) == ("tok0 tok1 tok2", "tok0 tok1 tok2")


def test_a_stream_refused_before_its_first_token_is_an_error_status(stack, fake):
    fake.script([{"status": 400, "message": "bad content"}])
    with pytest.raises(openai.BadRequestError) as caught:
        list(sdk(stack).chat.completions.create(model=MODEL, messages=Q, stream=True))
    assert caught.value.code == "upstream_rejected" and caught.value.response.headers["x-chatfleet-job-id"]


def test_an_error_after_the_stream_started_is_raised_by_the_sdk(stack, fake):
    fake.script([{"status": 400, "error_after": 2, "message": "bad content"}])  # Anthropic's: not retried
    stream = sdk(stack).chat.completions.create(model="claude-3-haiku-20240307", messages=Q, stream=True)
    with pytest.raises(openai.APIError) as caught:
        list(stream)
    assert caught.value.code == "upstream_rejected" and "mid-stream" in caught.value.message


# --- errors, as the SDK maps them -----------------------------------------------------------------


@pytest.mark.parametrize("kwargs, param", [
    ({"temperature": 2.5}, "temperature"),
    ({"n": 2}, "n"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"logit_bias": {"1": 5}}, "logit_bias"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "t"}]}, "messages[0].tool_call_id"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
])
def test_bad_requests_are_400s_that_name_the_param(stack, kwargs, param):
    args = {"model": MODEL, "messages": Q, **kwargs}
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(stack).chat.completions.create(**args)
    error = caught.value.body
    assert caught.value.status_code == 400 and error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    assert error["message"]


def test_a_parameter_the_model_cannot_take_is_named(stack):
    with pytest.raises(openai.BadRequestError) as caught:  # Anthropic's temperature stops at 1
        sdk(stack).chat.completions.create(model="claude-3-haiku-20240307", messages=Q, temperature=1.5)
    assert caught.value.body["param"] == "temperature" and "1" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:  # Anthropic takes no seed
        sdk(stack).chat.completions.create(model="claude-3-haiku-20240307", messages=Q, seed=3)
    assert caught.value.body["param"] == "seed" and caught.value.code == "unsupported_parameter"


def test_keys_and_unknown_things(stack):
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(stack, key="cf-wrong").chat.completions.create(model=MODEL, messages=Q)
    assert caught.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as caught:
        sdk(stack).chat.completions.create(model="gpt-nonexistent", messages=Q)
    assert caught.value.body["code"] == "model_not_found" and caught.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        sdk(stack).models.retrieve("gpt-nonexistent")
    with httpx.Client(base_url=stack.base_url) as http:
        missing = http.get("/v1/nothing-here", headers={"authorization": f"Bearer {DEV_KEY}"})
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"


def test_a_rate_limited_request_is_a_429_with_retry_after(stack, fake):
    with stack.admin() as admin:
        account = admin.post("/v4/admin/accounts", json={"name": "openai-rl", "limits": {"rpm": 1}}).json()
        key = admin.post(f"/v4/admin/accounts/{account['id']}/api-keys").json()["key"]
    client = sdk(stack, key=key)
    client.chat.completions.create(model=MODEL, messages=Q, max_tokens=2)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=Q, max_tokens=2)
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert caught.value.body["type"] == "rate_limit_error" and caught.value.body["code"] == "rate_limited"


def test_the_sdk_retries_a_5xx_on_its_own(stack, fake):
    # The fleet makes 4 calls per attempt; the 4 failures end the first request with a 502, which
    # the SDK retries as a new request (a new job), served by the fifth call.
    fake.script([{"status": 500}] * 4)
    reply = sdk(stack, max_retries=1).chat.completions.create(model=MODEL, messages=Q, max_tokens=2)
    assert reply.choices[0].message.content == "tok0 tok1"
    assert len(fake.requests()) == 5


def test_the_sdk_timeout_holds(stack, fake):
    fake.config(ttft_ms=3000)
    with pytest.raises(openai.APITimeoutError):
        sdk(stack, timeout=0.5).chat.completions.create(model=MODEL, messages=Q, max_tokens=2)


def test_bearer_works_on_the_sgp_routes_too(stack, fake):
    with httpx.Client(base_url=stack.base_url, headers={"authorization": f"Bearer {DEV_KEY}"}, timeout=30) as http:
        job = http.post("/v4/jobs", json={"model": MODEL, "messages": Q}).json()
        assert poll_until_done(http, job["id"])["status"] == "succeeded"
        assert http.get("/v4/admin/accounts").status_code == 401
    with httpx.Client(base_url=stack.base_url, headers={"authorization": f"Bearer {ADMIN_KEY}"}) as admin:
        assert admin.get("/v4/admin/accounts").status_code == 200


# --- models ---------------------------------------------------------------------------------------


def test_models_lists_what_the_fleet_serves(stack):
    models = {m.id: m for m in sdk(stack).models.list()}
    assert {"gpt-4o-mini", "claude-3-haiku-20240307", "smollm2-135m-instruct"} <= set(models)
    assert models["gpt-4o-mini"].owned_by == "openai" and models["gpt-4o-mini"].object == "model"
    assert sdk(stack).models.retrieve("smollm2-135m-instruct").owned_by == "local"


# --- files ----------------------------------------------------------------------------------------


def jsonl(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def chat_line(custom_id: str, **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": f"q {custom_id}"}],
                     "max_tokens": 3, **body}}


def test_files_upload_read_list_download_delete_and_belong_to_their_account(stack):
    client = sdk(stack)
    content = jsonl([chat_line("a"), chat_line("b")])
    uploaded = client.files.create(file=("requests.jsonl", io.BytesIO(content)), purpose="batch")
    assert (uploaded.object, uploaded.bytes, uploaded.filename, uploaded.purpose, uploaded.status) == \
        ("file", len(content), "requests.jsonl", "batch", "processed")
    assert client.files.retrieve(uploaded.id).bytes == len(content)
    assert client.files.content(uploaded.id).read() == content
    assert uploaded.id in [f.id for f in client.files.list()]
    other = sdk(stack, key=OTHER_KEY)
    for call in (lambda: other.files.retrieve(uploaded.id), lambda: other.files.content(uploaded.id),
                 lambda: other.files.delete(uploaded.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert uploaded.id not in [f.id for f in other.files.list()]
    deleted = client.files.delete(uploaded.id)
    assert deleted.deleted and deleted.id == uploaded.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


def test_files_have_a_purpose_and_a_size_limit(stack):
    client = sdk(stack)
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("x.jsonl", io.BytesIO(b"{}\n")), purpose="fine-tune")
    assert caught.value.body["param"] == "purpose"
    limit = int(stack.env["CHATFLEET_FILE_MAX_BYTES"])
    with pytest.raises(openai.APIStatusError) as caught:
        client.files.create(file=("big.jsonl", io.BytesIO(b"x" * (limit + 1))), purpose="batch")
    assert caught.value.status_code == 413 and str(limit) in caught.value.message


# --- batches --------------------------------------------------------------------------------------


def wait_batch(client: openai.OpenAI, batch_id: str, timeout: float = 120):
    def over():
        batch = client.batches.retrieve(batch_id)
        return batch if batch.status in ("completed", "failed", "expired", "cancelled") else None
    return wait_for(over, timeout, 0.25, f"batch {batch_id} to end")


def test_a_thousand_line_batch_completes_with_exact_counts_and_results(stack, fake):
    client = sdk(stack)
    lines = [chat_line(f"r{i}") for i in range(1000)]
    upload = client.files.create(file=("thousand.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"team": "a"})
    # Answered at once, as OpenAI does: its lines are validated after the answer.
    assert batch.status == "validating" and batch.input_file_id == upload.id and batch.metadata == {"team": "a"}
    assert batch.request_counts.total == 0
    done = wait_batch(client, batch.id, timeout=240)
    assert done.status == "completed", done
    counts = done.request_counts
    assert (counts.total, counts.completed, counts.failed) == (1000, 1000, 0)
    assert done.output_file_id and done.error_file_id is None
    assert done.completed_at >= done.in_progress_at >= done.created_at
    output = client.files.content(done.output_file_id).text.splitlines()
    assert len(output) == 1000
    results = [json.loads(line) for line in output]
    assert sorted(r["custom_id"] for r in results) == sorted(f"r{i}" for i in range(1000))
    first = results[0]
    assert first["id"].startswith("batch_req_") and first["error"] is None
    assert first["response"]["status_code"] == 200 and first["response"]["request_id"].startswith("job_")
    body = first["response"]["body"]
    assert body["object"] == "chat.completion" and body["model"] == MODEL
    assert body["choices"][0]["message"]["content"] == "tok0 tok1 tok2"
    assert body["usage"]["completion_tokens"] == 3
    listed = client.files.retrieve(done.output_file_id)
    assert listed.purpose == "batch_output" and listed.bytes == len(client.files.content(done.output_file_id).content)


def test_a_batch_with_failing_lines_has_an_error_file(stack, fake):
    client = sdk(stack)
    fake.script([{"status": 400, "message": "no such thing"}])  # the first line to reach the provider
    upload = client.files.create(file=("mixed.jsonl", io.BytesIO(jsonl([chat_line("one"), chat_line("two")]))),
                                 purpose="batch")
    done = wait_batch(client, client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                                    completion_window="24h").id)
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 1)
    (error_line,) = [json.loads(line) for line in client.files.content(done.error_file_id).text.splitlines()]
    (result,) = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert {error_line["custom_id"], result["custom_id"]} == {"one", "two"} and error_line["error"] is None
    assert error_line["response"]["status_code"] == 400
    assert error_line["response"]["body"]["error"]["code"] == "upstream_rejected"


def test_a_batch_with_bad_lines_fails_with_each_one_named(stack):
    client = sdk(stack)
    bad = [chat_line("ok"), {"custom_id": "v4", "method": "POST", "url": "/v4/chat-completions", "body": {}},
           chat_line("hot", temperature=3)]
    upload = client.files.create(file=("bad.jsonl", io.BytesIO(jsonl(bad))), purpose="batch")
    created = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert created.status == "validating"
    batch = wait_batch(client, created.id)
    assert batch.status == "failed" and batch.failed_at and batch.request_counts.failed == len(bad)
    errors = {e.line: e.message for e in batch.errors.data}
    assert set(errors) == {2, 3} and "/v1/chat/completions" in errors[2] and "temperature" in errors[3]


def test_batch_create_is_checked_and_batches_belong_to_their_account(stack):
    client = sdk(stack)
    upload = client.files.create(file=("one.jsonl", io.BytesIO(jsonl([chat_line("x")]))), purpose="batch")
    for kwargs, param in (({"endpoint": "/v1/completions"}, "endpoint"),
                          ({"completion_window": "1h"}, "completion_window")):
        args = {"input_file_id": upload.id, "endpoint": "/v1/chat/completions", "completion_window": "24h", **kwargs}
        with pytest.raises(openai.BadRequestError) as caught:
            client.batches.create(**args)
        assert caught.value.body["param"] == param
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):  # another account's file
        sdk(stack, key=OTHER_KEY).batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                                 completion_window="24h")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        sdk(stack, key=OTHER_KEY).batches.retrieve(batch.id)
    wait_batch(client, batch.id)


def test_batches_cancel_and_list_with_pagination(stack, fake):
    client = sdk(stack)
    fake.config(tokens_per_s=2)  # slow lines, so that the batch is still running when cancelled
    upload = client.files.create(file=("slow.jsonl", io.BytesIO(jsonl([chat_line(f"s{i}") for i in range(5)]))),
                                 purpose="batch")
    created = [client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                     completion_window="24h") for _ in range(3)]
    cancelled = client.batches.cancel(created[0].id)
    assert cancelled.status in ("cancelling", "cancelled")
    assert wait_batch(client, created[0].id).status == "cancelled"
    for batch in created[1:]:
        client.batches.cancel(batch.id)
    first_page = client.batches.list(limit=2)
    assert len(first_page.data) == 2 and first_page.has_more
    ids = [b.id for b in client.batches.list(limit=2)]  # the SDK follows the pages
    assert [b.id for b in reversed(created)] == ids[:3]  # newest first, across pages
    assert len(ids) == len(set(ids))


# --- the README's example, as written -----------------------------------------------------------


def test_the_readmes_openai_example_runs_unchanged(stack, capsys):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    (example,) = [b for b in blocks if "from openai import OpenAI" in b and "tool_calls" not in b
                  and "background=True" not in b]
    # Only where the fleet is and its key differ from `make run`'s.
    code = example.replace("http://127.0.0.1:8000", stack.base_url).replace("cf-dev-key-change-me", DEV_KEY)
    assert code != example
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    answer, _, rest = printed.partition(" CompletionUsage(")
    assert answer.strip() and "completion_tokens=" in rest and "prompt_tokens=" in rest


def test_an_accounts_file_bounds_hold_under_concurrent_uploads(own_stack):
    """Each upload holds its room as it is stored: ten at once cannot pass the bounds together,
    and a refused or deleted upload gives its room back."""
    stack = own_stack(interactive=False, local_slots=1,
                      CHATFLEET_FILES_MAX_BYTES_PER_ACCOUNT=str(2 * 1024 * 1024), CHATFLEET_FILES_MAX_PER_ACCOUNT="12")

    async def upload_many(key: str, size: int, n: int = 10) -> list[int]:
        async with httpx.AsyncClient(base_url=f"{stack.base_url}/v1", headers={"authorization": f"Bearer {key}"},
                                     timeout=60) as http:
            answers = await asyncio.gather(*(
                http.post("/files", data={"purpose": "batch"},
                          files={"file": (f"f{i}.jsonl", b"x" * size, "application/jsonl")}) for i in range(n)))
        refused = {r.json()["error"]["message"] for r in answers if r.status_code != 200}
        assert len(refused) <= 1, refused  # one reason
        return sorted(r.status_code for r in answers)

    # Bytes: 800 KiB each against 2 MiB: two fit, the third would pass the bound.
    assert asyncio.run(upload_many(DEV_KEY, 800 * 1024)) == [200] * 2 + [413] * 8
    # Files: twenty of 1 KiB each against 12 files: twelve fit.
    assert asyncio.run(upload_many(OTHER_KEY, 1024, 20)) == [200] * 12 + [400] * 8
    client = sdk(stack)
    kept = list(client.files.list())
    assert len(kept) == 2 and sum(f.bytes for f in kept) == 2 * 800 * 1024
    with pytest.raises(openai.APIStatusError) as caught:
        client.files.create(file=("more.jsonl", io.BytesIO(b"x" * (800 * 1024))), purpose="batch")
    assert caught.value.status_code == 413
    client.files.delete(kept[0].id)
    again = client.files.create(file=("more.jsonl", io.BytesIO(b"x" * (800 * 1024))), purpose="batch")
    assert again.bytes == 800 * 1024


def test_an_unknown_model_and_a_body_that_is_not_json_are_worded_for_this_door(stack):
    with httpx.Client(base_url=f"{stack.base_url}/v1", headers={"authorization": f"Bearer {DEV_KEY}"}) as http:
        unknown = http.post("/chat/completions", json={"model": "no-such-model", "messages": Q})
        garbled = http.post("/chat/completions", content=b'{"model": "gpt-4o-mini", "messages": [',
                            headers={"content-type": "application/json"})
    assert unknown.status_code == 404 and "GET /v1/models" in unknown.json()["error"]["message"]
    assert "/v4/" not in unknown.json()["error"]["message"]
    error = garbled.json()["error"]
    assert garbled.status_code == 400 and error["param"] is None, error
    assert "not valid JSON" in error["message"] and "at character" in error["message"], error


def test_an_accounts_batches_are_one_list_whichever_door_made_them(stack, fake):
    with stack.client() as client:
        made_on_v4 = client.post("/v4/batches", json={"requests": [
            {"custom_id": "a", "url": "/v4/chat-completions",
             "body": {"model": MODEL, "messages": [{"content": "hi"}], "model_parameters": {"max_tokens": 2}}}]}).json()
    client = sdk(stack)
    done = wait_batch(client, made_on_v4["id"])
    assert done.status == "completed" and done.endpoint == "/v4/chat-completions"
    assert made_on_v4["id"] in [b.id for b in client.batches.list(limit=100)]
    lines = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert lines[0]["custom_id"] == "a" and lines[0]["response"]["body"]["object"] == "chat.completion"
    with pytest.raises(openai.NotFoundError):
        sdk(stack, key=OTHER_KEY).batches.retrieve(made_on_v4["id"])


def test_a_batch_whose_validation_died_is_taken_over_and_runs(stack, fake):
    """An API process that dies while it validates a batch leaves it listed as validating, with no
    lease: another process's sweep validates it again from its input file, and it runs."""
    from api import batches
    from shared import keys
    from shared.connections import async_redis

    client = sdk(stack)
    upload = client.files.create(file=("two.jsonl", io.BytesIO(jsonl([chat_line("a"), chat_line("b")]))),
                                 purpose="batch")

    async def interrupted() -> str:
        redis = async_redis(stack.state_url or stack.redis_url)
        try:
            now = time.time() - 60
            batch_id = batches.new_batch_id()
            await redis.zadd(keys.BATCHES_VALIDATING, {batch_id: now})
            fields = {"front": "openai", "input_file_id": upload.id, "endpoint": "/v1/chat/completions"}
            await batches.begin(redis, "dev", {}, "24h", fields, batch_id=batch_id, now=now)
            return batch_id
        finally:
            await redis.aclose()

    batch_id = asyncio.run(interrupted())
    assert client.batches.retrieve(batch_id).status == "validating"
    done = wait_batch(client, batch_id)
    assert done.status == "completed" and (done.request_counts.total, done.request_counts.completed) == (2, 2)
    output = client.files.content(done.output_file_id).text.splitlines()
    assert sorted(json.loads(line)["custom_id"] for line in output) == ["a", "b"]


def test_a_batch_cancelled_while_it_is_validated_ends_cancelled_with_counts_that_add_up(stack, fake):
    client = sdk(stack)
    upload = client.files.create(file=("many.jsonl", io.BytesIO(jsonl([chat_line(f"c{i}") for i in range(2000)]))),
                                 purpose="batch")
    created = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert created.status == "validating"
    assert client.batches.cancel(created.id).status == "cancelling"
    done = wait_batch(client, created.id, timeout=240)
    counts = done.request_counts
    assert done.status == "cancelled" and counts.total == 2000, done
    assert counts.completed + counts.failed == counts.total and counts.failed >= 1
