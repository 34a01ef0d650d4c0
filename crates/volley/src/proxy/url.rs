//! Proxy URLs: `scheme://[user[:password]@]host[:port]` parsed into a [`Proxy`], and
//! host/port splitting shared with the `no_proxy` matching.

use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use super::{Proxy, ProxyKind};
use crate::error::Error;

/// The port of a proxy URL without one (curl's default, for every scheme).
pub const DEFAULT_PORT: u16 = 1080;

impl Proxy {
    /// Parses a proxy URL (see the [module documentation](crate::proxy#proxy-urls)):
    /// `http://user:pass@host:3128`, `socks5://host`, `socks5h://[::1]:1080`, or
    /// `host:port` for an HTTP proxy. `https://`, `socks4://` and other schemes are
    /// refused with [`Error::Url`].
    pub fn parse(url: &str) -> Result<Proxy, Error> {
        parse_proxy_url(url, ProxyKind::Http)
    }

    /// An HTTP `CONNECT` proxy: `http://[user:pass@]host[:port]`, or the same without
    /// the scheme. Any other scheme is an error.
    pub fn http(url: &str) -> Result<Proxy, Error> {
        let proxy = parse_proxy_url(url, ProxyKind::Http)?;
        match proxy.kind {
            ProxyKind::Http => Ok(proxy),
            _ => Err(Error::Url(format!("{}: not an http:// proxy URL", redact(url)))),
        }
    }

    /// A SOCKS5 proxy: `socks5://` (the target's name is resolved locally) or
    /// `socks5h://` (the proxy resolves it), with optional `user:pass@`; without a
    /// scheme, `socks5://`. Any other scheme is an error.
    pub fn socks5(url: &str) -> Result<Proxy, Error> {
        let proxy = parse_proxy_url(url, ProxyKind::Socks5)?;
        match proxy.kind {
            ProxyKind::Socks5 | ProxyKind::Socks5h => Ok(proxy),
            ProxyKind::Http => Err(Error::Url(format!("{}: not a socks5:// or socks5h:// proxy URL", redact(url)))),
        }
    }
}

impl FromStr for Proxy {
    type Err = Error;

    /// [`Proxy::parse`].
    fn from_str(url: &str) -> Result<Proxy, Error> {
        Proxy::parse(url)
    }
}

/// A URL with its password hidden, for error messages.
fn redact(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or_default();
            format!("{scheme}{user}:***{}", &rest[at..])
        }
        None => url.to_string(),
    }
}

fn parse_proxy_url(url: &str, default_kind: ProxyKind) -> Result<Proxy, Error> {
    let shown = redact(url.trim());
    let bad = |why: &str| Error::Url(format!("{shown}: {why}"));
    let url = url.trim();
    let (kind, rest) = match url.find("://") {
        None => (default_kind, url),
        Some(i) => {
            let kind = match url[..i].to_ascii_lowercase().as_str() {
                "http" => ProxyKind::Http,
                "socks5" => ProxyKind::Socks5,
                "socks5h" => ProxyKind::Socks5h,
                "https" => {
                    return Err(bad("HTTPS proxies (TLS to the proxy) are not supported: use http:// or socks5h://"))
                }
                "socks4" | "socks4a" => {
                    return Err(bad("SOCKS4 proxies are not supported: use socks5:// or socks5h://"))
                }
                _ => return Err(bad("the proxy scheme must be http://, socks5:// or socks5h://")),
            };
            (kind, &url[i + 3..])
        }
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    let credentials = match userinfo {
        None => None,
        Some(info) => {
            let (user, pass) = info.split_once(':').unwrap_or((info, ""));
            let user = percent_decode(user).ok_or_else(|| bad("bad percent-encoding in the user name"))?;
            let pass = percent_decode(pass).ok_or_else(|| bad("bad percent-encoding in the password"))?;
            Some((user, pass))
        }
    };
    let (host, port) = split_host_port(hostport).ok_or_else(|| bad("bad host or port"))?;
    let host_ok = host.parse::<IpAddr>().is_ok()
        || (!host.is_empty()
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            && !host.contains(':'));
    if !host_ok {
        return Err(bad("bad host"));
    }
    let port = match port {
        Some(0) => return Err(bad("port 0")),
        Some(port) => port,
        None => DEFAULT_PORT,
    };
    Ok(Proxy { kind, host, port, credentials })
}

/// Splits `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address into the
/// host (without brackets) and the port. `None` if the port is not a number.
pub(super) fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse().ok()?),
        };
        return Some((host.to_string(), port));
    }
    if s.parse::<Ipv6Addr>().is_ok() {
        return Some((s.to_string(), None));
    }
    match s.rsplit_once(':') {
        Some((host, port)) => Some((host.to_string(), Some(port.parse().ok()?))),
        None => Some((s.to_string(), None)),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
