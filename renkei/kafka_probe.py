"""A tiny Kafka ApiVersions probe: readiness checks and engine capability detection.

Raw protocol on purpose: it answers "is a broker listening, and which APIs does it offer?"
without a client library's metadata side effects (aiokafka's metadata request may auto-create
topics).
"""

from __future__ import annotations

import socket
import ssl
import struct

API_VERSIONS = 18
INIT_PRODUCER_ID = 22


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _read_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        data += chunk
    return data


def api_versions(
    host: str, port: int, timeout: float = 2.0, tls: ssl.SSLContext | None = None
) -> dict[int, tuple[int, int]]:
    """Ask a broker for its supported API key -> (min, max) versions (ApiVersions v0)."""
    client_id = b"renkei-probe"
    body = struct.pack(">hhih", API_VERSIONS, 0, 1, len(client_id)) + client_id
    payload = _request(host, port, body, timeout, tls)
    _correlation, error, count = struct.unpack(">ihi", payload[:10])
    if error:
        raise ConnectionError(f"ApiVersions error code {error}")
    versions = {}
    for i in range(count):
        key, low, high = struct.unpack(">hhh", payload[10 + 6 * i : 16 + 6 * i])
        versions[key] = (low, high)
    return versions


def parse_bootstrap(bootstrap: str) -> list[tuple[str, int]]:
    hosts = []
    for item in bootstrap.split(","):
        host, _, port = item.strip().rpartition(":")
        hosts.append((host.strip("[]"), int(port)))
    return hosts


def _request(
    host: str, port: int, body: bytes, timeout: float, tls: ssl.SSLContext | None = None
) -> bytes:
    """One request, one response; over TLS with ``tls`` (the broker's context, renkei.tls)."""
    raw = socket.create_connection((host, port), timeout=timeout)
    try:
        # wrap_socket takes the descriptor over: from here on, closing ``sock`` closes it.
        sock = tls.wrap_socket(raw, server_hostname=host) if tls is not None else raw
    except BaseException:
        raw.close()
        raise
    with sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", _read_exact(sock, 4))
        return _read_exact(sock, size)


def init_producer_id_error(
    host: str, port: int, timeout: float = 5.0, tls: ssl.SSLContext | None = None
) -> int:
    """Error code of a non-transactional InitProducerId (v0); 0 means idempotence works.

    Tansu 0.6 advertises the API but answers every call with an error (-1), so advertising
    alone says nothing: the hub asks for a real producer id.
    """
    client_id = b"renkei-probe"
    body = struct.pack(">hhih", INIT_PRODUCER_ID, 0, 2, len(client_id)) + client_id
    body += struct.pack(">hi", -1, 60000)  # null transactional id, transaction timeout
    payload = _request(host, port, body, timeout, tls)
    _correlation, _throttle, error, producer_id = struct.unpack(">iihq", payload[:18])
    return error if error or producer_id >= 0 else -1
