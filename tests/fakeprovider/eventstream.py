"""Minimal encoder for the AWS event-stream binary framing (``application/vnd.amazon.eventstream``).

Frame layout (all integers big-endian)::

    total_length:u32 | headers_length:u32 | prelude_crc:u32 | headers | payload | message_crc:u32

``prelude_crc`` is the CRC32 of the first 8 bytes, ``message_crc`` the CRC32 of every byte
before it. Each header is ``name_len:u8 | name | type:u8 | value``; only the string type
(7, ``value_len:u16 | utf-8 bytes``) is needed for Bedrock's streaming responses.
"""

from __future__ import annotations

import struct
import zlib

_STRING = 7


def _headers(headers: dict[str, str]) -> bytes:
    out = bytearray()
    for name, value in headers.items():
        n = name.encode("utf-8")
        v = value.encode("utf-8")
        out += struct.pack(">B", len(n)) + n + struct.pack(">BH", _STRING, len(v)) + v
    return bytes(out)


def encode_frame(headers: dict[str, str], payload: bytes) -> bytes:
    hdr = _headers(headers)
    total = 12 + len(hdr) + len(payload) + 4
    prelude = struct.pack(">II", total, len(hdr))
    prelude += struct.pack(">I", zlib.crc32(prelude) & 0xFFFFFFFF)
    body = prelude + hdr + payload
    return body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def event_frame(event_type: str, payload: bytes) -> bytes:
    """A normal event (``:message-type: event``) carrying a JSON payload."""
    return encode_frame(
        {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"},
        payload,
    )


def exception_frame(exception_type: str, payload: bytes) -> bytes:
    """A modelled in-stream exception, e.g. ``throttlingException`` (lower camel case, as Bedrock)."""
    return encode_frame(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        payload,
    )


def decode_frames(data: bytes) -> list[tuple[dict[str, str], bytes]]:
    """Decode concatenated frames (string headers only); checks both CRCs. For tests."""
    frames = []
    pos = 0
    while pos < len(data):
        total, hlen, pcrc = struct.unpack_from(">III", data, pos)
        if zlib.crc32(data[pos : pos + 8]) & 0xFFFFFFFF != pcrc:
            raise ValueError("prelude CRC mismatch")
        end = pos + total
        (mcrc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(data[pos : end - 4]) & 0xFFFFFFFF != mcrc:
            raise ValueError("message CRC mismatch")
        headers: dict[str, str] = {}
        h = pos + 12
        hend = h + hlen
        while h < hend:
            nlen = data[h]
            name = data[h + 1 : h + 1 + nlen].decode()
            h += 1 + nlen
            htype = data[h]
            if htype != _STRING:
                raise ValueError(f"unsupported header type {htype}")
            (vlen,) = struct.unpack_from(">H", data, h + 1)
            headers[name] = data[h + 3 : h + 3 + vlen].decode()
            h += 3 + vlen
        frames.append((headers, data[hend : end - 4]))
        pos = end
    return frames
