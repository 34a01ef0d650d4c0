//! The JSON wire format: newline-delimited commands in, newline-delimited replies and
//! pushes out, several to a frame.
//!
//! Decoding borrows: a command's `data` becomes a slice of the frame's own bytes, not a
//! copy. Encoding is written by hand into a `BytesMut`, so that payloads are embedded
//! as they are and each field appears exactly as the clients expect it: a result key
//! is present even when the result is empty (`{"id":2,"publish":{}}`), other fields
//! are left out when empty, false or zero, as Centrifugo does.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    ClientInfo, Command, ConnectRequest, ConnectResult, Disconnect, ErrorReply, FilterNode, HistoryRequest,
    Publication, Push, PushKind, Reply, ReplyResult, Request, StreamPosition, SubscribeRequest, SubscribeResult,
};

/// A frame that is not a sequence of valid commands.
#[derive(Debug, thiserror::Error)]
#[error("malformed JSON command: {0}")]
pub struct DecodeError(String);

/// Decodes the commands of one frame: one JSON object per line (empty lines are
/// skipped). `data` fields are slices of `frame`.
pub fn decode_commands(frame: &Bytes) -> Result<Vec<Command>, DecodeError> {
    let mut out = Vec::new();
    for line in frame.split(|&b| b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        out.push(decode_command(frame, line)?);
    }
    Ok(out)
}

/// Decodes one command; `line` is a slice of `frame`.
fn decode_command(frame: &Bytes, line: &[u8]) -> Result<Command, DecodeError> {
    let c: JCommand<'_> = serde_json::from_slice(line).map_err(|e| DecodeError(e.to_string()))?;
    let data = |raw: Option<&RawValue>| raw.map(|r| frame.slice_ref(r.get().as_bytes())).unwrap_or_default();
    let request = if let Some(r) = c.connect {
        Request::Connect(ConnectRequest {
            token: r.token,
            data: data(r.data),
            subs: r.subs.into_iter().map(|(ch, s)| (ch, s.into_request(frame))).collect(),
            name: r.name,
            version: r.version,
            headers: r.headers,
        })
    } else if let Some(r) = c.subscribe {
        Request::Subscribe(r.into_request(frame))
    } else if let Some(r) = c.unsubscribe {
        Request::Unsubscribe { channel: r.channel }
    } else if let Some(r) = c.publish {
        Request::Publish { channel: r.channel, data: data(r.data) }
    } else if let Some(r) = c.presence {
        Request::Presence { channel: r.channel }
    } else if let Some(r) = c.presence_stats {
        Request::PresenceStats { channel: r.channel }
    } else if let Some(r) = c.history {
        Request::History(HistoryRequest {
            channel: r.channel,
            limit: r.limit,
            since: r.since.map(|s| StreamPosition { offset: s.offset, epoch: s.epoch }),
            reverse: r.reverse,
        })
    } else if let Some(r) = c.rpc {
        Request::Rpc { method: r.method, data: data(r.data) }
    } else if let Some(r) = c.send {
        Request::Send { data: data(r.data) }
    } else if let Some(r) = c.refresh {
        Request::Refresh { token: r.token }
    } else if let Some(r) = c.sub_refresh {
        Request::SubRefresh { channel: r.channel, token: r.token }
    } else {
        Request::None
    };
    Ok(Command { id: c.id, request })
}

#[derive(Deserialize)]
struct JCommand<'a> {
    #[serde(default)]
    id: u32,
    #[serde(borrow)]
    connect: Option<JConnect<'a>>,
    #[serde(borrow)]
    subscribe: Option<JSubscribe<'a>>,
    unsubscribe: Option<JChannel>,
    #[serde(borrow)]
    publish: Option<JPublish<'a>>,
    presence: Option<JChannel>,
    presence_stats: Option<JChannel>,
    history: Option<JHistory>,
    #[serde(borrow)]
    rpc: Option<JRpc<'a>>,
    #[serde(borrow)]
    send: Option<JData<'a>>,
    refresh: Option<JToken>,
    sub_refresh: Option<JSubRefresh>,
    /// The v2 `ping` command carries nothing; accepted and answered like an empty one.
    #[allow(dead_code)]
    ping: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct JConnect<'a> {
    #[serde(default)]
    token: String,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(default, borrow)]
    subs: BTreeMap<String, JSubscribe<'a>>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct JSubscribe<'a> {
    #[serde(default)]
    channel: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    recover: bool,
    #[serde(default)]
    epoch: String,
    #[serde(default)]
    offset: u64,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    positioned: bool,
    #[serde(default)]
    recoverable: bool,
    #[serde(default)]
    join_leave: bool,
    #[serde(default)]
    delta: String,
    #[serde(default)]
    flag: u64,
    tf: Option<JFilter>,
}

/// A tags filter node, as `FilterNode` in JSON (recursion is bounded by serde_json's
/// depth limit and by the command's size).
#[derive(Deserialize)]
struct JFilter {
    #[serde(default)]
    op: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    cmp: String,
    #[serde(default)]
    val: String,
    #[serde(default)]
    vals: Vec<String>,
    #[serde(default)]
    nodes: Vec<JFilter>,
}

impl JFilter {
    fn into_node(self) -> FilterNode {
        FilterNode {
            op: self.op,
            key: self.key,
            cmp: self.cmp,
            val: self.val,
            vals: self.vals,
            nodes: self.nodes.into_iter().map(JFilter::into_node).collect(),
        }
    }
}

impl JSubscribe<'_> {
    fn into_request(self, frame: &Bytes) -> SubscribeRequest {
        SubscribeRequest {
            channel: self.channel,
            token: self.token,
            recover: self.recover,
            epoch: self.epoch,
            offset: self.offset,
            data: self.data.map(|r| frame.slice_ref(r.get().as_bytes())).unwrap_or_default(),
            positioned: self.positioned,
            recoverable: self.recoverable,
            join_leave: self.join_leave,
            delta: self.delta,
            flag: self.flag,
            tf: self.tf.map(JFilter::into_node),
        }
    }
}

#[derive(Deserialize)]
struct JChannel {
    #[serde(default)]
    channel: String,
}

#[derive(Deserialize)]
struct JPublish<'a> {
    #[serde(default)]
    channel: String,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct JHistory {
    #[serde(default)]
    channel: String,
    #[serde(default)]
    limit: i32,
    since: Option<JPosition>,
    #[serde(default)]
    reverse: bool,
}

#[derive(Deserialize)]
struct JPosition {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    epoch: String,
}

#[derive(Deserialize)]
struct JRpc<'a> {
    #[serde(default)]
    method: String,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct JData<'a> {
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct JToken {
    #[serde(default)]
    token: String,
}

#[derive(Deserialize)]
struct JSubRefresh {
    #[serde(default)]
    channel: String,
    #[serde(default)]
    token: String,
}

/// Whether `data` can be embedded in a JSON reply as it is: a single JSON value.
pub fn is_json(data: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok()
}

/// Makes a JSON payload safe to embed on one line: raw newlines (which JSON allows only
/// as whitespace between tokens, never inside strings) become spaces.
pub fn one_line(data: Bytes) -> Bytes {
    if !data.iter().any(|&b| b == b'\n' || b == b'\r') {
        return data;
    }
    let mut v = data.to_vec();
    for b in &mut v {
        if *b == b'\n' || *b == b'\r' {
            *b = b' ';
        }
    }
    Bytes::from(v)
}

/// Appends one reply or push, without the newline that separates it from the next.
pub fn encode_reply(reply: &Reply, out: &mut BytesMut) {
    match reply {
        Reply::Ping => out.put_slice(b"{}"),
        Reply::Error { id, error } => {
            out.put_slice(b"{");
            if *id != 0 {
                let _ = write!(Fmt(out), "\"id\":{id},");
            }
            out.put_slice(b"\"error\":");
            error_obj(error, out);
            out.put_slice(b"}");
        }
        Reply::Result { id, result } => {
            let _ = write!(Fmt(out), "{{\"id\":{id},");
            result_obj(result, out);
            out.put_slice(b"}");
        }
        Reply::Push(push) => push_obj(push, out),
    }
}

/// Appends the push of a publication: the hot path of fan-out, once per publication
/// and format. With channel compaction (`id` not 0) the push names the channel by its
/// id instead of its name.
pub fn encode_publication_push(channel: &str, id: u64, publication: &Publication, out: &mut BytesMut) {
    publication_push(channel, id, publication, false, out)
}

/// Appends the push of a publication for a subscriber that negotiated deltas: the
/// payload as a JSON string (its text), as the clients then expect it, whether a delta
/// or not.
pub fn encode_publication_push_as_string(channel: &str, id: u64, publication: &Publication, out: &mut BytesMut) {
    publication_push(channel, id, publication, true, out)
}

fn publication_push(channel: &str, id: u64, publication: &Publication, as_string: bool, out: &mut BytesMut) {
    if id != 0 {
        let _ = write!(Fmt(out), "{{\"push\":{{\"id\":{id}");
    } else {
        out.put_slice(b"{\"push\":{\"channel\":");
        string(channel, out);
    }
    out.put_slice(b",\"pub\":");
    publication_obj_as(publication, as_string, out);
    out.put_slice(b"}}");
}

fn error_obj(e: &ErrorReply, out: &mut BytesMut) {
    let _ = write!(Fmt(out), "{{\"code\":{},\"message\":", e.code);
    string(&e.message, out);
    if e.temporary {
        out.put_slice(b",\"temporary\":true");
    }
    out.put_slice(b"}");
}

fn result_obj(result: &ReplyResult, out: &mut BytesMut) {
    let mut o = Obj::new(out, "");
    match result {
        ReplyResult::Connect(r) => {
            o.key("connect");
            connect_obj(r, o.out);
        }
        ReplyResult::Subscribe(r) => {
            o.key("subscribe");
            subscribe_obj(r, o.out);
        }
        ReplyResult::Unsubscribe => o.raw("unsubscribe", b"{}"),
        ReplyResult::Publish => o.raw("publish", b"{}"),
        ReplyResult::Presence(map) => {
            o.key("presence");
            o.out.put_slice(b"{\"presence\":{");
            for (i, (client, info)) in map.iter().enumerate() {
                if i > 0 {
                    o.out.put_slice(b",");
                }
                string(client, o.out);
                o.out.put_slice(b":");
                info_obj(info, o.out);
            }
            o.out.put_slice(b"}}");
        }
        ReplyResult::PresenceStats { num_clients, num_users } => {
            o.key("presence_stats");
            let _ = write!(Fmt(o.out), "{{\"num_clients\":{num_clients},\"num_users\":{num_users}}}");
        }
        ReplyResult::History { publications, position } => {
            o.key("history");
            let mut h = Obj::new(o.out, "{");
            if !publications.is_empty() {
                h.key("publications");
                publications_arr(publications, h.out);
            }
            h.str("epoch", &position.epoch);
            h.num("offset", position.offset);
            h.end();
        }
        ReplyResult::Rpc { data } => {
            o.key("rpc");
            let mut r = Obj::new(o.out, "{");
            r.data("data", data);
            r.end();
        }
        ReplyResult::Refresh { client, version, expires, ttl } => {
            o.key("refresh");
            let mut r = Obj::new(o.out, "{");
            r.str("client", client);
            r.str("version", version);
            r.flag("expires", *expires);
            r.num("ttl", u64::from(*ttl));
            r.end();
        }
        ReplyResult::SubRefresh { expires, ttl } => {
            o.key("sub_refresh");
            let mut r = Obj::new(o.out, "{");
            r.flag("expires", *expires);
            r.num("ttl", u64::from(*ttl));
            r.end();
        }
    }
}

fn connect_obj(r: &ConnectResult, out: &mut BytesMut) {
    let mut o = Obj::new(out, "{");
    o.key("client");
    string(&r.client, o.out);
    o.str("version", &r.version);
    o.flag("expires", r.expires);
    o.num("ttl", u64::from(r.ttl));
    o.data("data", &r.data);
    if !r.subs.is_empty() {
        o.key("subs");
        o.out.put_slice(b"{");
        for (i, (ch, s)) in r.subs.iter().enumerate() {
            if i > 0 {
                o.out.put_slice(b",");
            }
            string(ch, o.out);
            o.out.put_slice(b":");
            subscribe_obj(s, o.out);
        }
        o.out.put_slice(b"}");
    }
    o.num("ping", u64::from(r.ping));
    o.flag("pong", r.pong);
    o.str("session", &r.session);
    o.str("node", &r.node);
    o.num("time", r.time.max(0) as u64);
    o.end();
}

fn subscribe_obj(r: &SubscribeResult, out: &mut BytesMut) {
    let mut o = Obj::new(out, "{");
    o.flag("expires", r.expires);
    o.num("ttl", u64::from(r.ttl));
    o.flag("recoverable", r.recoverable);
    o.str("epoch", &r.epoch);
    if !r.publications.is_empty() {
        o.key("publications");
        o.out.put_slice(b"[");
        for (i, p) in r.publications.iter().enumerate() {
            if i > 0 {
                o.out.put_slice(b",");
            }
            publication_obj_as(p, r.delta, o.out);
        }
        o.out.put_slice(b"]");
    }
    o.flag("recovered", r.recovered);
    o.num("offset", r.offset);
    o.flag("positioned", r.positioned);
    o.data("data", &r.data);
    o.flag("was_recovering", r.was_recovering);
    o.flag("delta", r.delta);
    o.num("id", r.id);
    o.end();
}

fn publications_arr(pubs: &[Publication], out: &mut BytesMut) {
    out.put_slice(b"[");
    for (i, p) in pubs.iter().enumerate() {
        if i > 0 {
            out.put_slice(b",");
        }
        publication_obj(p, out);
    }
    out.put_slice(b"]");
}

fn publication_obj(p: &Publication, out: &mut BytesMut) {
    publication_obj_as(p, false, out)
}

/// A publication; `as_string`: its payload as a JSON string (deltas always are).
fn publication_obj_as(p: &Publication, as_string: bool, out: &mut BytesMut) {
    let mut o = Obj::new(out, "{");
    if p.delta || as_string {
        // A delta is bytes, not JSON; with deltas negotiated the clients expect every
        // payload as a string (the text they build the next one from).
        o.key("data");
        string(&String::from_utf8_lossy(&p.data), o.out);
    } else {
        o.data("data", &p.data);
    }
    if let Some(info) = &p.info {
        o.key("info");
        info_obj(info, o.out);
    }
    o.num("offset", p.offset);
    if !p.tags.is_empty() {
        o.key("tags");
        o.out.put_slice(b"{");
        for (i, (k, v)) in p.tags.iter().enumerate() {
            if i > 0 {
                o.out.put_slice(b",");
            }
            string(k, o.out);
            o.out.put_slice(b":");
            string(v, o.out);
        }
        o.out.put_slice(b"}");
    }
    o.flag("delta", p.delta);
    o.num("time", p.time.max(0) as u64);
    o.end();
}

fn info_obj(info: &ClientInfo, out: &mut BytesMut) {
    out.put_slice(b"{\"user\":");
    string(&info.user, out);
    out.put_slice(b",\"client\":");
    string(&info.client, out);
    if !info.conn_info.is_empty() {
        out.put_slice(b",\"conn_info\":");
        out.put_slice(&info.conn_info);
    }
    if !info.chan_info.is_empty() {
        out.put_slice(b",\"chan_info\":");
        out.put_slice(&info.chan_info);
    }
    out.put_slice(b"}");
}

fn push_obj(push: &Push, out: &mut BytesMut) {
    if let PushKind::Publication(p) = &push.kind {
        return encode_publication_push(&push.channel, push.id, p, out);
    }
    out.put_slice(b"{\"push\":");
    let mut o = Obj::new(out, "{");
    o.num("id", push.id);
    o.str("channel", &push.channel);
    match &push.kind {
        PushKind::Publication(_) => unreachable!("handled above"),
        PushKind::Join(info) => {
            o.key("join");
            o.out.put_slice(b"{\"info\":");
            info_obj(info, o.out);
            o.out.put_slice(b"}");
        }
        PushKind::Leave(info) => {
            o.key("leave");
            o.out.put_slice(b"{\"info\":");
            info_obj(info, o.out);
            o.out.put_slice(b"}");
        }
        PushKind::Unsubscribe { code, reason } => {
            o.key("unsubscribe");
            let _ = write!(Fmt(o.out), "{{\"code\":{code},\"reason\":");
            string(reason, o.out);
            o.out.put_slice(b"}");
        }
        PushKind::Message { data } => {
            o.key("message");
            let mut m = Obj::new(o.out, "{");
            m.data("data", data);
            m.end();
        }
        PushKind::Subscribe(r) => {
            o.key("subscribe");
            subscribe_obj(r, o.out);
        }
        PushKind::Connect(r) => {
            o.key("connect");
            connect_obj(r, o.out);
        }
        PushKind::Disconnect(d) => {
            o.key("disconnect");
            disconnect_obj(d, o.out);
        }
        PushKind::Refresh { expires, ttl } => {
            o.key("refresh");
            let mut r = Obj::new(o.out, "{");
            r.flag("expires", *expires);
            r.num("ttl", u64::from(*ttl));
            r.end();
        }
    }
    o.end();
    out.put_slice(b"}");
}

fn disconnect_obj(d: &Disconnect, out: &mut BytesMut) {
    let _ = write!(Fmt(out), "{{\"code\":{},\"reason\":", d.code);
    string(&d.reason, out);
    if d.reconnect() {
        out.put_slice(b",\"reconnect\":true");
    }
    out.put_slice(b"}");
}

/// Appends `s` as a JSON string.
fn string(s: &str, out: &mut BytesMut) {
    // serde_json's escaping, written straight into the buffer.
    let _ = serde_json::to_writer(out.writer(), s);
}

/// An object being written: the commas between its fields, fields left out when empty.
struct Obj<'a> {
    out: &'a mut BytesMut,
    first: bool,
}

impl<'a> Obj<'a> {
    fn new(out: &'a mut BytesMut, open: &str) -> Self {
        out.put_slice(open.as_bytes());
        Obj { out, first: true }
    }

    fn key(&mut self, k: &str) {
        if !self.first {
            self.out.put_slice(b",");
        }
        self.first = false;
        self.out.put_slice(b"\"");
        self.out.put_slice(k.as_bytes());
        self.out.put_slice(b"\":");
    }

    fn raw(&mut self, k: &str, v: &[u8]) {
        self.key(k);
        self.out.put_slice(v);
    }

    fn str(&mut self, k: &str, v: &str) {
        if !v.is_empty() {
            self.key(k);
            string(v, self.out);
        }
    }

    fn num(&mut self, k: &str, v: u64) {
        if v != 0 {
            self.key(k);
            let _ = write!(Fmt(self.out), "{v}");
        }
    }

    fn flag(&mut self, k: &str, v: bool) {
        if v {
            self.raw(k, b"true");
        }
    }

    fn data(&mut self, k: &str, v: &[u8]) {
        if !v.is_empty() {
            self.raw(k, v);
        }
    }

    fn end(self) {
        self.out.put_slice(b"}");
    }
}

/// `fmt::Write` into a `BytesMut`.
struct Fmt<'a>(&'a mut BytesMut);

impl std::fmt::Write for Fmt<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.put_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorReply;

    fn enc(r: &Reply) -> String {
        let mut out = BytesMut::new();
        encode_reply(r, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn commands_decode_several_to_a_frame_with_data_borrowed_from_it() {
        let frame = Bytes::from_static(
            b"{\"id\":1,\"connect\":{\"token\":\"t\",\"name\":\"js\",\"unknown\":5}}\n{\"id\":2,\"publish\":{\"channel\":\"chat:a\",\"data\":{\"x\": [1, 2]}}}\n{}\n",
        );
        let cmds = decode_commands(&frame).unwrap();
        assert_eq!(cmds.len(), 3);
        assert_eq!(cmds[0].id, 1);
        assert!(matches!(&cmds[0].request, Request::Connect(c) if c.token == "t" && c.name == "js"));
        match &cmds[1].request {
            Request::Publish { channel, data } => {
                assert_eq!(channel, "chat:a");
                assert_eq!(&data[..], b"{\"x\": [1, 2]}");
                // A slice of the frame, not a copy.
                let range = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
                assert!(range.contains(&(data.as_ptr() as usize)));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(cmds[2], Command::default());
    }

    #[test]
    fn subscribe_fields_and_flags_decode() {
        let frame = Bytes::from_static(b"{\"id\":3,\"subscribe\":{\"channel\":\"c\",\"recover\":true,\"epoch\":\"e\",\"offset\":7,\"positioned\":true,\"recoverable\":true,\"join_leave\":true,\"delta\":\"fossil\",\"flag\":3,\"tf\":{\"op\":\"or\",\"nodes\":[{\"key\":\"k\",\"cmp\":\"in\",\"vals\":[\"a\",\"b\"]},{\"key\":\"n\",\"cmp\":\"gt\",\"val\":\"1\"}]}}}");
        let cmds = decode_commands(&frame).unwrap();
        let Request::Subscribe(s) = &cmds[0].request else { panic!() };
        assert!(s.recover && s.positioned && s.recoverable && s.join_leave);
        assert_eq!((s.epoch.as_str(), s.offset, s.delta.as_str(), s.flag), ("e", 7, "fossil", 3));
        let tf = s.tf.as_ref().unwrap();
        assert_eq!((tf.op.as_str(), tf.nodes.len()), ("or", 2));
        assert_eq!(tf.nodes[0].vals, ["a", "b"]);
        assert_eq!((tf.nodes[1].key.as_str(), tf.nodes[1].cmp.as_str(), tf.nodes[1].val.as_str()), ("n", "gt", "1"));
        let none = Bytes::from_static(b"{\"id\":4,\"subscribe\":{\"channel\":\"c\",\"tf\":null}}");
        let Request::Subscribe(s) = &decode_commands(&none).unwrap()[0].request else { panic!() };
        assert_eq!(s.tf, None);
    }

    #[test]
    fn malformed_commands_are_errors() {
        for bad in [&b"{"[..], b"[1]", b"{\"id\":\"x\"}", b"{\"id\":-1}", b"{\"subscribe\":5}", b"\xff"] {
            assert!(decode_commands(&Bytes::copy_from_slice(bad)).is_err(), "{:?}", bad);
        }
    }

    #[test]
    fn empty_results_keep_their_key_and_errors_say_temporary() {
        assert_eq!(enc(&Reply::Result { id: 2, result: ReplyResult::Publish }), r#"{"id":2,"publish":{}}"#);
        assert_eq!(
            enc(&Reply::Result {
                id: 4,
                result: ReplyResult::History { publications: vec![], position: StreamPosition::default() }
            }),
            r#"{"id":4,"history":{}}"#
        );
        assert_eq!(
            enc(&Reply::Error { id: 5, error: ErrorReply::INTERNAL }),
            r#"{"id":5,"error":{"code":100,"message":"internal server error","temporary":true}}"#
        );
        assert_eq!(enc(&Reply::Ping), "{}");
    }

    #[test]
    fn a_publication_push_embeds_its_data_and_escapes_strings() {
        let p = Publication {
            offset: 3,
            data: Bytes::from_static(b"{\"text\":\"hi\"}"),
            info: Some(ClientInfo { user: "u\"1".into(), client: "c".into(), ..Default::default() }),
            ..Default::default()
        };
        let push = Reply::Push(Push { id: 0, channel: "chat:a".into(), kind: PushKind::Publication(p) });
        let s = enc(&push);
        assert_eq!(
            s,
            r#"{"push":{"channel":"chat:a","pub":{"data":{"text":"hi"},"info":{"user":"u\"1","client":"c"},"offset":3}}}"#
        );
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["push"]["pub"]["offset"], 3);
    }

    #[test]
    fn a_compacted_push_names_its_channel_by_id() {
        let p = Publication { offset: 1, data: Bytes::from_static(b"[1]"), ..Default::default() };
        let mut out = BytesMut::new();
        encode_publication_push("chat:a", 7, &p, &mut out);
        assert_eq!(&out[..], br#"{"push":{"id":7,"pub":{"data":[1],"offset":1}}}"#);
        out.clear();
        encode_publication_push_as_string("chat:a", 7, &p, &mut out);
        assert_eq!(&out[..], br#"{"push":{"id":7,"pub":{"data":"[1]","offset":1}}}"#);
        let join = Reply::Push(Push {
            id: 7,
            channel: String::new(),
            kind: PushKind::Join(ClientInfo { user: "u".into(), client: "c".into(), ..Default::default() }),
        });
        assert_eq!(enc(&join), r#"{"push":{"id":7,"join":{"info":{"user":"u","client":"c"}}}}"#);
        let sub = SubscribeResult { id: 7, ..Default::default() };
        assert_eq!(
            enc(&Reply::Result { id: 2, result: ReplyResult::Subscribe(sub) }),
            r#"{"id":2,"subscribe":{"id":7}}"#
        );
    }

    #[test]
    fn every_reply_is_valid_json() {
        let info = ClientInfo {
            user: "u".into(),
            client: "c".into(),
            conn_info: Bytes::from_static(b"{\"n\":1}"),
            chan_info: Bytes::new(),
        };
        let sub =
            SubscribeResult { recoverable: true, epoch: "e".into(), offset: 2, positioned: true, ..Default::default() };
        let replies = vec![
            Reply::Result {
                id: 1,
                result: ReplyResult::Connect(ConnectResult {
                    client: "c".into(),
                    version: "v".into(),
                    ping: 25,
                    pong: true,
                    subs: [("s".to_string(), sub.clone())].into(),
                    ..Default::default()
                }),
            },
            Reply::Result { id: 2, result: ReplyResult::Subscribe(sub.clone()) },
            Reply::Result { id: 3, result: ReplyResult::Presence([("c".to_string(), info.clone())].into()) },
            Reply::Result { id: 4, result: ReplyResult::PresenceStats { num_clients: 2, num_users: 1 } },
            Reply::Result { id: 5, result: ReplyResult::Rpc { data: Bytes::from_static(b"[1]") } },
            Reply::Result {
                id: 6,
                result: ReplyResult::Refresh { client: "c".into(), version: "v".into(), expires: true, ttl: 60 },
            },
            Reply::Result { id: 7, result: ReplyResult::SubRefresh { expires: true, ttl: 60 } },
            Reply::Result { id: 8, result: ReplyResult::Unsubscribe },
            Reply::Push(Push { id: 0, channel: "c".into(), kind: PushKind::Join(info.clone()) }),
            Reply::Push(Push { id: 0, channel: "c".into(), kind: PushKind::Leave(info) }),
            Reply::Push(Push {
                id: 0,
                channel: "c".into(),
                kind: PushKind::Unsubscribe { code: 2000, reason: "server unsubscribe".into() },
            }),
            Reply::Push(Push {
                id: 0,
                channel: String::new(),
                kind: PushKind::Message { data: Bytes::from_static(b"\"m\"") },
            }),
            Reply::Push(Push { id: 0, channel: "c".into(), kind: PushKind::Subscribe(sub) }),
            Reply::Push(Push { id: 0, channel: String::new(), kind: PushKind::Disconnect(Disconnect::SHUTDOWN) }),
            Reply::Push(Push { id: 0, channel: String::new(), kind: PushKind::Refresh { expires: true, ttl: 5 } }),
        ];
        for r in replies {
            let s = enc(&r);
            let v: serde_json::Value = serde_json::from_str(&s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert!(v.is_object(), "{s}");
            assert!(!s.contains('\n'));
        }
    }

    #[test]
    fn newlines_in_a_payload_become_spaces() {
        let d = one_line(Bytes::from_static(b"{\n  \"a\": \"x\\ny\"\n}"));
        assert_eq!(&d[..], b"{   \"a\": \"x\\ny\" }");
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&d).unwrap()["a"], "x\ny");
    }
}
