"""Experiment specs: YAML that says which networks span which hosts, and what each phase does
(churn, one fault, a deadline). The same spec runs on a lab and in the simulator.

    name: headline
    seed: 7
    hosts: 8                      # sim: the node count; lab: the inventory's hosts are used
    networks:                     # slices of the sorted host names
      hl-red: 0%-60%
      hl-green: 40%-100%
      hl-blue: every 2
    phases:
      - name: steady
        churn: {create: 5000, writers: 2, rate: 1500}
        within: 60
      - name: partitioned
        fault: {partition: halves, hold: 8, at: 0}
        churn: {create: 5000, delete: 1000, rate: 1500, containers: 3}
        within: 120
    targets: {after_last_write_s: 5, after_heal_s: 3}

`containers`: each writer also makes that many containers in each of its networks (lab only: the
simulator has no kernel). Networks then get a VXLAN id and a /20 of 198.19.0.0/16 each, in the
order listed, and a phase converges when every host's routes are right too, and sampled pings
between containers answer within a network and never across.

Every mistake is a SpecError naming the file and the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gossip_agent.sim.partitions import SHAPES

FAULTS = ("partition", "kill", "pause", "restart", "rolling-restart", "loss", "delay")
TARGETS = ("after_last_write_s", "after_heal_s", "latency_p99_s")
VXLAN_BASE = 4100  # the first network's VXLAN id when a spec has containers
MAX_CONTAINERS = 63  # per host and network: the addresses of a host's block (containers_per_host 64)


class SpecError(ValueError):
    """A spec that cannot run; the message names the file and the field."""


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str  # one of FAULTS
    value: Any  # shape for a partition, host count for kill/pause/restart, percent, milliseconds
    hold: float = 0.0  # seconds the fault stays (at least until the phase's churn is done)
    at: float = 0.5  # seconds into the phase
    symmetric: bool = True


@dataclass(frozen=True, slots=True)
class Churn:
    create: int = 0  # endpoints, split evenly over the networks
    delete: int = 0  # endpoints of the first phase deleted by their writers, split likewise
    writers: int = 2  # per network; spread over the sides of a partition
    rate: float = 1500.0  # entries per second per writer (0: as fast as possible)
    networks: tuple[str, ...] = ()  # empty: every network of the spec
    containers: int = 0  # per writer and network (lab only)


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    churn: Churn | None
    fault: Fault | None
    within: float  # seconds after the last write or the heal by which all must converge


@dataclass(frozen=True, slots=True)
class Spec:
    name: str
    description: str
    seed: int
    hosts: int
    networks: dict[str, str]  # network -> host selector
    phases: tuple[Phase, ...]
    targets: dict[str, float] = field(default_factory=dict)
    profile: str = "local"  # sim only: the lab's agents use their deployed config
    membership: str = "swim"  # sim only: static for the largest runs

    @property
    def containers(self) -> bool:
        return any(p.churn is not None and p.churn.containers for p in self.phases)

    def overlay(self) -> dict[str, tuple[int, str]]:
        """network -> (VXLAN id, subnet) for the data plane of a spec with containers."""
        return {net: (VXLAN_BASE + i, f"198.19.{16 * i}.0/20") for i, net in enumerate(self.networks)}

    def members(self, names: list[str]) -> dict[str, list[str]]:
        """Resolve each network's selector against these (sorted) host names."""
        ordered = sorted(names)
        return {net: select(selector, ordered, net) for net, selector in self.networks.items()}


def select(selector: str, names: list[str], network: str = "") -> list[str]:
    n = len(names)
    text = str(selector).strip()
    if text == "all":
        chosen = names
    elif match := re.fullmatch(r"(\d+)%-(\d+)%", text):
        low, high = (int(g) for g in match.groups())
        if not 0 <= low < high <= 100:
            raise SpecError(f"network {network}: slice {text!r} must satisfy 0 <= from < to <= 100")
        chosen = names[round(n * low / 100) : round(n * high / 100)]
    elif match := re.fullmatch(r"every (\d+)", text):
        step = int(match.group(1))
        if step < 1:
            raise SpecError(f"network {network}: 'every {step}' needs a step of at least 1")
        chosen = names[::step]
    else:
        raise SpecError(f"network {network}: hosts {text!r} is not 'all', 'A%-B%' or 'every K'")
    if not chosen:
        raise SpecError(f"network {network}: {text!r} selects no host of {n}")
    return chosen


def _get(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = None) -> Any:
    value = data.get(key, default)
    if value is None and default is None:
        raise SpecError(f"{where}: '{key}' is required")
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise SpecError(f"{where}: '{key}' must be {name}, not {value!r}")
    return value


def _only(data: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {', '.join(unknown)}; expected {', '.join(allowed)}")


def _fault(data: Any, where: str) -> Fault:
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping like {{partition: halves, hold: 8}}")
    kinds = [k for k in FAULTS if k in data]
    if len(kinds) != 1:
        raise SpecError(f"{where}: name exactly one fault of {', '.join(FAULTS)}")
    kind = kinds[0]
    _only(data, (kind, "hold", "at", "symmetric"), where)
    value = data[kind]
    if kind == "partition" and value not in SHAPES:
        raise SpecError(f"{where}: partition shape {value!r} unknown; expected one of {', '.join(SHAPES)}")
    if kind in ("kill", "pause", "restart", "rolling-restart") and not (
        value == "all" or isinstance(value, int) and not isinstance(value, bool) and value >= 1
    ):
        raise SpecError(f"{where}: {kind} takes a host count of at least 1 or 'all', not {value!r}")
    if kind == "loss" and not (isinstance(value, int) and 0 < value < 100):
        raise SpecError(f"{where}: loss takes a percentage between 1 and 99, not {value!r}")
    if kind == "delay" and not (isinstance(value, int) and 0 < value <= 60_000):
        raise SpecError(f"{where}: delay takes milliseconds between 1 and 60000, not {value!r}")
    hold = float(_get(data, "hold", (int, float), where, 0))
    at = float(_get(data, "at", (int, float), where, 0.5))
    if hold < 0 or at < 0:
        raise SpecError(f"{where}: hold and at must not be negative")
    return Fault(kind, value, hold, at, bool(_get(data, "symmetric", bool, where, True)))


def _churn(data: Any, where: str, networks: dict[str, str]) -> Churn:
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping like {{create: 1000, rate: 1500}}")
    _only(data, ("create", "delete", "writers", "rate", "networks", "containers"), where)
    churn = Churn(
        create=_get(data, "create", int, where, 0),
        delete=_get(data, "delete", int, where, 0),
        writers=_get(data, "writers", int, where, 2),
        rate=float(_get(data, "rate", (int, float), where, 1500.0)),
        networks=tuple(_get(data, "networks", list, where, [])),
        containers=_get(data, "containers", int, where, 0),
    )
    if churn.create < 0 or churn.delete < 0 or churn.rate < 0 or churn.writers < 1 or churn.containers < 0:
        raise SpecError(f"{where}: create, delete, rate and containers must not be negative; writers at least 1")
    unknown = sorted(set(churn.networks) - set(networks))
    if unknown:
        raise SpecError(f"{where}: unknown network(s) {', '.join(unknown)}")
    return churn


def parse(data: Any, source: str = "<spec>") -> Spec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a spec is a YAML mapping")
    top = ("name", "description", "seed", "hosts", "networks", "phases", "targets", "profile", "membership")
    _only(data, top, source)
    networks = _get(data, "networks", dict, source)
    if not networks:
        raise SpecError(f"{source}: 'networks' must name at least one network")
    for net in networks:
        if not isinstance(net, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", net):
            raise SpecError(f"{source}: network name {net!r} must be 1-64 letters, digits, '.', '_', '-'")
    phases = []
    for i, raw in enumerate(_get(data, "phases", list, source)):
        where = f"{source}: phases[{i}]"
        if not isinstance(raw, dict):
            raise SpecError(f"{where}: expected a mapping")
        _only(raw, ("name", "churn", "fault", "within"), where)
        churn = _churn(raw["churn"], f"{where}.churn", networks) if "churn" in raw else None
        fault = _fault(raw["fault"], f"{where}.fault") if "fault" in raw else None
        within = float(_get(raw, "within", (int, float), where, 60))
        phases.append(Phase(str(raw.get("name", f"phase-{i + 1}")), churn, fault, within))
    if not phases:
        raise SpecError(f"{source}: 'phases' must list at least one phase")
    if phases[0].churn is not None and phases[0].churn.delete:
        raise SpecError(f"{source}: phases[0] cannot delete: deletes remove endpoints of the first phase")
    # A writer may be chosen in every phase: its block must hold all its containers.
    containers = sum(p.churn.containers for p in phases if p.churn is not None)
    if containers > MAX_CONTAINERS:
        raise SpecError(f"{source}: {containers} containers per writer over the phases; a host holds {MAX_CONTAINERS}")
    if containers and len(networks) > 16:
        raise SpecError(f"{source}: containers need a /20 of 198.19.0.0/16 per network: at most 16 networks")
    targets = _get(data, "targets", dict, source, {})
    _only(targets, TARGETS, f"{source}: targets")
    hosts = _get(data, "hosts", int, source, 8)
    if hosts < 2:
        raise SpecError(f"{source}: 'hosts' must be at least 2")
    spec = Spec(
        name=str(_get(data, "name", str, source)),
        description=str(data.get("description", "")).strip(),
        seed=_get(data, "seed", int, source, 1),
        hosts=hosts,
        networks={str(k): str(v) for k, v in networks.items()},
        phases=tuple(phases),
        targets={k: float(v) for k, v in targets.items()},
        profile=str(data.get("profile", "local")),
        membership=str(data.get("membership", "swim")),
    )
    try:
        spec.members([f"h{i}" for i in range(hosts)])  # every selector must select someone
    except SpecError as exc:
        raise SpecError(f"{source}: networks: {exc}") from None
    return spec


def load(path: str | Path) -> Spec:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SpecError(f"cannot read spec {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse(data, str(path))
