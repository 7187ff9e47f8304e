"""The agent's configuration file (YAML), validated field by field.

Every mistake becomes one `ConfigError` line that names the file, the field, the value and what
was expected; the CLI prints it and exits 2. No traceback for a user mistake.
"""

from __future__ import annotations

import grp
import ipaddress
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..core.config import PROFILES, Config, profile

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ConfigError(Exception):
    """A configuration mistake, already phrased for the user."""


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    id: str
    vxlan_id: int | None = None
    subnet: str | None = None


@dataclass(frozen=True, slots=True)
class AgentConfig:
    node_name: str
    bind_addr: str
    advertise_addr: str
    port: int
    seeds: tuple[tuple[str, int], ...]
    networks: tuple[NetworkConfig, ...]
    protocol: Config
    profile: str
    keyring_file: Path | None
    state_dir: Path
    api_socket: Path
    metrics_addr: tuple[str, int] | None
    log_level: str
    log_format: str
    # This host's number in the lab (0-65535): the container addresses it hands out derive from
    # it. None: the host makes no containers.
    host_index: int | None = None
    containers_per_host: int = 64  # container slots per host and network (2-65536)
    dataplane_reconcile_interval: float = 30.0  # seconds between checks of the kernel's fdb/neigh
    # A group whose members may use the API socket (0660), as the docker group does; None: root only.
    api_group: str | None = None
    source: str = field(default="<defaults>")


KNOWN = {
    "node_name", "bind_addr", "advertise_addr", "port", "seeds", "networks", "profile", "protocol",
    "keyring_file", "state_dir", "api_socket", "metrics_addr", "log_level", "log_format",
    "host_index", "containers_per_host", "dataplane_reconcile_interval", "api_group",
}  # fmt: skip


def _err(source: str, name: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{source}: {name}: {value!r}: expected {expected}")


def _ip(source: str, name: str, value: Any) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise _err(source, name, value, "an IP address such as 198.18.0.11") from None


def _port(source: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise _err(source, name, value, "a port number 1-65535")
    return value


def _host_port(source: str, name: str, value: Any, default_port: int) -> tuple[str, int]:
    text = str(value)
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(default_port)
    if not port.isdigit():
        raise _err(source, name, value, "ADDRESS[:PORT], e.g. 198.18.0.11:7946")
    return _ip(source, name, host), _port(source, name, int(port))


def _int(source: str, name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _err(source, name, value, f"an integer {low}-{high}")
    return value


def _path(source: str, name: str, value: Any) -> Path:
    if not isinstance(value, str) or not value.startswith("/"):
        raise _err(source, name, value, "an absolute path")
    return Path(value)


def parse(data: Any, source: str = "<config>") -> AgentConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the file must hold a mapping of settings, not {type(data).__name__}")
    unknown = sorted(set(data) - KNOWN)
    if unknown:
        raise ConfigError(f"{source}: {unknown[0]}: unknown setting; known: {', '.join(sorted(KNOWN))}")

    name = data.get("node_name", socket.gethostname())
    if not isinstance(name, str) or not NAME.match(name):
        raise _err(source, "node_name", name, "letters, digits, '.', '_' or '-' (at most 128)")
    bind = _ip(source, "bind_addr", data.get("bind_addr", "0.0.0.0"))
    advertise = data.get("advertise_addr")
    if advertise is None:
        if ipaddress.ip_address(bind).is_unspecified:
            raise ConfigError(f"{source}: advertise_addr: missing: required when bind_addr is {bind}")
        advertise = bind
    advertise = _ip(source, "advertise_addr", advertise)
    port = _port(source, "port", data.get("port", 7946))

    seeds_raw = data.get("seeds", [])
    if not isinstance(seeds_raw, list):
        raise _err(source, "seeds", seeds_raw, "a list of ADDRESS[:PORT]")
    seeds = tuple(_host_port(source, f"seeds[{i}]", s, port) for i, s in enumerate(seeds_raw))

    networks_raw = data.get("networks", [])
    if not isinstance(networks_raw, list):
        raise _err(source, "networks", networks_raw, "a list of {id, vxlan_id, subnet}")
    networks = []
    for i, item in enumerate(networks_raw):
        where = f"networks[{i}]"
        if isinstance(item, str):
            item = {"id": item}
        if not isinstance(item, dict) or set(item) - {"id", "vxlan_id", "subnet"}:
            raise _err(source, where, item, "a mapping with id and optional vxlan_id, subnet")
        net_id = item.get("id")
        if not isinstance(net_id, str) or not NAME.match(net_id):
            raise _err(source, f"{where}.id", net_id, "a network name (letters, digits, '.', '_', '-')")
        vxlan = item.get("vxlan_id")
        if vxlan is not None and (isinstance(vxlan, bool) or not isinstance(vxlan, int) or not 1 <= vxlan < 2**24):
            raise _err(source, f"{where}.vxlan_id", vxlan, "a VXLAN id 1-16777215")
        if vxlan is not None and vxlan in (n.vxlan_id for n in networks):
            # One device per id: the second network would stay without a data plane.
            raise _err(source, f"{where}.vxlan_id", vxlan, "an id no other network of this list has")
        subnet = item.get("subnet")
        if subnet is not None:
            try:
                subnet = str(ipaddress.IPv4Network(str(subnet)))  # the data plane is IPv4, as the API's
            except ValueError:
                raise _err(source, f"{where}.subnet", subnet, "a subnet such as 198.19.1.0/24") from None
        networks.append(NetworkConfig(net_id, vxlan, subnet))
    if len({n.id for n in networks}) != len(networks):
        raise ConfigError(f"{source}: networks: the same id is listed twice")

    profile_name = data.get("profile", "lan")
    if profile_name not in PROFILES:
        raise _err(source, "profile", profile_name, f"one of {', '.join(PROFILES)}")
    overrides = data.get("protocol", {}) or {}
    if not isinstance(overrides, dict):
        raise _err(source, "protocol", overrides, "a mapping of protocol settings")
    try:
        protocol = profile(profile_name).with_overrides(overrides)
    except ValueError as exc:
        raise ConfigError(f"{source}: protocol: {exc}") from None

    keyring = data.get("keyring_file")
    metrics = data.get("metrics_addr")
    log_level = str(data.get("log_level", "info")).lower()
    if log_level not in ("debug", "info", "warning", "error"):
        raise _err(source, "log_level", log_level, "debug, info, warning or error")
    log_format = data.get("log_format", "text")
    if log_format not in ("text", "json"):
        raise _err(source, "log_format", log_format, "text or json")
    host_index = data.get("host_index")
    reconcile = data.get("dataplane_reconcile_interval", 30.0)
    if isinstance(reconcile, bool) or not isinstance(reconcile, int | float) or not 0.1 <= reconcile <= 86400:
        raise _err(source, "dataplane_reconcile_interval", reconcile, "seconds between 0.1 and 86400")
    api_group = data.get("api_group")
    if api_group is not None:
        try:
            grp.getgrnam(str(api_group))
        except KeyError:
            raise _err(source, "api_group", api_group, "a group of this host") from None
    return AgentConfig(
        node_name=name,
        bind_addr=bind,
        advertise_addr=advertise,
        port=port,
        seeds=seeds,
        networks=tuple(networks),
        protocol=protocol,
        profile=profile_name,
        keyring_file=None if keyring is None else _path(source, "keyring_file", keyring),
        state_dir=_path(source, "state_dir", data.get("state_dir", "/var/lib/gossip-agent")),
        api_socket=_path(source, "api_socket", data.get("api_socket", "/run/gossip-agent/api.sock")),
        metrics_addr=None if metrics is None else _host_port(source, "metrics_addr", metrics, 9946),
        log_level=log_level,
        log_format=log_format,
        host_index=None if host_index is None else _int(source, "host_index", host_index, 0, 65535),
        containers_per_host=_int(source, "containers_per_host", data.get("containers_per_host", 64), 2, 65536),
        dataplane_reconcile_interval=float(reconcile),
        api_group=None if api_group is None else str(api_group),
        source=source,
    )


def load(path: str | Path) -> AgentConfig:
    source = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return parse(data, source)
