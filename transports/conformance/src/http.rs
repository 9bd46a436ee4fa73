//! A tiny HTTP/1.1 client over tokio's `TcpStream`: one request per connection, plain
//! `http://` only, `Content-Length`, chunked and read-to-end bodies.
//!
//! The suite needs exact status lines, headers and bodies (including refusals of WebSocket
//! upgrades), which a full client would hide or follow; this one shows the bytes as they are.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one request may take, from connecting to the last byte of the body.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest response the client reads (headers and body), so a broken target cannot exhaust memory.
pub const RESPONSE_LEN_MAX_BYTES: usize = 16 * 1024 * 1024;

/// A parsed `http://` or `ws://` URL: host, port and the path (with query) after them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// The host, as written (a name or an IP address; IPv6 without brackets).
    pub host: String,
    /// The port (80 if not written).
    pub port: u16,
    /// The path and query, without a trailing slash; empty for the root.
    pub path: String,
}

impl Url {
    /// Parses `http://host[:port][/path]` (also `ws://`).
    ///
    /// # Errors
    /// If the scheme is not `http` or `ws`, or the port is not a number.
    pub fn parse(url: &str) -> Result<Url> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("ws://"))
            .ok_or_else(|| anyhow!("only http:// and ws:// URLs are supported, got {url:?}"))?;
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, ""),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| anyhow!("unterminated IPv6 address in {url:?}"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(port) => port
                .parse()
                .with_context(|| format!("bad port in {url:?}"))?,
            None => 80,
        };
        if host.is_empty() {
            bail!("no host in {url:?}");
        }
        Ok(Url {
            host: host.to_owned(),
            port,
            path: path.trim_end_matches('/').to_owned(),
        })
    }

    /// `host:port` as a `Host` header (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

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
    let target = format!("{}{}", url.path, path_and_query);
    let target = if target.is_empty() {
        "/".into()
    } else {
        target
    };
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        request_inner(url, method, &target, headers, body),
    )
    .await
    .map_err(|_| anyhow!("{method} {target}: no complete answer within {REQUEST_TIMEOUT:?}"))?
    .with_context(|| format!("{method} {target}"))
}

async fn request_inner(
    url: &Url,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response> {
    let mut stream = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .with_context(|| format!("connecting to {}", url.authority()))?;
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {}\r\n",
        url.authority()
    );
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("connection"))
    {
        head.push_str("Connection: close\r\n");
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await?;

    let mut buf = Vec::new();
    let header_end = loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            break end;
        }
        if read_more(&mut stream, &mut buf).await? == 0 {
            bail!("connection closed before the end of the response headers");
        }
    };
    let head = std::str::from_utf8(&buf[..header_end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let mut rest = buf.split_off(header_end + 4);
    if (100..200).contains(&status) || status == 204 || status == 304 || method == "HEAD" {
        return Ok(response);
    }
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let length = response
        .header("content-length")
        .map(|v| v.parse::<usize>())
        .transpose()
        .context("bad Content-Length")?;
    if chunked {
        response.body = read_chunked(&mut stream, rest).await?;
    } else if let Some(length) = length {
        if length > RESPONSE_LEN_MAX_BYTES {
            bail!("Content-Length {length} is over the client's limit");
        }
        while rest.len() < length {
            if read_more(&mut stream, &mut rest).await? == 0 {
                bail!(
                    "connection closed after {} of {length} body bytes",
                    rest.len()
                );
            }
        }
        rest.truncate(length);
        response.body = rest;
    } else {
        while read_more(&mut stream, &mut rest).await? != 0 {}
        response.body = rest;
    }
    Ok(response)
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize> {
    if buf.len() > RESPONSE_LEN_MAX_BYTES {
        bail!("response is over the client's limit");
    }
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

async fn read_chunked(stream: &mut TcpStream, mut buf: Vec<u8>) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(end) = find(&buf, b"\r\n") {
                break end;
            }
            if read_more(stream, &mut buf).await? == 0 {
                bail!("connection closed inside a chunk header");
            }
        };
        let size_text = std::str::from_utf8(&buf[..line_end])?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        if body.len() + size > RESPONSE_LEN_MAX_BYTES {
            bail!("chunked body is over the client's limit");
        }
        while buf.len() < line_end + 2 + size + 2 {
            if read_more(stream, &mut buf).await? == 0 {
                if size == 0 {
                    // Trailers missing their final CRLF: the body is complete anyway.
                    return Ok(body);
                }
                bail!("connection closed inside a chunk");
            }
        }
        body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
        buf.drain(..line_end + 2 + size + 2);
        if size == 0 {
            return Ok(body);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let url = Url::parse("http://127.0.0.1:8787").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.path.as_str()),
            ("127.0.0.1", 8787, "")
        );
        let url = Url::parse("http://localhost/prefix/").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.path.as_str()),
            ("localhost", 80, "/prefix")
        );
        let url = Url::parse("ws://[::1]:9/x").unwrap();
        assert_eq!(url.authority(), "[::1]:9");
        assert!(Url::parse("https://example.invalid").is_err());
        assert!(Url::parse("http://h:port").is_err());
    }
}
