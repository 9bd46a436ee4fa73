//! Where a server is: the base URL every route hangs from.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::error::{Error, Result};

/// What a path segment or query value escapes: everything but RFC 3986's unreserved set.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes `text` for use as one path segment or one query value.
pub fn encode_component(text: &str) -> String {
    utf8_percent_encode(text, COMPONENT).to_string()
}

/// A parsed base URL: `http(s)://` or `ws(s)://`, a host, an optional port and an optional
/// path prefix (for a server mounted under a path, e.g. `http://host/chat`).
///
/// `http` and `ws` are the same server; `https` and `wss` too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// Whether the scheme is `https` or `wss`.
    pub secure: bool,
    /// The host as written (a name or an IP address; an IPv6 address without brackets).
    pub host: String,
    /// The port (80 or 443 if not written).
    pub port: u16,
    /// The path prefix without a trailing slash; empty at the root.
    pub prefix: String,
}

impl BaseUrl {
    /// Parses `url`; a query or fragment is ignored.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] for another scheme, a missing host or an unparseable URL.
    pub fn parse(url: &str) -> Result<BaseUrl> {
        let invalid = |why| Error::InvalidUrl {
            url: url.to_owned(),
            why,
        };
        let uri: http::Uri = url.parse().map_err(|_| invalid("not a URL"))?;
        let secure = match uri.scheme_str() {
            Some("http" | "ws") => false,
            Some("https" | "wss") => true,
            _ => return Err(invalid("the scheme must be http, https, ws or wss")),
        };
        let host = uri.host().ok_or_else(|| invalid("no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        // `http::Uri` keeps a port it cannot read as text; refuse it rather than guess.
        let authority = uri.authority().map_or("", |a| a.as_str());
        let after_host = &authority[authority.rfind(']').map_or(0, |end| end + 1)..];
        let port = match after_host.rsplit_once(':') {
            Some((_, port)) => port
                .parse()
                .map_err(|_| invalid("the port is not a number"))?,
            None => {
                if secure {
                    443
                } else {
                    80
                }
            }
        };
        Ok(BaseUrl {
            secure,
            host: host.to_owned(),
            port,
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    /// `host:port`, for the `Host` header (an IPv6 address in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The `ws://` or `wss://` URL of `path_and_query` (which starts with `/`) under the prefix.
    pub fn ws_url(&self, path_and_query: &str) -> String {
        let scheme = if self.secure { "wss" } else { "ws" };
        format!(
            "{scheme}://{}{}{path_and_query}",
            self.authority(),
            self.prefix
        )
    }

    /// The request target (origin form) of `path_and_query` under the prefix.
    pub fn target(&self, path_and_query: &str) -> String {
        let target = format!("{}{path_and_query}", self.prefix);
        if target.is_empty() {
            "/".to_owned()
        } else {
            target
        }
    }

    /// The path of a room route: `/api/room/<room>/<what>`, the room name escaped.
    pub fn room_path(room: &str, what: &str) -> String {
        format!("/api/room/{}/{what}", encode_component(room))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_base_urls() {
        let url = BaseUrl::parse("http://127.0.0.1:8787").unwrap();
        assert_eq!(
            (url.secure, url.host.as_str(), url.port, url.prefix.as_str()),
            (false, "127.0.0.1", 8787, "")
        );
        let url = BaseUrl::parse("wss://chat.example.com/prefix/").unwrap();
        assert_eq!(
            (url.secure, url.port, url.prefix.as_str()),
            (true, 443, "/prefix")
        );
        assert_eq!(url.ws_url("/x"), "wss://chat.example.com:443/prefix/x");
        let url = BaseUrl::parse("ws://[::1]:9/x").unwrap();
        assert_eq!(url.authority(), "[::1]:9");
        assert_eq!(url.target(""), "/x");
        assert!(BaseUrl::parse("ftp://example.invalid").is_err());
        assert!(BaseUrl::parse("http://h:port").is_err());
        assert_eq!(BaseUrl::parse("http://h").unwrap().target(""), "/");
    }

    #[test]
    fn escapes_room_names() {
        assert_eq!(
            BaseUrl::room_path("a b/c", "history"),
            "/api/room/a%20b%2Fc/history"
        );
        assert_eq!(encode_component("lobby-1_x.y~"), "lobby-1_x.y~");
    }
}
