"""Customer data is personal: a bearer token guards it, erasure removes every trace and sticks
(redelivery, replays and crashes cannot bring the customer back), pseudonyms are keyed."""

from __future__ import annotations

import hashlib
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from models.privacy import pseudonym
from tests.integration.conftest import REDIS_MODES, WorkerProcess, read_topic, wait_for

TOKEN = "s3cret-token"
PSEUDONYM_KEY = b"integration-test-pseudonym-key"


@pytest.fixture(scope="module", params=REDIS_MODES)
def worker(request, worker_factory) -> WorkerProcess:
    # A long commit interval: a crash right after an erasure leaves its records' Kafka offsets uncommitted.
    w = worker_factory(redis=request.param, JOURNEY_API_TOKEN=TOKEN, JOURNEY_COMMIT_INTERVAL="120s")
    w.start()
    return w


def call(w: WorkerProcess, method: str, path: str, token: str | None = TOKEN,
         headers: dict[str, str] | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(w.base_url + path, method=method, headers=headers or {})
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=20) as r:  # noqa: S310
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, orjson.loads(err.read() or b"null")


def history(cid: str) -> list[dict[str, object]]:
    t = int(time.time() * 1000) - 3_600_000
    return [{"event_id": f"{cid}-1", "customer_id": cid, "touchpoint": "add_to_cart", "timestamp": t},
            {"event_id": f"{cid}-2", "customer_id": cid, "touchpoint": "purchase", "timestamp": t + 1, "value": 20}]


def seed(w: WorkerProcess, cid: str) -> list[dict[str, object]]:
    events = history(cid)
    w.send(*events)
    w.wait_drained()
    assert call(w, "GET", f"/customers/{cid}")[0] == 200
    return events


def traces(w: WorkerProcess, cid: str) -> list[bytes]:
    """Every Redis key naming the customer, and every value holding their id."""
    r = w.redis
    found = []
    for pattern in w.keys.patterns():
        for key in r.scan_iter(match=pattern, count=1000):
            if cid.encode() in key:
                found.append(key)
                continue
            kind = r.type(key)
            values = {b"string": lambda k: [r.get(k)], b"hash": lambda k: [*r.hgetall(k), *r.hgetall(k).values()],
                      b"list": lambda k: r.lrange(k, 0, -1), b"zset": lambda k: r.zrange(k, 0, -1),
                      b"stream": lambda k: [v for _, f in r.xrange(k) for v in f.values()]}.get(kind, lambda k: [])(key)
            if any(isinstance(v, bytes) and cid.encode() in v for v in values):
                found.append(key)
    return found


def test_customer_endpoints_need_the_bearer_token(worker: WorkerProcess):
    seed(worker, "pat")
    for token in (None, "wrong"):
        status, body = call(worker, "GET", "/customers/pat", token=token)
        assert status == 401 and "pat" not in orjson.dumps(body).decode()
    status, body = call(worker, "GET", "/customers/pat")
    assert status == 200 and body["customer_id"] == "pat"
    assert call(worker, "DELETE", "/customers/pat", token="wrong")[0] == 401
    assert call(worker, "GET", "/journey/funnel", token=None)[0] == 200  # aggregates: no personal data


def tombstones(w: WorkerProcess) -> list[bytes]:
    w.wait_drained()
    return [m.key for m in read_topic(w.settings, w.settings.alerts_topic) if m.value is None]


def test_erasure_by_api_removes_every_trace_and_tells_downstream(worker: WorkerProcess):
    seed(worker, "quinn")
    assert traces(worker, "quinn")
    funnel_before = sum(s["customers"] for s in call(worker, "GET", "/journey/funnel")[1]["stages"])

    status, body = call(worker, "DELETE", "/customers/quinn")
    assert (status, body["erased"]) == (200, True)
    assert call(worker, "GET", "/customers/quinn")[0] == 404
    assert traces(worker, "quinn") == []  # not the state, the directory, the outbox or an index: nothing
    assert sum(s["customers"] for s in call(worker, "GET", "/journey/funnel")[1]["stages"]) == funnel_before - 1
    assert tombstones(worker).count(b"quinn") == 1

    log = worker.log_path.read_text()
    erasure_lines = [line for line in log.splitlines() if "erasure of" in line]
    assert any(pseudonym(PSEUDONYM_KEY, "quinn") in line and "api from" in line for line in erasure_lines)
    assert not any("quinn" in line for line in erasure_lines)  # no personal data in the log
    # the pseudonym is keyed: hashing candidate ids does not find it
    assert hashlib.sha256(b"quinn").hexdigest()[:16] not in log

    # a later event (after the erasure) starts a fresh profile
    worker.send({"event_id": "quinn-new", "customer_id": "quinn", "touchpoint": "site_visit",
                 "timestamp": int(time.time() * 1000)})
    worker.wait_drained()
    status, body = call(worker, "GET", "/customers/quinn")
    assert status == 200 and body["events"] == 1 and body["touchpoints"] == {"site_visit": 1}


def test_erasure_removes_the_links_and_the_merged_anonymous_history(worker: WorkerProcess):
    t = int(time.time() * 1000) - 3_600_000
    device = "dev-tess-laptop"
    worker.send({"event_id": "tess-1", "anonymous_id": device, "touchpoint": "ad_click", "timestamp": t,
                 "channel": "search"}, key=device.encode())
    worker.send({"event_id": "tess-2", "customer_id": "tess", "anonymous_id": device, "touchpoint": "signup",
                 "timestamp": t + 60_000})
    worker.wait_drained()
    assert call(worker, "GET", "/customers/tess")[1]["anonymous_ids"] == [device]
    assert call(worker, "GET", f"/customers/{device}")[1]["merged_into"] == "tess"

    assert call(worker, "DELETE", "/customers/tess")[1]["erased"] is True
    worker.wait_drained()  # the erasure of the link, in the device's partition
    assert call(worker, "GET", f"/customers/{device}")[0] == 404
    assert traces(worker, "tess") == [] and traces(worker, device) == []
    # An old event of the device (a redelivery, a replay) does not bring the visitor or the link back.
    before = len(erased_letters(worker))
    worker.send({"event_id": "tess-1", "anonymous_id": device, "touchpoint": "ad_click", "timestamp": t,
                 "channel": "search"}, key=device.encode())
    worker.wait_drained()
    assert call(worker, "GET", f"/customers/{device}")[0] == 404
    assert traces(worker, device) == []
    assert len(erased_letters(worker)) == before + 1


def test_erasure_request_on_the_topic(worker: WorkerProcess):
    seed(worker, "ray")
    worker.producer.send(worker.settings.erasure_topic, key=b"ray",
                         value=orjson.dumps({"customer_id": "ray", "requested_by": "crm-ticket-42"}))
    worker.producer.flush()
    wait_for(lambda: call(worker, "GET", "/customers/ray")[0] == 404, 30, "ray to be erased")
    assert tombstones(worker).count(b"ray") == 1


def erased_letters(w: WorkerProcess) -> list:
    return [m for m in w.dead_letters() if dict(m.headers)["journey.error.reason"] == b"erased_customer"]


def test_an_erasure_sticks_through_a_crash_and_a_replay_of_the_old_events(worker: WorkerProcess):
    events = seed(worker, "sue")
    before = len(erased_letters(worker))  # the module's other tests dead-letter some too
    assert call(worker, "DELETE", "/customers/sue")[1]["erased"] is True
    # Crash within the commit interval: Kafka has not recorded that the worker read sue's events,
    # and the producer re-sends them too (a replay of old history).
    assert worker.stop(kill=True) == -9
    worker.send(*events)
    worker.start()
    worker.wait_drained()
    assert call(worker, "GET", "/customers/sue")[0] == 404
    assert traces(worker, "sue") == []
    letters = erased_letters(worker)
    assert len(letters) - before == len(events)
    assert all(m.key is None and m.value == b"" for m in letters)  # their position only, never their content


def test_behind_a_proxy_without_a_token_no_customer_data(worker_factory):
    w = worker_factory()  # no token: bound to loopback, callers on this machine only
    w.start()
    seed(w, "una")
    assert call(w, "GET", "/customers/una", token=None)[0] == 200
    status, body = call(w, "GET", "/customers/una", token=None, headers={"X-Forwarded-For": "203.0.113.9"})
    assert status == 401 and "una" not in orjson.dumps(body).decode()


def test_fausts_own_environment_variables_change_nothing(worker_factory):
    # With Faust's defaults these would bind the API to every interface, on another port, and point
    # the worker at another broker. The worker ignores them, and names them in its log.
    from tests.integration.conftest import free_port

    other = free_port()
    w = worker_factory(WEB_BIND="0.0.0.0", WEB_HOST="0.0.0.0", WEB_PORT=str(other),  # noqa: S104
                       BROKER_URL="kafka://192.0.2.1:9092", PRODUCER_ACKS="0")
    w.start()
    seed(w, "vic")  # it consumes from the JOURNEY_ broker: the events are applied
    assert call(w, "GET", "/customers/vic")[0] == 200
    with socket.socket() as s:  # nothing listens on Faust's WEB_PORT
        assert s.connect_ex(("127.0.0.1", other)) != 0
    listening = [line for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                 if line.split()[3] == "0A" and int(line.split()[1].split(":")[1], 16) == w.settings.web_port]
    assert [line.split()[1].split(":")[0] for line in listening] == ["0100007F"]  # 127.0.0.1 only
    assert "ignoring Faust's own environment variables BROKER_URL, WEB_BIND, WEB_HOST, WEB_PORT, PRODUCER_ACKS" \
        in w.log_path.read_text()
