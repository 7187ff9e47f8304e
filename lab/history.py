"""What the harness did, and what must hold because of it.

`History` records every operation the way Jepsen does: an `invoke` when it starts and one
completion, `ok` (it happened), `fail` (it certainly did not) or `info` (unknown: the SSH channel
dropped, the command timed out, a batch was cut short). An unknown outcome does not stop a run.

`Truth` is the model of every network's table the history implies: keys that must be held, with
the owner and value they must have; keys whose outcome is unknown, which may be held in any of
their possible states; and keys deleted for good, which must never come back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

Outcome = str  # "ok", "fail" or "info"


@dataclass(frozen=True, slots=True)
class Version:
    """What a reader must see of one key: its owner (the host that wrote it) and its value."""

    owner: str
    value: str


@dataclass
class History:
    ops: list[dict[str, Any]] = field(default_factory=list)

    def invoke(self, f: str, process: str, **value: Any) -> int:
        """Record the start of operation `f` by `process` (a host, or "nemesis"); returns its index."""
        self.ops.append({"index": len(self.ops), "type": "invoke", "f": f, "process": process,
                         "time": time.time(), **value})  # fmt: skip
        return len(self.ops) - 1

    def complete(self, invoked: int, outcome: Outcome, **detail: Any) -> None:
        start = self.ops[invoked]
        self.ops.append({"index": len(self.ops), "type": outcome, "f": start["f"], "process": start["process"],
                         "time": time.time(), "invoke": invoked, **detail})  # fmt: skip

    def pending(self) -> list[dict[str, Any]]:
        """Operations invoked and not completed (a run cut short): their outcome is unknown."""
        done = {op["invoke"] for op in self.ops if op["type"] != "invoke"}
        return [op for op in self.ops if op["type"] == "invoke" and op["index"] not in done]

    def counts(self) -> dict[str, int]:
        result: dict[str, int] = {}
        for op in self.ops:
            if op["type"] != "invoke":
                result[op["type"]] = result.get(op["type"], 0) + 1
        return result


class Truth:
    """Per network: keys that must be held (`expected`), keys that may be held in one of several
    states (`unsure`: None is "absent"), and keys deleted for good (`deleted`, by their owner or
    by its detach).

    An operation of unknown outcome may still be running on its host (an SSH channel lost does
    not stop the command behind it), so, as in Jepsen, it is concurrent with everything after it:
    its effect stays possible (`lingering`) whatever later operations on the key do."""

    def __init__(self) -> None:
        self.expected: dict[str, dict[str, Version]] = {}
        self.unsure: dict[str, dict[str, set[Version | None]]] = {}
        self.deleted: dict[str, set[str]] = {}
        self.lingering: dict[str, dict[str, set[Version | None]]] = {}
        self.detaching: dict[str, set[str]] = {}  # network -> owners whose detach may still land

    def _states(self, network: str, key: str) -> set[Version | None]:
        """Every state `key` may be in now."""
        unsure = self.unsure.get(network, {})
        if key in unsure:
            return set(unsure[key])
        return {self.expected.get(network, {}).get(key)}

    def _settle(self, network: str, key: str, states: set[Version | None]) -> None:
        expected = self.expected.setdefault(network, {})
        unsure = self.unsure.setdefault(network, {})
        expected.pop(key, None)
        unsure.pop(key, None)
        if len(states) > 1:
            unsure[key] = states
        elif None not in states:
            expected[key] = next(iter(states))  # type: ignore[assignment]

    def wrote(self, network: str, versions: dict[str, Version], outcome: Outcome) -> None:
        """Creates or updates of `versions` (key -> version) ended with `outcome`."""
        if outcome == "fail":
            return
        gone = self.deleted.setdefault(network, set())
        for key, version in versions.items():
            self._apply(network, key, version, outcome)
            gone.discard(key)

    def removed(self, network: str, keys: set[str], outcome: Outcome) -> None:
        """Deletes of `keys` ended with `outcome`."""
        if outcome == "fail":
            return
        for key in keys:
            self._apply(network, key, None, outcome)
            if outcome == "ok":
                self.deleted.setdefault(network, set()).add(key)

    def detached(self, network: str, owner: str, outcome: Outcome) -> None:
        """`owner` left `network` (outcome `ok`), or may have (`info`): a detach deletes the
        leaver's entries there, and a later re-attach must not bring them back."""
        if outcome == "fail":
            return
        lingering = self.lingering.setdefault(network, {})
        keys = set(self.expected.get(network, {})) | set(self.unsure.get(network, {}))
        for key in keys:
            states = self._states(network, key)
            if not any(v is not None and v.owner == owner for v in states):
                continue
            if outcome == "ok":
                after = {None if v is not None and v.owner == owner else v for v in states}
                self._settle(network, key, after | lingering.get(key, set()))
                self.deleted.setdefault(network, set()).add(key)
            else:
                self._settle(network, key, states | {None})
        if outcome == "info":  # it may still land, and take what the owner writes meanwhile with it
            self.detaching.setdefault(network, set()).add(owner)

    def _apply(self, network: str, key: str, after: Version | None, outcome: Outcome) -> None:
        lingering = self.lingering.setdefault(network, {})
        if outcome == "ok":
            states = {after} | lingering.get(key, set())
        else:
            states = self._states(network, key) | {after}
            lingering.setdefault(key, set()).add(after)
        detaching = self.detaching.get(network, set())
        if any(v is not None and v.owner in detaching for v in states):
            states.add(None)
        self._settle(network, key, states)

    def keys(self, network: str) -> set[str]:
        """Keys that must be held in `network`."""
        return set(self.expected.get(network, {}))

    def count_range(self, network: str) -> tuple[int, int]:
        """How many entries a converged member may hold: unsure keys may be there or not."""
        unsure = self.unsure.get(network, {})
        surely = len(self.expected.get(network, {}))
        return surely + sum(None not in states for states in unsure.values()), surely + len(unsure)

    def excluding(self, owners: set[str]) -> Truth:
        """The truth as hosts that take `owners` for dead see it: none of their entries held."""
        view = Truth()
        for network, versions in self.expected.items():
            view.expected[network] = {k: v for k, v in versions.items() if v.owner not in owners}
        for network, keys in self.unsure.items():
            view.unsure[network] = {
                k: {v for v in states if v is None or v.owner not in owners}
                | ({None} if any(v is not None and v.owner in owners for v in states) else set())
                for k, states in keys.items()
            }
        view.deleted = {n: set(keys) for n, keys in self.deleted.items()}
        view.lingering = self.lingering
        view.detaching = self.detaching
        return view

    def networks(self) -> set[str]:
        return set(self.expected) | set(self.unsure) | set(self.deleted)

    def judge(self, network: str, held: dict[str, Version]) -> dict[str, list[str]]:
        """One member's table (key -> version) against the model: keys missing, unexpected (held
        and never written, or deleted and possibly back: `resurrected` too), and with the wrong
        owner or value (`wrong`)."""
        expected = self.expected.get(network, {})
        unsure = self.unsure.get(network, {})
        deleted = self.deleted.get(network, set())
        missing = sorted([k for k in expected if k not in held]
                         + [k for k, states in unsure.items() if None not in states and k not in held])  # fmt: skip
        wrong = sorted(k for k, v in held.items() if (k in expected and expected[k] != v)
                       or (k in unsure and v not in unsure[k]))  # fmt: skip
        unexpected = sorted(k for k in held if k not in expected and k not in unsure)
        resurrected = sorted(k for k in unexpected if k in deleted)
        return {"missing": missing, "unexpected": unexpected, "wrong": wrong, "resurrected": resurrected}

    def to_dict(self) -> dict[str, Any]:
        return {
            network: {
                "expected": len(self.expected.get(network, {})),
                "unsure": len(self.unsure.get(network, {})),
                "deleted": len(self.deleted.get(network, set())),
            }
            for network in sorted(self.networks())
        }
