"""`GET /dashboard` on both hosts, in a real headless Chromium (Debian
`chromium` driven through `chromedriver`): the page loads with no key, a
wrong key shows the error, and with the tenant's key every number it shows
equals what /v1/usage says. A screenshot of each host's page is written to
target/e2e-screenshots/."""

from __future__ import annotations

import uuid

import httpx
import pytest

import tenants as registry
from calls import settled_and_returned
from hosts import ROOT
from webdriver import Browser

WEB, BATCH = registry.ATTRIBUTION_KEYS
SCREENSHOTS = ROOT / "target" / "e2e-screenshots"


@pytest.fixture
def browser(run_dir):
    b = Browser(run_dir / "chromedriver.log")
    yield b
    b.close()


def test_the_dashboard_shows_what_v1_usage_says_and_a_wrong_key_gets_an_error(router, clean_mock, browser):
    marker = uuid.uuid4().hex[:8]
    for i, (key, user, tags) in enumerate([(WEB, "ann", "search"), (WEB, "bob", "chat,search"), (BATCH, "ann", "batch")]):
        r = httpx.post(
            f"{router.url}/v1/chat/completions",
            json={"model": "tollgate/auto", "messages": [{"role": "user", "content": f"{marker} {i}: say hello"}],
                  "max_tokens": 30, "user": f"{user}-{marker}"},
            headers={"authorization": f"Bearer {key}", "x-tollgate-tags": tags},
            timeout=30,
        )
        assert r.status_code == 200, r.text
    page = httpx.get(f"{router.url}/dashboard", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text.replace("http://www.w3.org/2000/svg", ""), "nothing loaded from elsewhere"

    browser.open(f"{router.url}/dashboard")
    browser.type("#key", "tg-not-a-real-key")
    browser.click("#show")
    browser.wait_for("return document.body.dataset.state === 'error'")
    assert "not recognised" in browser.text("#error")

    by_user = settled_and_returned(router.url, WEB, query="?group_by=user")
    by_tag = settled_and_returned(router.url, WEB, query="?group_by=tag")
    browser.type("#key", WEB)
    browser.click("#show")
    browser.wait_for("return document.body.dataset.state === 'shown'")
    browser.screenshot(SCREENSHOTS / f"dashboard-{router.name}.png")
    assert (SCREENSHOTS / f"dashboard-{router.name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert browser.text("#tenant") == by_user["tenant_id"]
    shown = browser.script(
        "return [...document.querySelectorAll('#limits tbody tr')].map(r => [r.dataset.limit, r.dataset.spentUsd, r.dataset.spentTokens])"
    )
    for b in by_user["budgets"]:
        assert [f"tenant::{b['name']}", b["spent_usd"], str(b["spent_tokens"])] in shown, (b, shown)
    tiers = browser.script("return [...document.querySelectorAll('#resolution tbody tr')].map(r => [r.dataset.tier, r.dataset.spentUsd])")
    assert tiers == [[t["tier"], t["spent_usd"]] for t in by_user["resolution"]["tiers"]]
    mix = browser.script("return [...document.querySelectorAll('#tier-mix rect')].map(r => [r.dataset.tier, Number(r.dataset.requests)])")
    assert mix == [[t["tier"], t["requests"]] for t in by_user["resolution"]["tiers"]]
    top = browser.script("return [...document.querySelectorAll('#top-requests tbody tr')].map(r => [r.dataset.requestId, r.dataset.costUsd])")
    assert top == [[r["request_id"], r["cost_usd"]] for r in by_user["top_requests"]]
    users = browser.script("return [...document.querySelectorAll('#top-user tbody tr')].map(r => [r.dataset.value, r.dataset.costUsd])")
    assert users == [[g["value"], g["cost_usd"]] for g in by_user["groups"][:10]]
    tags = browser.script("return [...document.querySelectorAll('#top-tag tbody tr')].map(r => [r.dataset.value, r.dataset.costUsd])")
    assert tags == [[g["value"], g["cost_usd"]] for g in by_tag["groups"][:10]]
    assert f"ann-{marker}" in [u[0] for u in users]
    days = browser.script("return [...document.querySelectorAll('#spend-days rect')].map(r => [r.dataset.start, r.dataset.costUsd])")
    assert days == [[d["start"], d["cost_usd"]] for d in by_user["spend_by_day"]] and days, days
    hours = browser.script("return [...document.querySelectorAll('#spend-hours rect')].map(r => [r.dataset.start, r.dataset.costUsd])")
    assert hours == [[h["start"], h["cost_usd"]] for h in by_user["spend_by_hour"]] and hours, hours
    assert browser.text("#saved-premium") == "$" + by_user["resolution"]["saved_vs_premium_usd"]

    # Another range reloads the top lists from daily buckets.
    week = settled_and_returned(router.url, WEB, query="?group_by=user&hours=168")
    browser.script("const r = document.getElementById('range'); r.value = 'hours=168'; r.dispatchEvent(new Event('change'));")
    browser.wait_for("return document.body.dataset.state === 'shown'")
    assert week["groups_bucket"] == "day"
    assert "7 days, by day" in browser.text("#top-user") or "7 days, by day" in browser.script(
        "return document.querySelector('.range-label').textContent"
    )
    users = browser.script("return [...document.querySelectorAll('#top-user tbody tr')].map(r => [r.dataset.value, r.dataset.costUsd])")
    assert users == [[g["value"], g["cost_usd"]] for g in week["groups"][:10]]
