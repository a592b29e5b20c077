//! How a provider is called: its URL and headers, and which of its
//! statuses are answers and which are failures. Both hosts build the
//! provider request from this, so they send identical requests.

use crate::api::ApiFormat;
use crate::config::Provider;

/// The Anthropic API version sent when the client did not name one.
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

/// Client headers passed on to the provider. Everything else (the tenant's
/// tollgate key above all, cookies, hop-by-hop headers) stays behind.
const FORWARDED_CLIENT_HEADERS: &[&str] = &["anthropic-version", "anthropic-beta", "accept", "user-agent"];

/// The endpoint for `api` under a provider's base URL. Base URLs end where
/// the format's own suffix starts, so OpenAI's is `https://api.openai.com/v1`,
/// Anthropic's `https://api.anthropic.com/v1`, and Google's OpenAI-compatible
/// one `https://generativelanguage.googleapis.com/v1beta/openai`.
pub fn endpoint_url(base_url: &str, api: ApiFormat) -> String {
    let suffix = match api {
        ApiFormat::OpenAi => "/chat/completions",
        ApiFormat::Anthropic => "/messages",
        ApiFormat::Embeddings => "/embeddings",
        ApiFormat::Responses => "/responses",
    };
    format!("{}{suffix}", base_url.trim_end_matches('/'))
}

/// Headers for the provider request: the forwardable client headers, the
/// provider's credential, JSON content type, and Anthropic's version header.
/// `client_headers` names must be lower-case.
pub fn provider_headers(
    provider: Provider,
    api_key: &str,
    client_headers: &[(String, String)],
) -> Vec<(String, String)> {
    // Anthropic's own headers go only to Anthropic (a translated request
    // from an Anthropic client reaches an OpenAI-compatible provider).
    let forwarded = |name: &str| {
        FORWARDED_CLIENT_HEADERS.contains(&name) && (provider == Provider::Anthropic || !name.starts_with("anthropic-"))
    };
    let mut headers: Vec<(String, String)> =
        client_headers.iter().filter(|(name, _)| forwarded(name)).cloned().collect();
    headers.push(("content-type".into(), "application/json".into()));
    match provider {
        Provider::Anthropic => {
            headers.push(("x-api-key".into(), api_key.to_owned()));
            if !headers.iter().any(|(n, _)| n == "anthropic-version") {
                headers.push(("anthropic-version".into(), DEFAULT_ANTHROPIC_VERSION.into()));
            }
        }
        _ => headers.push(("authorization".into(), format!("Bearer {api_key}"))),
    }
    headers
}

/// The name of the secret holding a provider's API key, e.g. `OPENAI_API_KEY`,
/// and of the variable holding its base URL, e.g. `OPENAI_BASE_URL`.
pub fn secret_name(provider: Provider) -> &'static str {
    match provider {
        Provider::OpenAi => "OPENAI_API_KEY",
        Provider::Anthropic => "ANTHROPIC_API_KEY",
        Provider::Google => "GOOGLE_API_KEY",
        Provider::Mistral => "MISTRAL_API_KEY",
        Provider::WorkersAi => "WORKERS_AI_API_KEY",
    }
}

/// See [`secret_name`].
pub fn base_url_name(provider: Provider) -> &'static str {
    match provider {
        Provider::OpenAi => "OPENAI_BASE_URL",
        Provider::Anthropic => "ANTHROPIC_BASE_URL",
        Provider::Google => "GOOGLE_BASE_URL",
        Provider::Mistral => "MISTRAL_BASE_URL",
        Provider::WorkersAi => "WORKERS_AI_BASE_URL",
    }
}

/// Whether an upstream status is worth trying the next model for: 408,
/// 429 and 5xx, and also 401/403, which mean *our* credential for that
/// provider is wrong or lacks access. Those are never passed to the
/// client: it cannot fix them, and a provider's 401 body can echo part
/// of the router's key.
pub fn is_retryable(status: u16) -> bool {
    matches!(status, 401 | 403 | 408 | 429) || (500..=599).contains(&status)
}

/// Whether a provider answer with this status can be relayed as it is.
/// Bodiless statuses (204, 205, 304) and anything outside 200–599 are
/// not answers to a chat request; hosts treat them as failures
/// ([`crate::engine::Plan::on_upstream_failure`]), which ends in a 502.
pub fn can_pass_through(status: u16) -> bool {
    (200..=599).contains(&status) && !matches!(status, 204 | 205 | 304)
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn endpoint_urls_join_base_and_suffix_once() {
        assert_eq!(
            endpoint_url("https://api.openai.com/v1/", ApiFormat::OpenAi),
            "https://api.openai.com/v1/chat/completions"
        );
        assert_eq!(
            endpoint_url("https://api.anthropic.com/v1", ApiFormat::Anthropic),
            "https://api.anthropic.com/v1/messages"
        );
    }

    #[test]
    fn the_tenant_key_never_reaches_the_provider() {
        let client = vec![
            ("authorization".to_owned(), "Bearer tg_tenant_secret".to_owned()),
            ("x-api-key".to_owned(), "tg_tenant_secret".to_owned()),
            ("cookie".to_owned(), "a=b".to_owned()),
            ("anthropic-version".to_owned(), "2023-01-01".to_owned()),
        ];
        for provider in Provider::ALL {
            let h = provider_headers(provider, "sk-provider", &client);
            assert!(h.iter().all(|(_, v)| !v.contains("tg_tenant_secret")), "{provider}: {h:?}");
            assert!(h.iter().all(|(n, _)| n != "cookie"));
            assert!(h.iter().any(|(_, v)| v.contains("sk-provider")));
        }
        let h = provider_headers(Provider::Anthropic, "sk", &client);
        assert_eq!(h.iter().filter(|(n, _)| n == "anthropic-version").count(), 1);
        assert!(h.contains(&("anthropic-version".into(), "2023-01-01".into())));
    }
}
