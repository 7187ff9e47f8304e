"""Protocol configuration: one dataclass, every knob explained, and named profiles.

Modelled on memberlist's `config.go`: the LAN profile holds the defaults; `wan()` and `local()` are
built from it and each override says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class Config:
    # --- cluster scope: SWIM failure detection -------------------------------------------------
    # Seconds between probes; each tick probes one member, round-robin over a shuffled list.
    probe_interval: float = 1.0
    # Seconds to wait for a direct ack before asking `indirect_checks` members to probe for us.
    probe_timeout: float = 0.5
    # Members asked to probe an unresponsive target on our behalf (SWIM's k).
    indirect_checks: int = 3
    # Minimum suspicion timeout = suspicion_mult * log10(n+1) * probe_interval (Lifeguard, n members).
    suspicion_mult: float = 4.0
    # Maximum suspicion timeout = suspicion_max_timeout_mult * minimum; without independent
    # confirmations a suspect waits longer, each confirmation shortens it towards the minimum.
    suspicion_max_timeout_mult: float = 6.0
    # Lifeguard's local health: probe interval and timeout stretch up to this many times while
    # this node itself looks slow (missed acks and nacks, refuted suspicions, a stalled loop).
    awareness_max: int = 8
    # Seconds between full membership exchanges (push-pull over a stream) with one random member.
    push_pull_interval: float = 30.0
    # Seconds between attempts to reach one random dead member, so a healed partition merges.
    reconnect_interval: float = 1.0
    # Seconds a dead member is remembered (and retried, one random dead member per
    # reconnect_interval) before it is forgotten: a partition shorter than this heals by itself.
    # libnetwork retries failed nodes for 24 h.
    dead_retention: float = 86400.0

    # --- gossip (both scopes) --------------------------------------------------------------------
    # Seconds between gossip rounds; every round each scope's pending events go to `fanout` members.
    gossip_interval: float = 0.2
    # Members each round's gossip goes to, per scope.
    fanout: int = 3
    # Each cluster event (membership, attachments) is sent retransmit_mult * ceil(log10(n+1))
    # times, n = members of the cluster. (Table events go down the eager tree instead.)
    retransmit_mult: int = 4
    # Children of each member in a network's eager tree (see `Node._tree_targets`): a fresh event
    # reaches all n members of its network in at most 1 + log_k(n) hops without waiting for a round.
    tree_fanout: int = 5
    # Seconds a fresh event waits for others going to the same member, so mass churn travels as
    # full datagrams, not one per event per hop; a full datagram goes at once.
    eager_delay: float = 0.02
    # Largest datagram we build, in bytes (fits a 1500-byte MTU with room for headers and crypto).
    packet_size: int = 1400

    # --- network scope: anti-entropy -------------------------------------------------------------
    # Seconds between delta syncs of each network with one random member of it.
    bulk_sync_interval: float = 30.0
    # A peer whose network digest differs from ours this many gossip rounds in a row is pulled from;
    # rumours in flight make digests differ briefly, so a single mismatch is not acted on...
    digest_mismatch_rounds: int = 3
    # ...unless the entry counts differ by more than this, which rumours will not fix soon.
    digest_pull_threshold: int = 32
    # Seconds a stream (push-pull, sync) may take before it counts as failed.
    stream_timeout: float = 10.0
    # Largest stream frame accepted, in bytes (a 100,000-entry table is ~10 MB).
    max_frame_bytes: int = 64 * 1024 * 1024
    # Entries of a received sync merged per loop iteration: probes and acks are answered between
    # slices (~10 ms each here), so a 100,000-entry sync never makes peers suspect us.
    sync_slice_entries: int = 1024

    # --- entries -----------------------------------------------------------------------------------
    # Seconds a delete (tombstone) is kept so that no stale copy can resurrect the entry.
    tombstone_ttl: float = 1800.0

    def suspicion_timeouts(self, members: int) -> tuple[float, float]:
        """(minimum, maximum) suspicion timeout for a cluster of `members` nodes."""
        scale = max(1.0, math.log10(max(members, 1) + 1))
        low = self.suspicion_mult * scale * self.probe_interval
        return low, low * self.suspicion_max_timeout_mult

    def retransmit_limit(self, members: int) -> int:
        """How many times one event is sent by one node in a cluster of `members` nodes."""
        return self.retransmit_mult * max(1, math.ceil(math.log10(members + 1)))

    def with_overrides(self, overrides: dict[str, Any]) -> Config:
        """A copy with some fields changed; unknown names or wrong types raise ValueError."""
        known = {f.name: f for f in fields(self)}
        clean: dict[str, Any] = {}
        for name, value in overrides.items():
            if name not in known:
                raise ValueError(f"unknown protocol setting {name!r}")
            current = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"protocol setting {name!r} must be a number, got {value!r}")
            if isinstance(current, int) and not float(value).is_integer():
                raise ValueError(f"protocol setting {name!r} must be a whole number, got {value!r}")
            if value <= 0:
                raise ValueError(f"protocol setting {name!r} must be positive, got {value!r}")
            clean[name] = type(current)(value)
        return replace(self, **clean)


def lan() -> Config:
    """Defaults for hosts on one LAN (what Docker Swarm uses)."""
    return Config()


def wan() -> Config:
    """Hosts across slower links: longer timeouts so latency is not mistaken for failure."""
    return replace(
        lan(),
        probe_interval=3.0,
        probe_timeout=2.0,  # WAN round trips of hundreds of ms, with margin
        suspicion_mult=6.0,  # false suspicion costs a table withdrawal; be patient
        gossip_interval=0.5,
        push_pull_interval=60.0,
        reconnect_interval=15.0,
    )


def local() -> Config:
    """Namespace hosts or processes on one machine: sub-millisecond links, detect failure fast."""
    return replace(
        lan(),
        probe_interval=0.5,
        probe_timeout=0.25,
        suspicion_mult=3.0,
        suspicion_max_timeout_mult=3.0,  # scenarios kill agents on purpose; do not wait 6x
        push_pull_interval=15.0,
        reconnect_interval=1.0,  # a healed lab partition should merge within a second or two
        eager_delay=0.005,  # links of microseconds: the wait for a batch is most of a hop
        bulk_sync_interval=10.0,
    )


PROFILES = {"lan": lan, "wan": wan, "local": local}


def profile(name: str) -> Config:
    """The named profile; raises ValueError naming the valid ones."""
    try:
        return PROFILES[name]()
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; expected one of {', '.join(PROFILES)}") from None
