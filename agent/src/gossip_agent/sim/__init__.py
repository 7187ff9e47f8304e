"""Deterministic simulation of many protocol cores in virtual time."""

from .options import CrashSpec, OptionError, PartitionSpec, SimOptions, WorkloadSpec, spread_networks
from .simulator import Simulator

__all__ = ["CrashSpec", "OptionError", "PartitionSpec", "SimOptions", "Simulator", "WorkloadSpec", "spread_networks"]
