"""Client of the control API: HTTP/1.1 over the agent's unix socket, with h11 as the server uses.

`call` is the synchronous client of `gossip-agent ctl` and the tests; the lab harness reaches the
same socket through SSH and runs an `Exchange` over that stream, so there is one way to speak to
an agent.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import h11

MAX_ANSWER = 256 * 1024 * 1024  # a dump of 100,000 entries is ~30 MB


class ApiUnavailable(Exception):
    """The agent's socket is missing, refuses connections, or the answer is not HTTP."""


class ApiFailure(Exception):
    """The agent answered with an error status; the message is the agent's own."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _encode_request(conn: h11.Connection, method: str, path: str, body: Any, keep_alive: bool) -> bytes:
    payload = b"" if body is None else json.dumps(body).encode()
    headers = [("Host", "agent"), ("Content-Length", str(len(payload)))]
    if not keep_alive:
        headers.append(("Connection", "close"))
    if body is not None:
        headers.append(("Content-Type", "application/json"))
    events = (h11.Request(method=method, target=path, headers=headers), h11.Data(data=payload), h11.EndOfMessage())
    return b"".join(conn.send(e) or b"" for e in events)


class Exchange:
    """One request and its answer on one h11 client connection: `request` is what to send,
    `answer(data)` decodes everything the agent sent back before it closed."""

    def __init__(self, method: str, path: str, body: Any = None) -> None:
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)
        self.request = _encode_request(self._conn, method, path, body, keep_alive=False)

    def answer(self, data: bytes) -> Any:
        """The JSON (or, for /metrics, text) of the answer; ApiFailure for an error status."""
        self._conn.receive_data(data)
        self._conn.receive_data(b"")  # the agent closed after its answer
        return _decode(*_collect(self._conn, lambda: b""))


def _collect(conn: h11.Connection, more: Callable[[], bytes]) -> tuple[int, str, bytes]:
    """(status, content type, body) of the answer h11 is given; `more()` reads on when it needs
    data (b"" is the end)."""
    status, content_type, body = 0, "", bytearray()
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(more())
            elif isinstance(event, h11.Response):
                status = event.status_code
                content_type = dict(event.headers).get(b"content-type", b"").decode("latin-1")
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_ANSWER:
                    raise ApiUnavailable(f"the agent's answer exceeds {MAX_ANSWER} bytes")
            else:  # the end of the message, or the connection closed
                break
    except h11.RemoteProtocolError as exc:
        raise ApiUnavailable(f"the agent's answer is not HTTP: {exc}") from None
    return status, content_type, bytes(body)


def _decode(status: int, content_type: str, body: bytes) -> Any:
    """The answer's JSON, or /metrics' text; ApiFailure for an error status."""
    if not status:
        raise ApiUnavailable(f"the agent closed without an answer ({len(body)} bytes of body)")
    if content_type.startswith("text/plain"):
        return body.decode()
    try:
        decoded = json.loads(body) if body else None
    except ValueError:
        raise ApiFailure(status, f"the agent sent a non-JSON answer: {bytes(body[:80])!r}") from None
    if status >= 400:
        message = decoded.get("error") if isinstance(decoded, dict) else str(decoded)
        raise ApiFailure(status, message or f"HTTP {status}")
    return decoded


def _unavailable(socket_path: str, exc: OSError) -> ApiUnavailable:
    if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
        return ApiUnavailable(f"no agent answers at {socket_path} ({exc.strerror})")
    if isinstance(exc, PermissionError):
        return ApiUnavailable(f"no permission to use {socket_path} (the API socket is root-only)")
    return ApiUnavailable(f"talking to the agent at {socket_path} failed: {exc}")


class Session:
    """Requests one after another on one kept-alive connection: what a busy writer (an
    orchestrator starting thousands of containers) uses instead of a connection per request."""

    def __init__(self, socket_path: str, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(socket_path)
        except OSError as exc:
            self._sock.close()
            raise _unavailable(socket_path, exc) from None
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One request on the kept connection; returns the decoded JSON, as `call`."""
        conn = self._conn
        try:
            self._sock.sendall(_encode_request(conn, method, path, body, keep_alive=True))
            answer = _collect(conn, lambda: self._sock.recv(1 << 16))
        except OSError as exc:
            raise _unavailable(self.socket_path, exc) from None
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            raise ApiUnavailable(f"the agent at {self.socket_path} closed the connection")
        conn.start_next_cycle()
        return _decode(*answer)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def call(socket_path: str, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
    """One request; returns the decoded JSON (or text for /metrics)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        exchange = Exchange(method, path, body)
        sock.connect(socket_path)
        sock.sendall(exchange.request)
        chunks, size = [], 0
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_ANSWER:
                raise ApiUnavailable(f"the agent's answer exceeds {MAX_ANSWER} bytes")
    except OSError as exc:
        raise _unavailable(socket_path, exc) from None
    finally:
        sock.close()
    return exchange.answer(b"".join(chunks))
