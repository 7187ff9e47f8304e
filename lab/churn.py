"""Mass endpoint churn through `gossip-agent ctl churn` on the hosts (one SSH call per batch, not
per entry, paced on the host itself), and container churn through `gossip-agent ctl container`
(network namespaces on the VXLAN overlay, each an endpoint keyed by its address), recorded in a
history and a model of what must hold."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable

from gossip_agent.runtime.containers import endpoint_value

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
        self.containers: dict[tuple[str, str], dict[str, str]] = {}  # (host, network) -> name -> address

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
        command = f"{CTL} churn {network} --count {count} --prefix {prefix} --rate {rate}{options}"
        return await self._settled(f, host, network, command, settle, count=count, prefix=prefix)

    async def create_containers(self, host: str, network: str, count: int) -> list[str]:
        """`count` containers of `network` on `host`; returns their names. Their addresses are
        known only from the command's answer, so a batch of unknown outcome always raises (after
        it is recorded): nothing could model what it may have made."""
        invoked = self.history.invoke("create-containers", host, network=network, count=count)
        command = f"{CTL} container create {network} --count {count}"  # CTL answers in JSON
        try:
            answer = json.loads((await self.fleet.run(host, command)).stdout)
        except (FleetError, ValueError) as exc:
            self.history.complete(invoked, "info", error=str(exc))
            raise FleetError(f"containers on {host}: outcome unknown: {exc}") from None
        finally:
            self.last_write = time.monotonic()
        vtep = self.fleet.hosts[host].address
        made = {c["name"]: c["ip"] for c in answer["created"]}
        self.history.complete(invoked, "ok", containers=made, seconds=answer["seconds"])
        self.containers.setdefault((host, network), {}).update(made)
        versions = {c["ip"]: Version(host, endpoint_value(c["name"], c["mac"], vtep)) for c in answer["created"]}
        self.truth.wrote(network, versions, "ok")
        return list(made)

    async def delete_containers(self, host: str, network: str, names: list[str]) -> None:
        """Delete these containers of `host` (their endpoints first, then their namespaces)."""
        placed = self.containers[(host, network)]
        addresses = {placed[name] for name in names}
        quoted = " ".join(shlex.quote(name) for name in names)
        command = f"{CTL} container delete {network} {quoted}"
        settle = lambda outcome: self.truth.removed(network, addresses, outcome)  # noqa: E731
        await self._settled("delete-containers", host, network, command, settle, containers=names)
        for name in names:
            del placed[name]

    async def _settled(
        self, f: str, host: str, network: str, command: str, settle: Callable[[Outcome], None], **value: object
    ) -> Outcome:
        """One batch; its outcome is `ok` only when the command says so. A lost channel, a timeout,
        a failed batch or a run cancelled meanwhile may have done part of it: `info`, which the
        truth records before a cancellation goes on."""
        invoked = self.history.invoke(f, host, network=network, **value)
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
            raise FleetError(f"{f} of {value} on {host}: outcome unknown: {detail['error']}")
        return outcome
