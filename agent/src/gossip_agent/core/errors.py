"""The two kinds of protocol error, as in h11: ours and the peer's.

A `LocalProtocolError` is the caller's mistake (an API call that makes no sense in the current
state); it is raised to the caller. A `RemoteProtocolError` is the peer's mistake (a datagram or
frame that does not decode or validate); the node counts it and drops the input, it never escapes
the agent's loop.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of both kinds; `reason` is a short machine-readable label used for counters."""

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class LocalProtocolError(ProtocolError):
    """The local caller asked for something the protocol cannot do."""


class RemoteProtocolError(ProtocolError):
    """A peer sent bytes that are not a valid message."""


class OutOfScope(RemoteProtocolError):
    """A sync frame of a network we are not in, refused before its body was validated."""

    def __init__(self, network: str, kind: int) -> None:
        super().__init__(f"sync frame of network {network!r}, which we are not in", "out_of_scope")
        self.network = network
        self.kind = kind
