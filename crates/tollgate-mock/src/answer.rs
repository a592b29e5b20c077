//! The provider-neutral part of a mock completion: which answer to give, how
//! many tokens it "costs", and the deterministic ids.
//!
//! Everything here is a pure function of the request so that the same request
//! always gets a byte-identical response; tests (and the router's response
//! cache) can then compare bodies directly.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// `created` timestamp of every response. A constant rather than the clock so
/// that responses stay byte-identical across runs (2023-11-14T22:13:20Z).
pub const CREATED_UNIX_SECONDS: u64 = 1_700_000_000;

/// Words the answer sentence is drawn from. Plain ASCII words, so "one word =
/// one output token" is an obvious, checkable rule for tests.
// One line per row rather than rustfmt's one word per line.
#[rustfmt::skip]
const VOCABULARY: [&str; 48] = [
    "the", "router", "picks", "a", "model", "that", "fits", "budget", "and", "quality", "every", "request", "is",
    "priced", "before", "it", "leaves", "cheap", "tokens", "flow", "fast", "while", "hard", "questions", "climb",
    "to", "stronger", "tiers", "cache", "hits", "cost", "nothing", "latency", "stays", "low", "under", "load",
    "streams", "arrive", "word", "by", "mock", "answers", "remain", "stable", "for", "each", "prompt",
];

/// Shortest and longest generated sentence, in words (the `[mock:…]` tag
/// comes on top). Long enough that several SSE deltas are produced.
const MIN_SENTENCE_WORDS: u64 = 12;
const MAX_SENTENCE_WORDS: u64 = 40;

/// Fixed per-message framing cost added to the prompt estimate, mirroring the
/// "3 tokens per message" of OpenAI's chat format accounting.
pub const TOKENS_PER_MESSAGE: u64 = 3;
/// Fixed cost of priming the assistant's reply (also from OpenAI's accounting).
pub const TOKENS_PER_REPLY: u64 = 3;

/// A request reduced to what decides the answer and its usage numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub model: String,
    /// Text of the last `user` message; the answer sentence is derived from it.
    pub last_user_text: String,
    pub prompt_tokens: u64,
    /// Output limit requested by the client (`max_tokens`, or OpenAI's
    /// `max_completion_tokens`); `None` means unlimited.
    pub max_output_tokens: Option<u64>,
    pub stream: bool,
    /// OpenAI `stream_options.include_usage`: send a final usage chunk.
    pub include_usage: bool,
    /// The function the model calls instead of answering with text, when
    /// the request offers tools ([`crate::tools`]).
    pub call: Option<crate::tools::PlannedCall>,
}

/// The answer actually sent, after applying the output limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// One entry per output token. Joined with single spaces they form the
    /// message content; in a stream each word is its own content delta.
    pub words: Vec<String>,
    /// True when the output limit cut the answer short (finish_reason
    /// "length" / stop_reason "max_tokens").
    pub truncated: bool,
}

impl Answer {
    /// Builds the answer for a prompt: `[mock:<model>]` followed by a sentence
    /// chosen by hashing the last user message, cut to the output limit.
    pub fn for_prompt(prompt: &Prompt) -> Answer {
        let mut words = Vec::new();
        words.push(format!("[mock:{}]", prompt.model));
        words.extend(sentence_words(&prompt.last_user_text));
        let limit = prompt.max_output_tokens.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
        let truncated = words.len() > limit;
        words.truncate(limit);
        Answer { words, truncated }
    }

    /// The full message content.
    pub fn content(&self) -> String {
        self.words.join(" ")
    }

    /// The content split into stream deltas whose concatenation is exactly
    /// `content()`: the first word alone, then " word" for each following one.
    pub fn deltas(&self) -> Vec<String> {
        self.words.iter().enumerate().map(|(i, word)| if i == 0 { word.clone() } else { format!(" {word}") }).collect()
    }

    /// The answer as an `answer:<kind>` fault spoils it.
    pub fn spoiled(mut self, fault: crate::faults::AnswerFault) -> Answer {
        use crate::faults::AnswerFault;
        let words: &[&str] = match fault {
            AnswerFault::Length => {
                self.words.truncate(3);
                self.truncated = true;
                return self;
            }
            AnswerFault::Empty => &[],
            AnswerFault::Refusal => &["I'm", "sorry,", "but", "I", "can't", "help", "with", "that."],
            AnswerFault::BadJson => &["{\"answer\":", "\"unfinished"],
        };
        Answer { words: words.iter().map(|w| (*w).to_owned()).collect(), truncated: false }
    }

    pub fn output_tokens(&self) -> u64 {
        u64::try_from(self.words.len()).unwrap_or(u64::MAX)
    }
}

/// A deterministic sentence for the given text: the hash seeds a small PRNG
/// that picks the length and the words. Capitalised, ends with a period.
fn sentence_words(text: &str) -> Vec<String> {
    let digest = Sha256::digest(text.as_bytes());
    let mut seed_bytes = [0u8; 8];
    seed_bytes.copy_from_slice(&digest[..8]);
    let mut rng = SplitMix64(u64::from_le_bytes(seed_bytes));
    let count = MIN_SENTENCE_WORDS + rng.next() % (MAX_SENTENCE_WORDS - MIN_SENTENCE_WORDS + 1);
    let mut words: Vec<String> = (0..count)
        .map(|_| {
            let index = usize::try_from(rng.next() % VOCABULARY.len() as u64).unwrap_or(0);
            VOCABULARY[index].to_owned()
        })
        .collect();
    if let Some(first) = words.first_mut() {
        *first = capitalise(first);
    }
    if let Some(last) = words.last_mut() {
        last.push('.');
    }
    words
}

fn capitalise(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// SplitMix64: tiny, well-mixed, and stable forever (unlike a library RNG
/// whose output may change between versions and break determinism).
pub(crate) struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Prompt-side token estimate for one piece of text: ceil(chars / 4), the
/// usual rule of thumb for English with BPE tokenizers.
pub fn text_tokens(text: &str) -> u64 {
    let chars = u64::try_from(text.chars().count()).unwrap_or(u64::MAX);
    chars.div_ceil(4)
}

/// Prompt estimate for a conversation given the text of each message (and of
/// the system prompt, counted as one more message when present).
pub fn prompt_tokens<'a>(message_texts: impl IntoIterator<Item = &'a str>) -> u64 {
    message_texts.into_iter().map(|text| text_tokens(text) + TOKENS_PER_MESSAGE).sum::<u64>() + TOKENS_PER_REPLY
}

/// Concatenated text of a message `content` in either provider's format: a
/// plain string, or an array of parts/blocks of which the `text` ones count
/// (images, tool calls and the like contribute nothing).
pub fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => {
            parts.iter().filter_map(|part| part.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("\n")
        }
        _ => String::new(),
    }
}

/// Lower-case hex of the first `len` bytes of SHA-256(`parts`…): the source of
/// deterministic response ids.
pub fn hash_hex(parts: &[&[u8]], len: usize) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().iter().take(len).map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(text: &str, max: Option<u64>) -> Prompt {
        Prompt {
            model: "m".into(),
            last_user_text: text.into(),
            prompt_tokens: 0,
            max_output_tokens: max,
            stream: false,
            include_usage: false,
            call: None,
        }
    }

    #[test]
    fn answer_is_deterministic_and_tagged() {
        let a = Answer::for_prompt(&prompt("hello", None));
        let b = Answer::for_prompt(&prompt("hello", None));
        assert_eq!(a, b);
        assert_eq!(a.words[0], "[mock:m]");
        assert!(a.words.len() as u64 > MIN_SENTENCE_WORDS);
        assert!(a.content().ends_with('.'));
        assert_ne!(a, Answer::for_prompt(&prompt("something else", None)));
    }

    #[test]
    fn deltas_concatenate_to_content() {
        let a = Answer::for_prompt(&prompt("x", None));
        assert_eq!(a.deltas().concat(), a.content());
        assert_eq!(a.output_tokens() as usize, a.content().split_whitespace().count());
    }

    #[test]
    fn limit_truncates() {
        let a = Answer::for_prompt(&prompt("x", Some(3)));
        assert_eq!(a.words.len(), 3);
        assert!(a.truncated);
        let b = Answer::for_prompt(&prompt("x", Some(1000)));
        assert!(!b.truncated);
    }

    #[test]
    fn token_estimates() {
        assert_eq!(text_tokens(""), 0);
        assert_eq!(text_tokens("abcd"), 1);
        assert_eq!(text_tokens("abcde"), 2);
        assert_eq!(prompt_tokens(["abcde", "x"]), 2 + 3 + 1 + 3 + 3);
    }

    #[test]
    fn content_text_handles_both_shapes() {
        let parts =
            serde_json::json!([{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]);
        assert_eq!(content_text(Some(&parts)), "a\nb");
        assert_eq!(content_text(Some(&serde_json::json!("plain"))), "plain");
        assert_eq!(content_text(None), "");
    }
}
