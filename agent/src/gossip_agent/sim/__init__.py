"""Deterministic simulation of many protocol cores in virtual time.

Names are loaded when first used: `gossip_agent.sim.partitions` is imported by the agent's command
line (for its help), and must not bring the whole simulator into every agent's memory."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .options import CrashSpec, OptionError, PartitionSpec, SimOptions, WorkloadSpec, spread_networks
    from .simulator import Simulator

_HOMES = {
    "CrashSpec": ".options",
    "OptionError": ".options",
    "PartitionSpec": ".options",
    "SimOptions": ".options",
    "WorkloadSpec": ".options",
    "spread_networks": ".options",
    "Simulator": ".simulator",
}

__all__ = ["CrashSpec", "OptionError", "PartitionSpec", "SimOptions", "Simulator", "WorkloadSpec", "spread_networks"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_HOMES[name], __name__), name)
