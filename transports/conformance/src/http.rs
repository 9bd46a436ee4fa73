//! HTTP for the suite: edgechat-client's [`HttpClient`], one request per connection, with
//! the answer exactly as the target gave it (status, headers, body), including refusals of
//! WebSocket upgrades sent as plain requests.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use edgechat_client::http::HttpClient;

/// A parsed `http://` or `ws://` base URL: host, port and a path prefix.
pub use edgechat_client::url::BaseUrl as Url;

/// How long one request may take, from connecting to the last byte of the body.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// One HTTP response, body already de-chunked.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Headers in the order received, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body (empty for 1xx, 204 and HEAD).
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    ///
    /// # Errors
    /// If the body is not JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "status {}: body is not JSON: {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// Fails unless the status and the exact plain-text body are as given.
    ///
    /// # Errors
    /// Describes the difference.
    pub fn expect(&self, status: u16, body: &str, what: &str) -> Result<()> {
        if self.status != status || self.text() != body {
            bail!(
                "{what}: expected {status} {body:?}, got {} {:?}",
                self.status,
                self.text()
            );
        }
        Ok(())
    }
}

/// Sends one request to `url` (`path_and_query` is appended to its path) and reads the answer.
///
/// A `101 Switching Protocols` answer is returned as soon as its headers are read.
///
/// # Errors
/// On connection failures, timeouts and unparseable responses.
pub async fn request(
    url: &Url,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response> {
    let mut client = HttpClient::for_base(url.clone(), None)?;
    client.timeout = REQUEST_TIMEOUT;
    let response = client
        .request(method, path_and_query, headers, body)
        .await
        .with_context(|| format!("{method} {}", url.target(path_and_query)))?;
    Ok(Response {
        status: response.status,
        headers: response.headers,
        body: response.body.to_vec(),
    })
}
