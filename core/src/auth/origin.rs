//! The Origin allow-list for browser upgrades.

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
