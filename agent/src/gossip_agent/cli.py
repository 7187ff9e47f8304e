"""The `gossip-agent` command.

gossip-agent sim --nodes 1000 --networks 4 --endpoints 10000 --seed 7 [--loss 0.1]
                 [--partition halves:5s-15s] [--crash 0.1@5s-20s] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from . import __version__
from .sim import CrashSpec, OptionError, PartitionSpec, SimOptions, Simulator, WorkloadSpec, spread_networks


class CliError(Exception):
    """A user mistake: printed as one line, exit code 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.1, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {value}")
    return value


def _latency(text: str) -> tuple[float, float]:
    try:
        low, _, high = text.partition("-")
        lo, hi = float(low), float(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN-MAX milliseconds such as 0.5-2, got {text!r}") from None
    if not 0 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"latency must satisfy 0 <= MIN <= MAX, got {text!r}")
    return lo / 1000, hi / 1000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gossip-agent", description="Scoped gossip agent and its simulator.")
    parser.add_argument("--version", action="version", version=f"gossip-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sim = sub.add_parser(
        "sim",
        help="run the protocol in the deterministic simulator and check convergence",
        description="Run N protocol cores in virtual time over a faulty simulated network, write endpoints, "
        "apply faults, then check that every network converges within its scope. Exit 0 when every check "
        "holds, 1 when one fails, 2 on bad options. The same --seed replays the same run bit for bit.",
    )
    sim.add_argument("--nodes", type=_positive_int, default=30, help="cluster size (default 30)")
    sim.add_argument("--networks", type=_positive_int, default=1, help="networks, overlapping slices (default 1)")
    sim.add_argument("--overlap", type=_fraction, default=0.2, help="overlap of neighbouring networks (default 0.2)")
    sim.add_argument("--endpoints", type=int, default=1000, help="endpoints created, spread over networks")
    sim.add_argument("--rate", type=float, default=0.0, help="creates per second per network (0: all at once)")
    sim.add_argument("--writers", type=int, default=0, help="members writing in each network (0: all)")
    sim.add_argument("--delete-fraction", type=_fraction, default=0.0, help="fraction of endpoints deleted later")
    sim.add_argument("--seed", type=int, default=1, help="seed of every random choice (default 1)")
    sim.add_argument("--loss", type=_fraction, default=0.0, help="datagram loss probability")
    sim.add_argument("--duplicate", type=_fraction, default=0.0, help="datagram duplication probability")
    sim.add_argument("--latency", type=_latency, default=(0.0005, 0.002), help="one-way latency MIN-MAX in ms")
    sim.add_argument(
        "--partition",
        action="append",
        default=[],
        metavar="SHAPE:STARTs-ENDs[:asym]",
        help="a partition (halves, majority, ring, bridge, isolate), e.g. halves:5s-15s; repeatable",
    )
    sim.add_argument(
        "--crash",
        action="append",
        default=[],
        metavar="FRACTION@ATs[-RESTARTs]",
        help="crash a fraction of nodes, optionally restarting them, e.g. 0.1@5s-20s; repeatable",
    )
    sim.add_argument(
        "--membership",
        choices=("swim", "static"),
        default="swim",
        help="swim (default) or static: a fixed shared view, cheap enough for 10,000 nodes",
    )
    sim.add_argument("--profile", choices=("lan", "wan", "local"), default="lan", help="protocol profile")
    sim.add_argument(
        "--liveness-bound",
        type=float,
        default=60.0,
        help="seconds after the last write or fault within which all must converge (default 60)",
    )
    sim.add_argument("--json", metavar="FILE", help="write the full result as JSON to FILE")
    sim.add_argument("--quiet", action="store_true", help="print only the verdict line")
    return parser


def sim_options(args: argparse.Namespace) -> SimOptions:
    names = SimOptions(nodes=args.nodes).node_names()
    networks = spread_networks(names, args.networks, args.overlap)
    per_network = math.ceil(args.endpoints / len(networks)) if args.endpoints else 0
    workloads = tuple(
        WorkloadSpec(
            net, per_network, start=1.0, rate=args.rate, writers=args.writers, delete_fraction=args.delete_fraction
        )
        for net in networks
    )
    return SimOptions(
        seed=args.seed,
        nodes=args.nodes,
        networks=networks,
        profile=args.profile,
        membership=args.membership,
        latency_min=args.latency[0],
        latency_max=args.latency[1],
        loss=args.loss,
        duplicate=args.duplicate,
        partitions=tuple(PartitionSpec.parse(p) for p in args.partition),
        crashes=tuple(CrashSpec.parse(c) for c in args.crash),
        workloads=workloads,
        liveness_bound=args.liveness_bound,
    )


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None or math.isnan(seconds) else f"{seconds * 1000:,.0f} ms"


def summary(result: dict[str, Any]) -> str:
    lines = [
        f"{'network':<10} {'members':>7} {'entries':>8} {'converged':>9} {'after settle':>13} "
        f"{'missing':>8} {'unexpected':>10}"
    ]
    for name, net in result["networks"].items():
        lines.append(
            f"{name:<10} {net['members']:>7} {net['expected_entries']:>8} {'yes' if net['converged'] else 'NO':>9} "
            f"{_ms(net['convergence_after_settle']):>13} {net['missing_count']:>8} {net['unexpected_count']:>10}"
        )
    lat, traffic = result["latency"], result["traffic"]
    lines += [
        f"entry latency  p50 {_ms(lat['p50'])}  p90 {_ms(lat['p90'])}  p99 {_ms(lat['p99'])}  max {_ms(lat['max'])}",
        f"copies received per event per node {traffic['copies_per_event_per_node']:.2f}; "
        f"{traffic['bytes_out_per_node'] / 1024:,.0f} KiB and {traffic['datagrams_out_per_node']:,.0f} datagrams "
        "sent per node",
        f"scope leaks {result['leaks']}  resurrected {result['resurrections']}  "
        f"membership converged {'yes' if result['membership_converged_at'] is not None else 'NO'}",
        f"virtual {result['virtual_time']:.2f} s in {result['wall_seconds']:.1f} s wall; trace {result['trace_hash']}",
    ]
    return "\n".join(lines)


def run_sim(args: argparse.Namespace) -> int:
    try:
        options = sim_options(args)
        simulator = Simulator(options)
    except OptionError as exc:
        raise CliError(str(exc)) from None
    if not args.quiet:
        print(f"sim seed={options.seed} nodes={options.nodes} options={options.describe()}", flush=True)
    progress = None if args.quiet else (lambda text: print(f"  ... {text}", file=sys.stderr, flush=True))
    result = simulator.run(progress=progress)
    if args.json:
        try:
            with open(args.json, "w") as handle:
                json.dump(result, handle, indent=2, default=str)
        except OSError as exc:
            raise CliError(f"cannot write {args.json}: {exc.strerror}") from None
    if not args.quiet:
        print(summary(result))
    verdict = "PASS" if result["valid"] else "FAIL"
    print(f"{verdict}: seed {options.seed} (replay with the same options and --seed {options.seed})")
    return 0 if result["valid"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run_sim(args)  # the only command so far; argparse rejects any other
    except CliError as exc:
        print(f"gossip-agent: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
