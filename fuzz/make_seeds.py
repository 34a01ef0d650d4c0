#!/usr/bin/env python3
"""Writes the committed seed corpus of every fuzz target into fuzz/corpus/<target>/.

Reproducible: run `python3 fuzz/make_seeds.py` from anywhere; it rewrites the seed
files (and removes nothing else). Connection seeds start with two chunk-size bytes
(see volley_fuzz::run_connection): 00 00 feeds the rest in one piece. The
deflate_connection seeds have one byte before those, the role and the agreed
permessage-deflate parameters (volley_fuzz::run_deflate_connection), and compressed
frames made by zlib with those parameters.
"""

import base64
import hashlib
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# The fixed masking key of the fuzz targets (RandomSource::fixed), from RFC 6455 §5.7.
KEY = bytes([0x37, 0xFA, 0x21, 0x3D])


def accept(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def frame(opcode, payload=b"", fin=True, mask=None, rsv=0, length=None):
    """One frame; `length` overrides the declared payload length."""
    n = len(payload) if length is None else length
    out = bytearray([(0x80 if fin else 0) | rsv | opcode])
    mbit = 0x80 if mask is not None else 0
    if n <= 125:
        out.append(mbit | n)
    elif n <= 0xFFFF:
        out.append(mbit | 126)
        out += struct.pack(">H", n)
    else:
        out.append(mbit | 127)
        out += struct.pack(">Q", n)
    if mask is not None:
        out += mask
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes(out + payload)


def close(code=None, reason=b""):
    return b"" if code is None else struct.pack(">H", code) + reason


TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def conversations(masked: bool):
    """Frame sequences from the peer: masked when the peer is a client."""
    m = KEY if masked else None
    wrong = None if masked else KEY  # masking the other way round: a fault
    f = lambda *a, **k: frame(*a, mask=k.pop("mask", m), **k)
    return {
        "hello": f(TEXT, b"Hello"),
        "fragmented_hello": f(TEXT, b"Hel", fin=False) + f(CONT, b"lo"),
        "ping_hello": f(PING, b"Hello"),
        "pong_hello": f(PONG, b"Hello"),
        "binary_256": f(BINARY, bytes(range(256))),
        # The 64 KiB header of §5.7 with only the start of its payload: EOF mid-frame.
        "binary_64k_truncated": f(BINARY, bytes(16), length=65536)[: 10 + (4 if m else 0) + 16],
        "frame_too_big": f(BINARY, b"", length=65537),
        "close_normal": f(CLOSE, close(1000, b"bye")),
        "close_empty": f(CLOSE),
        "close_one_byte": f(CLOSE, b"\x03"),
        "close_code_1005": f(CLOSE, close(1005)),
        "close_bad_utf8": f(CLOSE, close(1000, b"\xff")),
        "text_bad_utf8": f(TEXT, b"abc\xc3\x28"),
        "text_split_euro": f(TEXT, b"\xe2\x82", fin=False) + f(CONT, b"\xac!"),
        "text_truncated_utf8": f(TEXT, b"\xe2\x82", fin=False) + f(CONT, b""),
        "ping_inside_message": f(TEXT, b"Hel", fin=False) + f(PING, b"p") + f(CONT, b"lo")
        + f(CLOSE, close(1000)),
        "reserved_opcode": f(0x3, b"x"),
        "rsv1": f(TEXT, b"x", rsv=0x40),
        "wrong_masking": frame(TEXT, b"Hello", mask=wrong),
        "unexpected_continuation": f(CONT, b"x"),
        "expected_continuation": f(TEXT, b"a", fin=False) + f(TEXT, b"b"),
        "fragmented_ping": f(PING, b"x", fin=False),
        "long_ping": f(PING, bytes(126)),
        "length_msb": bytes([0x82, 0x7F | (0x80 if m else 0), 0x80, 0, 0, 0, 0, 0, 0, 0]),
        "error_then_close": f(0x3, b"x") + f(PING, b"ignored") + f(CLOSE, close(1002)),
        "conversation": f(TEXT, "héllo €".encode()) + f(PING, b"1") + f(BINARY, b"\x00\x01")
        + f(BINARY, bytes(3000)) + f(PONG) + f(CLOSE, close(1000, b"done")) + f(TEXT, b"late"),
    }


RFC_REQUEST = (
    b"GET /chat HTTP/1.1\r\n"
    b"Host: server.example.com\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Origin: http://example.com\r\n"
    b"Sec-WebSocket-Protocol: chat, superchat\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)


def server_handshakes():
    browser = (
        b"GET /ws?room=1&x=%20 HTTP/1.1\r\nHost: localhost:9001\r\n"
        b"Connection: keep-alive, Upgrade\r\nPragma: no-cache\r\nUser-Agent: Mozilla/5.0\r\n"
        b"Upgrade: WebSocket\r\nOrigin: http://localhost:9001\r\nSec-WebSocket-Version: 13\r\n"
        b"Cookie: a=1; b=two\r\nSec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    )
    return {
        "rfc6455_1_3": RFC_REQUEST,
        "rfc6455_1_3_then_frame": RFC_REQUEST + frame(TEXT, b"Hello", mask=KEY),
        "browser": browser,
        "extensions_quoted": RFC_REQUEST.replace(
            b"\r\n\r\n",
            b'\r\nSec-WebSocket-Extensions: x-foo; a="b", permessage-deflate; '
            b'server_max_window_bits="10"\r\nSec-WebSocket-Extensions: x-bar\r\n\r\n',
        ),
        "version_8": RFC_REQUEST.replace(b"Version: 13", b"Version: 8"),
        "post": RFC_REQUEST.replace(b"GET", b"POST", 1),
        "http_1_0": RFC_REQUEST.replace(b"HTTP/1.1", b"HTTP/1.0", 1),
        "short_key": RFC_REQUEST.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"dGhlIHNhbXBsZQ=="),
        "no_upgrade": RFC_REQUEST.replace(b"Upgrade: websocket\r\n", b""),
        "partial": RFC_REQUEST[:40],
    }


def client_handshakes():
    key = base64.b64encode(KEY * 4)
    ok = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept(key) + b"\r\n\r\n"
    )
    with_options = ok.replace(
        b"\r\n\r\n",
        b"\r\nSec-WebSocket-Protocol: chat\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=15\r\n\r\n",
    )
    return {
        "accept": ok,
        "accept_then_frame": ok + frame(TEXT, b"Hello"),
        "accept_protocol_extension": with_options,
        "unknown_protocol": ok.replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Protocol: x\r\n\r\n"),
        "unknown_extension": ok.replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Extensions: x-foo\r\n\r\n"),
        # Our 101 carrying the RFC 6455 §1.3 accept value, which belongs to another key.
        "rfc6455_1_3_wrong_accept": ok.replace(accept(key), accept(b"dGhlIHNhbXBsZSBub25jZQ==")),
        "forbidden": b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
        "partial": ok[:50],
    }


def frame_headers():
    return {
        "unmasked_hello": frame(TEXT, b"Hello"),
        "masked_hello": frame(TEXT, b"Hello", mask=KEY),
        "fragment_hel": frame(TEXT, b"Hel", fin=False),
        "fragment_lo": frame(CONT, b"lo"),
        "ping": frame(PING, b"Hello", mask=KEY),
        "binary_256": frame(BINARY, b"", length=256),
        "binary_64k": frame(BINARY, b"", length=65536),
        "masked_64k": frame(BINARY, b"", length=65536, mask=KEY),
        "close": frame(CLOSE, close(1000)),
        "non_minimal_16": bytes([0x81, 0x7E, 0x00, 0x05]) + b"Hello",
        "non_minimal_64": bytes([0x81, 0x7F, 0, 0, 0, 0, 0, 0, 0, 0x05]) + b"Hello",
        "length_msb": bytes([0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0]),
        "rsv_all": bytes([0xFF, 0x00]),
    }


RSV1 = 0x40


class Deflater:
    """The sender's side of permessage-deflate (RFC 7692 §7.2.1) with Python's zlib: raw
    deflate, each message flushed with Z_SYNC_FLUSH and its 00 00 ff ff tail removed.
    With context takeover one compressor serves every message; without, each message
    gets a new one."""

    def __init__(self, window_bits, no_context_takeover):
        # zlib cannot compress with a 256-byte window; 9 is the smallest it takes.
        self.wbits = max(window_bits, 9)
        self.nct = no_context_takeover
        self.c = None

    def compress(self, data):
        if self.c is None or self.nct:
            self.c = zlib.compressobj(6, zlib.DEFLATED, -self.wbits)
        out = self.c.compress(data) + self.c.flush(zlib.Z_SYNC_FLUSH)
        assert out.endswith(b"\x00\x00\xff\xff")
        return out[:-4]


def deflate_param_byte(role, server_nct, client_nct, client_bits, server_bits):
    """The first byte of a deflate_connection input (volley_fuzz::run_deflate_connection)."""
    b = (1 if role == "client" else 0) | (2 if server_nct else 0) | (4 if client_nct else 0)
    b |= (15 - client_bits) << 3
    b |= [15, 12, 10, 9].index(server_bits) << 6
    return bytes([b])


def deflate_conversations(role, server_nct, client_nct, client_bits, server_bits):
    """Frame sequences from the peer of a fuzzed `role` connection, compressed by the
    real compressor with the peer's own parameters."""
    peer_is_client = role == "server"
    m = KEY if peer_is_client else None
    bits, nct = (client_bits, client_nct) if peer_is_client else (server_bits, server_nct)
    f = lambda *a, **k: frame(*a, mask=m, **k)

    def z(*messages):
        d = Deflater(bits, nct)
        return [d.compress(x) for x in messages]

    hello, = z(b"Hello")
    a, b, c = z(b"Hello, Hello, Hello", "héllo € héllo €".encode(), bytes(range(256)) * 8)
    big, = z(bytes(300 << 10))  # inflates past the fuzz targets' 256 KiB message limit
    empty, = z(b"")
    return {
        "hello": f(TEXT, hello, rsv=RSV1),
        "uncompressed_hello": f(TEXT, b"Hello"),
        "empty": f(BINARY, empty, rsv=RSV1),
        # RSV1 on the first frame only (RFC 7692 §6.1).
        "fragmented": f(TEXT, a[:3], fin=False, rsv=RSV1) + f(CONT, a[3:6], fin=False) + f(CONT, a[6:]),
        # The same compressor across messages (unless no context takeover), with
        # uncompressed frames and control frames between them.
        "conversation": f(TEXT, a, rsv=RSV1) + f(PING, b"1") + f(BINARY, b"plain")
        + f(TEXT, b, rsv=RSV1) + f(BINARY, c, rsv=RSV1) + f(CLOSE, close(1000, b"done")),
        "too_big_inflated": f(BINARY, big, rsv=RSV1),
        "rsv1_on_ping": f(PING, b"x", rsv=RSV1),
        "rsv1_on_continuation": f(TEXT, a[:3], fin=False, rsv=RSV1) + f(CONT, a[3:], rsv=RSV1),
        "not_deflate": f(TEXT, b"\xff\xfe\xfd\xfc", rsv=RSV1),
        "compressed_bad_utf8": f(TEXT, z(b"abc\xc3\x28")[0], rsv=RSV1),
        "rsv2": f(TEXT, hello, rsv=0x20),
    }


def deflate_connections():
    seeds = {}
    # (server_no_context_takeover, client_no_context_takeover, client bits, server bits)
    settings = {
        "takeover_15": (False, False, 15, 15),
        "no_takeover_15": (True, True, 15, 15),
        "takeover_9_12": (False, False, 9, 12),
        "no_takeover_10": (True, True, 10, 10),
    }
    for role in ("server", "client"):
        for sname, s in settings.items():
            first = deflate_param_byte(role, *s)
            for name, data in deflate_conversations(role, *s).items():
                seeds[f"{role}_{sname}_{name}"] = first + b"\x00\x00" + data
            for name in ("hello", "conversation"):
                data = deflate_conversations(role, *s)[name]
                seeds[f"{role}_{sname}_{name}_chunks_3_buffered_5"] = first + b"\x03\x85" + data
    return seeds


def write(target, seeds):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    return len(seeds)


def main():
    counts = {
        "frame_header": write("frame_header", frame_headers()),
        "server_handshake": write("server_handshake", server_handshakes()),
        "client_handshake": write("client_handshake", client_handshakes()),
    }
    for target, masked in (("server_connection", True), ("client_connection", False)):
        seeds = {}
        for name, data in conversations(masked).items():
            seeds[name] = b"\x00\x00" + data  # one chunk
        for name in ("hello", "fragmented_hello", "conversation", "text_split_euro"):
            data = conversations(masked)[name]
            seeds[name + "_bytewise"] = b"\x01\x01" + data
            seeds[name + "_chunks_3_buffered_5"] = b"\x03\x85" + data
        counts[target] = write(target, seeds)
    counts["deflate_connection"] = write("deflate_connection", deflate_connections())
    for target, n in counts.items():
        print(f"{target}: {n} seeds")


if __name__ == "__main__":
    main()
