"""Loading the filter: what Envoy does with a good and a bad plugin
configuration, and the route table around the filter (envoy/README.md,
"Loading the filter" and "Plugin configuration").

`envoy --mode validate` loads the .wasm for real and runs the filter's
on_configure, so a configuration the filter refuses makes it exit non-zero
with the filter's one log line naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

import hosts
import tenants
from calls import EASY_PROMPT, assert_error, bearer, chat, chat_body, unique
from hosts import ACME_KEY, ROOT, Envoy, Mock
from prereq import running


def bootstrap_for(mock: Mock, plugin: dict) -> dict:
    return hosts.envoy_bootstrap(plugin, port=hosts.free_port(), admin_port=hosts.free_port(), mock=mock,
                                 wasm=hosts.require_envoy_filter())


def acme_plugin(mock: Mock) -> dict:
    return hosts.plugin_config(mock, [(tenants.ACME, [ACME_KEY])])


def refusal_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "plugin configuration refused" in line]


def test_a_good_plugin_configuration_validates(mock, run_dir):
    done = hosts.validate_envoy_config(bootstrap_for(mock, acme_plugin(mock)), run_dir / "envoy-validate", "good")
    assert done.returncode == 0, done.stdout[-3000:]
    assert refusal_lines(done.stdout) == []


def broken(mock: Mock, change: str) -> tuple[dict, str]:
    """A plugin config with one mistake, and the field path the refusal must name."""
    plugin = acme_plugin(mock)
    if change == "unknown_field":
        plugin["tennants"] = {}
        return plugin, "tennants"
    if change == "unknown_backend":
        plugin["state"] = {"budgets": "postgres"}
        return plugin, "state.budgets"
    if change == "raw_api_key":
        plugin["api_keys"]["tg-plain-text-key"] = {"tenant_id": "acme", "label": "x", "disabled": False}
        return plugin, "api_keys.tg-plain-text-key"
    if change == "bad_tenant":
        plugin["tenants"]["acme"]["budgets"]["limits"][0]["window"] = "fortnight"
        return plugin, "tenants.acme.budgets.limits"
    if change == "tenant_id_mismatch":
        plugin["tenants"]["acme"]["tenant_id"] = "globex"
        return plugin, "tenants.acme.tenant_id"
    raise ValueError(change)


# A few kinds of mistake, each a whole Envoy start (seconds); the filter's
# in-process tests (crates/tollgate-envoy-harness) cover the rest.
@pytest.mark.parametrize("change", ["unknown_backend", "raw_api_key", "bad_tenant"])
def test_a_bad_plugin_configuration_is_refused_at_load_with_one_line_naming_the_field(mock, run_dir, change):
    plugin, path = broken(mock, change)
    done = hosts.validate_envoy_config(bootstrap_for(mock, plugin), run_dir / "envoy-validate", change)
    assert done.returncode != 0, f"Envoy accepted a bad plugin configuration:\n{done.stdout[-3000:]}"
    lines = refusal_lines(done.stdout)
    assert lines, f"no `plugin configuration refused` line:\n{done.stdout[-3000:]}"
    assert path in lines[0], lines[0]
    assert "panicked" not in done.stdout and "wasm trap" not in done.stdout.lower(), done.stdout[-3000:]


def test_a_plugin_configuration_that_is_not_json_is_refused_without_a_panic(mock, run_dir):
    bootstrap = bootstrap_for(mock, acme_plugin(mock))
    http_filter = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "http_filters"][0]
    http_filter["typed_config"]["config"]["configuration"]["value"] = '{"tenants": {"acme": '
    done = hosts.validate_envoy_config(bootstrap, run_dir / "envoy-validate", "not-json")
    assert done.returncode != 0, done.stdout[-3000:]
    assert refusal_lines(done.stdout), done.stdout[-3000:]
    assert "panicked" not in done.stdout, done.stdout[-3000:]


def test_the_local_example_config_holds_the_example_tenants_unchanged():
    config = yaml.safe_load((ROOT / "envoy" / "envoy-local.yaml").read_text())
    http_filter = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "http_filters"][0]
    plugin = json.loads(http_filter["typed_config"]["config"]["configuration"]["value"])
    assert plugin["tenants"] == {"acme": hosts.example("tenant.json"), "globex": hosts.example("tenant-globex.json")}
    assert set(plugin["api_keys"]) == {hosts.sha256_hex("tg-local-acme-key"), hosts.sha256_hex("tg-local-globex-key")}
    assert [t["regex"] for t in config["stats_config"]["stats_tags"]] == [t["regex"] for t in hosts.STATS_TAGS]


# ---------------------------------------------------------------- the route table around the filter


@pytest.fixture
def bare_envoy(mock: Mock, run_dir: Path) -> Iterator[Envoy]:
    """The same bootstrap with the filter left out."""
    with running(lambda: hosts.start_envoy(mock, run_dir / "envoy-bare", name="envoy-bare", with_filter=False)) as e:
        yield e


def test_without_the_filter_a_request_reaches_no_provider(bare_envoy, clean_mock):
    """The route table's last route answers what the filter did not route."""
    for path in ("/v1/chat/completions", "/openai/v1/chat/completions", "/"):
        r = httpx.post(bare_envoy.url + path, json=chat_body("hi"), headers=bearer(ACME_KEY), timeout=30)
        assert r.status_code == 503, (path, r.text)
        assert r.headers["content-type"] == "application/json"
        assert r.json() == hosts.FILTER_UNAVAILABLE
    assert clean_mock.requests() == []


def test_a_clients_own_x_tollgate_provider_header_reaches_no_provider(envoy, clean_mock):
    """The filter owns the routing header: a client setting it can neither
    skip authentication nor pick the provider."""
    header = {"x-tollgate-provider": "anthropic"}
    for path in ("/v1/chat/completions", "/openai/v1/chat/completions", "/anything"):
        r = httpx.post(envoy.url + path, json=chat_body(unique(EASY_PROMPT)), headers=header, timeout=30)
        assert r.status_code in (401, 404), (path, r.status_code, r.text[:300])
    assert clean_mock.requests() == []
    r = chat(envoy.url, ACME_KEY, chat_body(unique(EASY_PROMPT)), headers=header)
    assert r.status_code == 200, r.text
    [record] = clean_mock.requests()
    assert record["path"] == "/openai/v1/chat/completions", "the client's header chose the provider"
    assert "x-tollgate-provider" not in record["headers"], "the routing header leaked to the provider"


def test_healthz_says_which_host_answers(envoy):
    r = httpx.get(envoy.url + "/healthz", timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ok" and r.json()["host"] == "envoy", r.text


def test_an_unknown_key_is_refused_by_the_filter_not_by_the_route_table(envoy, clean_mock):
    r = chat(envoy.url, "tg-e2e-nobody", chat_body(unique(EASY_PROMPT)))
    assert_error(r, 401, "invalid_api_key")
    assert clean_mock.requests() == []
