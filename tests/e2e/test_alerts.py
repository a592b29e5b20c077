"""Budget alerts on both hosts: a user's limit crossing the soft threshold,
then running out, each posts one signed webhook (and logs one line), however
many more requests hit the limit afterwards."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid

import httpx

import tenants as registry

WAIT_SECONDS = 15.0


def deliveries(mock, user: str) -> list[dict]:
    hooks = mock.client.get("/__mock/webhooks").json()
    return [h for h in hooks if json.loads(h["body"]).get("id") == user]


def verify(delivery: dict) -> dict:
    """The alert, once its signature checks out with the tenant's secret."""
    signature = delivery["headers"]["x-tollgate-signature"]
    fields = dict(part.split("=", 1) for part in signature.split(","))
    signed = f"{fields['t']}.{delivery['body']}".encode()
    expected = hmac.new(registry.ALERTS_SECRET.encode(), signed, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(fields["v1"], expected), delivery
    assert abs(int(fields["t"]) - time.time()) < 300, delivery
    return json.loads(delivery["body"])


def test_a_user_nearing_and_then_running_out_of_budget_alerts_once_each_by_signed_webhook(router, mock):
    user = f"alerts-{router.name}-{uuid.uuid4().hex[:10]}"
    statuses = []
    for i in range(30):
        r = httpx.post(
            f"{router.url}/v1/chat/completions",
            json={
                "model": "tollgate/auto",
                "messages": [{"role": "user", "content": f"{user} #{i}: name one fact about rivers."}],
                "max_tokens": 60,
                "user": user,
            },
            headers={"authorization": f"Bearer {registry.ALERTS_KEY}"},
            timeout=30,
        )
        statuses.append(r.status_code)
        if statuses.count(429) >= 4:
            break
    assert 200 in statuses and statuses.count(429) >= 4, statuses

    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        got = deliveries(mock, user)
        events = sorted(verify(d)["event"] for d in got)
        if events == ["exhausted", "soft_threshold"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert events == ["exhausted", "soft_threshold"], f"one alert per event, got {events}"
    for delivery in got:
        alert = verify(delivery)
        assert delivery["path"] == "/__mock/webhooks"
        assert (alert["type"], alert["tenant_id"], alert["level"]) == ("tollgate.budget_alert", "e2e-alerts", "user")
        assert (alert["limit"], alert["window"], alert["limit_tokens"]) == ("user-daily", "day", 600)
    # More refusals later send nothing more.
    time.sleep(1.0)
    assert len(deliveries(mock, user)) == 2
