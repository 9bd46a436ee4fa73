//! The Origin allow-list for browser upgrades, and the page's own origin.
//!
//! An adapter answers "may this browser page open a WebSocket here?" with
//! [`upgrade_origin_allowed`]: it hands over the request's `Origin` and `Host` headers and
//! what it knows of the scheme ([`PageScheme`]); the core derives the page's own origin
//! ([`own_origins`]) and checks the allow-list ([`origin_allowed`]).

/// Whether a request with this `Origin` header may open a WebSocket.
///
/// - No `Origin` header: allowed (non-browser clients send none; browsers always do).
/// - The page's own origin (`own_origin`, e.g. `https://chat.example`): always allowed.
/// - Otherwise the origin must equal an entry of `allowed` as `scheme://host[:port]`:
///   scheme and host compared case-insensitively, the default port (80 for http, 443 for
///   https) equal to no port, nothing else tolerated (no path, no substring or suffix
///   match, `null` never matches).
///
/// An empty `allowed` list with no own origin therefore refuses every browser.
pub fn origin_allowed(origin: Option<&str>, allowed: &[String], own_origin: Option<&str>) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let Some(origin) = Origin::parse(origin) else {
        return false;
    };
    own_origin
        .into_iter()
        .chain(allowed.iter().map(String::as_str))
        .filter_map(Origin::parse)
        .any(|candidate| candidate == origin)
}

/// An origin reduced to the parts that decide sameness.
#[derive(Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    /// Parses `scheme://host[:port]` (a trailing `/` is tolerated in configuration); `None`
    /// for anything else, including the opaque origin `null`.
    fn parse(text: &str) -> Option<Origin> {
        let (scheme, rest) = text.trim().split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return None,
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
            return None;
        }
        // An IPv6 host is bracketed, so its colons are not the port's.
        let (host, port) = match rest.rfind(':') {
            Some(colon) if !rest[colon..].contains(']') => {
                let port: u16 = rest[colon + 1..].parse().ok()?;
                (&rest[..colon], Some(port))
            }
            _ => (rest, None),
        };
        if host.is_empty() {
            return None;
        }
        Some(Origin {
            scheme,
            host: host.to_ascii_lowercase(),
            port: port.filter(|port| *port != default_port),
        })
    }
}

/// The scheme the page was served over, as far as the adapter knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PageScheme {
    /// Plain HTTP (a trusted proxy's `X-Forwarded-Proto: http`).
    Http,
    /// HTTPS: TLS ended in this process, the request URL says `https` (a Worker), or a
    /// trusted proxy's `X-Forwarded-Proto: https`.
    Https,
    /// Not known (plain HTTP here, possibly behind a proxy that ended TLS and did not say):
    /// both `http://` and `https://` on the request's host are the page's own.
    Either,
}

impl PageScheme {
    /// The scheme named by a trusted proxy's `X-Forwarded-Proto` value (its first entry,
    /// case-insensitively), else `fallback`. Only call this when the proxy is trusted: a
    /// client can send the header itself.
    pub fn from_forwarded_proto(value: Option<&str>, fallback: PageScheme) -> PageScheme {
        let first = value
            .and_then(|value| value.split(',').next())
            .map(str::trim);
        match first {
            Some(proto) if proto.eq_ignore_ascii_case("https") => PageScheme::Https,
            Some(proto) if proto.eq_ignore_ascii_case("http") => PageScheme::Http,
            _ => fallback,
        }
    }
}

/// Longest `Host` value accepted: a 253-byte DNS name (or a bracketed IPv6 address, which
/// is shorter), a colon and a five-digit port.
pub const HOST_LEN_MAX_BYTES: usize = 253 + 1 + 5;

/// The page's own origins (`scheme://host[:port]`, lower-case) for a request whose `Host`
/// header is `host`, served over `scheme`: one origin, or two for [`PageScheme::Either`].
///
/// Empty when there is no `Host` or it is odd: longer than [`HOST_LEN_MAX_BYTES`], not ASCII,
/// with user info, a path, spaces, an empty or non-numeric port or port 0, empty DNS labels,
/// or a bracketed IPv6 address with anything but hex digits, `:` and `.`. An odd `Host`
/// never makes an origin allowed; the allow-list still applies.
pub fn own_origins(host: Option<&str>, scheme: PageScheme) -> Vec<String> {
    let Some(host) = host.and_then(valid_host) else {
        return Vec::new();
    };
    let schemes: &[&str] = match scheme {
        PageScheme::Http => &["http"],
        PageScheme::Https => &["https"],
        PageScheme::Either => &["http", "https"],
    };
    schemes
        .iter()
        .map(|scheme| format!("{scheme}://{host}"))
        .collect()
}

/// Whether a browser upgrade may proceed: `origin` is its `Origin` header, `host` its
/// `Host` header, `scheme` what the adapter knows of the page's scheme, `allowed` the
/// configured allow-list.
///
/// An empty `allowed` means no allow-list: every origin may connect. Otherwise
/// [`origin_allowed`] decides, with the page's own origins from [`own_origins`]. A refusal
/// is answered with [`answer::origin_refused`](crate::http::answer::origin_refused).
pub fn upgrade_origin_allowed(
    origin: Option<&str>,
    allowed: &[String],
    host: Option<&str>,
    scheme: PageScheme,
) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let own = own_origins(host, scheme);
    if own.is_empty() {
        return origin_allowed(origin, allowed, None);
    }
    own.iter()
        .any(|own| origin_allowed(origin, allowed, Some(own)))
}

/// `host[:port]` lower-cased if it is a plausible `Host` header value, else `None`.
fn valid_host(text: &str) -> Option<String> {
    if text.is_empty() || text.len() > HOST_LEN_MAX_BYTES || !text.is_ascii() {
        return None;
    }
    let port = if let Some(rest) = text.strip_prefix('[') {
        let (address, after) = rest.split_once(']')?;
        let address_ok = address.contains(':')
            && address
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
        if !address_ok {
            return None;
        }
        match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        }
    } else {
        let (name, port) = match text.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (text, None),
        };
        let name_ok = !name.is_empty()
            && name.len() <= 253
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
            && !name.starts_with('.')
            && !name.contains("..");
        if !name_ok {
            return None;
        }
        port
    };
    if let Some(port) = port {
        let digits_ok = (1..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit());
        if !digits_ok || port.parse::<u16>().ok()? == 0 {
            return None;
        }
    }
    // Every byte was checked above, as the name or the port.
    Some(text.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any `Host` and `Origin`, however odd: no panic, and every own origin derived is a
        /// well-formed origin that the check then admits (and no other browser page is).
        #[test]
        fn any_host_gives_well_formed_own_origins(
            host in prop_oneof![".{0,300}", "[a-zA-Z0-9.:\\[\\]_-]{0,40}"],
            origin in prop_oneof![".{0,60}", "https?://[a-z0-9.:]{0,30}"],
        ) {
            let allowed = vec!["https://app.example".to_owned()];
            let own = own_origins(Some(&host), PageScheme::Either);
            prop_assert!(own.is_empty() || own.len() == 2);
            for page in &own {
                prop_assert!(Origin::parse(page).is_some(), "{page}");
                prop_assert!(upgrade_origin_allowed(Some(page), &allowed, Some(&host), PageScheme::Either));
            }
            let admitted = upgrade_origin_allowed(Some(&origin), &allowed, Some(&host), PageScheme::Either);
            let expected = origin_allowed(Some(&origin), &allowed, None)
                || own.iter().any(|page| Origin::parse(page) == Origin::parse(&origin) && Origin::parse(&origin).is_some());
            prop_assert_eq!(admitted, expected);
        }
    }

    #[test]
    fn own_origins_from_host_and_scheme() {
        let cases: &[(Option<&str>, PageScheme, &[&str])] = &[
            (
                Some("chat.example"),
                PageScheme::Https,
                &["https://chat.example"],
            ),
            (
                Some("Chat.Example:8443"),
                PageScheme::Http,
                &["http://chat.example:8443"],
            ),
            (
                Some("127.0.0.1:8787"),
                PageScheme::Either,
                &["http://127.0.0.1:8787", "https://127.0.0.1:8787"],
            ),
            (
                Some("[::1]:8787"),
                PageScheme::Https,
                &["https://[::1]:8787"],
            ),
            (
                Some("[2001:DB8::1]"),
                PageScheme::Http,
                &["http://[2001:db8::1]"],
            ),
            (
                Some("under_score.example."),
                PageScheme::Https,
                &["https://under_score.example."],
            ),
            (
                Some("localhost:65535"),
                PageScheme::Https,
                &["https://localhost:65535"],
            ),
        ];
        for (host, scheme, expected) in cases {
            assert_eq!(
                own_origins(*host, *scheme),
                *expected,
                "{host:?} {scheme:?}"
            );
        }
    }

    #[test]
    fn odd_hosts_have_no_own_origin() {
        let long = format!("{}.example", "a".repeat(HOST_LEN_MAX_BYTES));
        let odd = [
            "",
            " ",
            "chat.example ",
            "chat.example:",
            "chat.example:0",
            "chat.example:65536",
            "chat.example:99999999999999999999",
            "chat.example:+80",
            "chat.example:80:80",
            "user@chat.example",
            "chat.example/path",
            "chat.example?x",
            "chat.example#x",
            "chat..example",
            ".chat.example",
            "ch\u{e4}t.example",
            "chat\nexample",
            "[::1",
            "[]",
            "[::1]x",
            "[::1]:",
            "[::g]",
            "[127.0.0.1]",
            "::1",
            ":80",
            long.as_str(),
        ];
        for host in odd {
            for scheme in [PageScheme::Http, PageScheme::Https, PageScheme::Either] {
                assert!(own_origins(Some(host), scheme).is_empty(), "{host:?}");
            }
        }
        assert!(own_origins(None, PageScheme::Either).is_empty());
    }

    #[test]
    fn forwarded_proto_decides_the_scheme_when_trusted() {
        let cases = [
            (Some("https"), PageScheme::Https),
            (Some("HTTPS"), PageScheme::Https),
            (Some(" http , https"), PageScheme::Http),
            (Some("wss"), PageScheme::Either),
            (Some(""), PageScheme::Either),
            (None, PageScheme::Either),
        ];
        for (value, expected) in cases {
            assert_eq!(
                PageScheme::from_forwarded_proto(value, PageScheme::Either),
                expected,
                "{value:?}"
            );
        }
    }

    #[test]
    fn upgrade_check_allows_own_page_and_the_list_only() {
        let allowed = vec!["https://app.example".to_owned()];
        let host = Some("chat.example");
        let cases: &[(Option<&str>, Option<&str>, PageScheme, bool)] = &[
            // No allow-list: anything goes.
            (Some("https://evil.example"), host, PageScheme::Https, true),
            (None, host, PageScheme::Https, true),
            (Some("https://app.example"), host, PageScheme::Https, true),
            (Some("https://chat.example"), host, PageScheme::Https, true),
            (
                Some("https://chat.example:443"),
                host,
                PageScheme::Https,
                true,
            ),
            // The scheme is known: the other one is not the page's own.
            (Some("http://chat.example"), host, PageScheme::Https, false),
            (Some("http://chat.example"), host, PageScheme::Either, true),
            (Some("https://chat.example"), host, PageScheme::Either, true),
            (
                Some("https://evil.example"),
                host,
                PageScheme::Either,
                false,
            ),
            // A Host naming the attacker's site does not make it own: odd hosts allow nothing.
            (
                Some("https://evil.example"),
                Some("evil.example/x"),
                PageScheme::Https,
                false,
            ),
            (
                Some("https://app.example"),
                Some("bad host"),
                PageScheme::Https,
                true,
            ),
            (Some("https://chat.example"), None, PageScheme::Https, false),
            (Some("null"), host, PageScheme::Either, false),
        ];
        for (index, (origin, host, scheme, expected)) in cases.iter().enumerate() {
            let list: &[String] = if index < 1 { &[] } else { &allowed };
            assert_eq!(
                upgrade_origin_allowed(*origin, list, *host, *scheme),
                *expected,
                "{origin:?} {host:?} {scheme:?}"
            );
        }
    }
}
