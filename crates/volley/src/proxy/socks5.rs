//! SOCKS5 tunnels (RFC 1928), with RFC 1929 username/password authentication, and
//! what the proxy's reply codes mean.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{malformed, proxy_error, Proxy, ProxyError, ProxyKind, Target};
use crate::error::Error;

pub(super) fn socks_reply_message(code: u8) -> &'static str {
    match code {
        1 => "general SOCKS server failure",
        2 => "connection not allowed by ruleset",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "unknown reply code",
    }
}

pub(super) fn socks_reply_kind(code: u8) -> io::ErrorKind {
    match code {
        2 => io::ErrorKind::PermissionDenied,
        3 => io::ErrorKind::NetworkUnreachable,
        4 => io::ErrorKind::HostUnreachable,
        5 => io::ErrorKind::ConnectionRefused,
        6 => io::ErrorKind::TimedOut,
        7 | 8 => io::ErrorKind::Unsupported,
        _ => io::ErrorKind::Other,
    }
}

pub(super) async fn socks5_connect(
    tcp: &mut TcpStream,
    proxy: &Proxy,
    target: &Target,
    port: u16,
) -> Result<(), Error> {
    let credentials = proxy.credentials.as_ref();
    if let Some((user, pass)) = credentials {
        if user.is_empty() || user.len() > 255 || pass.len() > 255 {
            return Err(Error::Config(
                "SOCKS5 username/password: the user name must have 1 to 255 bytes, the password at most 255".into(),
            ));
        }
    }
    // The address to send, checked (and for socks5:// resolved) before any byte goes out.
    let address = match (target, proxy.kind) {
        (Target::Ip(ip), _) => SocksAddr::Ip(*ip),
        (Target::Name(name), ProxyKind::Socks5h) => SocksAddr::Name(name.clone()),
        (Target::Name(name), _) => SocksAddr::Ip(resolve(name, port).await?),
    };

    // Greeting: no authentication, plus username/password if there are credentials.
    let greeting: &[u8] = if credentials.is_some() { &[5, 2, 0x00, 0x02] } else { &[5, 1, 0x00] };
    tcp.write_all(greeting).await?;
    let mut choice = [0u8; 2];
    read_reply(tcp, &mut choice, "method selection").await?;
    if choice[0] != 5 {
        return Err(not_socks5(&choice));
    }
    match (choice[1], credentials) {
        (0x00, _) => {}
        (0x02, Some((user, pass))) => {
            let mut auth = Vec::with_capacity(3 + user.len() + pass.len());
            auth.push(1);
            auth.push(user.len() as u8); // checked above: at most 255
            auth.extend_from_slice(user.as_bytes());
            auth.push(pass.len() as u8); // checked above: at most 255
            auth.extend_from_slice(pass.as_bytes());
            tcp.write_all(&auth).await?;
            let mut status = [0u8; 2];
            read_reply(tcp, &mut status, "username/password authentication").await?;
            // RFC 1929 says version 1, but some servers answer 5: only the status counts.
            if status[1] != 0 {
                return Err(proxy_error(ProxyError::SocksAuthFailed { status: status[1] }));
            }
        }
        (0xff, _) => {
            let offered_credentials = credentials.is_some();
            return Err(proxy_error(ProxyError::SocksNoAcceptableMethod { offered_credentials }));
        }
        (method, _) => return Err(malformed(format!("the SOCKS5 proxy chose method {method}, which was not offered"))),
    }

    // CONNECT.
    let mut request = vec![5, 1, 0];
    match &address {
        SocksAddr::Ip(IpAddr::V4(ip)) => {
            request.push(1);
            request.extend_from_slice(&ip.octets());
        }
        SocksAddr::Ip(IpAddr::V6(ip)) => {
            request.push(4);
            request.extend_from_slice(&ip.octets());
        }
        SocksAddr::Name(name) => {
            request.push(3);
            request.push(name.len() as u8); // Target::parse: at most 255 bytes
            request.extend_from_slice(name.as_bytes());
        }
    }
    request.extend_from_slice(&port.to_be_bytes());
    tcp.write_all(&request).await?;

    let mut reply = [0u8; 4];
    read_reply(tcp, &mut reply, "CONNECT").await?;
    if reply[0] != 5 {
        return Err(not_socks5(&reply));
    }
    if reply[1] != 0 {
        let code = reply[1];
        let target = match &address {
            SocksAddr::Ip(ip) => Target::Ip(*ip).authority(port),
            SocksAddr::Name(name) => format!("{name}:{port}"),
        };
        return Err(proxy_error(ProxyError::SocksReply { code, target }));
    }
    let bound = match reply[3] {
        1 => {
            let mut b = [0u8; 6];
            read_reply(tcp, &mut b, "CONNECT").await?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            SocketAddr::new(ip.into(), u16::from_be_bytes([b[4], b[5]])).to_string()
        }
        4 => {
            let mut b = [0u8; 18];
            read_reply(tcp, &mut b, "CONNECT").await?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&b[..16]);
            SocketAddr::new(Ipv6Addr::from(octets).into(), u16::from_be_bytes([b[16], b[17]])).to_string()
        }
        3 => {
            let mut len = [0u8; 1];
            read_reply(tcp, &mut len, "CONNECT").await?;
            let mut b = vec![0u8; usize::from(len[0]) + 2];
            read_reply(tcp, &mut b, "CONNECT").await?;
            let (name, port) = b.split_at(b.len() - 2);
            format!("{}:{}", String::from_utf8_lossy(name), u16::from_be_bytes([port[0], port[1]]))
        }
        atyp => return Err(malformed(format!("the SOCKS5 proxy's reply has an unknown address type {atyp}"))),
    };
    tracing::debug!(proxy = %proxy, bound, "SOCKS5 tunnel open");
    Ok(())
}

/// The address in a SOCKS5 CONNECT request.
enum SocksAddr {
    Ip(IpAddr),
    Name(String),
}

/// The first address `name` resolves to (for `socks5://`).
async fn resolve(name: &str, port: u16) -> Result<IpAddr, Error> {
    let context = |e: &dyn fmt::Display| {
        format!("cannot resolve {name} locally: {e} (with socks5h:// the proxy resolves the name instead)")
    };
    let mut addrs = tokio::net::lookup_host((name, port)).await.map_err(|e| io::Error::new(e.kind(), context(&e)))?;
    match addrs.next() {
        Some(addr) => Ok(addr.ip()),
        None => Err(Error::Io(io::Error::new(io::ErrorKind::NotFound, context(&"no address")))),
    }
}

/// Reads exactly `buf.len()` bytes of a SOCKS5 answer.
async fn read_reply(tcp: &mut TcpStream, buf: &mut [u8], step: &str) -> Result<(), Error> {
    match tcp.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(Error::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the SOCKS5 proxy closed the connection during the {step}"),
        ))),
        Err(e) => Err(e.into()),
    }
}

fn not_socks5(start: &[u8]) -> Error {
    let hint = if start.first() == Some(&b'H') { " (this looks like an HTTP proxy: use http://)" } else { "" };
    malformed(format!("the proxy does not speak SOCKS5: it answered version {}{hint}", start[0]))
}
