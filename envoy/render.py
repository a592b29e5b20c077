"""Turn every Envoy config shipped in envoy/ into a bootstrap that
`envoy --mode validate` can check with the real filter (scripts/test does,
through scripts/lib/envoy.sh `validate_envoy_configs`).

- envoy.yaml, envoy-local.yaml: as they are, with the filter's path
  (`vm_config.code.local.filename`) replaced by --wasm. Validation loads the
  .wasm and runs its on_configure on the plugin configuration, so a config
  the filter would refuse fails here.
- istio/envoyfilter.yaml: its HTTP_FILTER patch (the filter exactly as
  Istio inserts it), LISTENER and BOOTSTRAP patches, applied to a gateway
  listener whose route table is istio/providers.yaml's VirtualService, with
  the clusters Istio would build from its ServiceEntries.
- istio/wasmplugin.yaml: the Wasm filter Istio generates from a WasmPlugin
  (pluginConfig serialised to JSON as the plugin configuration, vmConfig.env
  as environment variables, failStrategy as the failure policy).
- istio/local-replies.yaml: its NETWORK_FILTER patch (Envoy's own errors as
  JSON) merged into the gateway's HTTP connection manager in both Istio
  renderings above.

It also checks that the Istio files agree: every cluster a plugin
configuration names (providers.*.cluster, state.redis.cluster) is one
providers.yaml defines or names as a Service; and that envoy.yaml,
envoy-local.yaml and istio/local-replies.yaml carry the same
`local_reply_config` (tests/e2e reads envoy-local.yaml's).

Writes one JSON file per config into --out and prints `name<TAB>path` lines.
Run with the project's .venv (PyYAML): .venv/bin/python envoy/render.py --wasm X --out DIR
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
WASM_FILTER = "envoy.filters.http.wasm"
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}
FAIL_STRATEGY = {"FAIL_CLOSE": "FAIL_CLOSED", "FAIL_OPEN": "FAIL_OPEN", "FAIL_RELOAD": "FAIL_RELOAD"}


class Problem(Exception):
    pass


def set_wasm_path(node, wasm: Path) -> int:
    """Replace every vm_config.code.local.filename under `node`; how many."""
    count = 0
    if isinstance(node, dict):
        local = node.get("vm_config", {}).get("code", {}).get("local") if isinstance(node.get("vm_config"), dict) else None
        if isinstance(local, dict) and "filename" in local:
            local["filename"] = str(wasm)
            count += 1
        for value in node.values():
            count += set_wasm_path(value, wasm)
    elif isinstance(node, list):
        for value in node:
            count += set_wasm_path(value, wasm)
    return count


def plugin_configs(node) -> list[dict]:
    """Every tollgate plugin configuration (the StringValue) under `node`, parsed."""
    found = []
    if isinstance(node, dict):
        if node.get("@type") == WASM_TYPE:
            value = node["config"]["configuration"]["value"]
            try:
                found.append(json.loads(value))
            except json.JSONDecodeError as e:
                raise Problem(f"a plugin configuration is not JSON: {e}") from e
        for value in node.values():
            found += plugin_configs(value)
    elif isinstance(node, list):
        for value in node:
            found += plugin_configs(value)
    return found


def static_cluster(name: str, port: int = 443) -> dict:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": port}}}}]}],
        },
    }


def merge(base, patch):
    """Envoy's proto MERGE, near enough for these patches: maps merge, lists append."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list):
        return base + copy.deepcopy(patch)
    return copy.deepcopy(patch)


# ---------------------------------------------------------------- Istio


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def one(docs: list[dict], kind: str, path: Path) -> dict:
    found = [d for d in docs if d.get("kind") == kind]
    if len(found) != 1:
        raise Problem(f"{path}: expected one {kind}, found {len(found)}")
    return found[0]


def istio_clusters(providers: list[dict]) -> dict[str, int]:
    """Cluster name → port for every ServiceEntry host and port in providers.yaml."""
    clusters = {}
    for d in providers:
        if d.get("kind") == "ServiceEntry":
            for host in d["spec"]["hosts"]:
                for port in d["spec"]["ports"]:
                    clusters[f"outbound|{port['number']}||{host}"] = port["number"]
    return clusters


def istio_routes(providers: list[dict]) -> list[dict]:
    """providers.yaml's VirtualService as Envoy routes."""
    vs = one(providers, "VirtualService", HERE / "istio" / "providers.yaml")
    routes = []
    for http in vs["spec"]["http"]:
        if "directResponse" in http:
            route = {"match": {"prefix": "/"}, "direct_response": {
                "status": http["directResponse"]["status"],
                "body": {"inline_string": http["directResponse"]["body"]["string"]}}}
            response_set = http.get("headers", {}).get("response", {}).get("set", {})
            if response_set:
                route["response_headers_to_add"] = [
                    {"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
                    for k, v in response_set.items()]
            routes.append(route)
            continue
        (match,) = http["match"]
        headers = [{"name": name, "string_match": dict(m)} for name, m in match["headers"].items()]
        (dest,) = http["route"]
        cluster = f"outbound|{dest['destination']['port']['number']}||{dest['destination']['host']}"
        route = {"match": {"prefix": "/", "headers": headers},
                 "route": {"cluster": cluster, "timeout": http.get("timeout", "15s")}}
        removed = http.get("headers", {}).get("request", {}).get("remove")
        if removed:
            route["request_headers_to_remove"] = removed
        routes.append(route)
    return routes


def gateway_bootstrap(wasm_filter: dict, providers: list[dict], plugin: dict) -> dict:
    """An ingress-gateway-like bootstrap around `wasm_filter`: providers.yaml's
    routes and clusters, plus the clusters the plugin config names."""
    routes = istio_routes(providers)
    known = istio_clusters(providers)
    clusters = {name: static_cluster(name, port) for name, port in known.items()}
    named = [r["cluster"] for r in plugin.get("providers", {}).values() if "cluster" in r]
    redis = plugin.get("state", {}).get("redis", {}).get("cluster")
    for name in named:
        if name not in known:
            raise Problem(f"the plugin configuration names cluster {name!r}, which istio/providers.yaml does not define")
    for r in routes:
        if "route" in r and r["route"]["cluster"] not in known:
            raise Problem(f"the VirtualService routes to {r['route']['cluster']!r}, which no ServiceEntry defines")
    if redis:
        # webdis is an ordinary Service of the mesh (not in providers.yaml).
        if not re.fullmatch(r"outbound\|\d+\|\|[a-z0-9.-]+", redis):
            raise Problem(f"state.redis.cluster {redis!r} is not an Istio cluster name (outbound|<port>||<host>)")
        clusters[redis] = static_cluster(redis, int(redis.split("|")[1]))
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}},
        "static_resources": {
            "listeners": [{
                "name": "0.0.0.0_8080",
                "address": {"socket_address": {"address": "0.0.0.0", "port_value": 8080}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                    "@type": HCM_TYPE,
                    "stat_prefix": "outbound_0.0.0.0_8080",
                    "route_config": {"name": "http.8080", "virtual_hosts": [
                        {"name": "tollgate.example.com:80", "domains": ["*"], "routes": routes}]},
                    "http_filters": [wasm_filter, ROUTER],
                }}]}],
            }],
            "clusters": list(clusters.values()),
        },
    }


HCM_FILTER = "envoy.filters.network.http_connection_manager"
LOCAL_REPLIES = HERE / "istio" / "local-replies.yaml"


def apply_network_filter_patch(bootstrap: dict, p: dict, path: Path) -> dict:
    """An EnvoyFilter NETWORK_FILTER MERGE into the HTTP connection manager."""
    if p["patch"]["operation"] != "MERGE" or p["match"]["listener"]["filterChain"]["filter"]["name"] != HCM_FILTER:
        raise Problem(f"{path}: render.py only knows NETWORK_FILTER MERGE patches of {HCM_FILTER}")
    typed = p["patch"]["value"]["typed_config"]
    if typed.get("@type") != HCM_TYPE:
        raise Problem(f"{path}: the NETWORK_FILTER patch's typed_config must be an {HCM_TYPE}")
    listener = bootstrap["static_resources"]["listeners"][0]
    (chain,) = listener["filter_chains"]
    chain["filters"] = [merge(f, {"typed_config": typed}) if f["name"] == HCM_FILTER else f for f in chain["filters"]]
    return bootstrap


def apply_local_replies(bootstrap: dict) -> dict:
    """istio/local-replies.yaml's patches, which go with either Istio way of loading the filter."""
    ef = one(load_all(LOCAL_REPLIES), "EnvoyFilter", LOCAL_REPLIES)
    for p in ef["spec"]["configPatches"]:
        if p["applyTo"] != "NETWORK_FILTER":
            raise Problem(f"{LOCAL_REPLIES}: expected only NETWORK_FILTER patches, found {p['applyTo']}")
        bootstrap = apply_network_filter_patch(bootstrap, p, LOCAL_REPLIES)
    return bootstrap


def local_reply_config_of(path: Path) -> dict:
    """The `local_reply_config` a shipped file gives the HTTP connection manager."""
    docs = load_all(path)
    found = []
    for d in docs:
        if d.get("kind") == "EnvoyFilter":
            for p in d["spec"]["configPatches"]:
                if p["applyTo"] == "NETWORK_FILTER":
                    found.append(p["patch"]["value"]["typed_config"].get("local_reply_config"))
        elif "static_resources" in d:
            for listener in d["static_resources"]["listeners"]:
                for chain in listener["filter_chains"]:
                    found += [f["typed_config"].get("local_reply_config") for f in chain["filters"]
                              if f["name"] == HCM_FILTER]
    found = [c for c in found if c is not None]
    if len(found) != 1:
        raise Problem(f"{path}: expected one local_reply_config on the HTTP connection manager, found {len(found)}")
    return found[0]


def check_local_replies_agree() -> None:
    """Every shipped config answers Envoy's own errors the same way."""
    files = [HERE / "envoy-local.yaml", HERE / "envoy.yaml", LOCAL_REPLIES]
    want = local_reply_config_of(files[0])
    for path in files[1:]:
        if local_reply_config_of(path) != want:
            raise Problem(f"{path.relative_to(HERE.parent)}: its local_reply_config differs from envoy/envoy-local.yaml's; keep them identical")


def render_envoyfilter(path: Path, providers: list[dict], wasm: Path) -> dict:
    ef = one(load_all(path), "EnvoyFilter", path)
    patches = ef["spec"]["configPatches"]
    filters = [p for p in patches if p["applyTo"] == "HTTP_FILTER"]
    if len(filters) != 1 or filters[0]["patch"]["operation"] != "INSERT_BEFORE":
        raise Problem(f"{path}: expected one HTTP_FILTER INSERT_BEFORE patch")
    if filters[0]["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] != "envoy.filters.http.router":
        raise Problem(f"{path}: the filter must go before the router")
    wasm_filter = copy.deepcopy(filters[0]["patch"]["value"])
    if not wasm_filter["typed_config"]["config"].get("allow_on_headers_stop_iteration"):
        raise Problem(f"{path}: the filter needs allow_on_headers_stop_iteration: true")
    (plugin,) = plugin_configs(wasm_filter)
    bootstrap = gateway_bootstrap(wasm_filter, providers, plugin)
    for p in patches:
        if p["applyTo"] == "LISTENER":
            listener = bootstrap["static_resources"]["listeners"][0]
            bootstrap["static_resources"]["listeners"][0] = merge(listener, p["patch"]["value"])
        elif p["applyTo"] == "BOOTSTRAP":
            bootstrap = merge(bootstrap, p["patch"]["value"])
        elif p["applyTo"] == "NETWORK_FILTER":
            bootstrap = apply_network_filter_patch(bootstrap, p, path)
        elif p["applyTo"] != "HTTP_FILTER":
            raise Problem(f"{path}: render.py does not know how to apply a {p['applyTo']} patch")
    if set_wasm_path(bootstrap, wasm) != 1:
        raise Problem(f"{path}: expected one vm_config.code.local.filename")
    return apply_local_replies(bootstrap)


def render_wasmplugin(path: Path, providers: list[dict], wasm: Path) -> dict:
    wp = one(load_all(path), "WasmPlugin", path)
    spec = wp["spec"]
    name = spec.get("pluginName") or wp["metadata"]["name"]
    env = {}
    host_keys = []
    for var in spec.get("vmConfig", {}).get("env", []):
        if var.get("valueFrom", "INLINE") == "HOST":
            host_keys.append(var["name"])
        else:
            env[var["name"]] = var.get("value", "")
    environment = {}
    if env:
        environment["key_values"] = env
    if host_keys:
        environment["host_env_keys"] = host_keys
    plugin = spec["pluginConfig"]
    wasm_filter = {
        "name": f"{wp['metadata']['namespace']}.{wp['metadata']['name']}",
        "typed_config": {
            "@type": WASM_TYPE,
            "config": {
                "name": f"{wp['metadata']['namespace']}.{wp['metadata']['name']}",
                "root_id": name,
                # What Istio cannot set: without it the filter cannot hold the
                # headers while it reads the body (see the file's caveat). The
                # validation checks the plugin configuration, which needs it
                # no more than Istio's output has it.
                "failure_policy": FAIL_STRATEGY[spec.get("failStrategy", "FAIL_CLOSE")],
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                  "value": json.dumps(plugin)},
                "vm_config": {
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(wasm)}},
                    "environment_variables": environment,
                },
            },
        },
    }
    return apply_local_replies(gateway_bootstrap(wasm_filter, providers, plugin))


# ---------------------------------------------------------------- main


def render_plain(path: Path, wasm: Path) -> dict:
    config = yaml.safe_load(path.read_text())
    if set_wasm_path(config, wasm) != 1:
        raise Problem(f"{path}: expected one vm_config.code.local.filename")
    plugin_configs(config)
    return config


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wasm", type=Path, required=True, help="the filter's .wasm")
    ap.add_argument("--out", type=Path, required=True, help="where to write the rendered bootstraps")
    args = ap.parse_args()
    wasm = args.wasm.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    providers = load_all(HERE / "istio" / "providers.yaml")
    rendered = {
        "envoy/envoy.yaml": lambda: render_plain(HERE / "envoy.yaml", wasm),
        "envoy/envoy-local.yaml": lambda: render_plain(HERE / "envoy-local.yaml", wasm),
        "envoy/istio/envoyfilter.yaml (+ providers.yaml, local-replies.yaml)": lambda: render_envoyfilter(
            HERE / "istio" / "envoyfilter.yaml", providers, wasm),
        "envoy/istio/wasmplugin.yaml (+ providers.yaml, local-replies.yaml)": lambda: render_wasmplugin(
            HERE / "istio" / "wasmplugin.yaml", providers, wasm),
    }
    shipped = sorted(str(p.relative_to(HERE.parent)) for p in HERE.rglob("*.yaml"))
    covered = {"envoy/envoy.yaml", "envoy/envoy-local.yaml", "envoy/istio/envoyfilter.yaml",
               "envoy/istio/wasmplugin.yaml", "envoy/istio/providers.yaml", "envoy/istio/local-replies.yaml"}
    unknown = [p for p in shipped if p not in covered]
    if unknown:
        print(f"render.py: no rendering for {', '.join(unknown)}: add it here", file=sys.stderr)
        return 1
    try:
        check_local_replies_agree()
    except (Problem, KeyError) as e:
        print(f"render.py: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    for name, render in rendered.items():
        try:
            bootstrap = render()
        except (Problem, KeyError, ValueError) as e:
            print(f"render.py: {name}: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        out = args.out / (re.sub(r"[^A-Za-z0-9]+", "-", name.split(" ")[0]).strip("-") + ".json")
        out.write_text(json.dumps(bootstrap, indent=1))
        print(f"{name}\t{out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
