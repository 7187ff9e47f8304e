"""Mass endpoint churn through `gossip-agent ctl churn` on the hosts (one SSH call per batch,
not per entry), with the ground truth of what was written and every operation's outcome."""

from __future__ import annotations

import time
from typing import Any

from .fleet import CTL, Fleet, FleetError


class Churn:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.truth: dict[str, set[str]] = {}  # network -> keys that must exist
        self.history: list[dict[str, Any]] = []
        self.last_write = 0.0

    async def create(self, host: str, network: str, count: int, prefix: str, rate: float = 0.0) -> None:
        keys = {f"{prefix}{i}" for i in range(count)}
        command = f"{CTL} churn {network} --count {count} --prefix {prefix} --rate {rate}"
        started = time.time()
        try:
            await self.fleet.run(host, command)
            outcome = "ok"
            self.truth.setdefault(network, set()).update(keys)
        except FleetError as exc:
            outcome = f"unknown: {exc}"  # some may have been written; the run cannot be judged
        self.last_write = time.monotonic()
        self.history.append({"op": "create", "host": host, "network": network, "count": count, "prefix": prefix,
                             "start": started, "end": time.time(), "outcome": outcome})  # fmt: skip
        if outcome != "ok":
            raise FleetError(outcome)
