//! The proxy from the environment, as curl chooses it: `ws(s)_proxy`, `https_proxy`,
//! `http_proxy`, `all_proxy`, and the `no_proxy` exemptions.

use std::net::IpAddr;

use super::url::split_host_port;
use super::Proxy;
use crate::error::Error;

impl Proxy {
    /// The proxy for a connection to `target_host` with scheme `target_scheme` (`ws` or
    /// `wss`), from the process environment; see [`Proxy::from_env_with`]. A variable
    /// that holds an unusable proxy URL is logged (`tracing` warning) and ignored, which
    /// means a direct connection: use [`Proxy::try_from_env_with`] to see the error.
    pub fn from_env(target_scheme: &str, target_host: &str) -> Option<Proxy> {
        Proxy::from_env_with(|name| std::env::var(name).ok(), target_scheme, target_host)
    }

    /// The proxy for a connection to `target_host` with scheme `target_scheme`, from the
    /// variables that `get` returns (`get` is `std::env::var` for [`Proxy::from_env`];
    /// tests pass a table). The rules are curl's:
    ///
    /// 1. If `no_proxy` (or, when `no_proxy` is unset, `NO_PROXY`) matches the target
    ///    ([`no_proxy_matches`]), no proxy.
    /// 2. Otherwise the first variable that is set, in this order:
    ///    - `wss` (and `https`): `wss_proxy`, `WSS_PROXY`, `https_proxy`, `HTTPS_PROXY`;
    ///    - `ws` (and `http`): `ws_proxy`, `WS_PROXY`, `http_proxy`;
    ///    - then, for every scheme: `all_proxy`, `ALL_PROXY`.
    ///
    ///    The upper-case `HTTP_PROXY` is never read, as in curl: in CGI programs the
    ///    client controls it (the request's `Proxy:` header becomes `HTTP_PROXY`), so
    ///    honouring it would let a remote client redirect the program's connections
    ///    ("httpoxy").
    /// 3. A variable set to the empty string means no proxy (it does not fall through to
    ///    the next one), as in curl.
    ///
    /// `target_host` is the target's host as in a URL, optionally with its port
    /// (`example.com`, `example.com:8443`, `[::1]:9001`, `::1`); without a port, the
    /// scheme's default (80 for `ws`, 443 for `wss`) is matched against `no_proxy`
    /// entries that name a port. Invalid proxy URLs: see [`Proxy::from_env`].
    pub fn from_env_with<F>(get: F, target_scheme: &str, target_host: &str) -> Option<Proxy>
    where
        F: FnMut(&str) -> Option<String>,
    {
        Proxy::try_from_env_with(get, target_scheme, target_host).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignoring the proxy environment variable: connecting directly");
            None
        })
    }

    /// [`Proxy::from_env_with`], but a variable that holds an unusable proxy URL (an
    /// `https://` proxy, a bad port, …) is an error rather than ignored.
    pub fn try_from_env_with<F>(mut get: F, target_scheme: &str, target_host: &str) -> Result<Option<Proxy>, Error>
    where
        F: FnMut(&str) -> Option<String>,
    {
        let scheme = target_scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "ws" | "http" => Some(80),
            "wss" | "https" => Some(443),
            _ => None,
        };
        let no_proxy = get("no_proxy").or_else(|| get("NO_PROXY"));
        if let Some(no_proxy) = no_proxy {
            if let Some((host, port)) = split_host_port(target_host) {
                if no_proxy_match(&no_proxy, &host, port.or(default_port)) {
                    return Ok(None);
                }
            }
        }
        let names: &[&str] = match scheme.as_str() {
            "wss" | "https" => &["wss_proxy", "WSS_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"],
            "ws" | "http" => &["ws_proxy", "WS_PROXY", "http_proxy", "all_proxy", "ALL_PROXY"],
            _ => &["all_proxy", "ALL_PROXY"],
        };
        for name in names {
            if let Some(value) = get(name) {
                if value.trim().is_empty() {
                    return Ok(None);
                }
                return match Proxy::parse(&value) {
                    Ok(proxy) => Ok(Some(proxy)),
                    Err(Error::Url(e)) => Err(Error::Url(format!("{name}: {e}"))),
                    Err(e) => Err(e),
                };
            }
        }
        Ok(None)
    }
}

/// Whether a `no_proxy` list exempts `target_host` from the proxy. `target_host` is a
/// host as in a URL, optionally with a port: `example.com`, `example.com:9001`,
/// `10.1.2.3`, `[::1]:9001`, `::1`.
///
/// The list is separated by commas and/or whitespace; matching ignores case. Entries:
///
/// - `*` matches every host;
/// - a name (`example.com`, `.example.com` or `*.example.com`: the same) matches that
///   name and its subdomains, on label boundaries (`example.com` matches
///   `ws.example.com` but not `badexample.com`); trailing dots are ignored;
/// - an IP address (`127.0.0.1`, `::1`, `[::1]`) matches that address, whatever its
///   spelling; with a prefix length (`10.0.0.0/8`, `fd00::/8`) a network, as curl does;
///   names never match addresses (no DNS look-ups);
/// - any of these with a port (`example.com:8080`, `127.0.0.1:9001`, `[::1]:9001`)
///   matches only connections to that port, which needs a port in `target_host`
///   ([`Proxy::from_env_with`] supplies the scheme's default).
pub fn no_proxy_matches(no_proxy: &str, target_host: &str) -> bool {
    match split_host_port(target_host) {
        Some((host, port)) => no_proxy_match(no_proxy, &host, port),
        None => false,
    }
}

fn no_proxy_match(no_proxy: &str, host: &str, port: Option<u16>) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return false;
    }
    let host_ip = host.parse::<IpAddr>().ok();
    no_proxy.split(|c: char| c == ',' || c.is_whitespace()).filter(|e| !e.is_empty()).any(|entry| {
        if entry == "*" {
            return true;
        }
        let Some((pattern, entry_port)) = split_no_proxy_entry(entry) else {
            return false;
        };
        if entry_port.is_some() && entry_port != port {
            return false;
        }
        match host_ip {
            Some(ip) => ip_entry_matches(&pattern, ip),
            None => {
                let pattern = pattern.trim_start_matches('*').trim_start_matches('.').trim_end_matches('.');
                let pattern = pattern.to_ascii_lowercase();
                !pattern.is_empty()
                    && (host == pattern
                        || (host.len() > pattern.len()
                            && host.ends_with(&pattern)
                            && host.as_bytes()[host.len() - pattern.len() - 1] == b'.'))
            }
        }
    })
}

/// An entry's host part and port: `[v6]:port`, `[v6]`, `v6`, `net/bits`, `host:port`,
/// `host`. `None` for an entry that cannot match anything.
fn split_no_proxy_entry(entry: &str) -> Option<(String, Option<u16>)> {
    if entry.contains('/') && !entry.starts_with('[') {
        return Some((entry.to_string(), None));
    }
    split_host_port(entry)
}

fn ip_entry_matches(pattern: &str, ip: IpAddr) -> bool {
    let (net, bits) = match pattern.split_once('/') {
        Some((net, bits)) => match bits.parse::<u8>() {
            Ok(bits) => (net, Some(bits)),
            Err(_) => return false,
        },
        None => (pattern, None),
    };
    let Ok(net) = net.parse::<IpAddr>() else {
        return false;
    };
    match (net, ip) {
        (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_matches(&net.octets(), &ip.octets(), bits.unwrap_or(32)),
        (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_matches(&net.octets(), &ip.octets(), bits.unwrap_or(128)),
        _ => false,
    }
}

/// Whether the first `bits` bits of `a` and `b` are equal (false if `bits` is longer
/// than the addresses).
fn prefix_matches(a: &[u8], b: &[u8], bits: u8) -> bool {
    let bits = usize::from(bits);
    if bits > a.len() * 8 {
        return false;
    }
    let (whole, rest) = (bits / 8, bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || (a[whole] ^ b[whole]) & (0xffu8 << (8 - rest)) == 0
}
