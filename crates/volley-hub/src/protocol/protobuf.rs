//! The Protobuf wire format (`centrifuge-protobuf`): commands and replies as
//! varint-length-delimited messages in binary frames.
//!
//! The messages mirror Centrifugo's client protocol v2 (`client.proto`, package
//! `centrifugal.centrifuge.protocol`) with its field numbers and types. They are declared
//! here with prost's derive and stay private: the rest of the hub sees [`Command`] and
//! [`Reply`].
//!
//! A binary frame from a client holds one or more commands, each prefixed with its length
//! as a varint; the server writes its replies and pushes the same way, several to a frame
//! if it likes. A push is a reply with only `push` set, and the server's ping is an empty
//! reply (the single byte `0`); the client's pong is an empty command.
//!
//! The wire messages are a superset of the format-neutral types: fields these types do not
//! carry are skipped when decoding (`ConnectRequest.headers` and `flag`, the channel ids of
//! `Push.id` and `SubscribeResult.id`) and never sent. A command's method is the first request it holds, in the order Centrifugo
//! dispatches them: connect, subscribe, unsubscribe, publish, presence, presence_stats,
//! history, rpc, send, refresh, sub_refresh. A command holding none of them (or only the
//! legacy `ping`) is [`Request::None`].
//!
//! Decoding is bounded by the frame: a length prefix is checked against the bytes that
//! follow before anything is read, and a malformed message is an error, never a panic.

use std::borrow::Cow;
use std::fmt;

use bytes::BytesMut;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::Message as _;

use super::{
    ClientInfo, Command, ConnectRequest, ConnectResult, Disconnect, ErrorReply, FilterNode, HistoryRequest,
    PayloadKind, Publication, Push, PushKind, Reply, ReplyResult, Request, StreamPosition, SubscribeRequest,
    SubscribeResult,
};

/// The most commands [`decode_commands`] accepts from one frame. A command can be one byte
/// on the wire (the pong) but a [`Command`] is some 160 bytes: the cap keeps a frame of
/// empty commands from growing a hundredfold in memory. [`commands`] decodes one at a time
/// and has no cap.
pub const MAX_COMMANDS_PER_FRAME: usize = 4096;

/// Why a frame could not be decoded. `at` is the offset in the frame of the length prefix
/// of the message at fault.
#[derive(Debug)]
pub enum DecodeError {
    /// The length prefix is cut short by the end of the frame, or is not a varint of at
    /// most ten bytes.
    Length {
        /// Where the prefix starts.
        at: usize,
    },
    /// The length prefix promises more bytes than the frame holds.
    PastEnd {
        /// Where the prefix starts.
        at: usize,
        /// The length it gives.
        len: u64,
        /// The bytes left after it.
        remaining: usize,
    },
    /// The message is not valid Protobuf for its type: a field cut short, a wrong wire
    /// type, a string that is not UTF-8, ...
    Message {
        /// Where its length prefix starts.
        at: usize,
        /// What prost found.
        error: prost::DecodeError,
    },
    /// The frame holds more than [`MAX_COMMANDS_PER_FRAME`] commands.
    TooManyCommands,
    /// A reply holds no error, push or result this side knows.
    UnknownReply {
        /// Where its length prefix starts.
        at: usize,
    },
    /// A disconnect push carries a code that is not a WebSocket close code (above 65535).
    DisconnectCode {
        /// Where its length prefix starts.
        at: usize,
        /// The code.
        code: u32,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Length { at } => write!(f, "malformed length prefix at byte {at}"),
            DecodeError::PastEnd { at, len, remaining } => {
                write!(f, "length prefix at byte {at} gives {len} bytes, {remaining} follow")
            }
            DecodeError::Message { at, error } => write!(f, "malformed message at byte {at}: {error}"),
            DecodeError::TooManyCommands => write!(f, "more than {MAX_COMMANDS_PER_FRAME} commands in one frame"),
            DecodeError::UnknownReply { at } => write!(f, "reply at byte {at} holds nothing known"),
            DecodeError::DisconnectCode { at, code } => {
                write!(f, "disconnect code {code} at byte {at} is out of range")
            }
        }
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DecodeError::Message { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Decodes every command of a frame from a client, in order. An empty frame holds none.
/// The first malformed command fails the whole frame.
pub fn decode_commands(frame: &[u8]) -> Result<Vec<Command>, DecodeError> {
    let mut out = Vec::new();
    for command in commands(frame) {
        if out.len() == MAX_COMMANDS_PER_FRAME {
            return Err(DecodeError::TooManyCommands);
        }
        out.push(command?);
    }
    Ok(out)
}

/// The commands of a frame from a client, decoded one at a time. After an error the
/// iterator ends.
pub fn commands(frame: &[u8]) -> Commands<'_> {
    Commands { messages: Messages { frame, pos: 0 } }
}

/// The iterator of [`commands`].
#[derive(Clone, Debug)]
pub struct Commands<'a> {
    messages: Messages<'a>,
}

impl Iterator for Commands<'_> {
    type Item = Result<Command, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (at, body) = match self.messages.next()? {
            Ok(message) => message,
            Err(e) => return Some(Err(e)),
        };
        match wire::Command::decode(body) {
            Ok(command) => Some(Ok(command_from_wire(command))),
            Err(error) => {
                self.messages.stop();
                Some(Err(DecodeError::Message { at, error }))
            }
        }
    }
}

/// The replies of a frame from a server, decoded one at a time (the client's side: for
/// tests and tools). After an error the iterator ends.
pub fn replies(frame: &[u8]) -> Replies<'_> {
    Replies { messages: Messages { frame, pos: 0 } }
}

/// The iterator of [`replies`].
#[derive(Clone, Debug)]
pub struct Replies<'a> {
    messages: Messages<'a>,
}

impl Iterator for Replies<'_> {
    type Item = Result<Reply, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (at, body) = match self.messages.next()? {
            Ok(message) => message,
            Err(e) => return Some(Err(e)),
        };
        let reply = wire::Reply::decode(body)
            .map_err(|error| DecodeError::Message { at, error })
            .and_then(|reply| reply_from_wire(reply, at));
        if reply.is_err() {
            self.messages.stop();
        }
        Some(reply)
    }
}

/// Splits a frame into its length-delimited messages: each one's offset and body.
#[derive(Clone, Debug)]
struct Messages<'a> {
    frame: &'a [u8],
    pos: usize,
}

impl Messages<'_> {
    fn stop(&mut self) {
        self.pos = self.frame.len();
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<(usize, &'a [u8]), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let at = self.pos;
        let mut rest = self.frame.get(at..).filter(|rest| !rest.is_empty())?;
        let item = match prost::encoding::decode_varint(&mut rest) {
            Err(_) => Err(DecodeError::Length { at }),
            Ok(len) => match usize::try_from(len).ok().and_then(|n| rest.get(..n).map(|body| (n, body))) {
                None => Err(DecodeError::PastEnd { at, len, remaining: rest.len() }),
                Some((n, body)) => {
                    self.pos = self.frame.len() - rest.len() + n;
                    return Some(Ok((at, body)));
                }
            },
        };
        self.stop();
        Some(item)
    }
}

/// Appends a command, length-delimited (the client's side: for tests and tools).
pub fn encode_command(command: &Command, out: &mut BytesMut) {
    put_delimited(&command_to_wire(command), out);
}

/// Appends one reply, length-delimited: a result, an error, a push (a reply holding only
/// `push`) or the server's ping (an empty reply).
pub fn encode_reply(reply: &Reply, out: &mut BytesMut) {
    put_delimited(&reply_to_wire(reply), out);
}

/// Appends the push of a publication, length-delimited: the same bytes as [`encode_reply`]
/// of `Reply::Push` with [`PushKind::Publication`], written without building the message
/// first (publications are the bulk of what a hub sends).
pub fn encode_publication_push(channel: &str, id: u64, publication: &Publication, out: &mut BytesMut) {
    // Channel compaction: the id instead of the name.
    let channel = if id != 0 { "" } else { channel };
    let publication_len = publication_len(publication);
    let push_len = varint_field_len(tag::PUSH_ID, id)
        + str_field_len(tag::PUSH_CHANNEL, channel)
        + message_field_len(tag::PUSH_PUB, publication_len);
    let reply_len = message_field_len(tag::REPLY_PUSH, push_len);
    out.reserve(encoded_len_varint(reply_len as u64) + reply_len);
    encode_varint(reply_len as u64, out);
    put_message_header(tag::REPLY_PUSH, push_len, out);
    put_varint_field(tag::PUSH_ID, id, out);
    put_str_field(tag::PUSH_CHANNEL, channel, out);
    put_message_header(tag::PUSH_PUB, publication_len, out);
    put_publication(publication, out);
}

fn put_delimited(message: &impl prost::Message, out: &mut BytesMut) {
    let len = message.encoded_len();
    out.reserve(encoded_len_varint(len as u64) + len);
    encode_varint(len as u64, out);
    message.encode_raw(out);
}

// The hand-written encoding of a publication push. It follows what prost's derive writes
// for the same messages: fields in tag order, proto3 defaults left out, a map entry's
// empty key or value left out.

/// The field numbers the fast path writes.
mod tag {
    pub const REPLY_PUSH: u32 = 4;
    pub const PUSH_ID: u32 = 1;
    pub const PUSH_CHANNEL: u32 = 2;
    pub const PUSH_PUB: u32 = 4;
    pub const PUB_DATA: u32 = 4;
    pub const PUB_INFO: u32 = 5;
    pub const PUB_OFFSET: u32 = 6;
    pub const PUB_TAGS: u32 = 7;
    pub const PUB_DELTA: u32 = 8;
    pub const PUB_TIME: u32 = 9;
    pub const ENTRY_KEY: u32 = 1;
    pub const ENTRY_VALUE: u32 = 2;
    pub const INFO_USER: u32 = 1;
    pub const INFO_CLIENT: u32 = 2;
    pub const INFO_CONN_INFO: u32 = 3;
    pub const INFO_CHAN_INFO: u32 = 4;
}

/// A length-delimited field that is always written (an embedded message that is set).
fn message_field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// A string or bytes field: left out when empty.
fn str_field_len(tag: u32, value: impl AsRef<[u8]>) -> usize {
    match value.as_ref().len() {
        0 => 0,
        len => message_field_len(tag, len),
    }
}

/// A varint field (uint64, int64, bool): left out when zero.
fn varint_field_len(tag: u32, value: u64) -> usize {
    match value {
        0 => 0,
        value => key_len(tag) + encoded_len_varint(value),
    }
}

fn put_message_header(tag: u32, len: usize, out: &mut BytesMut) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
}

fn put_str_field(tag: u32, value: impl AsRef<[u8]>, out: &mut BytesMut) {
    let value = value.as_ref();
    if !value.is_empty() {
        put_message_header(tag, value.len(), out);
        out.extend_from_slice(value);
    }
}

fn put_varint_field(tag: u32, value: u64, out: &mut BytesMut) {
    if value != 0 {
        encode_key(tag, WireType::Varint, out);
        encode_varint(value, out);
    }
}

fn client_info_len(info: &ClientInfo) -> usize {
    str_field_len(tag::INFO_USER, &info.user)
        + str_field_len(tag::INFO_CLIENT, &info.client)
        + str_field_len(tag::INFO_CONN_INFO, &info.conn_info)
        + str_field_len(tag::INFO_CHAN_INFO, &info.chan_info)
}

fn put_client_info(info: &ClientInfo, out: &mut BytesMut) {
    put_str_field(tag::INFO_USER, &info.user, out);
    put_str_field(tag::INFO_CLIENT, &info.client, out);
    put_str_field(tag::INFO_CONN_INFO, &info.conn_info, out);
    put_str_field(tag::INFO_CHAN_INFO, &info.chan_info, out);
}

fn tag_entry_len(key: &str, value: &str) -> usize {
    str_field_len(tag::ENTRY_KEY, key) + str_field_len(tag::ENTRY_VALUE, value)
}

fn publication_len(publication: &Publication) -> usize {
    let info = publication.info.as_ref().map_or(0, |info| message_field_len(tag::PUB_INFO, client_info_len(info)));
    let tags: usize = publication.tags.iter().map(|(k, v)| message_field_len(tag::PUB_TAGS, tag_entry_len(k, v))).sum();
    str_field_len(tag::PUB_DATA, &publication.data)
        + info
        + varint_field_len(tag::PUB_OFFSET, publication.offset)
        + tags
        + varint_field_len(tag::PUB_DELTA, u64::from(publication.delta))
        + varint_field_len(tag::PUB_TIME, publication.time as u64)
}

fn put_publication(publication: &Publication, out: &mut BytesMut) {
    put_str_field(tag::PUB_DATA, &publication.data, out);
    if let Some(info) = &publication.info {
        put_message_header(tag::PUB_INFO, client_info_len(info), out);
        put_client_info(info, out);
    }
    put_varint_field(tag::PUB_OFFSET, publication.offset, out);
    for (key, value) in &publication.tags {
        put_message_header(tag::PUB_TAGS, tag_entry_len(key, value), out);
        put_str_field(tag::ENTRY_KEY, key, out);
        put_str_field(tag::ENTRY_VALUE, value, out);
    }
    put_varint_field(tag::PUB_DELTA, u64::from(publication.delta), out);
    // int64 travels as the varint of its two's complement, as prost writes it.
    put_varint_field(tag::PUB_TIME, publication.time as u64, out);
}

// Wire messages → format-neutral types.

fn command_from_wire(command: wire::Command) -> Command {
    let wire::Command {
        id,
        connect,
        subscribe,
        unsubscribe,
        publish,
        presence,
        presence_stats,
        history,
        ping: _,
        send,
        rpc,
        refresh,
        sub_refresh,
    } = command;
    let request = if let Some(r) = connect {
        Request::Connect(ConnectRequest {
            token: r.token,
            data: r.data,
            subs: r.subs.into_iter().map(|(channel, sub)| (channel, subscribe_request_from_wire(sub))).collect(),
            name: r.name,
            version: r.version,
            headers: r.headers,
        })
    } else if let Some(r) = subscribe {
        Request::Subscribe(subscribe_request_from_wire(r))
    } else if let Some(r) = unsubscribe {
        Request::Unsubscribe { channel: r.channel }
    } else if let Some(r) = publish {
        Request::Publish { channel: r.channel, data: r.data }
    } else if let Some(r) = presence {
        Request::Presence { channel: r.channel }
    } else if let Some(r) = presence_stats {
        Request::PresenceStats { channel: r.channel }
    } else if let Some(r) = history {
        Request::History(HistoryRequest {
            channel: r.channel,
            limit: r.limit,
            since: r.since.map(|p| StreamPosition { offset: p.offset, epoch: p.epoch }),
            reverse: r.reverse,
        })
    } else if let Some(r) = rpc {
        Request::Rpc { method: r.method, data: r.data }
    } else if let Some(r) = send {
        Request::Send { data: r.data }
    } else if let Some(r) = refresh {
        Request::Refresh { token: r.token }
    } else if let Some(r) = sub_refresh {
        Request::SubRefresh { channel: r.channel, token: r.token }
    } else {
        Request::None
    };
    Command { id, request }
}

fn subscribe_request_from_wire(r: wire::SubscribeRequest) -> SubscribeRequest {
    SubscribeRequest {
        channel: r.channel,
        token: r.token,
        recover: r.recover,
        epoch: r.epoch,
        offset: r.offset,
        data: r.data,
        positioned: r.positioned,
        recoverable: r.recoverable,
        join_leave: r.join_leave,
        delta: r.delta,
        // int64 on the wire, a bit set here: the same 64 bits.
        flag: r.flag as u64,
        tf: r.tf.map(filter_from_wire),
    }
}

fn filter_from_wire(f: wire::FilterNode) -> FilterNode {
    FilterNode {
        op: f.op,
        key: f.key,
        cmp: f.cmp,
        val: f.val,
        vals: f.vals,
        nodes: f.nodes.into_iter().map(filter_from_wire).collect(),
    }
}

fn filter_to_wire(f: &FilterNode) -> wire::FilterNode {
    wire::FilterNode {
        op: f.op.clone(),
        key: f.key.clone(),
        cmp: f.cmp.clone(),
        val: f.val.clone(),
        vals: f.vals.clone(),
        nodes: f.nodes.iter().map(filter_to_wire).collect(),
    }
}

fn reply_from_wire(reply: wire::Reply, at: usize) -> Result<Reply, DecodeError> {
    let wire::Reply {
        id,
        error,
        push,
        connect,
        subscribe,
        unsubscribe,
        publish,
        presence,
        presence_stats,
        history,
        ping: _,
        rpc,
        refresh,
        sub_refresh,
    } = reply;
    if let Some(e) = error {
        let error = ErrorReply { code: e.code, message: Cow::Owned(e.message), temporary: e.temporary };
        return Ok(Reply::Error { id, error });
    }
    if let Some(push) = push {
        return push_from_wire(push, at).map(Reply::Push);
    }
    let result = if let Some(r) = connect {
        ReplyResult::Connect(connect_result_from_wire(r))
    } else if let Some(r) = subscribe {
        ReplyResult::Subscribe(subscribe_result_from_wire(r))
    } else if unsubscribe.is_some() {
        ReplyResult::Unsubscribe
    } else if publish.is_some() {
        ReplyResult::Publish
    } else if let Some(r) = presence {
        ReplyResult::Presence(
            r.presence.into_iter().map(|(client, info)| (client, client_info_from_wire(info))).collect(),
        )
    } else if let Some(r) = presence_stats {
        ReplyResult::PresenceStats { num_clients: r.num_clients, num_users: r.num_users }
    } else if let Some(r) = history {
        ReplyResult::History {
            publications: r.publications.into_iter().map(publication_from_wire).collect(),
            position: StreamPosition { offset: r.offset, epoch: r.epoch },
        }
    } else if let Some(r) = rpc {
        ReplyResult::Rpc { data: r.data }
    } else if let Some(r) = refresh {
        ReplyResult::Refresh { client: r.client, version: r.version, expires: r.expires, ttl: r.ttl }
    } else if let Some(r) = sub_refresh {
        ReplyResult::SubRefresh { expires: r.expires, ttl: r.ttl }
    } else if id == 0 {
        return Ok(Reply::Ping);
    } else {
        return Err(DecodeError::UnknownReply { at });
    };
    Ok(Reply::Result { id, result })
}

fn push_from_wire(push: wire::Push, at: usize) -> Result<Push, DecodeError> {
    let wire::Push {
        id,
        channel,
        publication,
        join,
        leave,
        unsubscribe,
        message,
        subscribe,
        connect,
        disconnect,
        refresh,
    } = push;
    let kind = if let Some(p) = publication {
        PushKind::Publication(publication_from_wire(p))
    } else if let Some(j) = join {
        PushKind::Join(j.info.map(client_info_from_wire).unwrap_or_default())
    } else if let Some(l) = leave {
        PushKind::Leave(l.info.map(client_info_from_wire).unwrap_or_default())
    } else if let Some(u) = unsubscribe {
        PushKind::Unsubscribe { code: u.code, reason: u.reason }
    } else if let Some(m) = message {
        PushKind::Message { data: m.data }
    } else if let Some(s) = subscribe {
        PushKind::Subscribe(SubscribeResult {
            recoverable: s.recoverable,
            epoch: s.epoch,
            offset: s.offset,
            positioned: s.positioned,
            data: s.data,
            ..SubscribeResult::default()
        })
    } else if let Some(c) = connect {
        PushKind::Connect(ConnectResult {
            client: c.client,
            version: c.version,
            expires: c.expires,
            ttl: c.ttl,
            data: c.data,
            subs: c.subs.into_iter().map(|(channel, sub)| (channel, subscribe_result_from_wire(sub))).collect(),
            ping: c.ping,
            pong: c.pong,
            session: c.session,
            node: c.node,
            time: c.time,
        })
    } else if let Some(d) = disconnect {
        let code = u16::try_from(d.code).map_err(|_| DecodeError::DisconnectCode { at, code: d.code })?;
        PushKind::Disconnect(Disconnect { code, reason: Cow::Owned(d.reason) })
    } else if let Some(r) = refresh {
        PushKind::Refresh { expires: r.expires, ttl: r.ttl }
    } else {
        return Err(DecodeError::UnknownReply { at });
    };
    Ok(Push { id: u64::try_from(id).unwrap_or(0), channel, kind })
}

fn client_info_from_wire(info: wire::ClientInfo) -> ClientInfo {
    ClientInfo { user: info.user, client: info.client, conn_info: info.conn_info, chan_info: info.chan_info }
}

fn publication_from_wire(p: wire::Publication) -> Publication {
    Publication {
        offset: p.offset,
        data: p.data,
        info: p.info.map(client_info_from_wire),
        tags: p.tags,
        delta: p.delta,
        time: p.time,
        kind: PayloadKind::Unchecked,
    }
}

fn subscribe_result_from_wire(r: wire::SubscribeResult) -> SubscribeResult {
    SubscribeResult {
        expires: r.expires,
        ttl: r.ttl,
        recoverable: r.recoverable,
        epoch: r.epoch,
        publications: r.publications.into_iter().map(publication_from_wire).collect(),
        recovered: r.recovered,
        offset: r.offset,
        positioned: r.positioned,
        data: r.data,
        was_recovering: r.was_recovering,
        delta: r.delta,
        id: u64::try_from(r.id).unwrap_or(0),
    }
}

fn connect_result_from_wire(r: wire::ConnectResult) -> ConnectResult {
    ConnectResult {
        client: r.client,
        version: r.version,
        expires: r.expires,
        ttl: r.ttl,
        data: r.data,
        subs: r.subs.into_iter().map(|(channel, sub)| (channel, subscribe_result_from_wire(sub))).collect(),
        ping: r.ping,
        pong: r.pong,
        session: r.session,
        node: r.node,
        time: r.time,
    }
}

// Format-neutral types → wire messages.

fn command_to_wire(command: &Command) -> wire::Command {
    let mut out = wire::Command { id: command.id, ..Default::default() };
    match &command.request {
        Request::None => {}
        Request::Connect(r) => {
            out.connect = Some(wire::ConnectRequest {
                token: r.token.clone(),
                data: r.data.clone(),
                subs: r.subs.iter().map(|(channel, sub)| (channel.clone(), subscribe_request_to_wire(sub))).collect(),
                name: r.name.clone(),
                version: r.version.clone(),
                headers: r.headers.clone(),
                ..Default::default()
            })
        }
        Request::Subscribe(r) => out.subscribe = Some(subscribe_request_to_wire(r)),
        Request::Unsubscribe { channel } => {
            out.unsubscribe = Some(wire::UnsubscribeRequest { channel: channel.clone() })
        }
        Request::Publish { channel, data } => {
            out.publish = Some(wire::PublishRequest { channel: channel.clone(), data: data.clone() })
        }
        Request::Presence { channel } => out.presence = Some(wire::PresenceRequest { channel: channel.clone() }),
        Request::PresenceStats { channel } => {
            out.presence_stats = Some(wire::PresenceStatsRequest { channel: channel.clone() })
        }
        Request::History(r) => {
            out.history = Some(wire::HistoryRequest {
                channel: r.channel.clone(),
                limit: r.limit,
                since: r.since.as_ref().map(|p| wire::StreamPosition { offset: p.offset, epoch: p.epoch.clone() }),
                reverse: r.reverse,
            })
        }
        Request::Rpc { method, data } => {
            out.rpc = Some(wire::RpcRequest { data: data.clone(), method: method.clone() })
        }
        Request::Send { data } => out.send = Some(wire::SendRequest { data: data.clone() }),
        Request::Refresh { token } => out.refresh = Some(wire::RefreshRequest { token: token.clone() }),
        Request::SubRefresh { channel, token } => {
            out.sub_refresh = Some(wire::SubRefreshRequest { channel: channel.clone(), token: token.clone() })
        }
    }
    out
}

fn subscribe_request_to_wire(r: &SubscribeRequest) -> wire::SubscribeRequest {
    wire::SubscribeRequest {
        channel: r.channel.clone(),
        token: r.token.clone(),
        recover: r.recover,
        epoch: r.epoch.clone(),
        offset: r.offset,
        data: r.data.clone(),
        positioned: r.positioned,
        recoverable: r.recoverable,
        join_leave: r.join_leave,
        delta: r.delta.clone(),
        tf: r.tf.as_ref().map(filter_to_wire),
        flag: r.flag as i64,
    }
}

fn reply_to_wire(reply: &Reply) -> wire::Reply {
    match reply {
        Reply::Result { id, result } => {
            let mut out = wire::Reply { id: *id, ..Default::default() };
            match result {
                ReplyResult::Connect(r) => out.connect = Some(connect_result_to_wire(r)),
                ReplyResult::Subscribe(r) => out.subscribe = Some(subscribe_result_to_wire(r)),
                ReplyResult::Unsubscribe => out.unsubscribe = Some(wire::UnsubscribeResult {}),
                ReplyResult::Publish => out.publish = Some(wire::PublishResult {}),
                ReplyResult::Presence(presence) => {
                    out.presence = Some(wire::PresenceResult {
                        presence: presence
                            .iter()
                            .map(|(client, info)| (client.clone(), client_info_to_wire(info)))
                            .collect(),
                    })
                }
                ReplyResult::PresenceStats { num_clients, num_users } => {
                    out.presence_stats =
                        Some(wire::PresenceStatsResult { num_clients: *num_clients, num_users: *num_users })
                }
                ReplyResult::History { publications, position } => {
                    out.history = Some(wire::HistoryResult {
                        publications: publications.iter().map(publication_to_wire).collect(),
                        epoch: position.epoch.clone(),
                        offset: position.offset,
                    })
                }
                ReplyResult::Rpc { data } => out.rpc = Some(wire::RpcResult { data: data.clone() }),
                ReplyResult::Refresh { client, version, expires, ttl } => {
                    out.refresh = Some(wire::RefreshResult {
                        client: client.clone(),
                        version: version.clone(),
                        expires: *expires,
                        ttl: *ttl,
                    })
                }
                ReplyResult::SubRefresh { expires, ttl } => {
                    out.sub_refresh = Some(wire::SubRefreshResult { expires: *expires, ttl: *ttl })
                }
            }
            out
        }
        Reply::Error { id, error } => wire::Reply {
            id: *id,
            error: Some(wire::Error {
                code: error.code,
                message: error.message.to_string(),
                temporary: error.temporary,
            }),
            ..Default::default()
        },
        Reply::Push(push) => wire::Reply { push: Some(push_to_wire(push)), ..Default::default() },
        Reply::Ping => wire::Reply::default(),
    }
}

fn push_to_wire(push: &Push) -> wire::Push {
    let mut out = wire::Push { id: push.id as i64, channel: push.channel.clone(), ..Default::default() };
    match &push.kind {
        PushKind::Publication(p) => out.publication = Some(publication_to_wire(p)),
        PushKind::Join(info) => out.join = Some(wire::Join { info: Some(client_info_to_wire(info)) }),
        PushKind::Leave(info) => out.leave = Some(wire::Leave { info: Some(client_info_to_wire(info)) }),
        PushKind::Unsubscribe { code, reason } => {
            out.unsubscribe = Some(wire::Unsubscribe { code: *code, reason: reason.clone() })
        }
        PushKind::Message { data } => out.message = Some(wire::Message { data: data.clone() }),
        PushKind::Subscribe(s) => {
            out.subscribe = Some(wire::Subscribe {
                recoverable: s.recoverable,
                epoch: s.epoch.clone(),
                offset: s.offset,
                positioned: s.positioned,
                data: s.data.clone(),
            })
        }
        PushKind::Connect(c) => {
            out.connect = Some(wire::Connect {
                client: c.client.clone(),
                version: c.version.clone(),
                data: c.data.clone(),
                subs: c.subs.iter().map(|(channel, sub)| (channel.clone(), subscribe_result_to_wire(sub))).collect(),
                expires: c.expires,
                ttl: c.ttl,
                ping: c.ping,
                pong: c.pong,
                session: c.session.clone(),
                node: c.node.clone(),
                time: c.time,
            })
        }
        PushKind::Disconnect(d) => {
            out.disconnect = Some(wire::Disconnect {
                code: u32::from(d.code),
                reason: d.reason.to_string(),
                reconnect: d.reconnect(),
            })
        }
        PushKind::Refresh { expires, ttl } => out.refresh = Some(wire::Refresh { expires: *expires, ttl: *ttl }),
    }
    out
}

fn client_info_to_wire(info: &ClientInfo) -> wire::ClientInfo {
    wire::ClientInfo {
        user: info.user.clone(),
        client: info.client.clone(),
        conn_info: info.conn_info.clone(),
        chan_info: info.chan_info.clone(),
    }
}

fn publication_to_wire(p: &Publication) -> wire::Publication {
    wire::Publication {
        data: p.data.clone(),
        info: p.info.as_ref().map(client_info_to_wire),
        offset: p.offset,
        tags: p.tags.clone(),
        delta: p.delta,
        time: p.time,
        channel: String::new(),
    }
}

fn subscribe_result_to_wire(r: &SubscribeResult) -> wire::SubscribeResult {
    wire::SubscribeResult {
        expires: r.expires,
        ttl: r.ttl,
        recoverable: r.recoverable,
        epoch: r.epoch.clone(),
        publications: r.publications.iter().map(publication_to_wire).collect(),
        recovered: r.recovered,
        offset: r.offset,
        positioned: r.positioned,
        data: r.data.clone(),
        was_recovering: r.was_recovering,
        delta: r.delta,
        // int64 on the wire; the hub's ids are far below its top.
        id: r.id as i64,
    }
}

fn connect_result_to_wire(r: &ConnectResult) -> wire::ConnectResult {
    wire::ConnectResult {
        client: r.client.clone(),
        version: r.version.clone(),
        expires: r.expires,
        ttl: r.ttl,
        data: r.data.clone(),
        subs: r.subs.iter().map(|(channel, sub)| (channel.clone(), subscribe_result_to_wire(sub))).collect(),
        ping: r.ping,
        pong: r.pong,
        session: r.session.clone(),
        node: r.node.clone(),
        time: r.time,
    }
}

/// The messages of `client.proto` (protocol v2), with its field numbers and types. Field
/// numbers missing from a message are reserved there (fields of protocol v1). Bytes
/// fields are [`bytes::Bytes`]; maps are ordered, as in the format-neutral types.
mod wire {
    use std::collections::BTreeMap;

    use bytes::Bytes;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Error {
        #[prost(uint32, tag = "1")]
        pub code: u32,
        #[prost(string, tag = "2")]
        pub message: String,
        #[prost(bool, tag = "3")]
        pub temporary: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Command {
        #[prost(uint32, tag = "1")]
        pub id: u32,
        #[prost(message, optional, tag = "4")]
        pub connect: Option<ConnectRequest>,
        #[prost(message, optional, tag = "5")]
        pub subscribe: Option<SubscribeRequest>,
        #[prost(message, optional, tag = "6")]
        pub unsubscribe: Option<UnsubscribeRequest>,
        #[prost(message, optional, tag = "7")]
        pub publish: Option<PublishRequest>,
        #[prost(message, optional, tag = "8")]
        pub presence: Option<PresenceRequest>,
        #[prost(message, optional, tag = "9")]
        pub presence_stats: Option<PresenceStatsRequest>,
        #[prost(message, optional, tag = "10")]
        pub history: Option<HistoryRequest>,
        #[prost(message, optional, tag = "11")]
        pub ping: Option<PingRequest>,
        #[prost(message, optional, tag = "12")]
        pub send: Option<SendRequest>,
        #[prost(message, optional, tag = "13")]
        pub rpc: Option<RpcRequest>,
        #[prost(message, optional, tag = "14")]
        pub refresh: Option<RefreshRequest>,
        #[prost(message, optional, tag = "15")]
        pub sub_refresh: Option<SubRefreshRequest>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Reply {
        #[prost(uint32, tag = "1")]
        pub id: u32,
        #[prost(message, optional, tag = "2")]
        pub error: Option<Error>,
        #[prost(message, optional, tag = "4")]
        pub push: Option<Push>,
        #[prost(message, optional, tag = "5")]
        pub connect: Option<ConnectResult>,
        #[prost(message, optional, tag = "6")]
        pub subscribe: Option<SubscribeResult>,
        #[prost(message, optional, tag = "7")]
        pub unsubscribe: Option<UnsubscribeResult>,
        #[prost(message, optional, tag = "8")]
        pub publish: Option<PublishResult>,
        #[prost(message, optional, tag = "9")]
        pub presence: Option<PresenceResult>,
        #[prost(message, optional, tag = "10")]
        pub presence_stats: Option<PresenceStatsResult>,
        #[prost(message, optional, tag = "11")]
        pub history: Option<HistoryResult>,
        #[prost(message, optional, tag = "12")]
        pub ping: Option<PingResult>,
        #[prost(message, optional, tag = "13")]
        pub rpc: Option<RpcResult>,
        #[prost(message, optional, tag = "14")]
        pub refresh: Option<RefreshResult>,
        #[prost(message, optional, tag = "15")]
        pub sub_refresh: Option<SubRefreshResult>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Push {
        /// A numeric channel id some servers send instead of `channel`; never sent here.
        #[prost(int64, tag = "1")]
        pub id: i64,
        #[prost(string, tag = "2")]
        pub channel: String,
        /// `pub` in the proto.
        #[prost(message, optional, tag = "4")]
        pub publication: Option<Publication>,
        #[prost(message, optional, tag = "5")]
        pub join: Option<Join>,
        #[prost(message, optional, tag = "6")]
        pub leave: Option<Leave>,
        #[prost(message, optional, tag = "7")]
        pub unsubscribe: Option<Unsubscribe>,
        #[prost(message, optional, tag = "8")]
        pub message: Option<Message>,
        #[prost(message, optional, tag = "9")]
        pub subscribe: Option<Subscribe>,
        #[prost(message, optional, tag = "10")]
        pub connect: Option<Connect>,
        #[prost(message, optional, tag = "11")]
        pub disconnect: Option<Disconnect>,
        #[prost(message, optional, tag = "12")]
        pub refresh: Option<Refresh>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ClientInfo {
        #[prost(string, tag = "1")]
        pub user: String,
        #[prost(string, tag = "2")]
        pub client: String,
        #[prost(bytes = "bytes", tag = "3")]
        pub conn_info: Bytes,
        #[prost(bytes = "bytes", tag = "4")]
        pub chan_info: Bytes,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Publication {
        #[prost(bytes = "bytes", tag = "4")]
        pub data: Bytes,
        #[prost(message, optional, tag = "5")]
        pub info: Option<ClientInfo>,
        #[prost(uint64, tag = "6")]
        pub offset: u64,
        #[prost(btree_map = "string, string", tag = "7")]
        pub tags: BTreeMap<String, String>,
        #[prost(bool, tag = "8")]
        pub delta: bool,
        #[prost(int64, tag = "9")]
        pub time: i64,
        /// The channel of a publication in a wildcard subscription; never sent here.
        #[prost(string, tag = "10")]
        pub channel: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Join {
        #[prost(message, optional, tag = "1")]
        pub info: Option<ClientInfo>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Leave {
        #[prost(message, optional, tag = "1")]
        pub info: Option<ClientInfo>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Unsubscribe {
        #[prost(uint32, tag = "2")]
        pub code: u32,
        #[prost(string, tag = "3")]
        pub reason: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Subscribe {
        #[prost(bool, tag = "1")]
        pub recoverable: bool,
        #[prost(string, tag = "4")]
        pub epoch: String,
        #[prost(uint64, tag = "5")]
        pub offset: u64,
        #[prost(bool, tag = "6")]
        pub positioned: bool,
        #[prost(bytes = "bytes", tag = "7")]
        pub data: Bytes,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Message {
        #[prost(bytes = "bytes", tag = "1")]
        pub data: Bytes,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Connect {
        #[prost(string, tag = "1")]
        pub client: String,
        #[prost(string, tag = "2")]
        pub version: String,
        #[prost(bytes = "bytes", tag = "3")]
        pub data: Bytes,
        #[prost(btree_map = "string, message", tag = "4")]
        pub subs: BTreeMap<String, SubscribeResult>,
        #[prost(bool, tag = "5")]
        pub expires: bool,
        #[prost(uint32, tag = "6")]
        pub ttl: u32,
        #[prost(uint32, tag = "7")]
        pub ping: u32,
        #[prost(bool, tag = "8")]
        pub pong: bool,
        #[prost(string, tag = "9")]
        pub session: String,
        #[prost(string, tag = "10")]
        pub node: String,
        #[prost(int64, tag = "11")]
        pub time: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Disconnect {
        #[prost(uint32, tag = "1")]
        pub code: u32,
        #[prost(string, tag = "2")]
        pub reason: String,
        #[prost(bool, tag = "3")]
        pub reconnect: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Refresh {
        #[prost(bool, tag = "1")]
        pub expires: bool,
        #[prost(uint32, tag = "2")]
        pub ttl: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ConnectRequest {
        #[prost(string, tag = "1")]
        pub token: String,
        #[prost(bytes = "bytes", tag = "2")]
        pub data: Bytes,
        #[prost(btree_map = "string, message", tag = "3")]
        pub subs: BTreeMap<String, SubscribeRequest>,
        #[prost(string, tag = "4")]
        pub name: String,
        #[prost(string, tag = "5")]
        pub version: String,
        /// Headers for a connect proxy (emulated on transports without them).
        #[prost(btree_map = "string, string", tag = "6")]
        pub headers: BTreeMap<String, String>,
        /// Connection features the client asks for; none are offered here.
        #[prost(int64, tag = "7")]
        pub flag: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ConnectResult {
        #[prost(string, tag = "1")]
        pub client: String,
        #[prost(string, tag = "2")]
        pub version: String,
        #[prost(bool, tag = "3")]
        pub expires: bool,
        #[prost(uint32, tag = "4")]
        pub ttl: u32,
        #[prost(bytes = "bytes", tag = "5")]
        pub data: Bytes,
        #[prost(btree_map = "string, message", tag = "6")]
        pub subs: BTreeMap<String, SubscribeResult>,
        #[prost(uint32, tag = "7")]
        pub ping: u32,
        #[prost(bool, tag = "8")]
        pub pong: bool,
        #[prost(string, tag = "9")]
        pub session: String,
        #[prost(string, tag = "10")]
        pub node: String,
        #[prost(int64, tag = "11")]
        pub time: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RefreshRequest {
        #[prost(string, tag = "1")]
        pub token: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RefreshResult {
        #[prost(string, tag = "1")]
        pub client: String,
        #[prost(string, tag = "2")]
        pub version: String,
        #[prost(bool, tag = "3")]
        pub expires: bool,
        #[prost(uint32, tag = "4")]
        pub ttl: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FilterNode {
        #[prost(string, tag = "1")]
        pub op: String,
        #[prost(string, tag = "2")]
        pub key: String,
        #[prost(string, tag = "3")]
        pub cmp: String,
        #[prost(string, tag = "4")]
        pub val: String,
        #[prost(string, repeated, tag = "5")]
        pub vals: Vec<String>,
        /// Nested as deep as prost's recursion limit allows (100), within the frame.
        #[prost(message, repeated, tag = "6")]
        pub nodes: Vec<FilterNode>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SubscribeRequest {
        #[prost(string, tag = "1")]
        pub channel: String,
        #[prost(string, tag = "2")]
        pub token: String,
        #[prost(bool, tag = "3")]
        pub recover: bool,
        #[prost(string, tag = "6")]
        pub epoch: String,
        #[prost(uint64, tag = "7")]
        pub offset: u64,
        #[prost(bytes = "bytes", tag = "8")]
        pub data: Bytes,
        #[prost(bool, tag = "9")]
        pub positioned: bool,
        #[prost(bool, tag = "10")]
        pub recoverable: bool,
        #[prost(bool, tag = "11")]
        pub join_leave: bool,
        #[prost(string, tag = "12")]
        pub delta: String,
        #[prost(message, optional, tag = "13")]
        pub tf: Option<FilterNode>,
        #[prost(int64, tag = "14")]
        pub flag: i64,
    }

    // No derived `PartialEq`: see the impl below.
    #[derive(Clone, prost::Message)]
    pub struct SubscribeResult {
        #[prost(bool, tag = "1")]
        pub expires: bool,
        #[prost(uint32, tag = "2")]
        pub ttl: u32,
        #[prost(bool, tag = "3")]
        pub recoverable: bool,
        #[prost(string, tag = "6")]
        pub epoch: String,
        #[prost(message, repeated, tag = "7")]
        pub publications: Vec<Publication>,
        #[prost(bool, tag = "8")]
        pub recovered: bool,
        #[prost(uint64, tag = "9")]
        pub offset: u64,
        #[prost(bool, tag = "10")]
        pub positioned: bool,
        #[prost(bytes = "bytes", tag = "11")]
        pub data: Bytes,
        #[prost(bool, tag = "12")]
        pub was_recovering: bool,
        #[prost(bool, tag = "13")]
        pub delta: bool,
        /// A numeric channel id for the pushes that follow; never sent here.
        #[prost(int64, tag = "14")]
        pub id: i64,
    }

    /// Never equal to another value, its own default included: prost leaves a map
    /// entry's value out when it equals the default, and protobufjs (centrifuge-js)
    /// decodes a missing message value as `null`, on which it fails. A server-side
    /// subscription of a channel without positions has an all-default result, so
    /// `ConnectResult.subs` must write every value.
    impl PartialEq for SubscribeResult {
        fn eq(&self, other: &Self) -> bool {
            std::ptr::eq(self, other)
        }
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SubRefreshRequest {
        #[prost(string, tag = "1")]
        pub channel: String,
        #[prost(string, tag = "2")]
        pub token: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SubRefreshResult {
        #[prost(bool, tag = "1")]
        pub expires: bool,
        #[prost(uint32, tag = "2")]
        pub ttl: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct UnsubscribeRequest {
        #[prost(string, tag = "1")]
        pub channel: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct UnsubscribeResult {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PublishRequest {
        #[prost(string, tag = "1")]
        pub channel: String,
        #[prost(bytes = "bytes", tag = "2")]
        pub data: Bytes,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PublishResult {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PresenceRequest {
        #[prost(string, tag = "1")]
        pub channel: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PresenceResult {
        #[prost(btree_map = "string, message", tag = "1")]
        pub presence: BTreeMap<String, ClientInfo>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PresenceStatsRequest {
        #[prost(string, tag = "1")]
        pub channel: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PresenceStatsResult {
        #[prost(uint32, tag = "1")]
        pub num_clients: u32,
        #[prost(uint32, tag = "2")]
        pub num_users: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StreamPosition {
        #[prost(uint64, tag = "1")]
        pub offset: u64,
        #[prost(string, tag = "2")]
        pub epoch: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HistoryRequest {
        #[prost(string, tag = "1")]
        pub channel: String,
        #[prost(int32, tag = "7")]
        pub limit: i32,
        #[prost(message, optional, tag = "8")]
        pub since: Option<StreamPosition>,
        #[prost(bool, tag = "9")]
        pub reverse: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HistoryResult {
        #[prost(message, repeated, tag = "1")]
        pub publications: Vec<Publication>,
        #[prost(string, tag = "2")]
        pub epoch: String,
        #[prost(uint64, tag = "3")]
        pub offset: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PingRequest {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PingResult {}

    /// `RPCRequest` in the proto.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RpcRequest {
        #[prost(bytes = "bytes", tag = "1")]
        pub data: Bytes,
        #[prost(string, tag = "2")]
        pub method: String,
    }

    /// `RPCResult` in the proto.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RpcResult {
        #[prost(bytes = "bytes", tag = "1")]
        pub data: Bytes,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SendRequest {
        #[prost(bytes = "bytes", tag = "1")]
        pub data: Bytes,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;

    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn bytes(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn encoded_reply(reply: &Reply) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_reply(reply, &mut out);
        out.to_vec()
    }

    fn decoded_replies(frame: &[u8]) -> Vec<Reply> {
        replies(frame).collect::<Result<_, _>>().unwrap()
    }

    fn push(channel: &str, kind: PushKind) -> Reply {
        Reply::Push(Push { id: 0, channel: channel.into(), kind })
    }

    fn result(id: u32, result: ReplyResult) -> Reply {
        Reply::Result { id, result }
    }

    fn info(user: &str, client: &str) -> ClientInfo {
        ClientInfo { user: user.into(), client: client.into(), ..ClientInfo::default() }
    }

    fn publication(data: &str, offset: u64) -> Publication {
        Publication { data: bytes(data), offset, ..Publication::default() }
    }

    // Fixtures made with Google's protobuf for Python and the classes centrifuge-python
    // 0.7.0 ships generated from client.proto (`centrifuge/protocol/client_pb2.py`): each
    // message built with those classes, serialized with `SerializeToString()` and prefixed
    // with its length as a varint (`_VarintBytes`). Maps hold one entry with a non-empty
    // key and value, so their bytes do not depend on map order or on whether an entry's
    // default key or value is written.

    /// One frame of fourteen commands: connect (with `headers`, which the hub skips),
    /// subscribe with every field, the pong (an empty command), publish, unsubscribe,
    /// presence, presence_stats, history (limit -1, since, reverse), rpc, send (id 0),
    /// refresh, sub_refresh, the legacy ping, and a subscribe with a tag filter `tf`.
    const PY_COMMANDS: &str =
        "3d080122390a03746f6b12077b2261223a317d1a100a046e657773120818013202657038072206707974686f6e\
        2a05302e372e3032080a03782d681201763608022a320a0a636861743a696e6465781206737562746f6b1801320378797a38ac0242020\
        0ff4801500158016206666f7373696c7002000e08033a0a0a0463686174120201020a080432060a04636861740a080542060a04636861\
        740a08064a060a04636861741e0807521a0a046368617438ffffffffffffffffff014205080a12016548010a08086a060a017812016d06\
        62040a02686908080972040a0274320e080a7a0a0a04636861741202743304080b5a0013080c2a0f0a01786a0a0a02657112016b220176";

    #[test]
    fn commands_made_by_python_protobuf_decode_in_order() {
        let commands = decode_commands(&hex(PY_COMMANDS)).unwrap();
        let chat = || "chat".to_string();
        let expected = vec![
            Command {
                id: 1,
                request: Request::Connect(ConnectRequest {
                    token: "tok".into(),
                    data: bytes(r#"{"a":1}"#),
                    subs: BTreeMap::from([(
                        "news".to_string(),
                        SubscribeRequest {
                            recover: true,
                            epoch: "ep".into(),
                            offset: 7,
                            ..SubscribeRequest::default()
                        },
                    )]),
                    name: "python".into(),
                    version: "0.7.0".into(),
                    headers: BTreeMap::from([("x-h".to_string(), "v".to_string())]),
                }),
            },
            Command {
                id: 2,
                request: Request::Subscribe(SubscribeRequest {
                    channel: "chat:index".into(),
                    token: "subtok".into(),
                    recover: true,
                    epoch: "xyz".into(),
                    offset: 300,
                    data: Bytes::from_static(&[0x00, 0xff]),
                    positioned: true,
                    recoverable: true,
                    join_leave: true,
                    delta: "fossil".into(),
                    flag: SubscribeRequest::FLAG_REJECT_UNRECOVERED,
                    tf: None,
                }),
            },
            Command { id: 0, request: Request::None },
            Command { id: 3, request: Request::Publish { channel: chat(), data: Bytes::from_static(&[1, 2]) } },
            Command { id: 4, request: Request::Unsubscribe { channel: chat() } },
            Command { id: 5, request: Request::Presence { channel: chat() } },
            Command { id: 6, request: Request::PresenceStats { channel: chat() } },
            Command {
                id: 7,
                request: Request::History(HistoryRequest {
                    channel: chat(),
                    limit: -1,
                    since: Some(StreamPosition { offset: 10, epoch: "e".into() }),
                    reverse: true,
                }),
            },
            Command { id: 8, request: Request::Rpc { method: "m".into(), data: bytes("x") } },
            Command { id: 0, request: Request::Send { data: bytes("hi") } },
            Command { id: 9, request: Request::Refresh { token: "t2".into() } },
            Command { id: 10, request: Request::SubRefresh { channel: chat(), token: "t3".into() } },
            Command { id: 11, request: Request::None },
            Command {
                id: 12,
                // Python set the filter's fields 1, 2 and 4 (op, key, val).
                request: Request::Subscribe(SubscribeRequest {
                    channel: "x".into(),
                    tf: Some(FilterNode { op: "eq".into(), key: "k".into(), val: "v".into(), ..Default::default() }),
                    ..SubscribeRequest::default()
                }),
            },
        ];
        assert_eq!(commands, expected);
    }

    #[test]
    fn a_hand_assembled_subscribe_decodes() {
        let subscribe = [
            0x0a, 0x04, b'n', b'e', b'w', b's', // 1 channel: "news"
            0x18, 0x01, // 3 recover: true
            0x32, 0x02, b'a', b'b', // 6 epoch: "ab"
            0x38, 0x96, 0x01, // 7 offset: 150
        ];
        let expected = Command {
            id: 7,
            request: Request::Subscribe(SubscribeRequest {
                channel: "news".into(),
                recover: true,
                epoch: "ab".into(),
                offset: 150,
                ..SubscribeRequest::default()
            }),
        };
        // id first, then subscribe (field 5); and the other way round, which Protobuf allows.
        let mut in_order = vec![19, 0x08, 0x07, 0x2a, 15];
        in_order.extend_from_slice(&subscribe);
        let mut reversed = vec![19, 0x2a, 15];
        reversed.extend_from_slice(&subscribe);
        reversed.extend_from_slice(&[0x08, 0x07]);
        assert_eq!(decode_commands(&in_order).unwrap(), vec![expected.clone()]);
        assert_eq!(decode_commands(&reversed).unwrap(), vec![expected]);
    }

    #[test]
    fn the_pong_is_an_empty_command_and_an_empty_frame_holds_none() {
        assert_eq!(decode_commands(&[0x00]).unwrap(), vec![Command { id: 0, request: Request::None }]);
        assert_eq!(decode_commands(&[0x00, 0x00]).unwrap().len(), 2);
        assert!(decode_commands(&[]).unwrap().is_empty());
    }

    #[test]
    fn the_first_request_in_dispatch_order_wins() {
        // id 1, then an empty subscribe (5) and an empty connect (4) on the wire: connect
        // comes first in Centrifugo's order whatever the order of the bytes.
        let frame = [0x06, 0x08, 0x01, 0x2a, 0x00, 0x22, 0x00];
        assert_eq!(
            decode_commands(&frame).unwrap(),
            vec![Command { id: 1, request: Request::Connect(ConnectRequest::default()) }]
        );
        // send (12) before refresh (14).
        let frame = [0x06, 0x08, 0x02, 0x72, 0x00, 0x62, 0x00];
        assert_eq!(
            decode_commands(&frame).unwrap(),
            vec![Command { id: 2, request: Request::Send { data: Bytes::new() } }]
        );
    }

    #[test]
    fn every_command_kind_round_trips() {
        let sub = SubscribeRequest {
            channel: "chat:ünïcode".into(),
            token: "a.b.c".into(),
            recover: true,
            epoch: "epoch".into(),
            offset: u64::MAX,
            data: Bytes::from(vec![7u8; 300]),
            positioned: true,
            recoverable: true,
            join_leave: true,
            delta: "fossil".into(),
            flag: u64::MAX,
            tf: Some(FilterNode {
                op: "or".into(),
                nodes: vec![
                    FilterNode {
                        key: "k".into(),
                        cmp: "in".into(),
                        vals: vec!["a".into(), "".into()],
                        ..Default::default()
                    },
                    FilterNode {
                        op: "not".into(),
                        nodes: vec![FilterNode {
                            key: "n".into(),
                            cmp: "gte".into(),
                            val: "1.5".into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
        };
        let commands = vec![
            Command {
                id: 1,
                request: Request::Connect(ConnectRequest {
                    token: "token".into(),
                    data: bytes("{}"),
                    subs: BTreeMap::from([
                        ("a".to_string(), SubscribeRequest { recover: true, ..SubscribeRequest::default() }),
                        (
                            "b".to_string(),
                            SubscribeRequest { offset: 9, epoch: "x".into(), ..SubscribeRequest::default() },
                        ),
                    ]),
                    name: "js".into(),
                    version: "5.0.0".into(),
                    headers: BTreeMap::new(),
                }),
            },
            Command { id: 2, request: Request::Subscribe(sub) },
            Command { id: 0, request: Request::None },
            Command { id: u32::MAX, request: Request::None },
            Command { id: 3, request: Request::Unsubscribe { channel: "c".into() } },
            Command {
                id: 4,
                request: Request::Publish { channel: "c".into(), data: Bytes::from_static(&[0, 1, 255]) },
            },
            Command { id: 5, request: Request::Presence { channel: "c".into() } },
            Command { id: 6, request: Request::PresenceStats { channel: "c".into() } },
            Command {
                id: 7,
                request: Request::History(HistoryRequest {
                    channel: "c".into(),
                    limit: i32::MIN,
                    since: Some(StreamPosition::default()),
                    reverse: false,
                }),
            },
            Command {
                id: 8,
                request: Request::History(HistoryRequest {
                    channel: "c".into(),
                    limit: 10,
                    since: None,
                    reverse: true,
                }),
            },
            Command { id: 9, request: Request::Rpc { method: "".into(), data: bytes("[1]") } },
            Command { id: 0, request: Request::Send { data: bytes("x") } },
            Command { id: 10, request: Request::Refresh { token: "t".into() } },
            Command { id: 11, request: Request::SubRefresh { channel: "c".into(), token: "t".into() } },
        ];
        let mut frame = BytesMut::new();
        for command in &commands {
            encode_command(command, &mut frame);
        }
        assert_eq!(decode_commands(&frame).unwrap(), commands);
        let one_by_one: Vec<Command> = super::commands(&frame).map(Result::unwrap).collect();
        assert_eq!(one_by_one, commands);
    }

    /// Every reply kind, with the bytes Python's protobuf writes for it.
    fn py_replies() -> Vec<(&'static str, Reply, &'static str)> {
        vec![
            (
                "publication push",
                push(
                    "chat",
                    PushKind::Publication(Publication {
                        offset: 42,
                        data: bytes(r#"{"x":1}"#),
                        info: Some(ClientInfo {
                            user: "u".into(),
                            client: "c".into(),
                            conn_info: bytes("{}"),
                            chan_info: bytes("[]"),
                        }),
                        tags: BTreeMap::from([("k".to_string(), "v".to_string())]),
                        delta: true,
                        time: 1_700_000_000_000,
                        kind: PayloadKind::Unchecked,
                    }),
                ),
                "362234120463686174222c22077b2278223a317d2a0e0a01751201631a027b7d22025b5d302a3a060a016b1201764001488\
                 0d095ffbc31",
            ),
            (
                "connect",
                result(
                    1,
                    ReplyResult::Connect(ConnectResult {
                        client: "cid".into(),
                        version: "1.0".into(),
                        expires: true,
                        ttl: 60,
                        data: bytes("d"),
                        subs: BTreeMap::from([(
                            "s".to_string(),
                            SubscribeResult {
                                recoverable: true,
                                epoch: "e".into(),
                                offset: 5,
                                positioned: true,
                                ..SubscribeResult::default()
                            },
                        )]),
                        ping: 25,
                        pong: true,
                        time: 1_700_000_000_000,
                        ..ConnectResult::default()
                    }),
                ),
                "3008012a2c0a036369641203312e301801203c2a0164320e0a01731209180132016548055001381940015880d095ffbc31",
            ),
            (
                "subscribe",
                result(
                    2,
                    ReplyResult::Subscribe(SubscribeResult {
                        expires: true,
                        ttl: 30,
                        recoverable: true,
                        epoch: "ep".into(),
                        publications: vec![publication("a", 1), publication("b", 2)],
                        recovered: true,
                        offset: 2,
                        positioned: true,
                        data: bytes("z"),
                        was_recovering: true,
                        delta: true,
                        id: 0,
                    }),
                ),
                "29080232250801101e1801320265703a0522016130013a0522016230024001480250015a017a60016801",
            ),
            (
                "error",
                Reply::Error { id: 3, error: ErrorReply::UNRECOVERABLE_POSITION },
                "1e0803121a08701216756e7265636f76657261626c6520706f736974696f6e",
            ),
            (
                "temporary error",
                Reply::Error { id: 3, error: ErrorReply::INTERNAL },
                "1f0803121b08641215696e7465726e616c20736572766572206572726f721801",
            ),
            ("unsubscribe", result(4, ReplyResult::Unsubscribe), "0408043a00"),
            ("publish", result(5, ReplyResult::Publish), "0408054200"),
            (
                "presence",
                result(6, ReplyResult::Presence(BTreeMap::from([("c1".to_string(), info("u1", "c1"))]))),
                "1408064a100a0e0a02633112080a02753112026331",
            ),
            (
                "presence_stats",
                result(7, ReplyResult::PresenceStats { num_clients: 3, num_users: 2 }),
                "080807520408031002",
            ),
            (
                "history",
                result(
                    8,
                    ReplyResult::History {
                        publications: vec![publication("p", 9)],
                        position: StreamPosition { offset: 9, epoch: "ep".into() },
                    },
                ),
                "1108085a0d0a052201703009120265701809",
            ),
            ("rpc", result(9, ReplyResult::Rpc { data: bytes("r") }), "0708096a030a0172"),
            (
                "refresh",
                result(10, ReplyResult::Refresh { client: "c".into(), version: "v".into(), expires: true, ttl: 100 }),
                "0e080a720a0a016312017618012064",
            ),
            ("sub_refresh", result(11, ReplyResult::SubRefresh { expires: true, ttl: 50 }), "08080b7a0408011032"),
            ("join push", push("chat", PushKind::Join(info("u", "c"))), "1222101204636861742a080a060a0175120163"),
            ("leave push", push("chat", PushKind::Leave(info("u", "c"))), "12221012046368617432080a060a0175120163"),
            (
                "unsubscribe push",
                push("chat", PushKind::Unsubscribe { code: 2000, reason: "server unsubscribe".into() }),
                "21221f1204636861743a1710d00f1a1273657276657220756e737562736372696265",
            ),
            ("message push", push("", PushKind::Message { data: bytes("m") }), "07220542030a016d"),
            (
                "subscribe push",
                push(
                    "news",
                    PushKind::Subscribe(SubscribeResult {
                        recoverable: true,
                        epoch: "e".into(),
                        offset: 3,
                        positioned: true,
                        data: bytes("d"),
                        ..SubscribeResult::default()
                    }),
                ),
                "16221412046e6577734a0c0801220165280330013a0164",
            ),
            (
                "connect push",
                push(
                    "",
                    PushKind::Connect(ConnectResult {
                        client: "cid".into(),
                        version: "1.0".into(),
                        data: bytes("d"),
                        expires: true,
                        ttl: 60,
                        ping: 25,
                        pong: true,
                        session: "sess".into(),
                        node: "n1".into(),
                        time: 5,
                        ..ConnectResult::default()
                    }),
                ),
                "25222352210a036369641203312e301a01642801303c381940014a047365737352026e315805",
            ),
            (
                "disconnect push",
                push("", PushKind::Disconnect(Disconnect::SHUTDOWN)),
                "1322115a0f08b917120873687574646f776e1801",
            ),
            ("refresh push", push("", PushKind::Refresh { expires: true, ttl: 10 }), "08220662040801100a"),
            ("server ping", Reply::Ping, "00"),
        ]
    }

    #[test]
    fn replies_are_the_bytes_python_protobuf_writes() {
        for (name, reply, py) in py_replies() {
            assert_eq!(encoded_reply(&reply), hex(py), "{name}");
        }
    }

    #[test]
    fn replies_made_by_python_protobuf_decode() {
        for (name, reply, py) in py_replies() {
            assert_eq!(decoded_replies(&hex(py)), vec![reply], "{name}");
        }
    }

    #[test]
    fn every_reply_kind_round_trips_in_one_frame() {
        let mut all: Vec<Reply> = py_replies().into_iter().map(|(_, reply, _)| reply).collect();
        // Values the fixtures leave out: several map entries, big numbers, long payloads.
        all.push(result(
            u32::MAX,
            ReplyResult::Presence(BTreeMap::from([
                ("a".to_string(), ClientInfo { conn_info: Bytes::from(vec![1u8; 200]), ..info("ua", "a") }),
                ("b".to_string(), info("", "b")),
            ])),
        ));
        all.push(push(
            "ch",
            PushKind::Publication(Publication {
                offset: u64::MAX,
                data: Bytes::from(vec![0xabu8; 20_000]),
                tags: BTreeMap::from([("a".to_string(), "1".to_string()), ("b".to_string(), "2".to_string())]),
                time: -1,
                ..Publication::default()
            }),
        ));
        all.push(push("ch", PushKind::Join(ClientInfo::default())));
        all.push(push("", PushKind::Disconnect(Disconnect { code: 4999, reason: "custom".into() })));
        all.push(Reply::Error { id: 1, error: ErrorReply { code: 1999, message: "app".into(), temporary: false } });
        let mut frame = BytesMut::new();
        for reply in &all {
            encode_reply(reply, &mut frame);
        }
        assert_eq!(decoded_replies(&frame), all);
    }

    #[test]
    fn the_disconnect_push_says_whether_to_reconnect() {
        for (disconnect, reconnect) in [(Disconnect::SHUTDOWN, true), (Disconnect::INVALID_TOKEN, false)] {
            let bytes = encoded_reply(&push("", PushKind::Disconnect(disconnect)));
            let reply = wire::Reply::decode_length_delimited(&bytes[..]).unwrap();
            assert_eq!(reply.push.unwrap().disconnect.unwrap().reconnect, reconnect);
        }
    }

    #[test]
    fn the_publication_fast_path_writes_what_encode_reply_writes() {
        let full = Publication {
            offset: 300,
            data: Bytes::from(vec![b'x'; 70_000]),
            info: Some(ClientInfo {
                user: "user".into(),
                client: "client".into(),
                conn_info: bytes(r#"{"name":"n"}"#),
                chan_info: bytes("[]"),
            }),
            tags: BTreeMap::from([
                ("".to_string(), "empty key".to_string()),
                ("empty value".to_string(), "".to_string()),
                ("k".to_string(), "v".to_string()),
            ]),
            delta: true,
            time: 1_700_000_000_123,
            kind: PayloadKind::Unchecked,
        };
        let publications = [
            Publication::default(),
            publication("{}", 1),
            Publication { info: Some(ClientInfo::default()), ..Publication::default() },
            Publication { time: i64::MIN, ..publication("", u64::MAX) },
            full,
        ];
        for (channel, id) in
            [("", 0), ("chat", 0), ("long:".repeat(100).as_str(), 0), ("chat", 7), ("", u64::from(u32::MAX) + 1)]
        {
            for p in &publications {
                let mut fast = BytesMut::from(&b"before"[..]);
                encode_publication_push(channel, id, p, &mut fast);
                // With an id, the channel's name is left out.
                let expected = Reply::Push(Push {
                    id,
                    channel: if id == 0 { channel.to_owned() } else { String::new() },
                    kind: PushKind::Publication(p.clone()),
                });
                let mut slow = BytesMut::from(&b"before"[..]);
                encode_reply(&expected, &mut slow);
                assert_eq!(fast, slow, "channel {channel:?}, id {id}, publication {p:?}");
                assert_eq!(decoded_replies(&fast[6..]), vec![expected]);
            }
        }
    }

    #[test]
    fn malformed_frames_are_errors() {
        let error = |frame: &[u8]| decode_commands(frame).unwrap_err();
        // A length prefix cut short, and one longer than ten bytes.
        assert!(matches!(error(&[0x80]), DecodeError::Length { at: 0 }));
        assert!(matches!(error(&[0xff; 11]), DecodeError::Length { at: 0 }));
        // A length past the end of the frame, up to the largest varint: checked before
        // anything is read or allocated.
        assert!(matches!(error(&[0x05, 0x08, 0x01]), DecodeError::PastEnd { at: 0, len: 5, remaining: 2 }));
        let huge = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert!(matches!(error(&huge), DecodeError::PastEnd { at: 0, len: u64::MAX, remaining: 0 }));
        // Wrong wire types: id (1) as bytes, subscribe (5) as a varint, wire type 6.
        assert!(matches!(error(&[0x02, 0x0a, 0x00]), DecodeError::Message { at: 0, .. }));
        assert!(matches!(error(&[0x02, 0x28, 0x01]), DecodeError::Message { at: 0, .. }));
        assert!(matches!(error(&[0x01, 0x0e]), DecodeError::Message { at: 0, .. }));
        // Field number 0.
        assert!(matches!(error(&[0x02, 0x00, 0x00]), DecodeError::Message { at: 0, .. }));
        // An embedded subscribe longer than its command, a field cut short inside it, an
        // id whose varint the command's length cuts.
        assert!(matches!(error(&[0x04, 0x2a, 0x05, 0x0a, 0x00]), DecodeError::Message { at: 0, .. }));
        assert!(matches!(error(&[0x04, 0x2a, 0x02, 0x0a, 0x05]), DecodeError::Message { at: 0, .. }));
        assert!(matches!(error(&[0x02, 0x08, 0x80, 0x01]), DecodeError::Message { at: 0, .. }));
        // A channel that is not UTF-8.
        assert!(matches!(error(&[0x05, 0x2a, 0x03, 0x0a, 0x01, 0xff]), DecodeError::Message { at: 0, .. }));
        // The error names where the bad command starts.
        assert!(matches!(error(&[0x00, 0x02, 0x08, 0x01, 0x80]), DecodeError::Length { at: 4 }));
        assert!(matches!(error(&[0x00, 0x02, 0x0a, 0x00]), DecodeError::Message { at: 1, .. }));
    }

    #[test]
    fn the_iterator_stops_after_an_error() {
        let frame = [0x00, 0x02, 0x0a, 0x00, 0x00];
        let mut commands = super::commands(&frame);
        assert_eq!(commands.next().unwrap().unwrap(), Command::default());
        assert!(matches!(commands.next(), Some(Err(DecodeError::Message { at: 1, .. }))));
        assert!(commands.next().is_none());
        let mut commands = super::commands(&[0x00, 0x09, 0x08]);
        assert!(commands.next().unwrap().is_ok());
        assert!(matches!(commands.next(), Some(Err(DecodeError::PastEnd { at: 1, len: 9, remaining: 1 }))));
        assert!(commands.next().is_none());
    }

    #[test]
    fn a_frame_holds_at_most_so_many_commands() {
        assert_eq!(decode_commands(&[0u8; MAX_COMMANDS_PER_FRAME]).unwrap().len(), MAX_COMMANDS_PER_FRAME);
        assert!(matches!(decode_commands(&[0u8; MAX_COMMANDS_PER_FRAME + 1]), Err(DecodeError::TooManyCommands)));
        // One at a time, the iterator has no cap.
        assert_eq!(super::commands(&[0u8; MAX_COMMANDS_PER_FRAME + 1]).count(), MAX_COMMANDS_PER_FRAME + 1);
    }

    #[test]
    fn malformed_replies_are_errors() {
        // A reply with an id and nothing else; a push with nothing in it; a disconnect code
        // beyond u16.
        assert!(matches!(replies(&[0x02, 0x08, 0x01]).next(), Some(Err(DecodeError::UnknownReply { at: 0 }))));
        assert!(matches!(replies(&[0x02, 0x22, 0x00]).next(), Some(Err(DecodeError::UnknownReply { at: 0 }))));
        // Reply { push: Push { disconnect: Disconnect { code: 65536 } } }
        let frame = [0x08, 0x22, 0x06, 0x5a, 0x04, 0x08, 0x80, 0x80, 0x04];
        assert!(matches!(replies(&frame).next(), Some(Err(DecodeError::DisconnectCode { at: 0, code: 65536 }))));
    }
}
