//! OpenAI Embeddings (`POST …/embeddings`): request reading and the response
//! shape (a `list` of `embedding` objects), modelled on what api.openai.com
//! sends so the official SDKs parse it.
//!
//! The vectors are deterministic: each input item's vector comes from a hash
//! of the model and the item, so the same input always gets the same vector
//! (and the router's cache can be checked by comparing them). They are short
//! by default ([`DEFAULT_DIMENSIONS`]) to keep responses small; `dimensions`
//! asks for more or fewer. Like `text-embedding-3` vectors they have unit
//! length, and a shorter vector is a longer one's prefix, normalised again.
//!
//! `usage.prompt_tokens` counts every item by the rule the chat endpoints use
//! for message text ([`answer::text_tokens`], ceil(chars / 4), without the
//! per-message framing); a token-id array counts its length.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::answer::{self, SplitMix64};
use crate::api::RequestError;

/// Values per vector when the request does not say (`dimensions`).
pub const DEFAULT_DIMENSIONS: usize = 8;

/// Largest `dimensions` accepted (text-embedding-3-large's native size).
pub const MAX_DIMENSIONS: u64 = 3072;

/// Most items one request may carry, as the real API documents.
pub const MAX_INPUTS: usize = 2048;

/// How the vectors are written in the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodingFormat {
    /// A JSON array of numbers (the API's default).
    Float,
    /// The little-endian `float32` bytes, base64-encoded (what the official
    /// Python SDK asks for unless told otherwise, and decodes itself).
    Base64,
}

/// One thing to embed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Text(String),
    /// Token ids, as the client tokenised the text itself.
    Tokens(Vec<u64>),
}

impl Item {
    /// Tokens the item "costs".
    pub fn tokens(&self) -> u64 {
        match self {
            Item::Text(text) => answer::text_tokens(text),
            Item::Tokens(ids) => u64::try_from(ids.len()).unwrap_or(u64::MAX),
        }
    }
}

/// An embeddings request reduced to what decides the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingRequest {
    pub model: String,
    /// In request order: `data[i].index` is the position here.
    pub items: Vec<Item>,
    pub encoding_format: EncodingFormat,
    pub dimensions: usize,
}

impl EmbeddingRequest {
    pub fn prompt_tokens(&self) -> u64 {
        self.items.iter().map(Item::tokens).sum()
    }
}

/// Reads an embeddings request, refusing what the real API refuses:
/// no model, no input, an empty string or array, items of mixed or wrong
/// types, more than [`MAX_INPUTS`] items, a bad `encoding_format` or
/// `dimensions`. `user` (and anything else) is ignored.
pub fn parse_request(body: &Value) -> Result<EmbeddingRequest, RequestError> {
    let object =
        body.as_object().ok_or_else(|| RequestError::invalid("The request body must be a JSON object.", None))?;
    let model = match object.get("model") {
        Some(Value::String(model)) => model.clone(),
        _ => return Err(RequestError::missing("model", "you must provide a model parameter")),
    };
    let items = match object.get("input") {
        None | Some(Value::Null) => {
            return Err(RequestError::missing("input", "Missing required parameter: 'input'."));
        }
        Some(Value::String(text)) => vec![text_item(text)?],
        Some(Value::Array(values)) => parse_items(values)?,
        Some(_) => return Err(invalid_input()),
    };
    let encoding_format = match object.get("encoding_format") {
        None | Some(Value::Null) => EncodingFormat::Float,
        Some(Value::String(format)) if format == "float" => EncodingFormat::Float,
        Some(Value::String(format)) if format == "base64" => EncodingFormat::Base64,
        Some(other) => {
            return Err(RequestError::invalid(
                &format!("Invalid value for 'encoding_format': {other}. Supported values are: 'float' and 'base64'."),
                Some("encoding_format"),
            ));
        }
    };
    let dimensions = match object.get("dimensions") {
        None | Some(Value::Null) => DEFAULT_DIMENSIONS,
        Some(value) => match value.as_u64() {
            Some(n) if (1..=MAX_DIMENSIONS).contains(&n) => usize::try_from(n).unwrap_or(DEFAULT_DIMENSIONS),
            _ => {
                return Err(RequestError::invalid(
                    &format!(
                        "Invalid value for 'dimensions': {value}. It must be an integer from 1 to {MAX_DIMENSIONS}."
                    ),
                    Some("dimensions"),
                ));
            }
        },
    };
    Ok(EmbeddingRequest { model, items, encoding_format, dimensions })
}

fn invalid_input() -> RequestError {
    RequestError::invalid(
        "'input' must be a non-empty string, an array of non-empty strings, an array of token ids (integers), \
         or an array of non-empty token-id arrays.",
        Some("input"),
    )
}

fn text_item(text: &str) -> Result<Item, RequestError> {
    if text.is_empty() {
        return Err(RequestError::invalid("'input' cannot contain an empty string.", Some("input")));
    }
    Ok(Item::Text(text.to_owned()))
}

fn token_ids(values: &[Value]) -> Option<Vec<u64>> {
    values.iter().map(|value| value.as_u64().filter(|id| u32::try_from(*id).is_ok())).collect()
}

/// An `input` array: strings, or token ids (one item), or token-id arrays;
/// never a mixture.
fn parse_items(values: &[Value]) -> Result<Vec<Item>, RequestError> {
    let Some(first) = values.first() else {
        return Err(RequestError::invalid("[] is too short - 'input'", Some("input")));
    };
    if values.len() > MAX_INPUTS {
        return Err(RequestError::invalid(
            &format!("'input' has {} items; at most {MAX_INPUTS} are allowed.", values.len()),
            Some("input"),
        ));
    }
    match first {
        Value::String(_) => values
            .iter()
            .map(|value| match value {
                Value::String(text) => text_item(text),
                _ => Err(invalid_input()),
            })
            .collect(),
        Value::Number(_) => token_ids(values).map(|ids| vec![Item::Tokens(ids)]).ok_or_else(invalid_input),
        Value::Array(_) => values
            .iter()
            .map(|value| match value {
                Value::Array(ids) if !ids.is_empty() => token_ids(ids).map(Item::Tokens).ok_or_else(invalid_input),
                _ => Err(invalid_input()),
            })
            .collect(),
        _ => Err(invalid_input()),
    }
}

/// The vector for one item: `dimensions` values drawn from a generator
/// seeded with SHA-256(model, item), scaled to unit length, as `f32`.
pub fn vector(model: &str, item: &Item, dimensions: usize) -> Vec<f32> {
    let mut hasher = Sha256::new();
    hasher.update(model.as_bytes());
    hasher.update([0]);
    match item {
        Item::Text(text) => {
            hasher.update(b"text\0");
            hasher.update(text.as_bytes());
        }
        Item::Tokens(ids) => {
            hasher.update(b"tokens\0");
            for id in ids {
                hasher.update(id.to_le_bytes());
            }
        }
    }
    let digest = hasher.finalize();
    let mut seed = [0u8; 8];
    seed.copy_from_slice(&digest[..8]);
    let mut rng = SplitMix64(u64::from_le_bytes(seed));
    // Uniform in [-1, 1), from the top 53 bits.
    let raw: Vec<f64> = (0..dimensions).map(|_| (rng.next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0).collect();
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt();
    let scale = if norm > 0.0 { 1.0 / norm } else { 1.0 };
    // Narrowed to f32 on purpose: the API returns float32 values.
    raw.iter().map(|x| (x * scale) as f32).collect()
}

/// The little-endian `float32` bytes of `vector`, base64-encoded.
pub fn base64_vector(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|value| value.to_le_bytes()).collect();
    base64(&bytes)
}

/// Standard base64 (RFC 4648, with `=` padding).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The whole response: `{"object": "list", "data": [...], "model", "usage"}`.
pub fn response(request: &EmbeddingRequest) -> Value {
    let data: Vec<Value> = request
        .items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let vector = vector(&request.model, item, request.dimensions);
            let embedding = match request.encoding_format {
                // Widened to f64 exactly, so a JSON reader gets the very
                // float32 values the base64 form carries.
                EncodingFormat::Float => Value::from(vector.iter().map(|x| f64::from(*x)).collect::<Vec<f64>>()),
                EncodingFormat::Base64 => Value::String(base64_vector(&vector)),
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let tokens = request.prompt_tokens();
    json!({
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<EmbeddingRequest, RequestError> {
        parse_request(&body)
    }

    #[test]
    fn reads_every_input_shape() {
        let one = parse(json!({"model": "m", "input": "hello world"})).unwrap();
        assert_eq!(one.items, vec![Item::Text("hello world".into())]);
        assert_eq!((one.encoding_format, one.dimensions), (EncodingFormat::Float, DEFAULT_DIMENSIONS));
        let many = parse(json!({"model": "m", "input": ["a", "bcdef"], "encoding_format": "base64"})).unwrap();
        assert_eq!(many.items.len(), 2);
        assert_eq!(many.encoding_format, EncodingFormat::Base64);
        assert_eq!(many.prompt_tokens(), 1 + 2);
        let ids = parse(json!({"model": "m", "input": [1, 2, 3], "dimensions": 4})).unwrap();
        assert_eq!(ids.items, vec![Item::Tokens(vec![1, 2, 3])]);
        assert_eq!((ids.dimensions, ids.prompt_tokens()), (4, 3));
        let nested = parse(json!({"model": "m", "input": [[1, 2], [3]], "user": "u"})).unwrap();
        assert_eq!(nested.items, vec![Item::Tokens(vec![1, 2]), Item::Tokens(vec![3])]);
        assert_eq!(nested.prompt_tokens(), 3);
    }

    #[test]
    fn refuses_what_the_api_refuses() {
        let param = |body: Value| parse(body).unwrap_err().param;
        assert_eq!(param(json!({"input": "x"})), Some("model"));
        assert_eq!(param(json!({"model": "m"})), Some("input"));
        assert_eq!(parse(json!({"model": "m"})).unwrap_err().code, Some("missing_required_parameter"));
        for input in [
            json!(""),
            json!([]),
            json!([""]),
            json!(5),
            json!({"text": "x"}),
            json!(["a", 1]),
            json!([1, "a"]),
            json!([[1], []]),
            json!([[1], 2]),
            json!([-1]),
            json!([1.5]),
            json!([true]),
        ] {
            let error = parse(json!({"model": "m", "input": input})).unwrap_err();
            assert_eq!((error.status, error.param), (400, Some("input")), "{input}");
        }
        let too_many: Vec<&str> = vec!["x"; MAX_INPUTS + 1];
        assert_eq!(param(json!({"model": "m", "input": too_many})), Some("input"));
        assert_eq!(param(json!({"model": "m", "input": "x", "encoding_format": "int8"})), Some("encoding_format"));
        for dimensions in [json!(0), json!(-3), json!(MAX_DIMENSIONS + 1), json!("8"), json!(2.5)] {
            assert_eq!(param(json!({"model": "m", "input": "x", "dimensions": dimensions})), Some("dimensions"));
        }
        assert_eq!(parse(json!(["not", "an", "object"])).unwrap_err().status, 400);
    }

    #[test]
    fn vectors_are_deterministic_unit_length_and_prefix_consistent() {
        let item = Item::Text("hello".into());
        let a = vector("m", &item, 8);
        assert_eq!(a, vector("m", &item, 8));
        assert_eq!(a.len(), 8);
        let length: f64 = a.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
        assert!((length - 1.0).abs() < 1e-5, "{length}");
        assert_ne!(a, vector("m", &Item::Text("hello!".into()), 8));
        assert_ne!(a, vector("other-model", &item, 8));
        assert_ne!(a, vector("m", &Item::Tokens(vec![1]), 8));
        // A shorter vector points the same way as the longer one's prefix.
        let long = vector("m", &item, 32);
        let ratio = f64::from(long[0]) / f64::from(a[0]);
        for (short, long) in a.iter().zip(&long) {
            assert!((f64::from(*long) / f64::from(*short) - ratio).abs() < 1e-4);
        }
    }

    #[test]
    fn base64_is_standard_and_carries_little_endian_float32() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        // 1.0f32 = 00 00 80 3f, -2.0f32 = 00 00 00 c0.
        assert_eq!(base64_vector(&[1.0, -2.0]), "AACAPwAAAMA=");
    }

    #[test]
    fn response_has_the_real_shape_in_either_format() {
        let request = parse(json!({"model": "text-embedding-3-small", "input": ["abcd", "efghi"]})).unwrap();
        let body = response(&request);
        assert_eq!(body["object"], "list");
        assert_eq!(body["model"], "text-embedding-3-small");
        assert_eq!(body["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
        let data = body["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        for (index, entry) in data.iter().enumerate() {
            assert_eq!(entry["object"], "embedding");
            assert_eq!(entry["index"], index);
            assert_eq!(entry["embedding"].as_array().unwrap().len(), DEFAULT_DIMENSIONS);
        }
        let floats: Vec<f32> =
            data[1]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        assert_eq!(floats, vector("text-embedding-3-small", &Item::Text("efghi".into()), DEFAULT_DIMENSIONS));

        let as_base64 = EmbeddingRequest { encoding_format: EncodingFormat::Base64, ..request };
        let body = response(&as_base64);
        assert_eq!(body["data"][1]["embedding"], base64_vector(&floats));
        assert_eq!(body["usage"]["prompt_tokens"], 3);
    }
}
