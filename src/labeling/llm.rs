//! Labels from an OpenAI-compatible chat API (OpenAI, vLLM, Ollama, llama.cpp server) through
//! async-openai.
//!
//! One Task: up to `max_attempts` requests at temperature 0. An answer that fails validation is
//! quoted back with the problems named (see [`super::prompt`]); a 429 or 5xx waits (Retry-After
//! when the server sends one, else a doubling back-off, never longer than the timeout) and asks
//! again; a timeout or lost connection asks again. When no attempt succeeds the Task gets the
//! fallback label, marked as such, and a later run relabels it: an LLM failure never fails a
//! batch.
//!
//! Requests go through our own transport ([`Transport`]) instead of async-openai's default one,
//! whose hidden retries would make the attempt count and the request counters wrong and whose
//! error type drops the Retry-After header. A 4xx other than 408/409/429 (a wrong key, model or
//! URL) and five Tasks in a row without an answer pause the labeler for [`PAUSE`], said once in
//! the log, so an outage does not cost every Task of a batch its full retry budget.
//!
//! The API key goes into the Authorization header and nowhere else: it is not logged, not in an
//! error message, not stored.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::{HttpRequestFactory, ReqwestService};
use async_openai::types::chat::{
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestMessage,
    ChatCompletionRequestSystemMessage, ChatCompletionRequestUserMessage,
    CreateChatCompletionRequest,
};
use serde::Serialize;
use tokio::sync::Semaphore;

use super::config::{LlmConfig, ResponseFormatChoice, redact_endpoint};
use super::prompt::{self, MAX_ANSWER_TOKENS};
use super::{Label, LabelRequest, LabelSource, Labeler, fallback_label, sanitize, truncate_chars};

/// First wait before asking again after a 5xx, timeout or lost connection; doubles each time.
const BASE_BACKOFF: Duration = Duration::from_millis(500);
/// How long the labeler writes fallback labels after the endpoint refused a request for good or
/// stopped answering.
pub const PAUSE: Duration = Duration::from_secs(600);
/// Tasks in a row without any answer (timeouts, lost connections, 5xx) that pause the labeler.
const FAILED_TASKS_BEFORE_PAUSE: usize = 5;
/// Longest part of an error body kept in a log line.
const MAX_ERROR_CHARS: usize = 300;

/// Installs rustls' `ring` crypto provider as the process default, once. async-openai is built
/// without a provider of its own (aws-lc takes a long C build), and reqwest panics when it builds
/// a client while no default provider is installed. Safe to call any number of times, from any
/// thread; a provider installed by someone else first is kept.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // rustls 0.23.48 deprecates ring's provider (no post-quantum key exchange); its
            // replacement, aws-lc-rs, is the long C build this project keeps out. The lock holds
            // 0.23.46; the fuzz crate's newer lock showed the warning, which a `cargo update`
            // would turn into a CI failure under clippy's -D warnings.
            #[allow(deprecated)]
            let ring = rustls::crypto::ring::default_provider();
            // Err only when another thread installed a provider in between; that one serves.
            let _ = ring.install_default();
        }
    });
}

/// What the labeler has done so far in this process (for metrics and the end-of-run log line).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LlmStats {
    /// HTTP requests sent.
    pub requests: u64,
    /// Attempts that gave no valid label (HTTP error, timeout, invalid or rejected answer).
    pub failures: u64,
    /// Attempts after the first for the same Task.
    pub retries: u64,
    /// Tasks that got the fallback label because the LLM gave none.
    pub fallbacks: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    failures: AtomicU64,
    retries: AtomicU64,
    fallbacks: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> LlmStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LlmStats {
            requests: get(&self.requests),
            failures: get(&self.failures),
            retries: get(&self.retries),
            fallbacks: get(&self.fallbacks),
            prompt_tokens: get(&self.prompt_tokens),
            completion_tokens: get(&self.completion_tokens),
        }
    }
}

/// A non-2xx answer, with what the retry decision needs.
#[derive(Debug)]
struct HttpStatus {
    status: u16,
    retry_after: Option<Duration>,
    message: String,
}

impl std::fmt::Display for HttpStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}: {}", self.status, self.message)
    }
}

impl std::error::Error for HttpStatus {}

/// The HTTP transport: reqwest, no retries, every request counted, non-2xx answers turned into
/// [`HttpStatus`] errors that keep the Retry-After header.
#[derive(Clone, Debug)]
struct Transport {
    inner: ReqwestService,
    counters: Arc<Counters>,
}

type TransportFuture =
    Pin<Box<dyn Future<Output = Result<reqwest::Response, OpenAIError>> + Send + 'static>>;

impl tower::Service<HttpRequestFactory> for Transport {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = TransportFuture;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), OpenAIError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: HttpRequestFactory) -> TransportFuture {
        Counters::add(&self.counters.requests, 1);
        let sent = self.inner.call(request);
        Box::pin(async move {
            let response = sent.await?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            let retry_after = retry_after(response.headers());
            let body = response.text().await.unwrap_or_default();
            Err(OpenAIError::Boxed(Box::new(HttpStatus {
                status: status.as_u16(),
                retry_after,
                message: error_message(&body),
            })))
        })
    }
}

/// Retry-After as seconds or as an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<f64>() {
        // Saturates: the wait is capped by the request timeout anyway.
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.signed_duration_since(chrono::Utc::now());
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// The `error.message` of an OpenAI-style error body, else the start of the body, cleaned.
fn error_message(body: &str) -> String {
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.to_string());
    let clean = sanitize(&message);
    if clean.is_empty() {
        "(empty body)".to_string()
    } else {
        truncate_chars(&clean, MAX_ERROR_CHARS).to_string()
    }
}

/// Why an attempt got no answer.
enum Failure {
    /// Worth asking again, after `wait` when the server said how long.
    Transient { wait: Option<Duration>, why: String },
    /// Asking again cannot help (wrong key, model or URL).
    Permanent(String),
}

fn classify(e: OpenAIError, timeout: Duration) -> Failure {
    match e {
        OpenAIError::Boxed(b) => match b.downcast::<HttpStatus>() {
            Ok(h) if h.status == 429 || h.status == 408 || h.status == 409 || h.status >= 500 => {
                Failure::Transient {
                    wait: h.retry_after,
                    why: h.to_string(),
                }
            }
            Ok(h) => Failure::Permanent(h.to_string()),
            Err(other) => Failure::Transient {
                wait: None,
                why: other.to_string(),
            },
        },
        OpenAIError::Reqwest(r) if r.is_timeout() => Failure::Transient {
            wait: None,
            why: format!("no answer within {:.1} s", timeout.as_secs_f64()),
        },
        OpenAIError::Reqwest(r) => Failure::Transient {
            wait: None,
            why: format!("request failed: {}", reqwest_error_chain(&r)),
        },
        OpenAIError::JSONDeserialize(err, body) => Failure::Transient {
            wait: None,
            why: format!(
                "the answer is not an OpenAI chat completion ({err}): {}",
                error_message(&body)
            ),
        },
        other => Failure::Permanent(other.to_string()),
    }
}

/// reqwest's error with its causes ("error sending request: connection refused").
fn reqwest_error_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The LLM labeler. Build it once per process: it holds the HTTP connection pool, the bound on
/// requests in flight and the counters.
pub struct LlmLabeler {
    client: Client<OpenAIConfig>,
    model: String,
    endpoint: String,
    timeout: Duration,
    max_attempts: u32,
    response_format: ResponseFormatChoice,
    concurrency: usize,
    permits: Semaphore,
    counters: Arc<Counters>,
    paused_until: Mutex<Option<Instant>>,
    failed_tasks_in_a_row: AtomicUsize,
}

impl LlmLabeler {
    /// A labeler for `cfg`, which must name an endpoint (a base URL, or a key for OpenAI).
    /// Makes no request; says once in the log where labels will come from.
    pub fn new(cfg: &LlmConfig) -> Result<Self> {
        cfg.validate()?;
        let Some(endpoint) = cfg.endpoint() else {
            bail!(
                "no LLM endpoint configured: set --llm-base-url (SEGCLUST_LLM_BASE_URL) or an \
                 API key in SEGCLUST_LLM_API_KEY / OPENAI_API_KEY"
            );
        };
        let key = cfg.api_key.as_ref().map(|k| k.expose()).unwrap_or("");
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            bail!(
                "the LLM API key contains spaces or control characters and cannot be sent; \
                 check SEGCLUST_LLM_API_KEY / OPENAI_API_KEY"
            );
        }
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout())
            .connect_timeout(cfg.timeout())
            .build()
            .context("could not set up the HTTP client for the LLM endpoint")?;
        // Org and project are set empty so that OPENAI_ORG_ID / OPENAI_PROJECT_ID of the
        // environment never go to another endpoint.
        let openai = OpenAIConfig::new()
            .with_api_base(endpoint.clone())
            .with_api_key(key)
            .with_org_id("")
            .with_project_id("");
        let counters = Arc::new(Counters::default());
        let transport = Transport {
            inner: ReqwestService::new(http.clone()),
            counters: Arc::clone(&counters),
        };
        let client = Client::build(http, openai).with_http_service(transport);
        let endpoint = redact_endpoint(&endpoint);
        tracing::info!(
            "LLM labels from {endpoint} (model {}), at most {} requests at once, {:.1} s timeout, \
             at most {} attempts per Task",
            cfg.model,
            cfg.concurrency,
            cfg.timeout_secs,
            cfg.max_attempts
        );
        Ok(Self {
            client,
            model: cfg.model.clone(),
            endpoint,
            timeout: cfg.timeout(),
            max_attempts: cfg.max_attempts,
            response_format: cfg.response_format,
            concurrency: cfg.concurrency,
            permits: Semaphore::new(cfg.concurrency),
            counters,
            paused_until: Mutex::new(None),
            failed_tasks_in_a_row: AtomicUsize::new(0),
        })
    }

    pub fn stats(&self) -> LlmStats {
        self.counters.snapshot()
    }

    /// A label for `req`: the LLM's, or the fallback when it gave none. Never an error.
    async fn label_or_fallback(&self, req: &LabelRequest) -> Label {
        if self.paused() {
            return self.fallback(req, None);
        }
        // The semaphore lives as long as `self` and is never closed.
        let Ok(_permit) = self.permits.acquire().await else {
            return self.fallback(req, None);
        };
        let mut messages = vec![
            ChatCompletionRequestMessage::System(ChatCompletionRequestSystemMessage::from(
                prompt::SYSTEM_PROMPT,
            )),
            ChatCompletionRequestMessage::User(ChatCompletionRequestUserMessage::from(
                prompt::user_message(req),
            )),
        ];
        let mut backoff = BASE_BACKOFF;
        let mut last_problem = String::new();
        let mut answered = false;
        for attempt in 1..=self.max_attempts {
            if attempt > 1 {
                if self.paused() {
                    break;
                }
                Counters::add(&self.counters.retries, 1);
            }
            match self.ask(&messages).await {
                Ok(content) => {
                    answered = true;
                    match prompt::check_answer(&content, attempt == self.max_attempts) {
                        Ok(a) => {
                            self.failed_tasks_in_a_row.store(0, Ordering::Relaxed);
                            return Label {
                                title: a.title,
                                description: a.description,
                                source: LabelSource::Llm,
                                actionable: a.actionable,
                            }
                            .clamped();
                        }
                        Err(problems) => {
                            Counters::add(&self.counters.failures, 1);
                            tracing::debug!(attempt, ?problems, "LLM answer rejected");
                            last_problem = format!("answer rejected: {}", problems.join("; "));
                            messages.push(ChatCompletionRequestMessage::Assistant(
                                ChatCompletionRequestAssistantMessage::from(prompt::quoted_answer(
                                    &content,
                                )),
                            ));
                            messages.push(ChatCompletionRequestMessage::User(
                                ChatCompletionRequestUserMessage::from(prompt::correction_message(
                                    &problems,
                                )),
                            ));
                        }
                    }
                }
                Err(Failure::Transient { wait, why }) => {
                    Counters::add(&self.counters.failures, 1);
                    tracing::debug!(attempt, "LLM request failed: {why}");
                    last_problem = why;
                    if attempt < self.max_attempts {
                        let wait = wait.unwrap_or(backoff).min(self.timeout);
                        backoff = backoff.saturating_mul(2);
                        tokio::time::sleep(wait).await;
                    }
                }
                Err(Failure::Permanent(why)) => {
                    Counters::add(&self.counters.failures, 1);
                    self.pause(&format!(
                        "the LLM endpoint {} refused the request ({why}); check the key, \
                         --llm-model and --llm-base-url",
                        self.endpoint
                    ));
                    last_problem = why;
                    break;
                }
            }
        }
        if !answered {
            let in_a_row = self.failed_tasks_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
            if in_a_row >= FAILED_TASKS_BEFORE_PAUSE {
                self.pause(&format!(
                    "{in_a_row} Tasks in a row got no answer from the LLM endpoint {} (last: \
                     {last_problem})",
                    self.endpoint
                ));
            }
        }
        self.fallback(req, Some(&last_problem))
    }

    /// One request; the answer's text.
    async fn ask(&self, messages: &[ChatCompletionRequestMessage]) -> Result<String, Failure> {
        #[allow(deprecated)] // max_tokens: what vLLM, Ollama and llama.cpp all understand.
        let request = CreateChatCompletionRequest {
            model: self.model.clone(),
            messages: messages.to_vec(),
            temperature: Some(0.0),
            max_tokens: Some(MAX_ANSWER_TOKENS),
            n: Some(1),
            response_format: prompt::response_format(self.response_format),
            ..Default::default()
        };
        let sent = tokio::time::timeout(self.timeout, self.client.chat().create(request)).await;
        let response = match sent {
            Err(_) => {
                return Err(Failure::Transient {
                    wait: None,
                    why: format!("no answer within {:.1} s", self.timeout.as_secs_f64()),
                });
            }
            Ok(Err(e)) => return Err(classify(e, self.timeout)),
            Ok(Ok(r)) => r,
        };
        if let Some(u) = &response.usage {
            Counters::add(&self.counters.prompt_tokens, u64::from(u.prompt_tokens));
            Counters::add(
                &self.counters.completion_tokens,
                u64::from(u.completion_tokens),
            );
        }
        let message = response.choices.into_iter().next().map(|c| c.message);
        Ok(message
            .and_then(|m| m.content.or(m.refusal))
            .unwrap_or_default())
    }

    fn fallback(&self, req: &LabelRequest, why: Option<&str>) -> Label {
        Counters::add(&self.counters.fallbacks, 1);
        if let Some(why) = why {
            tracing::warn!(
                "the LLM gave no valid label in {} attempt{} ({why}); the Task gets a fallback \
                 label, to be relabelled by a later run",
                self.max_attempts,
                if self.max_attempts == 1 { "" } else { "s" }
            );
        }
        fallback_label(req)
    }

    fn paused(&self) -> bool {
        let mut until = self
            .paused_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match *until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                *until = None;
                self.failed_tasks_in_a_row.store(0, Ordering::Relaxed);
                false
            }
            None => false,
        }
    }

    /// Stops asking for [`PAUSE`]; logs `why` once per pause.
    fn pause(&self, why: &str) {
        let mut until = self
            .paused_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if until.is_some_and(|t| Instant::now() < t) {
            return;
        }
        *until = Some(Instant::now() + PAUSE);
        tracing::error!(
            "{why}; Tasks get fallback labels for the next {} minutes and are relabelled later",
            PAUSE.as_secs() / 60
        );
    }
}

impl Labeler for LlmLabeler {
    async fn label(&self, req: &LabelRequest) -> Result<Label> {
        Ok(self.label_or_fallback(req).await)
    }

    fn max_in_flight(&self) -> usize {
        self.concurrency
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labeling::config::ApiKey;

    #[test]
    fn provider_install_is_idempotent() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(reqwest::header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO), "a past date: now");
        h.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
        // A server's header used to panic Duration here; the wait is capped by the timeout.
        h.insert(reqwest::header::RETRY_AFTER, "1e300".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::MAX));
    }

    #[test]
    fn error_bodies_are_summarized() {
        assert_eq!(
            error_message(r#"{"error": {"message": "Rate limit reached", "type": "x"}}"#),
            "Rate limit reached"
        );
        assert_eq!(error_message(""), "(empty body)");
        assert_eq!(error_message(&"x".repeat(1000)).len(), MAX_ERROR_CHARS);
    }

    #[test]
    fn keys_that_cannot_be_sent_are_refused_without_echoing_them() {
        let cfg = LlmConfig {
            base_url: Some("http://127.0.0.1:9/v1".into()),
            api_key: Some(ApiKey::new("sk-abc\u{7}def")),
            ..LlmConfig::default()
        };
        let Err(e) = LlmLabeler::new(&cfg) else {
            panic!("a key with a control character must be refused");
        };
        assert!(!format!("{e:#}").contains("sk-abc"), "{e:#}");
    }

    #[tokio::test]
    async fn building_makes_no_request() {
        let cfg = LlmConfig {
            base_url: Some("http://127.0.0.1:9/v1".into()),
            ..LlmConfig::default()
        };
        let l = LlmLabeler::new(&cfg).unwrap();
        assert_eq!(l.stats(), LlmStats::default());
        assert_eq!(l.max_in_flight(), 4);
    }
}
