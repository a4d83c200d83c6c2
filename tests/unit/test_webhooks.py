"""Webhooks (shared/webhooks.py, worker/services/webhooks.py) on fakeredis: the signature as
Standard Webhooks verify it, the backoff schedule, an emit that appends once per key and never
raises, the fan-out to the endpoints subscribed, and the deliveries' claims, retries and ends."""

import asyncio
import base64
import logging
import time

import fakeredis
import orjson
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from shared import keys, webhooks
from shared.settings import Settings
from tests.unit.jobstores import run
from worker.services.webhooks import WebhookDelivery, WebhookFanout

# --- signing --------------------------------------------------------------------------------------


def test_a_secret_is_whsec_and_the_base64_of_32_random_bytes():
    secret = webhooks.new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
    assert webhooks.new_secret() != secret


def test_the_signature_is_what_standard_webhooks_verify():
    secret = webhooks.new_secret()
    body = orjson.dumps(webhooks.event_body("batch.completed", {"id": "batch_1"}))
    headers = webhooks.signed_headers(secret, "evt_1", body)
    assert headers["webhook-id"] == "evt_1"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    assert Webhook(secret).verify(body, headers) == orjson.loads(body)
    # The reference signs the same bytes to the same value.
    from datetime import UTC, datetime
    ts = int(headers["webhook-timestamp"])
    assert headers["webhook-signature"] == Webhook(secret).sign("evt_1", datetime.fromtimestamp(ts, UTC), body)
    # Any change is refused: the body, the id, another secret.
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"batch_1", b"batch_2"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, {**headers, "webhook-id": "evt_2"})
    with pytest.raises(WebhookVerificationError):
        Webhook(webhooks.new_secret()).verify(body, headers)


def test_the_signature_is_hmac_sha256_over_id_timestamp_and_body():
    import hashlib
    import hmac
    key = bytes(range(32))
    secret = "whsec_" + base64.b64encode(key).decode()
    expected = base64.b64encode(hmac.new(key, b"evt_x.1700000000.{}", hashlib.sha256).digest()).decode()
    assert webhooks.sign(secret, "evt_x", 1700000000, b"{}") == "v1," + expected


# --- backoff --------------------------------------------------------------------------------------


def test_the_backoff_grows_from_its_base_and_stays_at_its_last_step():
    waits = [webhooks.backoff(n, 5.0, draw=lambda: 0.5) for n in range(1, 10)]
    assert waits == [5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 7200.0, 7200.0, 7200.0]
    assert webhooks.backoff(2, 0.2, draw=lambda: 0.5) == pytest.approx(1.2)
    # Jitter: within ±20 % of the step, both ends reached.
    assert webhooks.backoff(3, 5.0, draw=lambda: 0.0) == pytest.approx(96.0)
    assert webhooks.backoff(3, 5.0, draw=lambda: 1.0) == pytest.approx(144.0)
    drawn = {webhooks.backoff(1, 5.0) for _ in range(50)}
    assert len(drawn) > 1 and all(4.0 <= w <= 6.0 for w in drawn)


# --- emitting -------------------------------------------------------------------------------------


def test_an_event_is_appended_once_per_idempotency_key():
    async def go():
        redis = fakeredis.FakeAsyncRedis(decode_responses=True)
        data = {"scope": "account", "account_id": "acme", "key_id": None, "period": "month", "period_id": "2026-12",
                "threshold": 0.8, "budget_usd": 100.0, "spent_usd": 80.5}
        first = await webhooks.emit(redis, "budget.threshold", data, account_id="acme", key="acme:2026-12:0.8")
        again = await webhooks.emit(redis, "budget.threshold", data, account_id="acme", key="acme:2026-12:0.8")
        other = await webhooks.emit(redis, "budget.threshold", {**data, "threshold": 1.0}, account_id="acme",
                                    key="acme:2026-12:1.0")
        unkeyed = [await webhooks.emit(redis, "batch.completed", {"id": "batch_1"}) for _ in range(2)]
        entries = [(orjson.loads(f["event"]), f["account"]) for _, f in await redis.xrange(keys.WEBHOOK_OUTBOX)]
        assert first and first.startswith("evt_") and again is None and other and None not in unkeyed
        assert [e["id"] for e, _ in entries] == [first, other, *unkeyed]
        event, account = entries[0]
        assert set(event) == {"object", "id", "type", "created_at", "data"}
        assert (event["object"], event["type"], event["data"], account) == ("event", "budget.threshold", data, "acme")
        assert isinstance(event["created_at"], int) and abs(event["created_at"] - time.time()) < 5
        assert entries[2][1] == ""  # an event of no account
        assert 0 < await redis.ttl(keys.webhook_emitted("acme:2026-12:0.8")) <= webhooks.EMITTED_TTL_SECONDS
    run(go())


class BrokenRedis:
    """Every command fails as a Redis that went away does."""

    def register_script(self, source):
        async def call(keys=(), args=(), client=None):
            raise RedisConnectionError("Connection refused")
        return call

    async def get(self, key):
        raise RedisConnectionError("Connection refused")


class HangingRedis:
    def register_script(self, source):
        async def call(keys=(), args=(), client=None):
            await asyncio.sleep(3600)
        return call


def test_emit_never_raises_nor_waits_long(caplog, monkeypatch):
    async def go():
        with caplog.at_level(logging.WARNING, logger="shared.webhooks"):
            assert await webhooks.emit(BrokenRedis(), "batch.failed", {"id": "b"}, key="k") is None
            assert await webhooks.emit_cooldown(BrokenRedis(), "dep", ["m"], 30, 60) is None
            redis = fakeredis.FakeAsyncRedis(decode_responses=True)
            assert await webhooks.emit(redis, "batch.exploded", {"id": "b"}) is None
            assert await redis.xlen(keys.WEBHOOK_OUTBOX) == 0
            monkeypatch.setattr(webhooks, "EMIT_TIMEOUT_SECONDS", 0.2)
            started = time.monotonic()
            assert await webhooks.emit(HangingRedis(), "batch.failed", {"id": "b"}) is None
            assert time.monotonic() - started < 1.0
        messages = [r.getMessage() for r in caplog.records]
        assert sum("ConnectionError" in m for m in messages) == 2, messages
        assert any("unknown webhook event type 'batch.exploded'" in m for m in messages), messages
        assert any("TimeoutError" in m for m in messages), messages
    run(go())


def test_a_cooldown_event_says_what_the_cooldown_flag_counted():
    async def go():
        redis = fakeredis.FakeAsyncRedis(decode_responses=True)
        await redis.set(keys.deployment_cooldown("openai-eu"), "5 calls, 4 failed", ex=30)
        assert await webhooks.emit_cooldown(redis, "openai-eu", ["gpt-4o", "gpt-4o", "gpt-4o-mini"], 30, 60)
        (_, fields), = await redis.xrange(keys.WEBHOOK_OUTBOX)
        event = orjson.loads(fields["event"])
        assert event["type"] == "deployment.cooldown"
        data = event["data"]
        assert (data["deployment"], data["models"]) == ("openai-eu", ["gpt-4o", "gpt-4o-mini"])
        assert data["reason"] == "5 calls, 4 failed in the current 60 s window"
        assert abs(data["until"] - (time.time() + 30)) <= 2
    run(go())


# --- endpoints ------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["ftp://example.com/hook", "example.com/hook", "http://", "https:///path",
                                 "http://host:99999/", "http://exa mple.com/", "http://a\x00b/", "", "h" * 3000])
def test_a_url_that_is_not_http_or_https_is_refused_naming_the_field(url):
    with pytest.raises(webhooks.Invalid, match=r"^url: "):
        webhooks.check_url(url)


def test_urls_and_event_types_that_are_taken():
    assert webhooks.check_url(" https://hooks.example.com:8443/in?x=1 ") == "https://hooks.example.com:8443/in?x=1"
    assert webhooks.check_url("http://127.0.0.1:9/") == "http://127.0.0.1:9/"
    assert webhooks.check_events(None) == list(webhooks.EVENT_TYPES)
    assert webhooks.check_events(["batch.failed", "budget.threshold", "batch.failed"]) == \
        ["batch.failed", "budget.threshold"]
    with pytest.raises(webhooks.Invalid, match=r"^events: unknown event type 'batch\.done'"):
        webhooks.check_events(["batch.completed", "batch.done"])
    with pytest.raises(webhooks.Invalid, match=r"^events: "):
        webhooks.check_events([])


def test_an_endpoint_gets_the_types_it_names_of_the_account_it_names():
    def endpoint(events=webhooks.EVENT_TYPES, account="", disabled="0"):
        return {"id": "wh_1", "events": orjson.dumps(list(events)).decode(), "account_id": account,
                "disabled": disabled}
    assert webhooks.subscribed(endpoint(), "batch.completed", "acme")
    assert webhooks.subscribed(endpoint(), "deployment.cooldown", None)
    assert not webhooks.subscribed(endpoint(disabled="1"), "batch.completed", "acme")
    assert not webhooks.subscribed(endpoint(events=["batch.failed"]), "batch.completed", "acme")
    assert webhooks.subscribed(endpoint(account="acme"), "batch.completed", "acme")
    assert not webhooks.subscribed(endpoint(account="acme"), "batch.completed", "other")
    assert not webhooks.subscribed(endpoint(account="acme"), "deployment.cooldown", None)


# --- fan-out and delivery -------------------------------------------------------------------------

SETTINGS = Settings(webhook_max_attempts=3, webhook_backoff_seconds=0.2, webhook_timeout_seconds=1,
                    webhook_concurrency=4, check_slots=True)


async def two_endpoints(redis):
    every = await webhooks.create_endpoint(redis, "http://127.0.0.1:9/a", list(webhooks.EVENT_TYPES), None, None)
    acme = await webhooks.create_endpoint(redis, "http://127.0.0.1:9/b", ["batch.completed"], "acme", "acme's")
    return every["id"], acme["id"]


def test_fan_out_makes_one_delivery_per_endpoint_subscribed_and_a_replay_keeps_their_attempts():
    async def go():
        redis = fakeredis.FakeAsyncRedis(decode_responses=True)
        every, acme = await two_endpoints(redis)
        fanout = WebhookFanout(redis, SETTINGS)
        assert not await fanout.due()
        done = await webhooks.emit(redis, "batch.completed", {"id": "batch_1"}, account_id="acme")
        other = await webhooks.emit(redis, "batch.completed", {"id": "batch_2"}, account_id="other")
        cooling = await webhooks.emit(redis, "deployment.cooldown", {"deployment": "d"})
        assert await fanout.due()
        assert await fanout.fan_out() == 3
        assert not await fanout.due() and await fanout.fan_out() == 0
        scheduled = set(await redis.zrange(keys.WEBHOOK_SCHEDULE, 0, -1))
        assert scheduled == {f"{done}|{every}", f"{done}|{acme}", f"{other}|{every}", f"{cooling}|{every}"}
        state = orjson.loads(await redis.hget(keys.WEBHOOK_PENDING, f"{done}|{acme}"))
        assert (state["event_id"], state["type"], state["endpoint"], state["attempts"]) == \
            (done, "batch.completed", acme, 0)
        assert orjson.loads(state["body"])["data"] == {"id": "batch_1"}
        # A pass made again from the start (its cursor lost) changes no delivery's attempts.
        await redis.hset(keys.WEBHOOK_PENDING, f"{done}|{acme}", orjson.dumps({**state, "attempts": 2}))
        await redis.delete(keys.WEBHOOK_CURSOR)
        assert await fanout.fan_out() == 3
        assert orjson.loads(await redis.hget(keys.WEBHOOK_PENDING, f"{done}|{acme}"))["attempts"] == 2
        assert await redis.zcard(keys.WEBHOOK_SCHEDULE) == 4
    run(go())


class Answers:
    """Stands in for the HTTP POST: the statuses to answer, in order (None: no answer)."""

    def __init__(self, *statuses):
        self.statuses = list(statuses)
        self.sent = []

    async def __call__(self, endpoint, state):
        self.sent.append((endpoint["id"], state["event_id"], state["attempts"]))
        status = self.statuses.pop(0)
        return (status, None) if status is not None else (None, "ConnectError: refused")


async def settle(delivery):
    while delivery.in_flight:
        await asyncio.gather(*delivery.in_flight)


def test_a_delivery_is_claimed_once_retried_with_backoff_and_given_up_after_its_attempts(monkeypatch):
    async def go():
        redis = fakeredis.FakeAsyncRedis(decode_responses=True)
        every, _ = await two_endpoints(redis)
        event_id = await webhooks.emit(redis, "deployment.cooldown", {"deployment": "d"})
        await WebhookFanout(redis, SETTINGS).fan_out()
        member = f"{event_id}|{every}"
        delivery, rival = WebhookDelivery(redis, SETTINGS), WebhookDelivery(redis, SETTINGS)
        answers = Answers(500, None, 503)
        monkeypatch.setattr(delivery, "post", answers)
        monkeypatch.setattr(rival, "post", answers)
        claims = await delivery.scripts.claim_webhooks(
            keys=[keys.WEBHOOK_SCHEDULE, keys.WEBHOOK_PENDING], args=[repr(time.time()), 60, 10])
        assert claims[0] == member
        # Claimed: no other worker finds it due until the claim lapses.
        assert not await rival.due()
        await redis.zadd(keys.WEBHOOK_SCHEDULE, {member: time.time()})
        for expected_attempts in (0, 1, 2):
            assert await delivery.due()
            before = time.time()
            await delivery.run_pass()
            await settle(delivery)
            due_at = await redis.zscore(keys.WEBHOOK_SCHEDULE, member)
            if expected_attempts < 2:
                wait = webhooks.backoff(expected_attempts + 1, 0.2, draw=lambda: 0.5)
                assert 0.8 * wait <= due_at - before <= 1.2 * wait + 0.5
                assert not await delivery.due()
                await redis.zadd(keys.WEBHOOK_SCHEDULE, {member: time.time()})  # its wait is over
        assert answers.sent == [(every, event_id, 0), (every, event_id, 1), (every, event_id, 2)]
        assert due_at is None and await redis.hget(keys.WEBHOOK_PENDING, member) is None
        attempts = await webhooks.recent_deliveries(redis, every)
        assert [(a["attempt"], a["status_code"], a["delivered"], a["final"]) for a in attempts] == \
            [(3, 503, False, True), (2, None, False, False), (1, 500, False, False)]
        assert attempts[1]["error"] == "ConnectError: refused"
        assert {a["event_id"] for a in attempts} == {event_id}
    run(go())


def test_a_2xx_ends_a_delivery_and_one_to_a_disabled_or_deleted_endpoint_is_dropped(monkeypatch):
    async def go():
        redis = fakeredis.FakeAsyncRedis(decode_responses=True)
        every, acme = await two_endpoints(redis)
        event_id = await webhooks.emit(redis, "batch.completed", {"id": "batch_1"}, account_id="acme")
        await WebhookFanout(redis, SETTINGS).fan_out()
        await webhooks.update_endpoint(redis, acme, {"disabled": "1"})
        delivery = WebhookDelivery(redis, SETTINGS)
        answers = Answers(204)
        monkeypatch.setattr(delivery, "post", answers)
        await delivery.run_pass()
        await settle(delivery)
        assert answers.sent == [(every, event_id, 0)]  # none to the disabled one
        assert await redis.zcard(keys.WEBHOOK_SCHEDULE) == 0 and await redis.hlen(keys.WEBHOOK_PENDING) == 0
        (delivered,) = await webhooks.recent_deliveries(redis, every)
        assert (delivered["status_code"], delivered["delivered"], delivered["final"]) == (204, True, True)
        (dropped,) = await webhooks.recent_deliveries(redis, acme)
        assert (dropped["error"], dropped["delivered"]) == ("endpoint disabled", False)
        # Deleted: its scheduled deliveries go with it, unsent.
        again = await webhooks.emit(redis, "batch.completed", {"id": "batch_9"})
        await WebhookFanout(redis, SETTINGS).fan_out()
        assert await webhooks.delete_endpoint(redis, every) and not await webhooks.delete_endpoint(redis, every)
        await delivery.run_pass()
        await settle(delivery)
        assert len(answers.sent) == 1 and again
        assert await redis.zcard(keys.WEBHOOK_SCHEDULE) == 0
        assert await webhooks.recent_deliveries(redis, every) == []
    run(go())


def test_a_batch_is_announced_once_when_its_status_is_final():
    async def go():
        redis = fakeredis.FakeAsyncRedis(decode_responses=True)
        for batch_id, status in (("batch_a1", "completed"), ("batch_b2", "in_progress"), ("batch_c3", "expired"),
                                 ("batch_d4", None)):
            await redis.zadd(keys.watched_batches(keys.shard_of(batch_id)), {batch_id: time.time()})
            if status:
                await redis.hset(keys.batch(batch_id), mapping={"status": status, "account_id": "acme"})
        fanout = WebhookFanout(redis, SETTINGS)
        assert await fanout.due()
        await fanout.announce_finished_batches()
        await redis.hset(keys.batch("batch_b2"), "status", "cancelled")
        await fanout.announce_finished_batches()
        await fanout.announce_finished_batches()
        events = [(orjson.loads(f["event"]), f["account"]) for _, f in await redis.xrange(keys.WEBHOOK_OUTBOX)]
        assert [(e["type"], e["data"], a) for e, a in events] == [
            ("batch.completed", {"id": "batch_a1"}, "acme"), ("batch.expired", {"id": "batch_c3"}, "acme"),
            ("batch.cancelled", {"id": "batch_b2"}, "acme")]
        for shard in range(keys.SHARDS):
            assert not await redis.exists(keys.watched_batches(shard))
        # Watched again (a pass that lost its removal): the key keeps it from being announced twice.
        await redis.zadd(keys.watched_batches(keys.shard_of("batch_a1")), {"batch_a1": time.time()})
        await fanout.announce_finished_batches()
        assert await redis.xlen(keys.WEBHOOK_OUTBOX) == 3
        assert not await redis.exists(keys.watched_batches(keys.shard_of("batch_a1")))
    run(go())
