"""UDP gossip and TCP streams around a node, with the keyring and the fault hook.

A stream carries one request frame and one reply frame, each prefixed by its 4-byte big-endian
length, then closes. Frames over the limit, slow peers and garbage are cut off and counted;
nothing a peer sends raises out of here.

The fault hook stands in for netem, which this kernel lacks: per peer address, outgoing datagrams
and streams can be dropped with a probability and delayed by a fixed time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from .crypto import HEADER, TAG, AuthError, Keyring, ReplayError

log = logging.getLogger("gossip_agent.transport")
LENGTH = struct.Struct(">I")
SEALED_PREFIX = HEADER + LENGTH.size + TAG  # a frame's length prefix, sealed on its own
FIRST_BYTES_WAIT = 2.0  # seconds an inbound stream may take to send its (sealed) length prefix
# Bytes of datagrams the kernel may hold for us while the loop is busy. The default (~200 KiB,
# under a hundred full datagrams) overflows in a write burst on a loaded host, and what it drops
# first is whatever comes next: probes and acks as much as table events, so members are
# suspected only because we were busy. memberlist asks for 2 MiB for the same reason.
UDP_RECEIVE_BUFFER = 4 << 20
# Linux: like SO_RCVBUF, past net.core.rmem_max, for CAP_NET_ADMIN (Python does not name it).
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


@dataclass(slots=True)
class LinkFault:
    drop: float = 0.0  # probability an outgoing datagram or stream to this peer is lost
    delay: float = 0.0  # seconds added before it leaves


class Transport(asyncio.DatagramProtocol):
    def __init__(
        self,
        bind: str,
        port: int,
        keyring: Keyring | None,
        on_datagram: Callable[[tuple[str, int], bytes], None],
        on_stream: Callable[[bytes], bytes],
        count: Callable[[str], None],
        max_frame: int,
        stream_timeout: float,
        max_streams: int = 64,
    ) -> None:
        self.bind, self.port = bind, port
        self.keyring = keyring
        self.on_datagram, self.on_stream, self.count = on_datagram, on_stream, count
        self.max_frame = max_frame
        self.stream_timeout = stream_timeout
        self._inbound = asyncio.Semaphore(max_streams)
        self._outbound = asyncio.Semaphore(max_streams)
        self.faults: dict[str, LinkFault] = {}
        self._rng = random.Random()
        self._udp: asyncio.DatagramTransport | None = None
        self.receive_buffer: int | None = None  # bytes of datagrams the kernel holds for us
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(self.bind, self.port))
        self.receive_buffer = self._enlarge_receive_buffer(self._udp.get_extra_info("socket"))
        self._server = await asyncio.start_server(self._serve, self.bind, self.port, reuse_address=True)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._udp is not None:
            self._udp.close()

    # --- datagrams ------------------------------------------------------------------------------

    @staticmethod
    def _enlarge_receive_buffer(sock: socket.socket) -> int:
        """As root (the agent programs VXLAN, so it is) past rmem_max; otherwise up to it, and
        said when that is less. Returns the bytes the kernel allows (it doubles what it is asked
        for, for its own bookkeeping)."""
        for option in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, UDP_RECEIVE_BUFFER)
                break
            except OSError:
                continue
        allowed = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        if allowed < UDP_RECEIVE_BUFFER:
            log.warning(
                "the kernel holds only %d KiB of datagrams for us (asked for %d KiB): a burst on a busy host may "
                "drop probes; run as root or raise net.core.rmem_max",
                allowed >> 10,
                UDP_RECEIVE_BUFFER >> 10,
            )
        return allowed

    def receive_drops(self) -> int | None:
        """Datagrams the kernel dropped for our socket (the `drops` column of /proc/net/udp: a
        full receive buffer above all, also memory pressure or a bad checksum), or None where
        that is not readable."""
        if self._udp is None:
            return None
        inode = str(os.fstat(self._udp.get_extra_info("socket").fileno()).st_ino)
        for table in ("/proc/net/udp", "/proc/net/udp6"):
            try:
                with open(table) as lines:
                    for line in lines:
                        columns = line.split()
                        if len(columns) > 12 and columns[9] == inode:
                            return int(columns[12])
            except (OSError, ValueError):
                continue
        return None

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        if self.keyring is not None:
            try:
                data = self.keyring.open(data)
            except ReplayError:
                self.count("dropped_replayed")
                return
            except AuthError:
                self.count("dropped_auth_failed")
                return
        self.on_datagram((addr[0], addr[1]), data)

    def error_received(self, exc: Exception) -> None:
        self.count("udp_errors")

    def send(self, addr: tuple[str, int], data: bytes) -> None:
        if self._udp is None or self._udp.is_closing():
            return
        if self.keyring is not None:
            data = self.keyring.seal(data)
        fault = self.faults.get(addr[0])
        if fault is not None:
            if fault.drop and self._rng.random() < fault.drop:
                self.count("dropped_fault")
                return
            if fault.delay:
                asyncio.get_running_loop().call_later(fault.delay, self._send_now, addr, data)
                return
        self._send_now(addr, data)

    def _send_now(self, addr: tuple[str, int], data: bytes) -> None:
        if self._udp is not None and not self._udp.is_closing():
            try:
                self._udp.sendto(data, addr)
            except (OSError, ValueError, TypeError):  # one bad address must not stop the loop
                self.count("udp_send_errors")

    # --- streams --------------------------------------------------------------------------------

    async def _read_frame(self, reader: asyncio.StreamReader, first_wait: float) -> bytes:
        """One frame: its length prefix, then its body. With a keyring the prefix is sealed on its
        own, so nothing past its 43 bytes is read (let alone buffered) before the peer is known."""
        if self.keyring is None:
            (length,) = LENGTH.unpack(await asyncio.wait_for(reader.readexactly(LENGTH.size), first_wait))
        else:
            prefix = await asyncio.wait_for(reader.readexactly(SEALED_PREFIX), first_wait)
            (length,) = LENGTH.unpack(self.keyring.open(prefix, counted=False))
        limit = self.max_frame + (SEALED_PREFIX if self.keyring else 0)
        if length > limit:
            raise ValueError(f"frame of {length} bytes exceeds {limit}")
        data = await reader.readexactly(length)
        return self.keyring.open(data, counted=False) if self.keyring is not None else data

    def _frame(self, data: bytes) -> bytes:
        if self.keyring is None:
            return LENGTH.pack(len(data)) + data
        body = self.keyring.seal(data)
        return self.keyring.seal(LENGTH.pack(len(body))) + body

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._inbound.locked():
            self.count("streams_rejected_busy")
            writer.close()
            return
        async with self._inbound:
            try:
                # An idle connection gives up its slot after FIRST_BYTES_WAIT, not the stream timeout.
                request = await asyncio.wait_for(self._read_frame(reader, FIRST_BYTES_WAIT), self.stream_timeout)
                reply = self.on_stream(request)
                if reply:
                    writer.write(self._frame(reply))
                    await asyncio.wait_for(writer.drain(), self.stream_timeout)
            except AuthError:
                self.count("dropped_auth_failed")
            except (asyncio.IncompleteReadError, TimeoutError, ValueError, ConnectionError, OSError):
                self.count("dropped_stream_transport")
            finally:
                writer.close()

    async def request(
        self,
        addr: tuple[str, int],
        frame: bytes,
        sent: Callable[[], None] | None = None,
        queued: Callable[[], None] | None = None,
        started: Callable[[], None] | None = None,
    ) -> bytes | None:
        """Send one frame to a peer and return its reply frame, or None on any failure. `queued`
        is called if it must wait for one of the `max_streams` slots, `started` once it has one
        and connects, `sent` once the frame is written to a connected socket (the peer's kernel
        has it)."""
        fault = self.faults.get(addr[0])
        if fault is not None:
            if fault.drop and self._rng.random() < fault.drop:
                self.count("dropped_fault")
                return None
            if fault.delay:
                await asyncio.sleep(fault.delay)
        if queued is not None and self._outbound.locked():
            queued()
        async with self._outbound:
            if started is not None:
                started()
            writer = None
            try:
                async with asyncio.timeout(self.stream_timeout):
                    reader, writer = await asyncio.open_connection(addr[0], addr[1])
                    writer.write(self._frame(frame))
                    await writer.drain()
                    if sent is not None:
                        sent()
                    return await self._read_frame(reader, self.stream_timeout)
            except AuthError:
                self.count("dropped_auth_failed")
            except (asyncio.IncompleteReadError, TimeoutError, ValueError, ConnectionError, OSError) as exc:
                log.debug("stream to %s:%s failed: %s", addr[0], addr[1], exc)
            finally:
                if writer is not None:
                    writer.close()
        return None
