//! Who and what a connection is: [`ConnectionInfo`], with its addresses and request
//! target kept compactly.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};

use volley_proto::handshake::Headers;

/// Who and what a connection is: an id unique in the process, addresses, the request
/// target and headers, what the handshake agreed on.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub(super) id: u64,
    pub(super) addrs: Addrs,
    pub(super) target: Target,
    pub(super) headers: Headers,
    /// The agreed subprotocol, extensions and HTTP version, allocated only when they
    /// are not the plain ones (none, none, HTTP/1.1).
    pub(super) agreed: Option<Box<Agreed>>,
}

/// What a handshake agreed on beyond plain WebSocket over HTTP/1.1.
#[derive(Debug, Clone)]
pub(super) struct Agreed {
    pub(super) protocol: Option<Box<str>>,
    pub(super) extensions: Box<[volley_proto::ExtensionOffer]>,
    pub(super) http_version: http::Version,
}

impl Agreed {
    fn is_plain(&self) -> bool {
        self.protocol.is_none() && self.extensions.is_empty() && self.http_version == http::Version::HTTP_11
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A connection's two addresses: inline when both are IPv4 or unknown (16 bytes, where
/// two `Option<SocketAddr>` take 64), boxed otherwise.
#[derive(Debug, Clone)]
pub(super) enum Addrs {
    /// The remote's and the local address and port; bit 0 of `known` says the remote
    /// address is known, bit 1 the local one.
    V4 {
        ips: [[u8; 4]; 2],
        ports: [u16; 2],
        known: u8,
    },
    Other(Box<[Option<SocketAddr>; 2]>),
}

impl Default for Addrs {
    fn default() -> Self {
        Addrs::V4 { ips: [[0; 4]; 2], ports: [0; 2], known: 0 }
    }
}

/// A request target: inline up to [`Target::INLINE`] bytes (most WebSocket paths fit),
/// boxed past that. A small allocation that lives as long as its connection pins a
/// page of the heap that would otherwise go back to the allocator.
#[derive(Clone)]
pub(super) enum Target {
    Inline { len: u8, bytes: [u8; Target::INLINE] },
    Boxed(Box<str>),
}

impl Target {
    /// The longest target kept inline: 22 bytes make the whole 24.
    pub(super) const INLINE: usize = 22;

    pub(super) fn new(target: &str) -> Self {
        match u8::try_from(target.len()) {
            Ok(len) if target.len() <= Target::INLINE => {
                let mut bytes = [0; Target::INLINE];
                bytes[..target.len()].copy_from_slice(target.as_bytes());
                Target::Inline { len, bytes }
            }
            _ => Target::Boxed(target.into()),
        }
    }

    pub(super) fn as_str(&self) -> &str {
        match self {
            // Copied from a `&str`, cut at its end: always UTF-8.
            Target::Inline { len, bytes } => std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default(),
            Target::Boxed(s) => s,
        }
    }
}

impl Default for Target {
    fn default() -> Self {
        Target::new("")
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Addrs {
    pub(super) fn new(remote: Option<SocketAddr>, local: Option<SocketAddr>) -> Self {
        let mut inline = Addrs::default();
        if let Addrs::V4 { ips, ports, known } = &mut inline {
            for (i, addr) in [remote, local].into_iter().enumerate() {
                match addr {
                    None => {}
                    Some(SocketAddr::V4(a)) => {
                        (ips[i], ports[i]) = (a.ip().octets(), a.port());
                        *known |= 1 << i;
                    }
                    Some(SocketAddr::V6(_)) => return Addrs::Other(Box::new([remote, local])),
                }
            }
        }
        inline
    }

    /// The remote and the local address.
    pub(super) fn get(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        match self {
            Addrs::V4 { ips, ports, known } => {
                let at = |i: usize| {
                    (known & (1 << i) != 0).then(|| SocketAddr::V4(SocketAddrV4::new(ips[i].into(), ports[i])))
                };
                (at(0), at(1))
            }
            Addrs::Other(a) => (a[0], a[1]),
        }
    }
}

impl ConnectionInfo {
    pub(super) fn new(protocol: Option<String>) -> Self {
        let mut info = ConnectionInfo {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            addrs: Addrs::default(),
            target: Target::default(),
            headers: Headers::default(),
            agreed: None,
        };
        info.change_agreed(|a| a.protocol = protocol.map(String::into_boxed_str));
        info
    }

    /// Changes what was agreed, allocating only for what is not plain.
    pub(super) fn change_agreed(&mut self, change: impl FnOnce(&mut Agreed)) {
        let mut agreed = self.agreed.take().unwrap_or_else(|| {
            Box::new(Agreed { protocol: None, extensions: Box::default(), http_version: http::Version::HTTP_11 })
        });
        change(&mut agreed);
        self.agreed = (!agreed.is_plain()).then_some(agreed);
    }

    /// A number unique among the connections of this process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The peer's address, when the transport has one.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.addrs.get().0
    }

    /// This end's address, when the transport has one.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addrs.get().1
    }

    /// The request target, path and query (`/chat?room=1`).
    pub fn target(&self) -> &str {
        self.target.as_str()
    }

    /// The path part of the target.
    pub fn path(&self) -> &str {
        let target = self.target.as_str();
        target.split_once('?').map_or(target, |(p, _)| p)
    }

    /// The query part of the target without `?`, if any (`room=1`).
    pub fn query(&self) -> Option<&str> {
        self.target.as_str().split_once('?').map(|(_, q)| q)
    }

    /// The handshake headers: the request's on a server, the response's on a client.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The agreed subprotocol.
    pub fn protocol(&self) -> Option<&str> {
        self.agreed.as_ref()?.protocol.as_deref()
    }

    /// The agreed extensions, as they appeared in the server's answer.
    pub fn extensions(&self) -> &[volley_proto::ExtensionOffer] {
        self.agreed.as_ref().map_or(&[], |a| &a.extensions)
    }

    /// The HTTP version the WebSocket runs over (HTTP/1.1, or HTTP/2 with RFC 8441).
    pub fn http_version(&self) -> http::Version {
        self.agreed.as_ref().map_or(http::Version::HTTP_11, |a| a.http_version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::websocket::WebSocket;
    use volley_proto::Role;

    #[tokio::test]
    async fn the_agreed_protocol_extensions_and_http_version_come_back_as_given() {
        let ws = |protocol: Option<&str>, extensions: Vec<volley_proto::ExtensionOffer>| {
            let (io, _) = tokio::io::duplex(64);
            WebSocket::from_handshaken(io, Role::Server, Config::new(), &[], protocol.map(String::from), None)
                .with_handshake_info("/", Headers::default(), extensions, http::Version::HTTP_11)
        };
        let offer = volley_proto::ExtensionOffer { name: "x-test".into(), params: vec![("a".into(), None)] };
        let both = ws(Some("chat"), vec![offer.clone()]);
        assert_eq!((both.info().protocol(), both.info().extensions()), (Some("chat"), &[offer.clone()][..]));
        let ext = ws(None, vec![offer.clone()]);
        assert_eq!((ext.info().protocol(), ext.info().extensions()), (None, &[offer][..]));
        let proto = ws(Some("chat"), vec![]);
        assert_eq!((proto.info().protocol(), proto.info().extensions()), (Some("chat"), &[][..]));
        let neither = ws(None, vec![]);
        assert!(neither.info().protocol().is_none() && neither.info().extensions().is_empty());
        assert!(neither.info().agreed.is_none(), "nothing allocated");
        assert_eq!(neither.info().http_version(), http::Version::HTTP_11);
        let (io, _) = tokio::io::duplex(64);
        let h2 = WebSocket::from_handshaken(io, Role::Server, Config::new(), &[], None, None).with_handshake_info(
            "/",
            Headers::default(),
            vec![],
            http::Version::HTTP_2,
        );
        assert_eq!((h2.info().http_version(), h2.info().protocol()), (http::Version::HTTP_2, None));
        assert!(std::mem::size_of::<ConnectionInfo>() <= 72);
    }

    #[test]
    fn targets_of_any_length_come_back_as_given() {
        let long = "/".repeat(200);
        for t in ["", "/", "/chat?room=1", "/exactly/twenty-two/bb", "/twenty-three/bytes/abc", "/é/ü?q=ß", &long] {
            let target = Target::new(t);
            assert_eq!(target.as_str(), t);
            assert_eq!(matches!(target, Target::Inline { .. }), t.len() <= Target::INLINE, "{t}");
            assert_eq!(format!("{target:?}"), format!("{t:?}"));
        }
        assert!(std::mem::size_of::<Target>() <= 24, "{}", std::mem::size_of::<Target>());
    }

    #[test]
    fn addresses_of_either_family_come_back_as_given() {
        let v4: SocketAddr = "192.0.2.7:443".parse().unwrap();
        let v4b: SocketAddr = "127.0.0.1:51000".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1%3]:8080".parse().unwrap();
        for (remote, local) in [
            (None, None),
            (Some(v4), Some(v4b)),
            (Some(v4), None),
            (None, Some(v4b)),
            (Some(v6), Some(v4b)),
            (Some(v4), Some(v6)),
            (Some(v6), None),
        ] {
            let addrs = Addrs::new(remote, local);
            assert_eq!(addrs.get(), (remote, local));
            let v4_only = [remote, local].iter().flatten().all(|a| a.is_ipv4());
            assert_eq!(matches!(addrs, Addrs::V4 { .. }), v4_only, "{remote:?} {local:?}");
        }
        assert!(std::mem::size_of::<Addrs>() <= 16);
    }
}
