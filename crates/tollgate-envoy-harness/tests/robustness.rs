//! Garbage in never traps the filter. A trap kills the worker's VM, and
//! with FAIL_CLOSED every later request on that worker gets 503, so each
//! loop here collects every input that trapped and reports them together.

// Helpers outside #[test] fns fail the test by panicking too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::fmt::Write as _;
use tollgate_envoy_harness::{Action, Host, Stream};

/// tests/vectors/bad_input.json: the tenant it is written for, and its cases.
fn vectors() -> (Value, Vec<Value>) {
    let v = read_json("tests/vectors/bad_input.json");
    let based_on = v["tenant"]["based_on"].as_str().unwrap().trim_start_matches("examples/").to_owned();
    let tenant = like_example(&based_on, "errors", v["tenant"]["changes"].clone());
    (tenant, v["cases"].as_array().unwrap().clone())
}

struct Outcome {
    trap: Option<String>,
    stream: Stream,
}

/// Sends one bad_input.json case the way the e2e suite does.
fn send_vector(host: &Host, case: &Value) -> Outcome {
    let path = case["path"].as_str().unwrap();
    let method = case["method"].as_str().unwrap_or("POST");
    let body = vector_body(&case["body"]);
    let chunked = case["chunked"].as_bool().unwrap_or(false);
    let key = key_for("errors");
    let mut headers: Vec<(String, Vec<u8>)> = vec![
        (":method".into(), method.into()),
        (":scheme".into(), b"http".to_vec()),
        (":path".into(), path.into()),
        (":authority".into(), b"gw".to_vec()),
        ("content-type".into(), b"application/json".to_vec()),
    ];
    if !chunked {
        headers.push(("content-length".into(), body.len().to_string().into_bytes()));
    }
    let anthropic = path.starts_with("/v1/messages");
    let secret = match case["auth"].as_str().unwrap_or("tenant") {
        "tenant" => Some(key.clone()),
        "unknown" => Some("tg-harness-nobody-key".to_owned()),
        _ => None,
    };
    if let Some(secret) = secret {
        if anthropic {
            headers.push(("x-api-key".into(), secret.into_bytes()));
        } else {
            headers.push(("authorization".into(), format!("Bearer {secret}").into_bytes()));
        }
    }
    if let Some(extra) = case["headers"].as_object() {
        for (name, value) in extra {
            headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
            headers.push((name.clone(), value.as_str().unwrap().as_bytes().to_vec()));
        }
    }
    let header_refs: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
    let mut stream = host.stream();
    let chunk = if chunked { 64 * 1024 } else { body.len() };
    let mut trap = stream.try_send_request_chunked(&header_refs, &body, chunk).err();
    if trap.is_none() {
        trap = stream.try_finish().err();
    }
    Outcome { trap, stream }
}

#[test]
fn no_bad_input_vector_traps_the_filter() {
    let (tenant, cases) = vectors();
    let mut host = host_for(std::slice::from_ref(&tenant));
    let mut traps = String::new();
    for case in &cases {
        let outcome = send_vector(&host, case);
        if let Some(trap) = outcome.trap {
            writeln!(traps, "- {}: {trap}", case["name"]).unwrap();
            host = host_for(std::slice::from_ref(&tenant));
        }
    }
    assert!(traps.is_empty(), "bad_input.json cases that trapped the filter:\n{traps}");
}

#[test]
fn every_bad_input_vector_gets_its_expected_error_and_nothing_goes_upstream() {
    let (tenant, cases) = vectors();
    let host = host_for(&[tenant]);
    let mut wrong = String::new();
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let outcome = send_vector(&host, case);
        if let Some(trap) = outcome.trap {
            panic!("{name} trapped (see no_bad_input_vector_traps_the_filter): {trap}");
        }
        let s = &outcome.stream;
        if s.upstream_request().is_some() {
            writeln!(wrong, "- {name}: went upstream").unwrap();
        }
        let Some(reply) = s.local_replies().first().cloned() else {
            writeln!(wrong, "- {name}: no local reply").unwrap();
            continue;
        };
        let expect = &case["expect"];
        let body: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        let status_ok = u64::from(reply.status) == expect["status"].as_u64().unwrap();
        let code_ok = body["error"]["code"] == expect["code"];
        let param_ok = expect.get("param").is_none_or(|p| body["error"]["param"] == *p);
        if !(status_ok && code_ok && param_ok) {
            writeln!(wrong, "- {name}: expected {expect}, got {} {}", reply.status, reply.body_str()).unwrap();
        }
    }
    // Idle long enough for the VM to hand its lease back, which it does
    // only with no request holding any of it: then nothing is held at all.
    host.advance(std::time::Duration::from_secs(10));
    host.tick();
    let budget = host.shared_data_str("tollgate:budget:errors").unwrap_or_default();
    assert!(!budget.contains("\"id\""), "bad requests left holds: {budget}");
    assert!(wrong.is_empty(), "bad_input.json cases answered wrongly:\n{wrong}");
}

#[test]
fn a_request_header_value_that_is_not_utf8_never_traps_the_filter() {
    // HTTP allows obs-text (bytes 0x80-0xFF) in field values and Envoy
    // passes them on; proxy-wasm 0.2.5's `get_http_request_header(s)`
    // unwraps their conversion to a String.
    let body = serde_json::to_vec(&simple_chat("hi")).unwrap();
    let len = body.len().to_string();
    let key = format!("Bearer {}", key_for("acme"));
    let mut traps = String::new();
    for (name, value) in [
        ("authorization", &b"Bearer caf\xe9"[..]),
        ("x-api-key", &b"\xff\xfe"[..]),
        ("cache-control", &b"no-\xe9store"[..]),
        ("user-agent", &b"agent/\xc3"[..]),
    ] {
        let host = host_for(&[routed_tenant("acme", json!({}))]);
        let mut headers: Vec<(&str, &[u8])> = vec![
            (":method", b"POST"),
            (":path", b"/v1/chat/completions"),
            (":authority", b"gw"),
            ("content-length", len.as_bytes()),
        ];
        // A Bearer key wins over `x-api-key` (core `auth::extract_api_key`),
        // so the key under test must be the only one presented.
        if name != "authorization" && name != "x-api-key" {
            headers.push(("authorization", key.as_bytes()));
        }
        headers.push((name, value));
        let mut s = host.stream();
        match s.try_send_request_chunked(&headers, &body, body.len()) {
            Err(trap) => writeln!(traps, "- {name}: {}: {}", show(value), first_lines(&trap)).unwrap(),
            Ok(_) if name == "authorization" || name == "x-api-key" => {
                let reply = s.local_reply().expect("a key that is not UTF-8 is refused");
                assert_eq!(reply.status, 401, "{name}: {}", reply.body_str());
            }
            Ok(_) => {}
        }
    }
    assert!(traps.is_empty(), "request header values (not UTF-8) that trapped the filter:\n{traps}");
}

#[test]
fn a_response_header_value_that_is_not_utf8_never_traps_the_filter() {
    let mut traps = String::new();
    for (name, value) in [("content-type", &b"application/json; charset=\xe9"[..]), (":status", &b"2\xff0"[..])] {
        let host = host_for(&[routed_tenant("acme", json!({}))]);
        let mut s = host.stream();
        assert_eq!(send_chat(&mut s, &key_for("acme"), &simple_chat("hi")), Action::Continue);
        let mut headers: Vec<(&str, &[u8])> = vec![(name, value)];
        if name != ":status" {
            headers.push((":status", b"200"));
        }
        let body = openai_completion("gpt-4o-mini", "hi", 5, 1);
        let result = s
            .try_response_headers(&headers, false)
            .and_then(|_| s.try_response_body(&body, true))
            .and_then(|_| s.try_finish());
        if let Err(trap) = result {
            writeln!(traps, "- {name}: {}: {}", show(value), first_lines(&trap)).unwrap();
        }
    }
    assert!(traps.is_empty(), "response header values (not UTF-8) that trapped the filter:\n{traps}");
}

/// Bodies that are almost right.
fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut b = base.to_vec();
    match rng.below(7) {
        0 => b.truncate(rng.below(b.len() + 1)),
        1 => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(b.len().max(1));
                if let Some(x) = b.get_mut(i) {
                    *x = rng.next() as u8;
                }
            }
        }
        2 => {
            let i = rng.below(b.len() + 1);
            let n = 1 + rng.below(16);
            let junk = rng.bytes(n);
            b.splice(i..i, junk);
        }
        3 => {
            let n = rng.below(300);
            b = rng.bytes(n);
        }
        4 => {
            let depth = 1 + rng.below(5000);
            b = format!("{{\"model\":\"tollgate/auto\",\"messages\":{}", "[".repeat(depth)).into_bytes();
        }
        5 => b = mutate_field(rng, base),
        _ => {}
    }
    b
}

/// One field of a valid body set to an odd value.
fn mutate_field(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let weird = rng.pick(&[
        "1e999",
        "-0",
        "18446744073709551616",
        "\"\\ud800\"",
        "\"\\u0000\"",
        "{}",
        "[]",
        "null",
        "true",
        "\"tollgate/\"",
        "\"tollgate/auto\\u0000\"",
        "0.0000001",
        "-1",
        "\"\u{202e}\"",
        "1",
        "2",
        "0",
        "\"x\"",
    ]);
    let field = rng.pick(&[
        "model",
        "messages",
        "max_tokens",
        "temperature",
        "n",
        "stream",
        "tools",
        "stop",
        "stream_options",
        "system",
        "metadata",
        "user",
        "max_completion_tokens",
        "top_p",
    ]);
    let mut v: Value = serde_json::from_slice(base).unwrap_or(json!({}));
    v[*field] = serde_json::from_str(weird).unwrap_or(Value::Null);
    serde_json::to_vec(&v).unwrap()
}

/// A header value that Envoy would pass on: printable, perhaps not ASCII
/// (bytes that are not UTF-8 have their own tests above).
fn random_header_value(rng: &mut Rng, good: &str) -> Vec<u8> {
    const CHARS: &[char] =
        &['a', 'Z', '0', ' ', '"', ';', ',', '=', '/', '\\', '%', '\t', 'é', '€', '😀', '\u{202e}', '\u{feff}'];
    match rng.below(6) {
        0 => (0..rng.below(40)).map(|_| *rng.pick(CHARS)).collect::<String>().into_bytes(),
        1 => Vec::new(),
        2 => format!("{good}{}", "x".repeat(rng.below(3000))).into_bytes(),
        3 => format!("{good}{}", rng.pick(CHARS)).into_bytes(),
        _ => good.as_bytes().to_vec(),
    }
}

/// A trap's message without its wasm backtrace.
fn first_lines(trap: &str) -> String {
    trap.lines().take(2).collect::<Vec<_>>().join(" ")
}

/// Printable, bounded: for failure messages.
fn show(bytes: &[u8]) -> String {
    let mut s = bytes.escape_ascii().to_string();
    if s.len() > 160 {
        s.truncate(160);
        s.push_str("...");
    }
    s
}

#[test]
fn random_garbage_never_traps_the_filter() {
    let tenants = [
        routed_tenant(
            "fuzz",
            json!({"budgets": {"limits": [{"name": "daily", "window": "day", "usd": 5.0}]},
                                     "cache": {"doorkeeper": false}, "limits": {"max_body_bytes": 65536}}),
        ),
        like_example("tenant-globex.json", "globex", json!({})),
    ];
    let mut host = host_for(&tenants);
    let mut rng = Rng(0x746f_6c6c_6761_7465);
    let bases: Vec<Vec<u8>> = [
        json!({"model": "tollgate/auto", "messages": [{"role": "user", "content": "hi"}]}),
        json!({"model": "tollgate/auto", "stream": true, "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}),
        json!({"model": "tollgate/premium", "temperature": 0, "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]}),
        json!({"model": "gpt-4.1-mini", "n": 2, "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}], "messages": [{"role": "user", "content": "x"}]}),
        json!({"model": "tollgate/auto", "max_tokens": 30, "system": "s", "messages": [{"role": "user", "content": "hi"}]}),
        json!({"request_id": "req_1", "resolved": true}),
    ]
    .iter()
    .map(|v| serde_json::to_vec(v).unwrap())
    .collect();
    let paths = [
        "/v1/chat/completions",
        "/v1/messages",
        "/v1/models",
        "/v1/usage",
        "/v1/feedback",
        "/healthz",
        "/v1/chat/completions?x=1",
        "/",
        "",
        "/v1/../v1/messages",
        "//v1/chat/completions",
        "/V1/CHAT/COMPLETIONS",
    ];
    let methods = ["POST", "GET", "PUT", "DELETE", "OPTIONS", "", "post"];
    let mut traps = String::new();
    let (mut forwarded, mut answered) = (0, 0);
    for i in 0..1000 {
        let tenant = if rng.below(2) == 0 { "fuzz" } else { "globex" };
        // Half the requests are well-formed (perhaps one odd field), so the
        // response side and the callouts get exercised; the rest anything.
        let valid = rng.below(2) == 0;
        let (method, path, body) = if valid {
            let anthropic = rng.below(4) == 0;
            let base = if anthropic { bases[4].clone() } else { bases[rng.below(4)].clone() };
            let body = if rng.below(3) == 0 { mutate_field(&mut rng, &base) } else { base };
            ("POST", if anthropic { "/v1/messages" } else { "/v1/chat/completions" }, body)
        } else {
            let base = bases[rng.below(bases.len())].clone();
            (*rng.pick(&methods), *rng.pick(&paths), mutate(&mut rng, &base))
        };
        let key = key_for(tenant);
        let auth_good = if path.starts_with("/v1/messages") && rng.below(2) == 0 {
            ("x-api-key", key.clone())
        } else {
            ("authorization", format!("Bearer {key}"))
        };
        let auth = if valid { auth_good.1.clone().into_bytes() } else { random_header_value(&mut rng, &auth_good.1) };
        let length = match rng.below(if valid { 3 } else { 6 }) {
            0 => None,
            1 | 2 => Some(body.len().to_string().into_bytes()),
            3 => Some(rng.pick(&["-1", "abc", "99999999999999999999", " 12 ", "0", "1,2"]).as_bytes().to_vec()),
            _ => Some(body.len().to_string().into_bytes()),
        };
        let mut headers: Vec<(String, Vec<u8>)> = vec![
            (":method".into(), method.into()),
            (":path".into(), path.into()),
            (":authority".into(), b"gw".to_vec()),
            (auth_good.0.into(), auth),
        ];
        if let Some(l) = length {
            headers.push(("content-length".into(), l));
        }
        for (name, good) in [
            ("cache-control", "no-cache"),
            ("content-type", "application/json"),
            ("anthropic-version", "2023-06-01"),
            ("x-tollgate-provider", "openai"),
        ] {
            if rng.below(3) == 0 {
                headers.push((name.into(), random_header_value(&mut rng, good)));
            }
        }
        let refs: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
        let mut s = host.stream();
        let chunk = 1 + rng.below(body.len().max(1) + 64);
        let describe = || {
            let h: Vec<String> = headers.iter().map(|(k, v)| format!("{k}: {}", show(v))).collect();
            format!("headers [{}] body ({} bytes) {}", h.join(", "), body.len(), show(&body))
        };
        let result = s.try_send_request_chunked(&refs, &body, chunk).and_then(|_| {
            // The upstream's answer, when the request went there.
            if s.upstream_request().is_some() {
                forwarded += 1;
                if rng.below(5) != 0 {
                    answered += 1;
                    respond_randomly(&mut rng, &mut s)?;
                }
            }
            // Callouts (fallbacks): answered, failed or left to the stream's end.
            for call in s.http_calls() {
                match rng.below(3) {
                    0 => host.fail_http_call(call.token),
                    1 => host.respond_http_call(
                        call.token,
                        *rng.pick(&[200, 429, 500, 503]),
                        &[("content-type", "application/json")],
                        &mutate(&mut rng, &openai_completion("gpt-4.1-nano", "x", 3, 1)),
                    ),
                    _ => {}
                }
            }
            s.try_finish()
        });
        if let Err(trap) = result {
            writeln!(traps, "- iteration {i}: {}\n  input: {}", first_lines(&trap), describe()).unwrap();
            host = host_for(&tenants);
        }
    }
    assert!(traps.is_empty(), "inputs that trapped the filter:\n{traps}");
    eprintln!("fuzz: {forwarded} forwarded, {answered} answered");
    // The loop must reach the response side, not only local refusals.
    assert!(forwarded >= 100 && answered >= 80, "only {forwarded} forwarded, {answered} answered of 1000");
    // Idle: every lease goes back unless a request still holds part of it.
    host.advance(std::time::Duration::from_secs(10));
    host.tick();
    for tenant in ["fuzz", "globex"] {
        let budget = host.shared_data_str(&format!("tollgate:budget:{tenant}")).unwrap_or_default();
        let holds = serde_json::from_str::<Value>(&budget).ok().and_then(|b| b["outstanding"].as_array().map(Vec::len));
        assert!(holds.unwrap_or(0) == 0, "holds outlived their requests for {tenant}: {budget}");
    }
}

fn respond_randomly(rng: &mut Rng, s: &mut Stream) -> Result<(), String> {
    let status = *rng.pick(&["200", "200", "200", "400", "429", "500", "abc", "", "99999"]);
    let sse = rng.below(2) == 0;
    let content_type = if sse { "text/event-stream" } else { "application/json" };
    let mut wire: Vec<u8> = if sse {
        openai_sse("gpt-4o-mini", &["a", "b"], 5, 2).concat()
    } else {
        openai_completion("gpt-4o-mini", "a", 5, 2)
    };
    wire = mutate(rng, &wire);
    if s.response_headers(&[(":status", status), ("content-type", content_type)], wire.is_empty()) == Action::Pause
        && s.local_reply().is_some()
    {
        return Ok(());
    }
    let pieces: Vec<Vec<u8>> = wire.chunks(1 + rng.below(64)).map(<[u8]>::to_vec).collect();
    for (i, piece) in pieces.iter().enumerate() {
        // A client abort: the stream ends mid-answer.
        if rng.below(50) == 0 {
            return Ok(());
        }
        s.try_response_body(piece, i + 1 == pieces.len())?;
    }
    Ok(())
}

#[test]
fn a_missing_filter_build_fails_with_the_command_that_builds_it() {
    let missing = std::path::Path::new("/nonexistent/tollgate_envoy.wasm");
    let err = std::panic::catch_unwind(|| Host::with_wasm(missing, "{}", &[])).expect_err("must panic");
    let message = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("/nonexistent/tollgate_envoy.wasm"), "{message}");
    assert!(message.contains("bash scripts/build-envoy"), "{message}");
}
