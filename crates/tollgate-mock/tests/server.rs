//! End-to-end tests: a real server on an ephemeral port, spoken to over TCP.
// Tests may unwrap: a failed unwrap is a failed test, which is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{SendRequest, handshake};
use hyper::header::HeaderMap;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tollgate_mock::{MockOptions, serve};

// ---------------------------------------------------------------------------
// A tiny HTTP client on hyper's connection API.

async fn start() -> SocketAddr {
    start_with(MockOptions::default()).await
}

async fn start_with(options: MockOptions) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, options));
    address
}

/// One keep-alive connection; the task driving it is returned so a test can
/// kill the connection (a client disconnect).
async fn connect(address: SocketAddr) -> (SendRequest<Full<Bytes>>, JoinHandle<()>) {
    let stream = TcpStream::connect(address).await.unwrap();
    let (sender, connection) = handshake(TokioIo::new(stream)).await.unwrap();
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, driver)
}

struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).unwrap()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|value| value.to_str().unwrap())
    }
}

fn build(method: Method, path: &str, headers: &[(&str, &str)], body: &str) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(path).header("host", "mock.test");
    if !body.is_empty() {
        builder = builder.header("content-type", "application/json");
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

async fn send_on(sender: &mut SendRequest<Full<Bytes>>, request: Request<Full<Bytes>>) -> Reply {
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply { status: parts.status.as_u16(), headers: parts.headers, body }
}

async fn send(address: SocketAddr, method: Method, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let (mut sender, _driver) = connect(address).await;
    send_on(&mut sender, build(method, path, headers, body)).await
}

async fn post(address: SocketAddr, path: &str, body: &Value) -> Reply {
    send(address, Method::POST, path, &[], &body.to_string()).await
}

async fn post_with(address: SocketAddr, path: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
    send(address, Method::POST, path, headers, &body.to_string()).await
}

async fn recorded(address: SocketAddr) -> Vec<Value> {
    let reply = send(address, Method::GET, "/__mock/requests", &[], "").await;
    assert_eq!(reply.status, 200);
    reply.json().as_array().unwrap().clone()
}

/// Polls the request log until `check` holds for the record with `seq`.
async fn wait_for_record(address: SocketAddr, seq: u64, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let records = recorded(address).await;
        if let Some(record) = records.iter().find(|r| r["seq"] == seq)
            && check(record)
        {
            return record.clone();
        }
        assert!(Instant::now() < deadline, "record {seq} never matched: {records:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Parses an SSE body into (event name, data) pairs.
fn sse(body: &str) -> Vec<(Option<String>, String)> {
    assert!(body.ends_with("\n\n"), "SSE body must end with a blank line: {body:?}");
    body.split("\n\n")
        .filter(|block| !block.is_empty())
        .map(|block| {
            let mut event = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(name) = line.strip_prefix("event: ") {
                    event = Some(name.to_owned());
                } else if let Some(payload) = line.strip_prefix("data: ") {
                    data = Some(payload.to_owned());
                } else {
                    panic!("unexpected SSE line {line:?}");
                }
            }
            (event, data.expect("every event has data"))
        })
        .collect()
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// The prompt estimate documented in answer.rs.
fn expected_prompt_tokens(texts: &[&str]) -> u64 {
    texts.iter().map(|text| (text.chars().count() as u64).div_ceil(4) + 3).sum::<u64>() + 3
}

fn openai_request(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": [{"type": "text", "text": text}]}
    ]})
}

fn anthropic_request(model: &str, text: &str) -> Value {
    json!({"model": model, "max_tokens": 1024, "system": "You are terse.", "messages": [
        {"role": "user", "content": text}
    ]})
}

// ---------------------------------------------------------------------------
// OpenAI

#[tokio::test]
async fn openai_completion_has_the_real_shape_and_consistent_usage() {
    let address = start().await;
    let request = openai_request("gpt-4o", "What is the capital of France?");
    let reply = post(address, "/openai/v1/chat/completions", &request).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert!(reply.header("x-request-id").unwrap().starts_with("req_"));
    let body = reply.json();
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].is_u64());
    assert_eq!(body["model"], "gpt-4o");
    assert!(body["system_fingerprint"].is_string());
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["finish_reason"], "stop");
    assert!(choice["logprobs"].is_null());
    let content = choice["message"]["content"].as_str().unwrap();
    assert!(content.starts_with("[mock:gpt-4o] "), "{content}");
    assert!(words(content) > 5);

    let usage = &body["usage"];
    assert_eq!(usage["completion_tokens"], words(content));
    let prompt =
        expected_prompt_tokens(&["You are terse.", "first question", "first answer", "What is the capital of France?"]);
    assert_eq!(usage["prompt_tokens"], prompt);
    assert_eq!(usage["total_tokens"], prompt + words(content));

    // Deterministic: the same request gives the same bytes, including id.
    let again = post(address, "/v1/chat/completions", &request).await;
    assert_eq!(again.body, reply.body);
    // A different last user message gives a different answer.
    let other = post(address, "/v1/chat/completions", &openai_request("gpt-4o", "Something else")).await;
    assert_ne!(other.json()["choices"][0]["message"]["content"], choice["message"]["content"]);
}

#[tokio::test]
async fn openai_stream_sends_role_content_finish_usage_and_done() {
    let address = start().await;
    let mut request = openai_request("gpt-4o-mini", "Stream me");
    let plain = post(address, "/v1/chat/completions", &request).await.json();
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let reply = post(address, "/v1/chat/completions", &request).await;
    assert_eq!(reply.status, 200);
    assert!(reply.header("content-type").unwrap().starts_with("text/event-stream"));
    assert_eq!(reply.header("transfer-encoding"), Some("chunked"));

    let events = sse(&reply.text());
    assert!(events.iter().all(|(name, _)| name.is_none()), "OpenAI events have no names");
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|(_, data)| serde_json::from_str(data).unwrap()).collect();
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], chunks[0]["id"]);
        assert_eq!(chunk["model"], "gpt-4o-mini");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let (usage_chunk, rest) = chunks.split_last().unwrap();
    let (finish_chunk, content_chunks) = rest.split_last().unwrap();
    assert_eq!(finish_chunk["choices"][0]["finish_reason"], "stop");
    assert_eq!(usage_chunk["choices"], json!([]));
    let content: String =
        content_chunks.iter().filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, plain["choices"][0]["message"]["content"].as_str().unwrap());
    let content_deltas = content_chunks[1..].len() as u64;
    assert!(content_deltas > 5, "several deltas, one per word");
    assert_eq!(usage_chunk["usage"]["completion_tokens"], content_deltas);
    assert_eq!(usage_chunk["usage"], plain["usage"]);
    // Without include_usage there is no usage chunk.
    request["stream_options"] = json!({"include_usage": false});
    let events = sse(&post(address, "/v1/chat/completions", &request).await.text());
    let last_chunk: Value = serde_json::from_str(&events[events.len() - 2].1).unwrap();
    assert_eq!(last_chunk["choices"][0]["finish_reason"], "stop");
    assert!(last_chunk.get("usage").is_none());
}

#[tokio::test]
async fn openai_max_tokens_truncates_with_length() {
    let address = start().await;
    let mut request = openai_request("gpt-4o", "Tell me a long story");
    request["max_tokens"] = json!(3);
    let body = post(address, "/v1/chat/completions", &request).await.json();
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 3);
    assert_eq!(words(body["choices"][0]["message"]["content"].as_str().unwrap()), 3);
    // max_completion_tokens takes precedence over the legacy max_tokens.
    request["max_completion_tokens"] = json!(2);
    let body = post(address, "/v1/chat/completions", &request).await.json();
    assert_eq!(body["usage"]["completion_tokens"], 2);
    // Streamed: the finish chunk says "length" too.
    request["stream"] = json!(true);
    let events = sse(&post(address, "/v1/chat/completions", &request).await.text());
    let finish: Value = serde_json::from_str(&events[events.len() - 2].1).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    assert_eq!(events.len(), 1 + 2 + 1 + 1, "role, 2 words, finish, [DONE]");
}

#[tokio::test]
async fn openai_rejects_bad_requests_with_openai_errors() {
    let address = start().await;
    let reply = send(address, Method::POST, "/v1/chat/completions", &[], "{not json").await;
    assert_eq!(reply.status, 400);
    let error = &reply.json()["error"];
    assert_eq!(error["type"], "invalid_request_error");
    assert!(error["message"].is_string());
    assert!(error.get("param").is_some() && error.get("code").is_some());

    let reply = post(address, "/v1/chat/completions", &json!({"model": "gpt-4o"})).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["param"], "messages");
    let reply = post(address, "/v1/chat/completions", &json!({"model": "gpt-4o", "messages": []})).await;
    assert_eq!(reply.status, 400);
    let reply = post(address, "/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "x"}]})).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["param"], "model");

    let reply = send(address, Method::GET, "/v1/chat/completions", &[], "").await;
    assert_eq!(reply.status, 405);
    let reply = send(address, Method::GET, "/v1/models", &[], "").await;
    assert_eq!(reply.status, 404);
}

// ---------------------------------------------------------------------------
// OpenAI embeddings

/// The little-endian float32 values of a base64 `embedding`, as the OpenAI
/// SDKs decode it.
fn decode_base64_floats(text: &str) -> Vec<f32> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits: u32 = 0;
    let mut count = 0;
    let mut bytes = Vec::new();
    for c in text.bytes().take_while(|c| *c != b'=') {
        bits = (bits << 6) | ALPHABET.iter().position(|a| *a == c).unwrap() as u32;
        count += 6;
        if count >= 8 {
            count -= 8;
            bytes.push((bits >> count) as u8);
        }
    }
    assert_eq!(bytes.len() % 4, 0, "{text}");
    bytes.chunks(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn float_vector(value: &Value) -> Vec<f32> {
    value.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

#[tokio::test]
async fn embeddings_have_the_real_shape_and_are_deterministic() {
    let address = start().await;
    let request = json!({"model": "text-embedding-3-small", "input": ["abcd", "efghijkl", "mnopqrstu"]});
    let reply = post(address, "/openai/v1/embeddings", &request).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert!(reply.header("x-request-id").unwrap().starts_with("req_"));
    let body = reply.json();
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "text-embedding-3-small");
    // ceil(chars / 4) per item: 1 + 2 + 3.
    assert_eq!(body["usage"], json!({"prompt_tokens": 6, "total_tokens": 6}));
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    for (index, entry) in data.iter().enumerate() {
        assert_eq!(entry["object"], "embedding");
        assert_eq!(entry["index"], index);
        let vector = float_vector(&entry["embedding"]);
        assert_eq!(vector.len(), 8, "8 values unless `dimensions` says otherwise");
        let length: f32 = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((length - 1.0).abs() < 1e-4, "unit length: {length}");
    }
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);

    // Same input, same bytes; an item's vector does not depend on its batch.
    assert_eq!(post(address, "/v1/embeddings", &request).await.body, reply.body);
    let single =
        post(address, "/v1/embeddings", &json!({"model": "text-embedding-3-small", "input": "efghijkl"})).await;
    let single = single.json();
    assert_eq!(single["data"][0]["embedding"], data[1]["embedding"]);
    assert_eq!(single["usage"]["prompt_tokens"], 2);
    // Another model embeds the same text differently.
    let other = post(address, "/v1/embeddings", &json!({"model": "text-embedding-3-large", "input": "efghijkl"})).await;
    assert_ne!(other.json()["data"][0]["embedding"], data[1]["embedding"]);
}

#[tokio::test]
async fn embeddings_come_as_base64_float32_when_asked_and_in_any_dimension() {
    let address = start().await;
    let mut request = json!({"model": "text-embedding-3-small", "input": ["one", "two"]});
    let floats = post(address, "/v1/embeddings", &request).await.json();
    request["encoding_format"] = json!("base64");
    let packed = post(address, "/v1/embeddings", &request).await.json();
    assert_eq!(packed["usage"], floats["usage"]);
    for index in 0..2 {
        let text = packed["data"][index]["embedding"].as_str().unwrap();
        assert_eq!(decode_base64_floats(text), float_vector(&floats["data"][index]["embedding"]));
    }
    request["encoding_format"] = json!("float");
    request["dimensions"] = json!(3);
    let short = post(address, "/v1/embeddings", &request).await.json();
    assert_eq!(short["data"][0]["embedding"].as_array().unwrap().len(), 3);
    request["dimensions"] = json!(1536);
    let long = post(address, "/v1/embeddings", &request).await.json();
    assert_eq!(long["data"][1]["embedding"].as_array().unwrap().len(), 1536);
}

#[tokio::test]
async fn embeddings_count_token_id_arrays_by_length() {
    let address = start().await;
    let ids = json!({"model": "text-embedding-ada-002", "input": [9906, 1917, 0, 12]});
    let body = post(address, "/v1/embeddings", &ids).await.json();
    assert_eq!(body["data"].as_array().unwrap().len(), 1, "one array of ids is one item");
    assert_eq!(body["usage"]["prompt_tokens"], 4);
    let nested = json!({"model": "text-embedding-ada-002", "input": [[9906, 1917, 0, 12], [1], [2, 3]]});
    let body = post(address, "/v1/embeddings", &nested).await.json();
    assert_eq!(body["data"].as_array().unwrap().len(), 3);
    assert_eq!(body["usage"], json!({"prompt_tokens": 7, "total_tokens": 7}));
}

#[tokio::test]
async fn embeddings_reject_bad_requests_with_openai_errors() {
    let address = start().await;
    let reply = send(address, Method::POST, "/v1/embeddings", &[], "{not json").await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
    let cases = [
        (json!({"model": "text-embedding-3-small"}), "input"),
        (json!({"input": "x"}), "model"),
        (json!({"model": "text-embedding-3-small", "input": ""}), "input"),
        (json!({"model": "text-embedding-3-small", "input": []}), "input"),
        (json!({"model": "text-embedding-3-small", "input": 42}), "input"),
        (json!({"model": "text-embedding-3-small", "input": ["a", 1]}), "input"),
        (json!({"model": "text-embedding-3-small", "input": "x", "encoding_format": "int8"}), "encoding_format"),
        (json!({"model": "text-embedding-3-small", "input": "x", "dimensions": 0}), "dimensions"),
    ];
    let refused = cases.len();
    for (body, param) in cases {
        let reply = post(address, "/v1/embeddings", &body).await;
        assert_eq!(reply.status, 400, "{body}");
        let error = &reply.json()["error"];
        assert_eq!(error["type"], "invalid_request_error", "{body}");
        assert_eq!(error["param"], param, "{body}");
        assert!(error["message"].is_string());
    }
    assert_eq!(send(address, Method::GET, "/v1/embeddings", &[], "").await.status, 405);
    // Every one of them is recorded, with the status it got.
    let records = recorded(address).await;
    assert_eq!(records.len(), 1 + refused, "the 405 is not recorded");
    assert!(records.iter().all(|r| r["status"] == 400 && r["api"] == "openai" && r["stream"] == false));
}

#[tokio::test]
async fn embeddings_take_the_same_faults_as_chat() {
    let address = start().await;
    let request = json!({"model": "text-embedding-3-small", "input": ["x", "y"]});
    let rule = json!({"model": "text-embedding-3-small", "fault": "status:503", "times": 1});
    assert_eq!(post(address, "/__mock/faults", &rule).await.status, 200);
    let reply = post(address, "/v1/embeddings", &request).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["error"]["type"], "server_error");
    // The rule is used up; another model was never affected.
    assert_eq!(post(address, "/v1/embeddings", &request).await.status, 200);

    let reply = post_with(address, "/v1/embeddings", &[("x-mock-fault", "status:429")], &request).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(reply.json()["error"]["code"], "rate_limit_exceeded");

    let started = Instant::now();
    let reply = post_with(address, "/v1/embeddings", &[("x-mock-fault", "slow:300")], &request).await;
    assert_eq!(reply.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    // drop_after on an embeddings response cuts its JSON body in half.
    let (mut sender, _driver) = connect(address).await;
    let response = sender
        .send_request(build(Method::POST, "/v1/embeddings", &[("x-mock-fault", "drop_after:0")], &request.to_string()))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut failed = false;
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed, "the client sees an incomplete body");

    let records = recorded(address).await;
    let faults: Vec<&Value> = records.iter().map(|r| &r["faults"]).collect();
    assert_eq!(
        faults,
        [&json!(["status:503"]), &json!([]), &json!(["status:429"]), &json!(["slow:300"]), &json!(["drop_after:0"])]
    );
    let first = &records[0];
    assert_eq!(first["path"], "/v1/embeddings");
    assert_eq!(first["model"], "text-embedding-3-small");
    assert_eq!(first["body"], request);
    assert_eq!(first["status"], 503);
}

// ---------------------------------------------------------------------------
// OpenAI Responses

fn responses_request(model: &str, text: &str) -> Value {
    json!({"model": model, "instructions": "You are terse.", "input": [
        {"role": "user", "content": "first question"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "first answer"}]},
        {"role": "user", "content": [{"type": "input_text", "text": text}]}
    ]})
}

/// The `data` objects of a Responses API stream, checking that each event's
/// name is its `type` and that `sequence_number` counts from 0.
fn response_events(body: &str) -> Vec<Value> {
    let events: Vec<Value> = sse(body)
        .into_iter()
        .map(|(name, data)| {
            let event: Value = serde_json::from_str(&data).unwrap();
            assert_eq!(name.as_deref(), event["type"].as_str(), "{data}");
            event
        })
        .collect();
    for (index, event) in events.iter().enumerate() {
        assert_eq!(event["sequence_number"], index);
    }
    events
}

#[tokio::test]
async fn responses_have_the_real_shape_and_the_chat_answer_and_usage() {
    let address = start().await;
    let request = responses_request("gpt-4o", "What is the capital of France?");
    let reply = post(address, "/openai/v1/responses", &request).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert!(reply.header("x-request-id").unwrap().starts_with("req_"));
    let body = reply.json();
    let id = body["id"].as_str().unwrap();
    assert!(id.starts_with("resp_"), "{id}");
    assert_eq!(body["object"], "response");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["model"], "gpt-4o");
    assert_eq!(body["instructions"], "You are terse.");
    assert!(body["created_at"].is_u64() && body["error"].is_null() && body["incomplete_details"].is_null());
    assert_eq!((body["tools"].clone(), body["tool_choice"].clone()), (json!([]), json!("auto")));
    let [item] = body["output"].as_array().unwrap().as_slice() else { panic!("one output item: {body}") };
    assert_eq!(item["type"], "message");
    assert_eq!(item["role"], "assistant");
    assert_eq!(item["status"], "completed");
    assert!(item["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(item["content"][0]["type"], "output_text");
    assert_eq!(item["content"][0]["annotations"], json!([]));
    let text = item["content"][0]["text"].as_str().unwrap();

    // The chat endpoint's answer for the same conversation, and its usage.
    let chat = post(
        address,
        "/v1/chat/completions",
        &json!({"model": "gpt-4o", "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": "What is the capital of France?"}
        ]}),
    )
    .await
    .json();
    assert_eq!(text, chat["choices"][0]["message"]["content"].as_str().unwrap());
    let prompt =
        expected_prompt_tokens(&["You are terse.", "first question", "first answer", "What is the capital of France?"]);
    assert_eq!(
        body["usage"],
        json!({
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": words(text),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + words(text)
        })
    );
    // Deterministic; a string input is one user message.
    assert_eq!(post(address, "/v1/responses", &request).await.body, reply.body);
    let plain = post(address, "/v1/responses", &json!({"model": "gpt-4o", "input": "Hi"})).await.json();
    assert_eq!(plain["usage"]["input_tokens"], expected_prompt_tokens(&["Hi"]));

    let records = recorded(address).await;
    assert_eq!(records[0]["path"], "/openai/v1/responses");
    assert_eq!((records[0]["api"].clone(), records[0]["model"].clone()), (json!("openai"), json!("gpt-4o")));
    assert_eq!(records[0]["stream"], false);
    assert_eq!(records[0]["body"], request);
}

#[tokio::test]
async fn responses_stream_the_named_event_sequence_ending_with_the_whole_response() {
    let address = start().await;
    let mut request = responses_request("gpt-4o-mini", "Stream me");
    let plain = post(address, "/v1/responses", &request).await.json();
    request["stream"] = json!(true);
    let reply = post(address, "/v1/responses", &request).await;
    assert_eq!(reply.status, 200);
    assert!(reply.header("content-type").unwrap().starts_with("text/event-stream"));
    assert_eq!(reply.header("transfer-encoding"), Some("chunked"));
    let text = reply.text();
    assert!(!text.contains("[DONE]"));
    let events = response_events(&text);
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let deltas: Vec<&str> = events.iter().filter_map(|e| e["delta"].as_str()).collect();
    assert!(deltas.len() > 5, "one delta per word");
    let mut expected =
        vec!["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"];
    expected.extend(std::iter::repeat_n("response.output_text.delta", deltas.len()));
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(kinds, expected);
    let content = plain["output"][0]["content"][0]["text"].as_str().unwrap();
    assert_eq!(deltas.concat(), content);
    let id = events[0]["response"]["id"].as_str().unwrap();
    assert!(events.iter().filter_map(|e| e.get("response")).all(|r| r["id"] == id));
    assert_eq!(events[0]["response"]["status"], "in_progress");
    assert_eq!(events[0]["response"]["output"], json!([]));
    let last = &events.last().unwrap()["response"];
    assert_eq!(last["status"], "completed");
    assert_eq!(last["usage"], plain["usage"]);
    assert_eq!(last["output"][0], events[events.len() - 2]["item"]);
    assert_eq!(events[events.len() - 4]["text"], content);
    assert_eq!(recorded(address).await[1]["stream"], true);
}

#[tokio::test]
async fn responses_call_the_first_function_tool_until_its_output_comes_back() {
    let address = start().await;
    let tools = json!([{"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": true}]);
    let ask = json!({"role": "user", "content": "Weather in Paris?"});
    let first =
        post(address, "/v1/responses", &json!({"model": "gpt-4o", "input": [ask], "tools": tools})).await.json();
    assert_eq!(first["status"], "completed");
    assert_eq!(first["tools"], tools);
    let call = &first["output"][0];
    assert_eq!(call["type"], "function_call");
    assert_eq!((call["name"].clone(), call["arguments"].clone()), (json!("get_weather"), json!("{}")));
    assert!(call["id"].as_str().unwrap().starts_with("fc_"));
    assert!(call["call_id"].as_str().unwrap().starts_with("call_"));
    // ceil(11 / 4) + ceil(2 / 4)
    assert_eq!(first["usage"]["output_tokens"], 4);

    let output = json!({"type": "function_call_output", "call_id": call["call_id"], "output": "Sunny, 21 C"});
    let second = json!({"model": "gpt-4o", "input": [ask, call, output], "tools": tools});
    let answer = post(address, "/v1/responses", &second).await.json();
    assert_eq!(answer["output"][0]["type"], "message");
    assert!(answer["output"][0]["content"][0]["text"].as_str().unwrap().starts_with("[mock:gpt-4o] "));

    let mut streamed = json!({"model": "gpt-4o", "input": [ask], "tools": tools, "stream": true});
    let events = response_events(&post(address, "/v1/responses", &streamed).await.text());
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    assert_eq!(events[3]["delta"], "{}");
    assert_eq!(events[6]["response"]["usage"], first["usage"]);
    streamed["tool_choice"] = json!("none");
    let events = response_events(&post(address, "/v1/responses", &streamed).await.text());
    assert_eq!(events[2]["item"]["type"], "message", "tool_choice none answers with text");
}

#[tokio::test]
async fn responses_cut_at_max_output_tokens_are_incomplete() {
    let address = start().await;
    let mut request = responses_request("gpt-4o", "Tell me a long story");
    request["max_output_tokens"] = json!(3);
    let body = post(address, "/v1/responses", &request).await.json();
    assert_eq!(body["status"], "incomplete");
    assert_eq!(body["incomplete_details"], json!({"reason": "max_output_tokens"}));
    assert_eq!(body["max_output_tokens"], 3);
    assert_eq!(body["output"][0]["status"], "incomplete");
    assert_eq!(words(body["output"][0]["content"][0]["text"].as_str().unwrap()), 3);
    assert_eq!(body["usage"]["output_tokens"], 3);
    request["stream"] = json!(true);
    let events = response_events(&post(address, "/v1/responses", &request).await.text());
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.incomplete");
    assert_eq!(last["response"]["incomplete_details"], json!({"reason": "max_output_tokens"}));
    assert_eq!(last["response"]["usage"], body["usage"]);
    assert_eq!(events.iter().filter(|e| e["type"] == "response.output_text.delta").count(), 3);
    // An answer:length fault spoils it the same way.
    request["stream"] = json!(false);
    request["max_output_tokens"] = Value::Null;
    let spoiled = post_with(address, "/v1/responses", &[("x-mock-fault", "answer:length")], &request).await.json();
    assert_eq!(spoiled["status"], "incomplete");
}

#[tokio::test]
async fn responses_reject_bad_requests_with_openai_errors() {
    let address = start().await;
    let cases = [
        (json!({"model": "gpt-4o"}), "input", "missing_required_parameter"),
        (json!({"input": "x"}), "model", "missing_required_parameter"),
        (json!({"model": "gpt-4o", "input": 42}), "input", "invalid_type"),
        (json!({"model": "gpt-4o", "input": []}), "input", "empty_array"),
    ];
    for (body, param, code) in cases {
        let reply = post(address, "/v1/responses", &body).await;
        assert_eq!(reply.status, 400, "{body}");
        let error = &reply.json()["error"];
        assert_eq!(error["type"], "invalid_request_error", "{body}");
        assert_eq!((error["param"].as_str(), error["code"].as_str()), (Some(param), Some(code)), "{body}");
    }
    let reply = post(address, "/v1/responses", &json!({"model": "gpt-4o", "input": [{"role": "user"}]})).await;
    assert_eq!((reply.status, reply.json()["error"]["param"].clone()), (400, json!("input")));
    assert_eq!(send(address, Method::GET, "/v1/responses", &[], "").await.status, 405);
}

#[tokio::test]
async fn responses_take_the_same_faults_as_chat() {
    let address = start().await;
    let request = json!({"model": "gpt-4o", "input": "x"});
    let rule = json!({"model": "gpt-4o", "fault": "status:503", "times": 1});
    assert_eq!(post(address, "/__mock/faults", &rule).await.status, 200);
    let reply = post(address, "/v1/responses", &request).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["error"]["type"], "server_error");
    assert_eq!(post(address, "/v1/responses", &request).await.status, 200);
    let reply = post_with(address, "/v1/responses", &[("x-mock-fault", "status:429")], &request).await;
    assert_eq!((reply.status, reply.header("retry-after")), (429, Some("1")));

    // drop_after:4 on a stream: created, in_progress, item added, part added, then the cut.
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let body = streamed.to_string();
    let mut stream = TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /v1/responses HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\nx-mock-fault: drop_after:4\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received)).await.unwrap().ok();
    let received = String::from_utf8(received).unwrap();
    assert_eq!(received.matches("event: ").count(), 4, "{received}");
    assert!(received.contains("event: response.content_part.added"));
    assert!(!received.ends_with("0\r\n\r\n"), "no terminating chunk");

    // chunk_delay spaces the events out.
    let mut short = streamed.clone();
    short["max_output_tokens"] = json!(2);
    let started = Instant::now();
    let reply = post_with(address, "/v1/responses", &[("x-mock-fault", "chunk_delay:30")], &short).await;
    // created, in_progress, item added, part added, 2 deltas, text done, part done, item done, incomplete.
    assert_eq!(response_events(&reply.text()).len(), 10);
    assert!(started.elapsed() >= Duration::from_millis(9 * 30));

    let records = recorded(address).await;
    let faults: Vec<&Value> = records.iter().map(|r| &r["faults"]).collect();
    assert_eq!(
        faults,
        [
            &json!(["status:503"]),
            &json!([]),
            &json!(["status:429"]),
            &json!(["drop_after:4"]),
            &json!(["chunk_delay:30"])
        ]
    );
    assert_eq!(records[3]["stream"], true);
    let record = wait_for_record(address, 4, |_| true).await;
    assert_eq!((record["completed"].clone(), record["client_aborted"].clone()), (json!(false), json!(false)));
}

// ---------------------------------------------------------------------------
// Anthropic

#[tokio::test]
async fn anthropic_message_has_the_real_shape_and_consistent_usage() {
    let address = start().await;
    let request = anthropic_request("claude-3-5-haiku-latest", "Why is the sky blue?");
    let reply = post(address, "/anthropic/v1/messages", &request).await;
    assert_eq!(reply.status, 200);
    assert!(reply.header("request-id").unwrap().starts_with("req_"));
    let body = reply.json();
    assert!(body["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["model"], "claude-3-5-haiku-latest");
    assert_eq!(body["stop_reason"], "end_turn");
    assert!(body["stop_sequence"].is_null());
    assert_eq!(body["content"].as_array().unwrap().len(), 1);
    assert_eq!(body["content"][0]["type"], "text");
    let text = body["content"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("[mock:claude-3-5-haiku-latest] "));
    assert_eq!(body["usage"]["output_tokens"], words(text));
    assert_eq!(body["usage"]["input_tokens"], expected_prompt_tokens(&["You are terse.", "Why is the sky blue?"]));
    assert_eq!(post(address, "/v1/messages", &request).await.body, reply.body);
}

#[tokio::test]
async fn anthropic_stream_sends_the_event_sequence() {
    let address = start().await;
    let mut request = anthropic_request("claude-sonnet-4", "Stream me");
    let plain = post(address, "/v1/messages", &request).await.json();
    request["stream"] = json!(true);
    let reply = post(address, "/v1/messages", &request).await;
    assert!(reply.header("content-type").unwrap().starts_with("text/event-stream"));
    let events = sse(&reply.text());
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_deref().unwrap()).collect();
    let data: Vec<Value> = events.iter().map(|(_, data)| serde_json::from_str(data).unwrap()).collect();
    for (name, data) in names.iter().zip(&data) {
        assert_eq!(data["type"], *name, "event name matches data.type");
    }
    let deltas = names.iter().filter(|name| **name == "content_block_delta").count();
    assert!(deltas > 5);
    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(std::iter::repeat_n("content_block_delta", deltas));
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, expected);

    let start = &data[0]["message"];
    // The id hashes the request bytes, which differ by `"stream": true`.
    assert!(start["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(start["content"], json!([]));
    assert_eq!(start["usage"]["input_tokens"], plain["usage"]["input_tokens"]);
    let text: String = data
        .iter()
        .filter(|event| event["type"] == "content_block_delta")
        .map(|event| {
            assert_eq!(event["delta"]["type"], "text_delta");
            event["delta"]["text"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(text, plain["content"][0]["text"].as_str().unwrap());
    let message_delta = &data[data.len() - 2];
    assert_eq!(message_delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(message_delta["usage"]["output_tokens"], deltas as u64);
    assert_eq!(message_delta["usage"]["output_tokens"], plain["usage"]["output_tokens"]);
}

#[tokio::test]
async fn anthropic_max_tokens_truncates_with_max_tokens_stop() {
    let address = start().await;
    let mut request = anthropic_request("claude", "Tell me a long story");
    request["max_tokens"] = json!(4);
    let body = post(address, "/v1/messages", &request).await.json();
    assert_eq!(body["stop_reason"], "max_tokens");
    assert_eq!(body["usage"]["output_tokens"], 4);
    assert_eq!(words(body["content"][0]["text"].as_str().unwrap()), 4);
    request["stream"] = json!(true);
    let events = sse(&post(address, "/v1/messages", &request).await.text());
    let message_delta: Value = serde_json::from_str(&events[events.len() - 2].1).unwrap();
    assert_eq!(message_delta["delta"]["stop_reason"], "max_tokens");
    assert_eq!(message_delta["usage"]["output_tokens"], 4);
}

#[tokio::test]
async fn anthropic_rejects_bad_requests_with_anthropic_errors() {
    let address = start().await;
    for body in ["{", r#"{"model": "claude"}"#, r#"{"model": "claude", "messages": "hi"}"#] {
        let reply = send(address, Method::POST, "/v1/messages", &[], body).await;
        assert_eq!(reply.status, 400, "{body}");
        let error = reply.json();
        assert_eq!(error["type"], "error");
        assert_eq!(error["error"]["type"], "invalid_request_error");
        assert!(error["error"]["message"].is_string());
    }
}

// ---------------------------------------------------------------------------
// Tools, as the real chat and messages APIs play them

const CITY_ARGUMENTS: &str = r#"{"city":"mock"}"#;

fn city_schema() -> Value {
    json!({"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}}, "required": ["city"]})
}

fn openai_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather.", "parameters": city_schema()}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
    ])
}

fn anthropic_tools() -> Value {
    json!([
        {"name": "get_weather", "description": "Weather.", "input_schema": city_schema()},
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}
    ])
}

/// What a call costs: ceil(len(name) / 4) + ceil(len(arguments) / 4).
fn call_tokens(name: &str, arguments: &str) -> u64 {
    (name.len() as u64).div_ceil(4) + (arguments.len() as u64).div_ceil(4)
}

#[tokio::test]
async fn openai_tools_get_a_call_of_the_first_tool_until_its_result_comes_back() {
    let address = start().await;
    let ask = json!({"role": "user", "content": "Weather in Paris?"});
    let request = json!({"model": "gpt-4o", "messages": [ask], "tools": openai_tools()});
    let body = post(address, "/v1/chat/completions", &request).await.json();
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let message = &choice["message"];
    assert!(message["content"].is_null(), "{message}");
    let [call] = message["tool_calls"].as_array().unwrap().as_slice() else { panic!("one call: {message}") };
    let id = call["id"].as_str().unwrap();
    assert!(id.starts_with("call_"), "{id}");
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"], json!({"name": "get_weather", "arguments": CITY_ARGUMENTS}));
    let prompt = expected_prompt_tokens(&["Weather in Paris?"]);
    let output = call_tokens("get_weather", CITY_ARGUMENTS);
    assert_eq!(
        (body["usage"]["prompt_tokens"].clone(), body["usage"]["completion_tokens"].clone()),
        (json!(prompt), json!(output))
    );
    assert_eq!(body["usage"]["total_tokens"], prompt + output);

    // The tool's result comes back: a text answer, the call counted in the prompt.
    let result = json!({"role": "tool", "tool_call_id": id, "content": "Sunny, 21 C"});
    let follow_up = json!({"model": "gpt-4o", "messages": [ask, message, result], "tools": openai_tools()});
    let reply = post(address, "/v1/chat/completions", &follow_up).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer = reply.json();
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    let text = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.starts_with("[mock:gpt-4o] "), "{text}");
    assert!(answer["choices"][0]["message"].get("tool_calls").is_none());
    let call_text = format!("get_weather{CITY_ARGUMENTS}");
    assert_eq!(
        answer["usage"]["prompt_tokens"],
        expected_prompt_tokens(&["Weather in Paris?", &call_text, "Sunny, 21 C"])
    );
    // Same text as without any tools: the answer follows the last user message.
    let plain = post(address, "/v1/chat/completions", &json!({"model": "gpt-4o", "messages": [ask]})).await.json();
    assert_eq!(answer["choices"][0]["message"]["content"], plain["choices"][0]["message"]["content"]);

    // tool_choice: none answers with text, a named tool is the one called,
    // required calls the first.
    let with_choice =
        |choice: Value| json!({"model": "gpt-4o", "messages": [ask], "tools": openai_tools(), "tool_choice": choice});
    let none = post(address, "/v1/chat/completions", &with_choice(json!("none"))).await.json();
    assert_eq!(none["choices"][0]["finish_reason"], "stop");
    assert!(none["choices"][0]["message"]["content"].is_string());
    let named = with_choice(json!({"type": "function", "function": {"name": "get_time"}}));
    let named = post(address, "/v1/chat/completions", &named).await.json();
    assert_eq!(
        named["choices"][0]["message"]["tool_calls"][0]["function"],
        json!({"name": "get_time", "arguments": "{}"})
    );
    let required = post(address, "/v1/chat/completions", &with_choice(json!("required"))).await.json();
    assert_eq!(required["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "get_weather");
    // A cap smaller than the call cuts it off.
    let mut tight = request.clone();
    tight["max_completion_tokens"] = json!(2);
    let cut = post(address, "/v1/chat/completions", &tight).await.json();
    assert_eq!(cut["choices"][0]["finish_reason"], "length");
    assert_eq!(cut["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], "");
    assert_eq!(cut["usage"]["completion_tokens"], 2);
    // An answer fault makes it text all the same.
    let spoiled =
        post_with(address, "/v1/chat/completions", &[("x-mock-fault", "answer:refusal")], &request).await.json();
    assert_eq!(spoiled["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn openai_streams_a_tool_call_as_the_real_api_does() {
    let address = start().await;
    let mut request = json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": openai_tools()
    });
    let plain = post(address, "/v1/chat/completions", &request).await.json();
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let events = sse(&post(address, "/v1/chat/completions", &request).await.text());
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|(_, data)| serde_json::from_str(data).unwrap()).collect();
    let (usage_chunk, rest) = chunks.split_last().unwrap();
    let (finish, calls) = rest.split_last().unwrap();
    let first = &calls[0]["choices"][0]["delta"];
    assert_eq!(first["role"], "assistant");
    assert!(first["content"].is_null());
    // Ids come from the request's bytes, so the stream's differ from the plain answer's.
    let stream_id = calls[0]["id"].as_str().unwrap();
    let call_id = format!("call_{}", stream_id.strip_prefix("chatcmpl-").unwrap());
    assert_eq!(
        first["tool_calls"],
        json!([{"index": 0, "id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": ""}}])
    );
    let fragments: Vec<&str> = calls[1..]
        .iter()
        .map(|chunk| {
            let delta = &chunk["choices"][0]["delta"]["tool_calls"][0];
            assert_eq!(delta["index"], 0);
            assert!(delta.get("id").is_none() && delta["function"].get("name").is_none(), "{delta}");
            delta["function"]["arguments"].as_str().unwrap()
        })
        .collect();
    assert!(fragments.len() >= 3, "the arguments come in several fragments: {fragments:?}");
    assert_eq!(fragments.concat(), CITY_ARGUMENTS);
    assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"], plain["usage"]);
    assert!(chunks.iter().all(|chunk| chunk["id"] == stream_id));
}

/// Requests the real chat completions API refuses, with the `param` and a
/// piece of the message it answers with.
#[tokio::test]
async fn openai_refuses_malformed_tool_conversations_and_foreign_fields() {
    let address = start().await;
    let user = json!({"role": "user", "content": "Weather?"});
    let assistant_call = json!({"role": "assistant", "content": null, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": CITY_ARGUMENTS}}
    ]});
    let result = |id: &str| json!({"role": "tool", "tool_call_id": id, "content": "Sunny"});
    let with = |messages: Value, extra: Value| {
        let mut body = json!({"model": "gpt-4o", "messages": messages});
        for (key, value) in extra.as_object().unwrap() {
            body[key] = value.clone();
        }
        body
    };
    let cases = [
        (with(json!([user, assistant_call, {"role": "tool", "content": "x"}]), json!({})), "messages", "tool_call_id"),
        (with(json!([user, assistant_call, result("call_2")]), json!({})), "messages", "'call_2' not found"),
        (with(json!([user, result("call_1")]), json!({})), "messages", "preceeding message with 'tool_calls'"),
        (with(json!([user, assistant_call, user]), json!({})), "messages", "did not have response messages: call_1"),
        (with(json!([{"role": "robot", "content": "x"}]), json!({})), "messages", "Invalid value: 'robot'"),
        (with(json!([{"content": "x"}]), json!({})), "messages", "messages[0].role"),
        (with(json!([{"role": "user", "content": null}]), json!({})), "messages", "got null"),
        (
            with(json!([{"role": "user", "content": [{"type": "image", "source": {}}]}]), json!({})),
            "messages",
            "Invalid value: 'image'",
        ),
        (
            with(json!([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x"}]}]), json!({})),
            "messages",
            "Invalid value: 'tool_result'",
        ),
        (
            with(
                json!([user, {"role": "assistant", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": {"city": "x"}}}
                ]}, result("call_1")]),
                json!({}),
            ),
            "messages",
            "function.arguments': expected a string, but got an object",
        ),
        (with(json!([{"role": "assistant", "content": null}]), json!({})), "messages", "got null"),
        (
            with(json!([user]), json!({"tools": [{"type": "function", "function": {"parameters": {}}}]})),
            "tools",
            "tools[0].function.name",
        ),
        (
            with(json!([user]), json!({"tools": [{"name": "get_weather", "input_schema": city_schema()}]})),
            "tools",
            "tools[0].type",
        ),
        (with(json!([user]), json!({"tools": []})), "tools", "empty array"),
        (with(json!([user]), json!({"tool_choice": "auto"})), "tool_choice", "only allowed when 'tools'"),
        (with(json!([user]), json!({"parallel_tool_calls": false})), "parallel_tool_calls", "only allowed"),
        (
            with(json!([user]), json!({"tools": openai_tools(), "tool_choice": {"type": "tool", "name": "x"}})),
            "tool_choice",
            "tool_choice",
        ),
        (
            with(
                json!([user]),
                json!({"tools": openai_tools(), "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            ),
            "tool_choice",
            "nope",
        ),
        (with(json!([user]), json!({"top_k": 5})), "", "Unrecognized request argument supplied: top_k"),
        (with(json!([user]), json!({"system": "Be terse."})), "", "Unrecognized request argument supplied: system"),
        (with(json!([user]), json!({"stop_sequences": ["x"]})), "", "stop_sequences"),
        (with(json!([user]), json!({"stream_options": {"include_usage": true}})), "stream_options", "'stream'"),
        (with(json!([user]), json!({"temperature": 2.5})), "temperature", "Expected a value <= 2"),
    ];
    for (body, param, message) in cases {
        let reply = post(address, "/v1/chat/completions", &body).await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.text());
        let error = &reply.json()["error"];
        assert_eq!(error["type"], "invalid_request_error", "{body}");
        let expected_param = if param.is_empty() { Value::Null } else { json!(param) };
        assert_eq!(error["param"], expected_param, "{body}: {error}");
        assert!(error["message"].as_str().unwrap().contains(message), "{body}: {error}");
    }
    // The same conversation, well formed, is answered: several calls
    // answered by their tool messages in any order, then the user again.
    let two_calls = json!({"role": "assistant", "content": "Checking.", "tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
        {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
    ]});
    let fine = with(
        json!([
            {"role": "developer", "content": [{"type": "text", "text": "Be terse."}]},
            user, two_calls, result("call_b"), result("call_a"),
            {"role": "user", "content": [{"type": "text", "text": "Thanks"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}
        ]),
        json!({"tools": openai_tools(), "tool_choice": "auto", "parallel_tool_calls": true, "temperature": 0,
               "stream": true, "stream_options": {"include_usage": true}, "metadata": {"k": "v"}}),
    );
    let reply = post(address, "/v1/chat/completions", &fine).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[tokio::test]
async fn anthropic_tools_get_a_tool_use_until_its_result_comes_back() {
    let address = start().await;
    let ask = json!({"role": "user", "content": "Weather in Paris?"});
    let request =
        json!({"model": "claude-3-5-haiku-latest", "max_tokens": 256, "messages": [ask], "tools": anthropic_tools()});
    let reply = post(address, "/v1/messages", &request).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["stop_reason"], "tool_use");
    let [block] = body["content"].as_array().unwrap().as_slice() else { panic!("one block: {body}") };
    assert_eq!(block["type"], "tool_use");
    let id = block["id"].as_str().unwrap();
    assert!(id.starts_with("toolu_"), "{id}");
    assert_eq!((block["name"].clone(), block["input"].clone()), (json!("get_weather"), json!({"city": "mock"})));
    let prompt = expected_prompt_tokens(&["Weather in Paris?"]);
    assert_eq!(body["usage"]["input_tokens"], prompt);
    assert_eq!(body["usage"]["output_tokens"], call_tokens("get_weather", CITY_ARGUMENTS));

    // The result comes back (with a remark after it): text, the call and
    // the result counted in the input as the chat endpoint counts them.
    let assistant = json!({"role": "assistant", "content": body["content"]});
    let result = json!({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": id, "content": "Sunny, 21 C"}
    ]});
    let follow_up = json!({"model": "claude-3-5-haiku-latest", "max_tokens": 256, "messages": [ask, assistant, result],
                           "tools": anthropic_tools()});
    let reply = post(address, "/v1/messages", &follow_up).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer = reply.json();
    assert_eq!(answer["stop_reason"], "end_turn");
    assert_eq!(answer["content"][0]["type"], "text");
    assert!(answer["content"][0]["text"].as_str().unwrap().starts_with("[mock:claude-3-5-haiku-latest] "));
    let call_text = format!("get_weather{CITY_ARGUMENTS}");
    assert_eq!(
        answer["usage"]["input_tokens"],
        expected_prompt_tokens(&["Weather in Paris?", &call_text, "Sunny, 21 C"])
    );
    // The same conversation in chat's shape counts the same.
    let chat = json!({"model": "m", "messages": [
        ask,
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": CITY_ARGUMENTS}}
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"}
    ]});
    let chat = post(address, "/v1/chat/completions", &chat).await.json();
    assert_eq!(chat["usage"]["prompt_tokens"], answer["usage"]["input_tokens"]);

    let with_choice = |choice: Value| json!({"model": "c", "max_tokens": 256, "messages": [ask], "tools": anthropic_tools(), "tool_choice": choice});
    let none = post(address, "/v1/messages", &with_choice(json!({"type": "none"}))).await.json();
    assert_eq!((none["stop_reason"].clone(), none["content"][0]["type"].clone()), (json!("end_turn"), json!("text")));
    let named = post(address, "/v1/messages", &with_choice(json!({"type": "tool", "name": "get_time"}))).await.json();
    assert_eq!(
        (named["content"][0]["name"].clone(), named["content"][0]["input"].clone()),
        (json!("get_time"), json!({}))
    );
    let any = with_choice(json!({"type": "any", "disable_parallel_tool_use": true}));
    assert_eq!(post(address, "/v1/messages", &any).await.json()["content"][0]["name"], "get_weather");
    let mut tight = request.clone();
    tight["max_tokens"] = json!(2);
    let cut = post(address, "/v1/messages", &tight).await.json();
    assert_eq!((cut["stop_reason"].clone(), cut["usage"]["output_tokens"].clone()), (json!("max_tokens"), json!(2)));
    assert_eq!(cut["content"][0]["input"], json!({}));
}

#[tokio::test]
async fn anthropic_streams_a_tool_use_as_the_real_api_does() {
    let address = start().await;
    let mut request = json!({"model": "claude-sonnet-4-5", "max_tokens": 256, "system": "Be terse.",
        "messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": anthropic_tools()});
    let plain = post(address, "/v1/messages", &request).await.json();
    request["stream"] = json!(true);
    let events = sse(&post(address, "/v1/messages", &request).await.text());
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_deref().unwrap()).collect();
    let data: Vec<Value> = events.iter().map(|(_, data)| serde_json::from_str(data).unwrap()).collect();
    let deltas = names.iter().filter(|name| **name == "content_block_delta").count();
    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(std::iter::repeat_n("content_block_delta", deltas));
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, expected);
    assert_eq!(data[0]["message"]["content"], json!([]));
    let message_id = data[0]["message"]["id"].as_str().unwrap();
    let tool_use_id = format!("toolu_{}", message_id.strip_prefix("msg_").unwrap());
    assert_eq!(
        data[1]["content_block"],
        json!({"type": "tool_use", "id": tool_use_id, "name": "get_weather", "input": {}})
    );
    let partial: Vec<&str> = data[3..3 + deltas]
        .iter()
        .map(|event| {
            assert_eq!(event["delta"]["type"], "input_json_delta");
            event["delta"]["partial_json"].as_str().unwrap()
        })
        .collect();
    assert_eq!(partial[0], "", "the real API opens with an empty fragment");
    assert!(partial.len() >= 4, "{partial:?}");
    assert_eq!(partial.concat(), CITY_ARGUMENTS);
    let message_delta = &data[data.len() - 2];
    assert_eq!(message_delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(message_delta["usage"]["output_tokens"], plain["usage"]["output_tokens"]);
}

/// Requests the real Messages API refuses, with a piece of its message.
#[tokio::test]
async fn anthropic_refuses_what_the_real_api_refuses() {
    let address = start().await;
    let user = json!({"role": "user", "content": "Weather?"});
    let tool_use = json!({"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "x"}}
    ]});
    let result =
        |id: &str| json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": id, "content": "Sunny"}]});
    let with = |messages: Value, extra: Value| {
        let mut body = json!({"model": "claude", "max_tokens": 100, "messages": messages});
        for (key, value) in extra.as_object().unwrap() {
            if value.is_null() {
                body.as_object_mut().unwrap().remove(key);
            } else {
                body[key] = value.clone();
            }
        }
        body
    };
    let cases = [
        (with(json!([user]), json!({"max_tokens": null})), "max_tokens: Field required"),
        (with(json!([user]), json!({"max_tokens": "100"})), "max_tokens: Input should be a valid integer"),
        (with(json!([user]), json!({"max_tokens": 0})), "greater than or equal to 1"),
        (with(json!([{"role": "system", "content": "Be terse."}, user]), json!({})), "Unexpected role \"system\""),
        (with(json!([{"role": "tool", "content": "x"}]), json!({})), "messages.0.role"),
        (with(json!([user]), json!({"stream_options": {"include_usage": true}})), "stream_options: Extra inputs"),
        (with(json!([user]), json!({"n": 2})), "n: Extra inputs are not permitted"),
        (with(json!([user]), json!({"response_format": {"type": "json_object"}})), "response_format: Extra inputs"),
        (with(json!([user]), json!({"temperature": 1.5})), "temperature: Input should be less than or equal to 1"),
        (with(json!([user]), json!({"top_p": -0.1})), "top_p"),
        (with(json!([user]), json!({"top_k": 1.5})), "top_k"),
        (with(json!([user]), json!({"system": 5})), "system: Input should be a valid string"),
        (with(json!([user]), json!({"system": [{"type": "image"}]})), "system.0.type"),
        (with(json!([user]), json!({"metadata": {"k": "v"}})), "metadata.k: Extra inputs"),
        (with(json!([user]), json!({"stop_sequences": "END"})), "stop_sequences"),
        (
            with(json!([{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]), json!({})),
            "non-empty content",
        ),
        (with(json!([{"role": "user", "content": []}]), json!({})), "non-empty content"),
        (
            with(json!([{"role": "user", "content": [{"type": "text", "text": ""}]}]), json!({})),
            "text content blocks must be non-empty",
        ),
        (with(json!([{"role": "user", "content": [{"type": "text", "text": " "}]}]), json!({})), "non-whitespace"),
        (
            with(
                json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x"}}]}]),
                json!({}),
            ),
            "Input tag 'image_url'",
        ),
        (
            with(json!([{"role": "user", "content": [{"type": "image", "source": {"type": "base64"}}]}]), json!({})),
            "image.source",
        ),
        (with(json!([{"role": "user", "content": [{"type": "image"}]}]), json!({})), "image.source: Field required"),
        (
            with(json!([{"role": "user", "content": [{"type": "text", "text": "x", "annotations": []}]}]), json!({})),
            "text.annotations: Extra",
        ),
        (with(json!([{"role": "user", "content": 5}]), json!({})), "messages.0.content"),
        (with(json!([{"role": "user", "content": "x", "name": "bob"}]), json!({})), "messages.0.name: Extra"),
        (
            with(json!([user, tool_use, result("toolu_2")]), json!({})),
            "unexpected `tool_use_id` found in `tool_result` blocks: toolu_2",
        ),
        (with(json!([user, result("toolu_1")]), json!({})), "unexpected `tool_use_id`"),
        (
            with(json!([user, tool_use, user]), json!({})),
            "`tool_use` ids were found without `tool_result` blocks immediately after: toolu_1",
        ),
        (
            with(
                json!([user, tool_use, {"role": "user", "content": [
                    {"type": "text", "text": "Here:"}, {"type": "tool_result", "tool_use_id": "toolu_1"}
                ]}]),
                json!({}),
            ),
            "tool_result blocks must come first",
        ),
        (
            with(
                json!([user, {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": "{}"}]}, result("toolu_1")]),
                json!({}),
            ),
            "tool_use.input: Input should be a valid dictionary",
        ),
        (
            with(
                json!([user, {"role": "assistant", "content": [{"type": "tool_use", "id": "call.1", "name": "f", "input": {}}]}]),
                json!({}),
            ),
            "tool_use.id: String should match pattern",
        ),
        (
            with(
                json!([{"role": "user", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]}]),
                json!({}),
            ),
            "Input tag 'tool_use'",
        ),
        (
            with(
                json!([user, {"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "x"}]}]),
                json!({}),
            ),
            "Input tag 'tool_result'",
        ),
        (
            with(
                json!([user]),
                json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": city_schema()}}]}),
            ),
            "tools.0",
        ),
        (with(json!([user]), json!({"tools": [{"name": "f"}]})), "tools.0.custom.input_schema: Field required"),
        (
            with(json!([user]), json!({"tools": [{"name": "f", "input_schema": {"type": "string"}}]})),
            "input_schema.type",
        ),
        (
            with(
                json!([user]),
                json!({"tools": [{"name": "f", "parameters": city_schema(), "input_schema": city_schema()}]}),
            ),
            "tools.0.custom.parameters: Extra",
        ),
        (with(json!([user]), json!({"tools": [{"input_schema": city_schema()}]})), "tools.0.custom.name"),
        (
            with(
                json!([user]),
                json!({"tools": [{"name": "f", "input_schema": city_schema()}, {"name": "f", "input_schema": city_schema()}]}),
            ),
            "unique",
        ),
        (
            with(json!([user]), json!({"tools": anthropic_tools(), "tool_choice": "auto"})),
            "tool_choice: Input should be a valid dictionary",
        ),
        (
            with(json!([user]), json!({"tools": anthropic_tools(), "tool_choice": {"type": "required"}})),
            "tool_choice: Input tag 'required'",
        ),
        (
            with(json!([user]), json!({"tools": anthropic_tools(), "tool_choice": {"type": "tool"}})),
            "tool_choice.tool.name",
        ),
        (
            with(json!([user]), json!({"tools": anthropic_tools(), "tool_choice": {"type": "tool", "name": "nope"}})),
            "Tool 'nope' not found",
        ),
        (
            with(
                json!([user]),
                json!({"tools": anthropic_tools(), "tool_choice": {"type": "none", "disable_parallel_tool_use": true}}),
            ),
            "Extra inputs",
        ),
        (
            with(json!([user]), json!({"thinking": {"type": "enabled", "budget_tokens": 100}})),
            "greater than or equal to 1024",
        ),
        (
            with(json!([user]), json!({"thinking": {"type": "enabled", "budget_tokens": 2048}})),
            "`max_tokens` must be greater than `thinking.budget_tokens`",
        ),
        (with(json!([user]), json!({"thinking": {"type": "low"}})), "thinking"),
    ];
    for (body, message) in cases {
        let reply = post(address, "/v1/messages", &body).await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.text());
        let error = reply.json();
        assert_eq!(error["type"], "error", "{body}");
        assert_eq!(error["error"]["type"], "invalid_request_error", "{body}");
        assert!(error["error"]["message"].as_str().unwrap().contains(message), "{body}: {error}");
    }

    // What the real API takes: system blocks, images, documents, thinking,
    // tool results (several, one with blocks, one an error) before any text,
    // consecutive user messages (one turn), a final assistant prefill,
    // server tools, every documented field.
    let fine = with(
        json!([
            {"role": "user", "content": [
                {"type": "text", "text": "Look:", "cache_control": {"type": "ephemeral"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "notes"}, "title": "n"}
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Need both.", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "x"}},
                {"type": "tool_use", "id": "toolu_b", "name": "get_time", "input": {}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_b", "content": [{"type": "text", "text": "noon"}]},
                {"type": "tool_result", "tool_use_id": "toolu_a", "content": "boom", "is_error": true},
                {"type": "text", "text": "Thanks."}
            ]},
            {"role": "user", "content": "And tomorrow?"},
            {"role": "assistant", "content": ""}
        ]),
        json!({
            "max_tokens": 4096, "system": [{"type": "text", "text": "Be terse."}], "metadata": {"user_id": "u-1"},
            "stop_sequences": ["END"], "temperature": 1, "top_p": 0.9, "top_k": 40, "stream": false,
            "tools": [anthropic_tools()[0], anthropic_tools()[1], {"type": "web_search_20250305", "name": "web_search"}],
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": false},
            "thinking": {"type": "enabled", "budget_tokens": 1024}
        }),
    );
    let reply = post(address, "/v1/messages", &fine).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    // The conversation ends with an assistant prefill, not a tool result: a call.
    assert_eq!(reply.json()["stop_reason"], "tool_use");
}

// ---------------------------------------------------------------------------
// Faults

#[tokio::test]
async fn fault_rules_apply_per_model_for_the_given_number_of_times() {
    let address = start().await;
    let rule = json!({"model": "gpt-4o", "fault": "status:429", "times": 2});
    let reply = post(address, "/__mock/faults", &rule).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), json!([{"model": "gpt-4o", "fault": "status:429", "times": 2}]));

    // Another model is unaffected and does not use up the rule.
    assert_eq!(post(address, "/v1/chat/completions", &openai_request("gpt-4o-mini", "x")).await.status, 200);
    for _ in 0..2 {
        let reply = post(address, "/v1/chat/completions", &openai_request("gpt-4o", "x")).await;
        assert_eq!(reply.status, 429);
        assert_eq!(reply.header("retry-after"), Some("1"));
        let error = &reply.json()["error"];
        assert_eq!(error["code"], "rate_limit_exceeded");
        assert!(error["message"].is_string());
    }
    assert_eq!(post(address, "/v1/chat/completions", &openai_request("gpt-4o", "x")).await.status, 200);
    assert_eq!(send(address, Method::GET, "/__mock/faults", &[], "").await.json(), json!([]));

    // A rule for any model, forever, until cleared; Anthropic-shaped there.
    let rule = json!({"model": null, "fault": "status:503", "times": null});
    assert_eq!(post(address, "/__mock/faults", &rule).await.status, 200);
    for _ in 0..3 {
        let reply = post(address, "/v1/messages", &anthropic_request("claude", "x")).await;
        assert_eq!(reply.status, 503);
        assert_eq!(reply.json()["error"]["type"], "overloaded_error");
    }
    let reply = post(address, "/v1/chat/completions", &openai_request("gpt-4o", "x")).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["error"]["type"], "server_error");
    let cleared = send(address, Method::DELETE, "/__mock/faults", &[], "").await;
    assert_eq!(cleared.json(), json!({"cleared": 1}));
    assert_eq!(post(address, "/v1/messages", &anthropic_request("claude", "x")).await.status, 200);

    // Bad rules are rejected and change nothing.
    let bad = post(address, "/__mock/faults", &json!([{"fault": "slow:1"}, {"fault": "boom:1"}])).await;
    assert_eq!(bad.status, 400);
    assert_eq!(send(address, Method::GET, "/__mock/faults", &[], "").await.json(), json!([]));
}

#[tokio::test]
async fn fault_header_applies_to_one_request() {
    let address = start().await;
    let request = openai_request("gpt-4o", "x");
    let reply = post_with(address, "/v1/chat/completions", &[("x-mock-fault", "status:500")], &request).await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.json()["error"]["type"], "server_error");
    let reply =
        post_with(address, "/v1/chat/completions", &[("x-mock-fault", "status:429,retry_after:7")], &request).await;
    assert_eq!(reply.header("retry-after"), Some("7"));
    assert_eq!(post(address, "/v1/chat/completions", &request).await.status, 200);
    let reply = post_with(address, "/v1/chat/completions", &[("x-mock-fault", "status:999")], &request).await;
    assert_eq!(reply.status, 400, "an invalid fault header is a loud error");
}

#[tokio::test]
async fn slow_delays_the_response_headers() {
    let address = start().await;
    let started = Instant::now();
    let reply = post_with(address, "/v1/messages", &[("x-mock-fault", "slow:300")], &anthropic_request("c", "x")).await;
    assert_eq!(reply.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn base_latency_delays_every_api_response() {
    let address = start_with(MockOptions { base_latency: Duration::from_millis(200), ..MockOptions::default() }).await;
    let started = Instant::now();
    assert_eq!(send(address, Method::GET, "/__mock/healthz", &[], "").await.status, 200);
    assert!(started.elapsed() < Duration::from_millis(200), "control API is not delayed");
    let started = Instant::now();
    assert_eq!(post(address, "/v1/chat/completions", &openai_request("m", "x")).await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn chunk_delay_spreads_the_stream_over_time() {
    let address = start().await;
    let mut request = openai_request("gpt-4o", "x");
    request["stream"] = json!(true);
    request["max_tokens"] = json!(3);
    let (mut sender, _driver) = connect(address).await;
    let started = Instant::now();
    let response: Response<Incoming> = sender
        .send_request(build(
            Method::POST,
            "/v1/chat/completions",
            &[("x-mock-fault", "chunk_delay:100")],
            &request.to_string(),
        ))
        .await
        .unwrap();
    let mut body = response.into_body();
    let mut arrivals = Vec::new();
    while let Some(frame) = body.frame().await {
        if frame.unwrap().is_data() {
            arrivals.push(started.elapsed());
        }
    }
    // role, 3 words, finish, [DONE]: six events, each its own frame, 100 ms apart.
    assert_eq!(arrivals.len(), 6, "{arrivals:?}");
    // Loose bounds: a busy test machine may delay any one frame a little.
    assert!(arrivals[5] - arrivals[0] >= Duration::from_millis(450), "{arrivals:?}");
    for pair in arrivals.windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_millis(40), "{arrivals:?}");
    }
}

#[tokio::test]
async fn drop_after_cuts_a_stream_after_n_events() {
    let address = start().await;
    let mut request = anthropic_request("claude", "x");
    request["stream"] = json!(true);
    let body = request.to_string();
    // Raw TCP, to see exactly what went over the wire.
    let mut stream = TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\nx-mock-fault: drop_after:3\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received)).await.unwrap().ok();
    let received = String::from_utf8(received).unwrap();
    assert!(received.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(received.contains("transfer-encoding: chunked"));
    assert_eq!(received.matches("event: ").count(), 3, "{received}");
    assert!(!received.ends_with("0\r\n\r\n"), "no terminating chunk");

    let seq = 1;
    let record = wait_for_record(address, seq, |_| true).await;
    assert_eq!(record["completed"], false);
    assert_eq!(record["client_aborted"], false);
    assert_eq!(record["faults"], json!(["drop_after:3"]));
}

#[tokio::test]
async fn drop_after_cuts_a_json_body_in_half() {
    let address = start().await;
    let (mut sender, _driver) = connect(address).await;
    let request = openai_request("gpt-4o", "x").to_string();
    let response =
        sender.send_request(build(Method::POST, "/v1/chat/completions", &[("x-mock-fault", "drop_after:0")], &request));
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let length: usize = response.headers()["content-length"].to_str().unwrap().parse().unwrap();
    let mut body = response.into_body();
    let mut received = 0;
    let mut failed = false;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => received += frame.data_ref().map_or(0, |data| data.len()),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the client sees an incomplete body");
    assert_eq!(received, length / 2);
}

// ---------------------------------------------------------------------------
// Recording

#[tokio::test]
async fn requests_are_recorded_with_path_headers_body_and_completion() {
    let address = start().await;
    let request = openai_request("gpt-4o", "record me");
    let reply =
        post_with(address, "/openai/v1/chat/completions", &[("Authorization", "Bearer sk-test")], &request).await;
    assert_eq!(reply.header("x-mock-seq"), Some("1"));
    let mut stream_request = anthropic_request("claude", "x");
    stream_request["stream"] = json!(true);
    post(address, "/anthropic/v1/messages", &stream_request).await;
    send(address, Method::POST, "/v1/messages", &[], "{broken").await;

    let records = wait_for_record(address, 2, |record| record["completed"] == true).await;
    assert_eq!(records["stream"], true);
    let records = recorded(address).await;
    assert_eq!(records.len(), 3);
    let first = &records[0];
    assert_eq!(first["seq"], 1);
    assert_eq!(first["api"], "openai");
    assert_eq!(first["path"], "/openai/v1/chat/completions");
    assert_eq!(first["model"], "gpt-4o");
    assert_eq!(first["stream"], false);
    assert_eq!(first["headers"]["authorization"], "Bearer sk-test");
    assert_eq!(first["headers"]["content-type"], "application/json");
    assert_eq!(first["body"], request);
    assert_eq!(first["status"], 200);
    assert_eq!(first["completed"], true);
    assert_eq!(first["client_aborted"], false);
    assert_eq!(records[1]["path"], "/anthropic/v1/messages");
    assert_eq!(records[2]["status"], 400);
    assert_eq!(records[2]["body"], "{broken");
    assert!(records[2]["model"].is_null());

    let cleared = send(address, Method::DELETE, "/__mock/requests", &[], "").await;
    assert_eq!(cleared.json(), json!({"cleared": 3}));
    assert!(recorded(address).await.is_empty());
    // Sequence numbers keep counting after a clear.
    post(address, "/v1/messages", &anthropic_request("claude", "x")).await;
    assert_eq!(recorded(address).await[0]["seq"], 4);
}

#[tokio::test]
async fn client_disconnect_mid_stream_is_recorded() {
    let address = start().await;
    let mut request = openai_request("gpt-4o", "x");
    request["stream"] = json!(true);
    let (mut sender, driver) = connect(address).await;
    let response = sender
        .send_request(build(
            Method::POST,
            "/v1/chat/completions",
            &[("x-mock-fault", "chunk_delay:100")],
            &request.to_string(),
        ))
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().unwrap().starts_with(b"data: "));
    // Hang up: drop the body and kill the connection.
    drop(body);
    drop(sender);
    driver.abort();

    let record = wait_for_record(address, 1, |record| record["client_aborted"] == true).await;
    assert_eq!(record["completed"], false);
}

#[tokio::test]
async fn client_disconnect_while_waiting_is_recorded() {
    let address = start().await;
    let (mut sender, driver) = connect(address).await;
    let request =
        build(Method::POST, "/v1/messages", &[("x-mock-fault", "slow:2000")], &anthropic_request("c", "x").to_string());
    let pending = tokio::spawn(async move { sender.send_request(request).await });
    wait_for_record(address, 1, |_| true).await;
    pending.abort();
    driver.abort();
    let record = wait_for_record(address, 1, |record| record["client_aborted"] == true).await;
    assert_eq!(record["completed"], false);
}

#[tokio::test]
async fn keep_alive_serves_many_requests_on_one_connection() {
    let address = start().await;
    let (mut sender, _driver) = connect(address).await;
    for i in 0..5 {
        let body = openai_request("gpt-4o", &format!("question {i}")).to_string();
        let reply = send_on(&mut sender, build(Method::POST, "/v1/chat/completions", &[], &body)).await;
        assert_eq!(reply.status, 200);
        let mut stream = openai_request("gpt-4o", "s");
        stream["stream"] = json!(true);
        let reply = send_on(&mut sender, build(Method::POST, "/v1/chat/completions", &[], &stream.to_string())).await;
        assert!(reply.text().ends_with("data: [DONE]\n\n"));
    }
    assert_eq!(recorded(address).await.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serves_300_concurrent_connections() {
    let address = start().await;
    let started = Instant::now();
    let clients: Vec<_> = (0..300)
        .map(|i| {
            tokio::spawn(async move {
                let mut request = openai_request("gpt-4o", &format!("client {i}"));
                request["stream"] = json!(i % 2 == 0);
                post_with(address, "/v1/chat/completions", &[("x-mock-fault", "slow:500")], &request).await.status
            })
        })
        .collect();
    for client in clients {
        assert_eq!(client.await.unwrap(), 200);
    }
    // All 300 waited their 500 ms at the same time, not one after another.
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    let records = recorded(address).await;
    assert_eq!(records.len(), 300);
}

// ---------------------------------------------------------------------------
// The binary

#[tokio::test]
async fn binary_prints_its_address_and_serves() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate-mock"))
        .args(["--listen", "127.0.0.1:0", "--latency-ms", "100"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let address: SocketAddr = line.trim_end().strip_prefix("listening http://").unwrap().parse().unwrap();
    assert_ne!(address.port(), 0);
    let health = send(address, Method::GET, "/__mock/healthz", &[], "").await;
    assert_eq!((health.status, health.text().as_str()), (200, "ok"));
    let started = Instant::now();
    assert_eq!(post(address, "/v1/chat/completions", &openai_request("m", "x")).await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(100));
    child.kill().unwrap();
    child.wait().unwrap();
}
