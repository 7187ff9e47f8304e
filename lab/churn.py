"""Mass endpoint churn through `gossip-agent ctl churn` on the hosts (one SSH call per batch, not
per entry, paced on the host itself), with the ground truth of what was written and deleted and
every operation's outcome."""

from __future__ import annotations

import time
from typing import Any

from .fleet import CTL, Fleet, FleetError


class Churn:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.truth: dict[str, set[str]] = {}  # network -> keys that must exist
        self.deleted: dict[str, set[str]] = {}  # network -> keys that must never come back
        self.history: list[dict[str, Any]] = []
        self.last_write = 0.0  # monotonic time the last batch finished

    async def create(self, host: str, network: str, count: int, prefix: str, rate: float = 0.0) -> None:
        keys = {f"{prefix}{i}" for i in range(count)}
        await self._run(host, network, count, prefix, rate, delete=False)
        self.truth.setdefault(network, set()).update(keys)
        self.deleted.get(network, set()).difference_update(keys)

    async def delete(self, host: str, network: str, count: int, prefix: str, rate: float = 0.0) -> None:
        """Delete PREFIX0..PREFIX<count-1>, which `host` must have created (only owners delete)."""
        keys = {f"{prefix}{i}" for i in range(count)}
        await self._run(host, network, count, prefix, rate, delete=True)
        self.truth.get(network, set()).difference_update(keys)
        self.deleted.setdefault(network, set()).update(keys)

    async def _run(self, host: str, network: str, count: int, prefix: str, rate: float, delete: bool) -> None:
        command = f"{CTL} churn {network} --count {count} --prefix {prefix} --rate {rate}"
        started = time.time()
        try:
            await self.fleet.run(host, command + (" --delete" if delete else ""))
            outcome = "ok"
        except FleetError as exc:
            outcome = f"unknown: {exc}"  # some may have been written; the run cannot be judged
        self.last_write = time.monotonic()
        self.history.append({"op": "delete" if delete else "create", "host": host, "network": network,
                             "count": count, "prefix": prefix, "start": started, "end": time.time(),
                             "outcome": outcome})  # fmt: skip
        if outcome != "ok":
            raise FleetError(outcome)
