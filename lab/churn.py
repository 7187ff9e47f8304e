"""Mass endpoint churn through `gossip-agent ctl churn` on the hosts (one SSH call per batch, not
per entry, paced on the host itself), recorded in a history and a model of what must hold."""

from __future__ import annotations

import time
from collections.abc import Callable

from .fleet import CTL, Fleet, FleetError
from .history import History, Outcome, Truth, Version


class Churn:
    def __init__(self, fleet: Fleet, history: History | None = None, strict: bool = True) -> None:
        """`strict`: a batch of unknown outcome raises (after it is recorded): a hand-written
        scenario must not pass on keys it can no longer check. Experiments pass False: they
        record it and go on, and the model allows either outcome."""
        self.fleet = fleet
        self.strict = strict
        self.history = history or History()
        self.truth = Truth()
        self.last_write = 0.0  # monotonic time the last batch finished

    async def create(
        self, host: str, network: str, count: int, prefix: str, rate: float = 0.0, tag: str = ""
    ) -> Outcome:
        """Write PREFIX0..PREFIX<count-1> from `host`, each valued `<network>/<key>[#tag]`: a new
        tag makes the batch an update whose values the checker tells from the old ones."""
        versions = {f"{prefix}{i}": Version(host, f"{network}/{prefix}{i}" + (f"#{tag}" if tag else ""))
                    for i in range(count)}  # fmt: skip
        options = f" --tag {tag}" if tag else ""
        return await self._run(host, network, count, prefix, rate, "create", options,
                               lambda outcome: self.truth.wrote(network, versions, outcome))  # fmt: skip

    async def delete(self, host: str, network: str, count: int, prefix: str, rate: float = 0.0) -> Outcome:
        """Delete PREFIX0..PREFIX<count-1>, which `host` must have created (only owners delete)."""
        keys = {f"{prefix}{i}" for i in range(count)}
        return await self._run(host, network, count, prefix, rate, "delete", " --delete",
                               lambda outcome: self.truth.removed(network, keys, outcome))  # fmt: skip

    async def _run(
        self, host: str, network: str, count: int, prefix: str, rate: float, f: str, options: str,
        settle: Callable[[Outcome], None],
    ) -> Outcome:  # fmt: skip
        """One batch; its outcome is `ok` only when the command says so. A lost channel, a timeout,
        a failed batch or a run cancelled meanwhile may have written part of it: `info`, which
        the truth records before a cancellation goes on."""
        invoked = self.history.invoke(f, host, network=network, count=count, prefix=prefix)
        command = f"{CTL} churn {network} --count {count} --prefix {prefix} --rate {rate}{options}"
        outcome: Outcome = "info"
        detail = {"error": "cancelled"}
        try:
            await self.fleet.run(host, command)
            outcome, detail = "ok", {}
        except FleetError as exc:
            detail = {"error": str(exc)}
        finally:
            self.last_write = time.monotonic()
            self.history.complete(invoked, outcome, **detail)
            settle(outcome)
        if self.strict and outcome != "ok":
            raise FleetError(f"{f} batch of {count} on {host}: outcome unknown: {detail['error']}")
        return outcome
