"""Attribution on both hosts: each request's cost is kept with its key, end
user and tags (the `x-tollgate-tags` header, or `metadata.tollgate_tags`
in the OpenAI APIs), and `/v1/usage` lists the most expensive recent
requests and groups spend by any of them over hourly or daily buckets.
The sums must equal the cost headers the clients saw; no prompt text is
ever in the report."""

from __future__ import annotations

import hashlib
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import httpx
import pytest

import tenants as registry
from calls import micros, settled_and_returned

WEB, BATCH = registry.ATTRIBUTION_KEYS


def send(
    router,
    key: str,
    text: str,
    *,
    tags: str | None = None,
    user: str | None = None,
    metadata: dict | None = None,
    client: httpx.Client | None = None,
):
    body = {"model": "tollgate/auto", "messages": [{"role": "user", "content": text}], "max_tokens": 40}
    if user:
        body["user"] = user
    if metadata:
        body["metadata"] = metadata
    headers = {"authorization": f"Bearer {key}"}
    if tags is not None:
        headers["x-tollgate-tags"] = tags
    return (client or httpx).post(f"{router.url}/v1/chat/completions", json=body, headers=headers, timeout=30)


def grouped(router, key: str, dimension: str) -> tuple[dict, dict[str, tuple[int, int]]]:
    """/v1/usage grouped by `dimension` once settled: (report, value → (requests, micro-dollars))."""
    report = settled_and_returned(router.url, key, query=f"?group_by={dimension}&hours=1")
    return report, {g["value"]: (g["requests"], micros(g["cost_usd"])) for g in report.get("groups", [])}


def test_recent_spend_groups_by_tag_user_and_key_and_equals_the_cost_headers(router, clean_mock):
    marker = uuid.uuid4().hex[:8]
    t_search, t_chat, t_meta = f"search-{marker}", f"chat-{marker}", f"meta-{marker}"
    sent = [
        (WEB, f"{marker} a: what is a lighthouse?", dict(tags=f"{t_search}, {t_chat}", user=f"ann-{marker}")),
        (WEB, f"{marker} b: what is a harbour? answer at length about the history of harbours", dict(tags=t_chat, user=f"bob-{marker}")),
        (BATCH, f"{marker} c: what is a canal?", dict(metadata={"tollgate_tags": t_meta}, user=f"ann-{marker}")),
    ]
    cost = {}
    for i, (key, text, extra) in enumerate(sent):
        r = send(router, key, text, **extra)
        assert r.status_code == 200, r.text
        cost[i] = micros(r.headers["x-tollgate-cost-usd"])

    report, by_tag = grouped(router, WEB, "tag")
    assert by_tag[t_search] == (1, cost[0])
    assert by_tag[t_chat] == (2, cost[0] + cost[1]), "a request with two tags counts under each"
    assert by_tag[t_meta] == (1, cost[2])
    _, by_user = grouped(router, WEB, "user")
    assert by_user[f"ann-{marker}"] == (2, cost[0] + cost[2])
    assert by_user[f"bob-{marker}"] == (1, cost[1])
    _, by_key = grouped(router, BATCH, "key")
    web_id = hashlib.sha256(WEB.encode()).hexdigest()[:16]
    batch_id = hashlib.sha256(BATCH.encode()).hexdigest()[:16]
    assert by_key[web_id][0] >= 2 and by_key[batch_id][0] >= 1
    _, by_model = grouped(router, WEB, "model")
    assert "gpt-4o-mini" in by_model

    # The last hours' spend includes what these requests cost (and other
    # tests' of this tenant): two buckets, in case an hour began between them.
    last = report["spend_by_hour"][-2:]
    assert sum(micros(b["cost_usd"]) for b in last) >= sum(cost.values()), report["spend_by_hour"]
    assert sum(b["requests"] for b in last) >= 3, report["spend_by_hour"]
    top = report["top_requests"]
    assert len(top) <= 10 and top == sorted(top, key=lambda r: -micros(r["cost_usd"]))
    ours = [r for r in top if r["request_id"] and r["user"] and marker in r["user"]]
    assert ours and all(r["model"] == "gpt-4o-mini" and r["tier"] == "only" for r in ours), top
    for words in ("lighthouse", "harbour", "canal"):
        assert words not in str(report), "no prompt text in the report"


def test_tags_and_users_never_reach_another_tenants_usage(router, clean_mock):
    marker = uuid.uuid4().hex[:8]
    r = send(router, WEB, f"{marker}: hello", tags=f"private-{marker}", user=f"eve-{marker}")
    assert r.status_code == 200, r.text
    _, _, other_key = registry.LEVELS["tenant"]
    for dimension in ("tag", "user"):
        r = httpx.get(f"{router.url}/v1/usage?group_by={dimension}", headers={"authorization": f"Bearer {other_key}"}, timeout=30)
        assert r.status_code == 200 and marker not in r.text, r.text


@pytest.mark.parametrize(
    "tags, status",
    [("ok-tag, another:tag=1/x", 200), ("has space", 400), ("x" * 65, 400), (",".join(f"t{i}" for i in range(9)), 400)],
)
def test_bad_tags_are_refused_with_a_400_naming_the_header(router, clean_mock, tags, status):
    r = send(router, WEB, f"{uuid.uuid4().hex}: hi", tags=tags)
    assert r.status_code == status, r.text
    if status == 400:
        assert r.json()["error"]["param"] == "x-tollgate-tags", r.text


@pytest.mark.parametrize("query, param", [("group_by=colour", "group_by"), ("group_by=user&bucket=week", "bucket"), ("hours=0", "hours")])
def test_a_bad_usage_query_is_a_400_naming_the_parameter(router, clean_mock, query, param):
    r = httpx.get(f"{router.url}/v1/usage?{query}", headers={"authorization": f"Bearer {WEB}"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_grouped_spend_over_hours_and_days_still_counts_requests_the_recent_ring_has_dropped(router, clean_mock):
    """Grouped spend comes from hourly and daily buckets, not from the ring
    of the last 1,024 requests: users whose requests were pushed out of the
    ring by 1,100 later ones are still counted, to the micro-dollar, in
    both bucket lengths, and each bucket's groups add up to the total."""
    key = registry.ROLLUP_KEY
    marker = uuid.uuid4().hex[:8]
    early = {f"early-{marker}-{i}": None for i in range(3)}
    for user in early:
        r = send(router, key, f"{marker} {user}: name a river", user=user, tags=f"early-{marker}")
        assert r.status_code == 200, r.text
        early[user] = micros(r.headers["x-tollgate-cost-usd"])

    client = httpx.Client(limits=httpx.Limits(max_connections=16))

    def flood(i: int) -> int:
        r = send(router, key, f"{marker} flood {i}: hi", user=f"flood-{marker}-{i % 20}", client=client)
        assert r.status_code == 200, r.text
        return micros(r.headers["x-tollgate-cost-usd"])

    with client, ThreadPoolExecutor(max_workers=16) as pool:
        flood_cost = sum(pool.map(flood, range(1100)))

    report = settled_and_returned(router.url, key, query="?group_by=user&hours=2", timeout=60)
    assert not any(r["user"] in early for r in report["top_requests"]), "the early requests left the ring"
    assert report["groups_bucket"] == "hour"
    by_user = {g["value"]: (g["requests"], micros(g["cost_usd"])) for g in report["groups"]}
    for user, cost in early.items():
        assert by_user.get(user) == (1, cost), (user, by_user.get(user))
    # 23 users, within the 32 a bucket names: every one is named, and
    # nothing is lost or counted twice.
    assert "(other)" not in by_user and len(by_user) == 23, sorted(by_user)
    total_requests = sum(n for n, _ in by_user.values())
    total_micros = sum(m for _, m in by_user.values())
    assert (total_requests, total_micros) == (1103, flood_cost + sum(early.values()))
    this_hour = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    starts = [datetime.fromisoformat(b["start"].replace("Z", "+00:00")) for b in report["groups_by_bucket"]]
    assert starts == sorted(starts) and starts[-1] <= this_hour and all(s.minute == 0 for s in starts)
    per_bucket = sum(micros(g["cost_usd"]) for b in report["groups_by_bucket"] for g in b["groups"])
    assert per_bucket == total_micros

    daily = settled_and_returned(router.url, key, query="?group_by=tag&bucket=day&hours=2", timeout=60)
    assert daily["groups_bucket"] == "day"
    by_tag = {g["value"]: (g["requests"], micros(g["cost_usd"])) for g in daily["groups"]}
    assert by_tag[f"early-{marker}"] == (3, sum(early.values()))
    assert by_tag["(none)"] == (1100, flood_cost)


def test_tags_in_metadata_count_in_both_apis_and_never_reach_the_provider(router, clean_mock):
    marker = uuid.uuid4().hex[:8]
    tag = f"meta-{marker}"
    openai_style = httpx.post(
        f"{router.url}/v1/chat/completions",
        json={"model": "tollgate/auto", "messages": [{"role": "user", "content": f"{marker}: hi"}], "max_tokens": 20,
              "metadata": {"tollgate_tags": tag, "app": "docs"}},
        headers={"authorization": f"Bearer {WEB}"},
        timeout=30,
    )
    assert openai_style.status_code == 200, openai_style.text
    anthropic_style = httpx.post(
        f"{router.url}/v1/messages",
        json={"model": "tollgate/auto", "messages": [{"role": "user", "content": f"{marker}: hello"}], "max_tokens": 20,
              "metadata": {"user_id": f"zoe-{marker}", "tollgate_tags": tag}},
        headers={"x-api-key": WEB, "anthropic-version": "2023-06-01"},
        timeout=30,
    )
    assert anthropic_style.status_code == 200, anthropic_style.text
    sent = [r for r in clean_mock.requests() if marker in str(r["body"])]
    assert len(sent) == 2 and all("tollgate_tags" not in str(r["body"]) for r in sent), sent
    _, by_tag = grouped(router, WEB, "tag")
    assert by_tag[tag][0] == 2, by_tag
    _, by_user = grouped(router, WEB, "user")
    assert by_user[f"zoe-{marker}"][0] == 1, by_user
