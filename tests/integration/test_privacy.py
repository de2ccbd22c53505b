"""Customer data is personal: a bearer token guards it, and erasure removes every trace."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import orjson
import pytest
import redis
from streams.erasure import pseudonym

from tests.integration.conftest import WorkerProcess, read_topic, wait_for

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def worker(worker_factory) -> WorkerProcess:
    w = worker_factory(JOURNEY_API_TOKEN=TOKEN)
    w.start()
    return w


def call(w: WorkerProcess, method: str, path: str, token: str | None = TOKEN) -> tuple[int, dict]:
    req = urllib.request.Request(w.base_url + path, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, orjson.loads(err.read() or b"null")


def seed(w: WorkerProcess, cid: str) -> None:
    t = int(time.time() * 1000) - 3_600_000
    w.send({"event_id": f"{cid}-1", "customer_id": cid, "touchpoint": "add_to_cart", "timestamp": t},
           {"event_id": f"{cid}-2", "customer_id": cid, "touchpoint": "purchase", "timestamp": t + 1, "value": 20})
    wait_for(lambda: call(w, "GET", f"/customers/{cid}")[0] == 200, 30, f"{cid} to be applied")


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
    messages = read_topic(w.settings, w.settings.alerts_topic, at_least=0, timeout=2, settle=1.0)
    return [m.key for m in messages if m.value is None]


def test_erasure_by_api_removes_every_trace_and_tells_downstream(worker: WorkerProcess):
    seed(worker, "quinn")
    r = redis.Redis.from_url(worker.settings.redis_url)
    prefix = worker.settings.redis_prefix
    assert r.exists(f"{prefix}:{{quinn}}:journey", f"{prefix}:{{quinn}}:seen") == 2
    before = sum(int(v) for v in r.hgetall(f"{prefix}:funnel").values())

    status, body = call(worker, "DELETE", "/customers/quinn")
    assert (status, body["erased"]) == (200, True)
    assert call(worker, "GET", "/customers/quinn")[0] == 404
    assert r.exists(f"{prefix}:{{quinn}}:journey", f"{prefix}:{{quinn}}:seen") == 0
    deadline_sets = list(r.scan_iter(match=f"{prefix}:deadlines:*"))
    assert deadline_sets and all(r.zscore(k, "quinn") is None
                                 for k in deadline_sets)
    assert sum(int(v) for v in r.hgetall(f"{prefix}:funnel").values()) == before - 1
    assert b"quinn" in wait_for(lambda: tombstones(worker), 20, "a tombstone on the alerts topic")

    log = worker.log_path.read_text()
    erasure_lines = [line for line in log.splitlines() if "erasure of" in line]
    assert any(pseudonym("quinn") in line and "api from" in line for line in erasure_lines)
    assert not any("quinn" in line for line in erasure_lines)  # no personal data in the log

    # later events start a fresh profile
    worker.send({"event_id": "quinn-new", "customer_id": "quinn", "touchpoint": "site_visit",
                 "timestamp": int(time.time() * 1000)})
    body = wait_for(lambda: (c := call(worker, "GET", "/customers/quinn"))[0] == 200 and c[1], 30, "a fresh profile")
    assert body["events"] == 1 and body["touchpoints"] == {"site_visit": 1}


def test_erasure_request_on_the_topic(worker: WorkerProcess):
    seed(worker, "ray")
    worker.producer.send(worker.settings.erasure_topic, key=b"ray",
                         value=orjson.dumps({"customer_id": "ray", "requested_by": "crm-ticket-42"}))
    worker.producer.flush()
    wait_for(lambda: call(worker, "GET", "/customers/ray")[0] == 404, 30, "ray to be erased")
    assert b"ray" in wait_for(lambda: tombstones(worker), 20, "a tombstone for ray")
