#!/usr/bin/env python3
"""Readiness probe for the test rig's Cassandra: asks it one CQL question.

Usage: cql_probe.py HOST PORT

Speaks the CQL native protocol v4 over a plain socket (stdlib only, so the rig
needs no driver and no pip install): STARTUP with CQL_VERSION 3.0.0 -> READY,
then QUERY "SELECT release_version FROM system.local" -> RESULT Rows. Prints
the release version of the first row and exits 0; on any failure prints why on
stderr and exits 1.

v4 rather than v5 on purpose: v5 wraps every frame after STARTUP in an extra
checksummed segment layer, which buys nothing for a probe.
"""

import socket
import struct
import sys

PROTOCOL_VERSION = 0x04  # request direction; responses come back as 0x84
TIMEOUT_S = 5.0
QUERY = "SELECT release_version FROM system.local"

OP_ERROR = 0x00
OP_STARTUP = 0x01
OP_READY = 0x02
OP_AUTHENTICATE = 0x03
OP_QUERY = 0x07
OP_RESULT = 0x08

RESULT_ROWS = 0x0002
CONSISTENCY_ONE = 0x0001

# Rows metadata flags.
FLAG_GLOBAL_TABLES_SPEC = 0x0001
FLAG_HAS_MORE_PAGES = 0x0002
FLAG_NO_METADATA = 0x0004

# Option ids of types that carry extra type information after the id.
TYPE_CUSTOM = 0x0000
TYPE_LIST = 0x0020
TYPE_MAP = 0x0021
TYPE_SET = 0x0022
TYPE_UDT = 0x0030
TYPE_TUPLE = 0x0031


class ProbeError(Exception):
    pass


class Reader:
    """Cursor over a frame body, with the protocol's primitive types."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ProbeError("truncated frame body")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def short(self) -> int:
        return struct.unpack(">H", self.take(2))[0]

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def string(self) -> str:
        return self.take(self.short()).decode("utf-8", "replace")

    def bytes_(self):
        n = self.int()
        return None if n < 0 else self.take(n)

    def type_option(self) -> None:
        """Skips one [option] describing a column type (recursively)."""
        type_id = self.short()
        if type_id == TYPE_CUSTOM:
            self.string()
        elif type_id in (TYPE_LIST, TYPE_SET):
            self.type_option()
        elif type_id == TYPE_MAP:
            self.type_option()
            self.type_option()
        elif type_id == TYPE_UDT:
            self.string()  # keyspace
            self.string()  # type name
            for _ in range(self.short()):
                self.string()
                self.type_option()
        elif type_id == TYPE_TUPLE:
            for _ in range(self.short()):
                self.type_option()


def enc_string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack(">H", len(b)) + b


def enc_long_string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack(">i", len(b)) + b


def send_frame(sock: socket.socket, stream: int, opcode: int, body: bytes) -> None:
    header = struct.pack(">BBhBi", PROTOCOL_VERSION, 0, stream, opcode, len(body))
    sock.sendall(header + body)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ProbeError("connection closed by server")
        buf.extend(chunk)
    return bytes(buf)


def recv_frame(sock: socket.socket):
    version, flags, _stream, opcode, length = struct.unpack(
        ">BBhBi", recv_exact(sock, 9)
    )
    if version & 0x7F != PROTOCOL_VERSION:
        raise ProbeError(f"unexpected protocol version 0x{version:02x} in response")
    body = recv_exact(sock, length)
    reader = Reader(body)
    # Only the tracing/custom-payload/warning flags can appear unasked; skip
    # their prefixes (in the spec's order) so the body proper comes next.
    if flags & 0x02:  # tracing: [uuid]
        reader.take(16)
    if flags & 0x04:  # custom payload: [bytes map]
        for _ in range(reader.short()):
            reader.string()
            reader.bytes_()
    if flags & 0x08:  # warning: [string list]
        for _ in range(reader.short()):
            reader.string()
    if flags & 0x01:
        raise ProbeError("server sent a compressed frame, which was not asked for")
    return opcode, reader


def raise_if_error(opcode: int, reader: Reader) -> None:
    if opcode == OP_ERROR:
        code = reader.int()
        raise ProbeError(f"server error 0x{code:04x}: {reader.string()}")


def probe(host: str, port: int) -> str:
    with socket.create_connection((host, port), timeout=TIMEOUT_S) as sock:
        sock.settimeout(TIMEOUT_S)

        startup = struct.pack(">H", 1) + enc_string("CQL_VERSION") + enc_string("3.0.0")
        send_frame(sock, 0, OP_STARTUP, startup)
        opcode, reader = recv_frame(sock)
        raise_if_error(opcode, reader)
        if opcode == OP_AUTHENTICATE:
            raise ProbeError("server wants authentication; the rig expects AllowAllAuthenticator")
        if opcode != OP_READY:
            raise ProbeError(f"expected READY, got opcode 0x{opcode:02x}")

        query = enc_long_string(QUERY) + struct.pack(">HB", CONSISTENCY_ONE, 0)
        send_frame(sock, 1, OP_QUERY, query)
        opcode, reader = recv_frame(sock)
        raise_if_error(opcode, reader)
        if opcode != OP_RESULT:
            raise ProbeError(f"expected RESULT, got opcode 0x{opcode:02x}")
        kind = reader.int()
        if kind != RESULT_ROWS:
            raise ProbeError(f"expected a Rows result, got kind {kind}")

        flags = reader.int()
        columns = reader.int()
        if flags & FLAG_HAS_MORE_PAGES:
            reader.bytes_()
        if not flags & FLAG_NO_METADATA:
            if flags & FLAG_GLOBAL_TABLES_SPEC:
                reader.string()
                reader.string()
            for _ in range(columns):
                if not flags & FLAG_GLOBAL_TABLES_SPEC:
                    reader.string()
                    reader.string()
                reader.string()  # column name
                reader.type_option()

        rows = reader.int()
        if rows < 1 or columns < 1:
            raise ProbeError("system.local returned no rows")
        value = reader.bytes_()
        if value is None:
            raise ProbeError("release_version is null")
        return value.decode("utf-8", "replace")


def main(argv) -> int:
    if len(argv) != 3:
        print("usage: cql_probe.py HOST PORT", file=sys.stderr)
        return 1
    try:
        print(probe(argv[1], int(argv[2])))
        return 0
    except (OSError, ProbeError, ValueError, struct.error) as exc:
        print(f"cql_probe: {argv[1]}:{argv[2]}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
