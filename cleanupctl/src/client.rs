//! The HTTP client of producer-api, and every way a request can fail, each with the
//! one-line message and exit code the user sees.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Why a command failed; [`CliError::exit_code`] is the process's exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad input found before any request (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The API could not be reached (exit 5).
    #[error("cannot reach the API at {server}: {reason}")]
    Unreachable { server: String, reason: String },
    /// 401 (exit 4).
    #[error("the API refused the token (401): {0}")]
    Unauthorized(String),
    /// 403: the detail names the scope needed (exit 4).
    #[error("not allowed (403): {0}")]
    Forbidden(String),
    /// Any other 4xx problem (exit 4).
    #[error("{}", problem_line(*.status, .detail, .field.as_deref()))]
    Refused {
        status: u16,
        detail: String,
        field: Option<String>,
        body: Value,
    },
    /// 5xx, or an answer that is not what the API sends (exit 5).
    #[error("the API failed ({status}): {detail}")]
    Server { status: u16, detail: String },
    /// The task ended failed, dead or cancelled (exit 1); the message says how.
    #[error("{0}")]
    TaskNotSucceeded(String),
    /// Waiting ran out (exit 3); the task goes on.
    #[error("{0}")]
    WaitTimedOut(String),
}

fn problem_line(status: u16, detail: &str, field: Option<&str>) -> String {
    match field {
        Some(field) => format!("refused ({status}): {detail} (field `{field}`)"),
        None => format!("refused ({status}): {detail}"),
    }
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::TaskNotSucceeded(_) => 1,
            CliError::Usage(_) => 2,
            CliError::WaitTimedOut(_) => 3,
            CliError::Unauthorized(_) | CliError::Forbidden(_) | CliError::Refused { .. } => 4,
            CliError::Unreachable { .. } | CliError::Server { .. } => 5,
        }
    }

    /// The problem document of a refused request, for `-o json`.
    pub fn body(&self) -> Option<&Value> {
        match self {
            CliError::Refused { body, .. } => Some(body),
            _ => None,
        }
    }
}

/// A successful answer: its status, `Location` and JSON body (`Null` when empty).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub location: Option<String>,
    pub body: Value,
}

pub struct Client {
    http: reqwest::Client,
    server: String,
    token: Option<String>,
}

impl Client {
    pub fn new(server: &str, token: Option<String>, timeout: Duration) -> Result<Self, CliError> {
        let server = server.trim_end_matches('/').to_owned();
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            return Err(CliError::Usage(format!(
                "--server `{server}` must start with http:// or https://"
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("cleanupctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Usage(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            http,
            server,
            token,
        })
    }

    pub async fn get(&self, path: &str) -> Result<Answer, CliError> {
        self.send(Method::GET, path, None, &[]).await
    }

    /// `GET path?query`, the values percent-encoded.
    pub async fn get_query(&self, path: &str, query: &[(&str, &str)]) -> Result<Answer, CliError> {
        self.answer(self.request(Method::GET, path).query(query))
            .await
    }

    /// A request to `path` with the token.
    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.server));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub async fn post(&self, path: &str, body: Option<Value>) -> Result<Answer, CliError> {
        self.send(Method::POST, path, body, &[]).await
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, CliError> {
        let mut request = self.request(method, path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.answer(request).await
    }

    /// Send `request`; a success's answer, or the error the user sees.
    async fn answer(&self, request: reqwest::RequestBuilder) -> Result<Answer, CliError> {
        let response = request.send().await.map_err(|e| CliError::Unreachable {
            server: self.server.clone(),
            reason: describe(&e),
        })?;
        let status = response.status();
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await.map_err(|e| CliError::Unreachable {
            server: self.server.clone(),
            reason: describe(&e),
        })?;
        let body: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            return Ok(Answer {
                status,
                location,
                body,
            });
        }
        let detail = body
            .get("detail")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| match &body {
                Value::String(text) => text.chars().take(200).collect(),
                _ => status.canonical_reason().unwrap_or("error").to_owned(),
            });
        Err(match status.as_u16() {
            401 => CliError::Unauthorized(if self.token.is_none() {
                "no token given: pass --token, --token-file or CLEANUP_TOKEN".to_owned()
            } else {
                detail
            }),
            403 => CliError::Forbidden(detail),
            400..=499 => CliError::Refused {
                status: status.as_u16(),
                field: body.get("field").and_then(Value::as_str).map(str::to_owned),
                detail,
                body,
            },
            code => CliError::Server {
                status: code,
                detail,
            },
        })
    }
}

/// The root cause of a transport error, in one line.
fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "no answer within --timeout".to_owned();
    }
    let mut source: &dyn std::error::Error = error;
    while let Some(next) = source.source() {
        source = next;
    }
    source.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        let client = Client::new("http://127.0.0.1:1", None, Duration::from_secs(1)).unwrap();
        let request = client
            .request(Method::GET, "/tasks")
            .query(&[("actor", "a b&c")])
            .build()
            .unwrap();
        assert_eq!(request.url().query(), Some("actor=a+b%26c"));
    }
}
