"""Webhooks end to end: endpoints registered through the admin API, events emitted by the fleet (a
batch's end, a deployment's cooldown) or by a caller of ``shared.webhooks.emit``, delivered by the
real workers to a receiver on loopback, signed as Standard Webhooks verify, retried with backoff."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest
from standardwebhooks import Webhook

from shared import keys, webhooks
from shared.connections import async_redis, sync_redis
from tests.conftest import start_stack
from tests.helpers import line, poll_until_done, wait_batch, wait_for

pytestmark = pytest.mark.integration

WAIT = 20.0  # how long a delivery may take to arrive (they take well under a second here)


class Receiver:
    """An HTTP server on loopback that records every POST and answers each path's scripted
    statuses in turn (then 200)."""

    def __init__(self):
        self.received: list[dict] = []
        self.scripts: dict[str, list[int]] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver.lock:
                    receiver.received.append({"path": self.path, "headers": dict(self.headers.items()),
                                              "body": body, "at": time.time()})
                    script = receiver.scripts.get(self.path) or []
                    status = script.pop(0) if script else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def at(self, path: str) -> list[dict]:
        with self.lock:
            return [r for r in self.received if r["path"] == path]

    def events(self, path: str) -> list[dict]:
        return [orjson.loads(r["body"]) for r in self.at(path)]


@pytest.fixture(scope="module")
def hooks(tmp_path_factory, fake_server):
    """A fleet whose webhook retries come fast, and a receiver."""
    stack = start_stack(tmp_path_factory.mktemp("webhooks"), fake_url=fake_server.base_url,
                        CHATFLEET_WEBHOOK_BACKOFF_SECONDS="0.2", CHATFLEET_WEBHOOK_TIMEOUT_SECONDS="3",
                        CHATFLEET_WEBHOOK_MAX_ATTEMPTS="5")
    receiver = Receiver()
    yield stack, receiver
    receiver.server.shutdown()
    stack.fleet.stop_all()


def register(stack, receiver, path: str, **fields) -> dict:
    with stack.admin() as admin:
        r = admin.post("/v4/admin/webhooks", json={"url": receiver.url + path, **fields})
    assert r.status_code == 201, r.text
    return r.json()


def emit(stack, type_: str, data: dict, **kwargs) -> str:
    """An event emitted as the fleet's own code emits one (``shared.webhooks.emit``)."""
    async def go():
        redis = async_redis(stack.state_url)
        try:
            return await webhooks.emit(redis, type_, data, **kwargs)
        finally:
            await redis.aclose()
    event_id = asyncio.run(go())
    assert event_id
    return event_id


def clear_health(redis) -> None:
    redis.delete(keys.deployment_cooldown("failover-openai"),
                 *redis.keys(keys.deployment_health("failover-openai", "*")))


def budget_data(account: str, threshold: float = 0.8) -> dict:
    return {"scope": "account", "account_id": account, "key_id": None, "period": "month", "period_id": "2026-12",
            "threshold": threshold, "budget_usd": 10.0, "spent_usd": 10.0 * threshold}


def test_a_finished_batch_sends_one_signed_event_in_openais_shape(hooks):
    stack, receiver = hooks
    endpoint = register(stack, receiver, "/batches", events=["batch.completed", "batch.failed"])
    started = int(time.time())
    with stack.client() as client:
        batch = client.post("/v4/batches", json={"requests": [line("a"), line("b")]}).json()
        refused = client.post("/v4/batches", json={"requests": [line("x", model="no-such-model")]}).json()
        assert wait_batch(client, batch["id"])["status"] == "completed"
        assert refused["status"] == "failed"

    def about(batch_id):
        return [r for r in receiver.at("/batches") if orjson.loads(r["body"])["data"]["id"] == batch_id]

    (request,) = wait_for(lambda: about(batch["id"]), WAIT, what="the batch.completed webhook")
    body = orjson.loads(request["body"])
    assert set(body) == {"object", "id", "type", "created_at", "data"}
    assert (body["object"], body["type"], body["data"]) == ("event", "batch.completed", {"id": batch["id"]})
    assert body["id"].startswith("evt_") and started <= body["created_at"] <= time.time() + 1
    headers = request["headers"]
    assert headers["webhook-id"] == body["id"] and headers["content-type"] == "application/json"
    assert Webhook(endpoint["secret"]).verify(request["body"], headers) == body
    (failed,) = wait_for(lambda: about(refused["id"]), WAIT, what="the batch.failed webhook")
    assert orjson.loads(failed["body"])["type"] == "batch.failed"
    time.sleep(1.5)  # more passes of the watch and the deliveries: nothing more comes
    assert len(about(batch["id"])) == 1 and len(about(refused["id"])) == 1
    with stack.admin() as admin:
        deliveries = admin.get(f"/v4/admin/webhooks/{endpoint['id']}/deliveries").json()["data"]
        assert admin.delete(f"/v4/admin/webhooks/{endpoint['id']}").status_code == 204
    assert {d["event_id"] for d in deliveries} == {body["id"], orjson.loads(failed["body"])["id"]}
    assert all(d["status_code"] == 200 and d["delivered"] and d["attempt"] == 1 for d in deliveries)


def test_a_failing_receiver_gets_the_same_webhook_id_until_it_answers_2xx(hooks):
    stack, receiver = hooks
    receiver.scripts["/flaky"] = [500, 500]
    endpoint = register(stack, receiver, "/flaky", events=["budget.threshold"], account_id="dev")
    event_id = emit(stack, "budget.threshold", budget_data("dev"), account_id="dev", key=f"test:{time.time()}")
    attempts = wait_for(lambda: len(receiver.at("/flaky")) >= 3 and receiver.at("/flaky"), WAIT,
                        what="three attempts")
    time.sleep(1.5)  # the next wait would be 4.8 s at most: nothing is scheduled after a 2xx
    assert len(receiver.at("/flaky")) == 3
    assert [a["headers"]["webhook-id"] for a in attempts] == [event_id] * 3
    assert all(orjson.loads(a["body"])["data"] == budget_data("dev") for a in attempts)
    for a in attempts:  # each attempt signed with its own timestamp
        Webhook(endpoint["secret"]).verify(a["body"], a["headers"])
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.15 and gaps[1] >= 0.9, gaps  # 0.2 s, then 1.2 s, within ±20 %
    redis = sync_redis(stack.state_url)
    assert not [m for m in redis.zrange(keys.WEBHOOK_SCHEDULE, 0, -1) if m.startswith(event_id)]
    redis.close()
    with stack.admin() as admin:
        deliveries = admin.get(f"/v4/admin/webhooks/{endpoint['id']}/deliveries").json()["data"]
        admin.delete(f"/v4/admin/webhooks/{endpoint['id']}")
    assert [(d["event_id"], d["type"], d["attempt"], d["status_code"], d["delivered"], d["final"])
            for d in deliveries] == [(event_id, "budget.threshold", 3, 200, True, True),
                                     (event_id, "budget.threshold", 2, 500, False, False),
                                     (event_id, "budget.threshold", 1, 500, False, False)]
    assert all(d["error"] is None and d["at"].endswith("Z") for d in deliveries)
    assert endpoint["secret"] not in stack.logs()  # nor its key in any log line


def test_a_deployment_that_starts_to_cool_down_is_announced(hooks, fake):
    stack, receiver = hooks
    endpoint = register(stack, receiver, "/cooldowns", events=["deployment.cooldown"])
    redis = sync_redis(stack.state_url)
    clear_health(redis)
    fake.script([{"status": 503}] * 20, family="openai")
    started = time.time()
    with stack.client() as client:
        for _ in range(5):  # 5 calls, all failed: it cools down
            job_id = client.post("/v4/jobs", json={"model": "gpt-4o-failover", "messages": [{"content": "hi"}],
                                                   "model_parameters": {"max_tokens": 3}}).json()["id"]
            assert poll_until_done(client, job_id)["status"] == "succeeded"
    assert redis.exists(keys.deployment_cooldown("failover-openai"))
    (request,) = wait_for(lambda: receiver.at("/cooldowns"), WAIT, what="the deployment.cooldown webhook")
    body = orjson.loads(request["body"])
    Webhook(endpoint["secret"]).verify(request["body"], request["headers"])
    data = body["data"]
    assert body["type"] == "deployment.cooldown" and data["deployment"] == "failover-openai"
    assert data["models"] == ["gpt-4o-failover"]
    assert started + 29 <= data["until"] <= time.time() + 31
    assert data["reason"].startswith("5 calls, 5 failed"), data
    time.sleep(1.0)
    assert len(receiver.at("/cooldowns")) == 1  # once per cooldown, whichever worker saw it start
    clear_health(redis)
    redis.close()
    with stack.admin() as admin:
        admin.delete(f"/v4/admin/webhooks/{endpoint['id']}")


def test_an_endpoint_gets_only_its_accounts_events_of_its_types(hooks):
    stack, receiver = hooks
    endpoints = [register(stack, receiver, "/all"),
                 register(stack, receiver, "/other-account", account_id="other"),
                 register(stack, receiver, "/batches-only", events=["batch.completed"]),
                 register(stack, receiver, "/disabled")]
    with stack.admin() as admin:
        patched = admin.patch(f"/v4/admin/webhooks/{endpoints[3]['id']}", json={"disabled": True})
    assert patched.status_code == 200 and patched.json()["disabled"] is True
    for_dev = emit(stack, "budget.threshold", budget_data("dev", 1.0), account_id="dev")
    for_other = emit(stack, "budget.threshold", budget_data("other", 1.0), account_id="other")
    wait_for(lambda: {e["id"] for e in receiver.events("/all")} >= {for_dev, for_other}, WAIT,
             what="both events at the catch-all endpoint")
    wait_for(lambda: receiver.events("/other-account"), WAIT, what="the other account's event")
    time.sleep(1.0)  # the fan-out scheduled every delivery at once; any other would have arrived
    assert [e["id"] for e in receiver.events("/other-account")] == [for_other]
    assert [e for e in receiver.events("/batches-only") if e["type"] != "batch.completed"] == []
    assert receiver.at("/disabled") == []
    with stack.admin() as admin:
        assert admin.get(f"/v4/admin/webhooks/{endpoints[2]['id']}/deliveries").json()["data"] == []
        for endpoint in endpoints:
            admin.delete(f"/v4/admin/webhooks/{endpoint['id']}")


def test_the_admin_routes_need_the_admin_key_and_refuse_bad_fields_by_name(hooks):
    stack, receiver = hooks
    with stack.client() as client:  # an account's key is not the admin's
        assert client.get("/v4/admin/webhooks").status_code == 401
        assert client.post("/v4/admin/webhooks", json={"url": receiver.url}).status_code == 401
    with stack.client("") as anonymous:
        assert anonymous.get("/v4/admin/webhooks").status_code == 401
    with stack.admin() as admin:
        for url in ("ftp://example.com/in", "not a url", "http://", "http://host:99999/x"):
            r = admin.post("/v4/admin/webhooks", json={"url": url})
            assert r.status_code == 400 and r.json()["detail"].startswith("url: "), (url, r.text)
        r = admin.post("/v4/admin/webhooks", json={"url": receiver.url, "events": ["batch.completed", "batch.done"]})
        assert r.status_code == 400 and "events" in r.json()["detail"] and "'batch.done'" in r.json()["detail"]
        r = admin.post("/v4/admin/webhooks", json={"url": receiver.url, "account_id": "nobody"})
        assert r.status_code == 400 and r.json()["detail"].startswith("account_id: ")
        r = admin.post("/v4/admin/webhooks", json={"events": ["batch.completed"]})
        assert r.status_code == 422 and "url" in r.text
        assert admin.post("/v4/admin/webhooks", json={"url": receiver.url, "color": "red"}).status_code == 422

        made = admin.post("/v4/admin/webhooks", json={"url": receiver.url + "/x", "description": "ops"}).json()
        assert made["id"].startswith("wh_") and made["object"] == "webhook_endpoint"
        assert made["secret"].startswith("whsec_") and made["events"] == list(webhooks.EVENT_TYPES)
        assert (made["account_id"], made["description"], made["disabled"]) == (None, "ops", False)
        listed = admin.get("/v4/admin/webhooks").json()["data"]
        assert made["id"] in [e["id"] for e in listed] and all("secret" not in e for e in listed)
        read = admin.get(f"/v4/admin/webhooks/{made['id']}").json()
        assert "secret" not in read and read["url"] == receiver.url + "/x"
        r = admin.patch(f"/v4/admin/webhooks/{made['id']}", json={"events": ["nope"]})
        assert r.status_code == 400 and "'nope'" in r.json()["detail"]
        r = admin.patch(f"/v4/admin/webhooks/{made['id']}", json={"url": "gopher://x"})
        assert r.status_code == 400 and r.json()["detail"].startswith("url: ")
        r = admin.patch(f"/v4/admin/webhooks/{made['id']}", json={"events": ["batch.failed"], "description": None})
        assert r.status_code == 200 and (r.json()["events"], r.json()["description"]) == (["batch.failed"], None)
        assert admin.delete(f"/v4/admin/webhooks/{made['id']}").status_code == 204
        for method, path in (("GET", ""), ("PATCH", ""), ("DELETE", ""), ("GET", "/deliveries")):
            r = admin.request(method, f"/v4/admin/webhooks/{made['id']}{path}", json={} if method == "PATCH" else None)
            assert r.status_code == 404, (method, path, r.text)
