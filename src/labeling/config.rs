//! Where LLM labels come from: [`LlmConfig`] (a plain serde struct with defaults, so it can be a
//! `[llm]` section of a config file) and [`LlmArgs`], the command-line flags that build it.
//!
//! The API key is read from the environment only (`SEGCLUST_LLM_API_KEY`, else
//! `OPENAI_API_KEY`): never from a flag (it would show in `ps` and shell history) nor from a
//! config file, and [`ApiKey`] never prints it.

use std::fmt;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

/// OpenAI's own endpoint: used when a key is set and no base URL is.
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
/// The model asked when none is configured.
pub const DEFAULT_MODEL: &str = "gpt-4o-mini";
/// Environment variables the key is read from, first set (and non-empty) wins.
pub const API_KEY_ENV: [&str; 2] = ["SEGCLUST_LLM_API_KEY", "OPENAI_API_KEY"];

/// How the answer's JSON shape is requested from the server. All three are validated the same
/// way afterwards; they differ in what servers accept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormatChoice {
    /// `{"type": "json_object"}`: OpenAI, vLLM, Ollama and llama.cpp all accept it.
    #[default]
    JsonObject,
    /// `{"type": "json_schema"}` with the label's schema (strict): constrained decoding where
    /// the server supports it.
    JsonSchema,
    /// No `response_format` at all, for servers that reject the field.
    None,
}

/// A secret that never appears in Debug output, logs or serialized config.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into())
    }

    /// The first non-empty key among [`API_KEY_ENV`].
    pub fn from_env() -> Option<ApiKey> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`ApiKey::from_env`] with the environment given as a function (for tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Option<ApiKey> {
        API_KEY_ENV
            .iter()
            .filter_map(|name| lookup(name))
            .map(|k| k.trim().to_string())
            .find(|k| !k.is_empty())
            .map(ApiKey)
    }

    /// The key itself, for the Authorization header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

/// Everything the LLM labeler needs. `Default` is "nothing configured": fallback labels only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    /// Base URL of an OpenAI-compatible API, up to and including `/v1`
    /// (`http://127.0.0.1:8000/v1` for vLLM, `http://127.0.0.1:11434/v1` for Ollama).
    pub base_url: Option<String>,
    pub model: String,
    /// From the environment only, see the module docs.
    #[serde(skip)]
    pub api_key: Option<ApiKey>,
    /// Most label requests in flight at once.
    pub concurrency: usize,
    /// Limit for one request, connection and answer included, in seconds.
    pub timeout_secs: f64,
    /// Requests per Task before it gets the fallback label (validation errors are fed back).
    pub max_attempts: u32,
    pub response_format: ResponseFormatChoice,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            base_url: None,
            model: DEFAULT_MODEL.to_string(),
            api_key: None,
            concurrency: 4,
            timeout_secs: 30.0,
            max_attempts: 3,
            response_format: ResponseFormatChoice::default(),
        }
    }
}

impl LlmConfig {
    /// The base URL requests go to, or None when labels are written offline: the configured
    /// URL, else OpenAI's when there is a key.
    pub fn endpoint(&self) -> Option<String> {
        let url = self.base_url.as_deref().map(str::trim).unwrap_or_default();
        if !url.is_empty() {
            return Some(url.trim_end_matches('/').to_string());
        }
        self.api_key.as_ref().map(|_| OPENAI_BASE_URL.to_string())
    }

    pub fn timeout(&self) -> Duration {
        crate::config::seconds(self.timeout_secs).unwrap_or(Duration::from_secs(30))
    }

    /// Rejects values that would make the labeler hang or never ask.
    pub fn validate(&self) -> Result<()> {
        if self.concurrency == 0 {
            bail!("LLM concurrency must be at least 1 (--llm-concurrency)");
        }
        if self.max_attempts == 0 {
            bail!("LLM max attempts must be at least 1 (--llm-max-attempts)");
        }
        if !(self.timeout_secs > 0.0 && crate::config::seconds(self.timeout_secs).is_some()) {
            bail!(
                "LLM timeout must be a positive number of seconds, at most ten years \
                 (--llm-timeout-secs), got {}",
                self.timeout_secs
            );
        }
        if self.model.trim().is_empty() {
            bail!("LLM model name is empty (--llm-model or SEGCLUST_LLM_MODEL)");
        }
        if let Some(url) = self.endpoint() {
            let parsed = reqwest::Url::parse(&url).map_err(|e| {
                anyhow::anyhow!(
                    "LLM base URL {} is not a URL ({e}); expected e.g. http://127.0.0.1:8000/v1",
                    redact_endpoint(&url)
                )
            })?;
            if !matches!(parsed.scheme(), "http" | "https") {
                bail!(
                    "LLM base URL {} must start with http:// or https://",
                    redact_endpoint(&url)
                );
            }
        }
        Ok(())
    }
}

/// `url` without user info and query, for logs (either may carry a credential).
pub fn redact_endpoint(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let had_user = !u.username().is_empty() || u.password().is_some();
            let _ = u.set_username("");
            let _ = u.set_password(None);
            let had_query = u.query().is_some();
            u.set_query(None);
            let mut s = u.to_string();
            if had_user {
                s = s.replacen("://", "://***@", 1);
            }
            if had_query {
                s.push_str("?***");
            }
            s
        }
        Err(_) => "(unparseable URL)".to_string(),
    }
}

/// LLM flags shared by `run`, `demo` and `relabel`. The key comes from the environment only.
#[derive(Args, Debug, Clone)]
pub struct LlmArgs {
    /// Base URL of an OpenAI-compatible chat API, including /v1 (vLLM: http://127.0.0.1:8000/v1,
    /// Ollama: http://127.0.0.1:11434/v1). Without it, a key in SEGCLUST_LLM_API_KEY or
    /// OPENAI_API_KEY means OpenAI itself; with neither, labels are written offline.
    #[arg(long, env = "SEGCLUST_LLM_BASE_URL")]
    pub llm_base_url: Option<String>,
    /// Model name as the endpoint knows it.
    #[arg(long, env = "SEGCLUST_LLM_MODEL", default_value = DEFAULT_MODEL)]
    pub llm_model: String,
    /// Most label requests in flight at once.
    #[arg(long, env = "SEGCLUST_LLM_CONCURRENCY", default_value_t = 4)]
    pub llm_concurrency: usize,
    /// Limit for one LLM request in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub llm_timeout_secs: f64,
    /// Requests per Task before it gets the fallback label.
    #[arg(long, default_value_t = 3)]
    pub llm_max_attempts: u32,
    /// How the JSON answer is requested (json-schema: constrained decoding where supported).
    #[arg(long, value_enum, default_value_t = ResponseFormatChoice::JsonObject)]
    pub llm_response_format: ResponseFormatChoice,
}

impl LlmArgs {
    /// The configuration, with the key from the environment.
    pub fn config(&self) -> LlmConfig {
        LlmConfig {
            base_url: self.llm_base_url.clone().filter(|u| !u.trim().is_empty()),
            model: self.llm_model.clone(),
            api_key: ApiKey::from_env(),
            concurrency: self.llm_concurrency,
            timeout_secs: self.llm_timeout_secs,
            max_attempts: self.llm_max_attempts,
            response_format: self.llm_response_format,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_configured_means_no_endpoint() {
        let c = LlmConfig::default();
        assert_eq!(c.endpoint(), None);
        c.validate().unwrap();
        let c = LlmConfig {
            base_url: Some("  ".into()),
            ..LlmConfig::default()
        };
        assert_eq!(c.endpoint(), None);
    }

    #[test]
    fn a_key_alone_means_openai_and_a_url_wins() {
        let key = Some(ApiKey::new("sk-test"));
        let c = LlmConfig {
            api_key: key.clone(),
            ..LlmConfig::default()
        };
        assert_eq!(c.endpoint().as_deref(), Some(OPENAI_BASE_URL));
        let c = LlmConfig {
            api_key: key,
            base_url: Some("http://127.0.0.1:8000/v1/".into()),
            ..LlmConfig::default()
        };
        assert_eq!(c.endpoint().as_deref(), Some("http://127.0.0.1:8000/v1"));
    }

    #[test]
    fn key_lookup_prefers_segclust_and_skips_empty_values() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let k = ApiKey::from_lookup(env(&[
            ("SEGCLUST_LLM_API_KEY", "a"),
            ("OPENAI_API_KEY", "b"),
        ]));
        assert_eq!(k.map(|k| k.expose().to_string()).as_deref(), Some("a"));
        let k = ApiKey::from_lookup(env(&[
            ("SEGCLUST_LLM_API_KEY", " "),
            ("OPENAI_API_KEY", "b"),
        ]));
        assert_eq!(k.map(|k| k.expose().to_string()).as_deref(), Some("b"));
        assert!(ApiKey::from_lookup(env(&[])).is_none());
    }

    #[test]
    fn the_key_never_prints_nor_serializes() {
        let c = LlmConfig {
            api_key: Some(ApiKey::new("sk-very-secret")),
            ..LlmConfig::default()
        };
        assert!(!format!("{c:?}").contains("sk-very-secret"));
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains("sk-very-secret"), "{json}");
        // A config file cannot carry a key either: the field is not part of the file's schema.
        let parsed = serde_json::from_str::<LlmConfig>(r#"{"api_key": "sk-x"}"#);
        assert!(parsed.is_err());
    }

    #[test]
    fn partial_config_takes_defaults() {
        let c: LlmConfig =
            serde_json::from_str(r#"{"base_url": "http://127.0.0.1:11434/v1", "model": "qwen"}"#)
                .unwrap();
        assert_eq!(c.concurrency, 4);
        assert_eq!(c.max_attempts, 3);
        assert_eq!(c.timeout(), Duration::from_secs(30));
        assert_eq!(c.response_format, ResponseFormatChoice::JsonObject);
    }

    #[test]
    fn bad_values_are_rejected_with_the_flag_to_fix() {
        let bad = |c: LlmConfig| c.validate().unwrap_err().to_string();
        assert!(
            bad(LlmConfig {
                concurrency: 0,
                ..LlmConfig::default()
            })
            .contains("--llm-concurrency")
        );
        assert!(
            bad(LlmConfig {
                timeout_secs: f64::NAN,
                ..LlmConfig::default()
            })
            .contains("--llm-timeout-secs")
        );
        let msg = bad(LlmConfig {
            base_url: Some("ftp://user:pw@host/v1".into()),
            ..LlmConfig::default()
        });
        assert!(msg.contains("http://") && !msg.contains("pw"), "{msg}");
    }

    #[test]
    fn endpoints_are_redacted_for_logs() {
        assert_eq!(
            redact_endpoint("http://127.0.0.1:8000/v1"),
            "http://127.0.0.1:8000/v1"
        );
        let r = redact_endpoint("https://u:secret@example.com/v1?api-key=secret");
        assert!(!r.contains("secret"), "{r}");
    }
}
