"""Client of the control API over its unix socket (used by `gossip-agent ctl` and the tests)."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any


class ApiUnavailable(Exception):
    """The agent's socket is missing or refuses connections."""


class ApiFailure(Exception):
    """The agent answered with an error status; the message is the agent's own."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def call(socket_path: str, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
    """One request; returns the decoded JSON (or text for /metrics)."""
    connection = _UnixConnection(socket_path, timeout)
    payload = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if payload is not None else {}
    try:
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        data = response.read()
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise ApiUnavailable(f"no agent answers at {socket_path} ({exc.strerror})") from None
    except PermissionError:
        raise ApiUnavailable(f"no permission to use {socket_path} (the API socket is root-only)") from None
    except (OSError, http.client.HTTPException) as exc:
        raise ApiUnavailable(f"talking to the agent at {socket_path} failed: {exc}") from None
    finally:
        connection.close()
    if response.getheader("Content-Type", "").startswith("text/plain"):
        return data.decode()
    try:
        decoded = json.loads(data) if data else None
    except ValueError:
        raise ApiFailure(response.status, f"the agent sent a non-JSON answer: {data[:80]!r}") from None
    if response.status >= 400:
        message = decoded.get("error") if isinstance(decoded, dict) else str(decoded)
        raise ApiFailure(response.status, message or f"HTTP {response.status}")
    return decoded
