"""`gossip-agent sim`: runs of the simulator (one run, generated runs, a schedule replayed),
kept apart from the agent's commands so that the agent never loads the simulator."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from ..cli import CliError
from . import vopr
from .options import CrashSpec, OptionError, PartitionSpec, SimOptions, WorkloadSpec, spread_networks
from .schedule import Knobs, Schedule, generate
from .simulator import Simulator


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
        f"scope leaks {result['scope_leaks']}  resurrected {result['resurrections']}  "
        f"membership converged {'yes' if result['membership_converged_at'] is not None else 'NO'}",
        f"virtual {result['virtual_time']:.2f} s in {result['wall_seconds']:.1f} s wall; trace {result['trace_hash']}",
    ]
    return "\n".join(lines)


def _load_schedule(path: str) -> Schedule:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise CliError(f"{path}: not JSON: {exc}") from None
    if isinstance(data, dict) and "shrunk" in data:  # a trace: replay its smallest schedule
        data = data["shrunk"]["schedule"]
    elif isinstance(data, dict) and "schedule" in data:
        data = data["schedule"]
    try:
        return Schedule.from_dict(data)
    except ValueError as exc:
        raise CliError(f"{path}: {exc}") from None


def _say(outcome: vopr.Outcome) -> str:
    what = "PASS" if outcome.valid else f"FAIL ({outcome.invariant})"
    return f"{what}: seed {outcome.seed}, {outcome.nodes} nodes, {outcome.steps} steps, {outcome.wall_seconds:.2f} s"


def run_schedule_file(args: argparse.Namespace) -> int:
    schedule = _load_schedule(args.schedule)
    try:
        outcome = vopr.run_schedule(schedule)
    except OptionError as exc:
        raise CliError(f"{args.schedule}: {exc}") from None
    if outcome.violation is not None:
        print(json.dumps({"violation": outcome.violation, "views": outcome.views}, indent=1, default=str))
    print(_say(outcome))
    return 0 if outcome.valid else 1


def run_random(args: argparse.Namespace) -> int:
    try:
        seeds = vopr.parse_seeds(args.seeds)
        knobs = Knobs(nodes=args.node_range)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    replay_knobs = "" if args.node_range == (3, 9) else f" --node-range {args.node_range[0]}-{args.node_range[1]}"
    if args.show_schedule:
        for seed in seeds:
            print(generate(seed, knobs).to_json())
    workers = args.jobs or os.cpu_count() or 1
    print(f"generated runs: {len(seeds)} seeds ({args.seeds}), {workers} workers, knobs {knobs}", flush=True)
    progress = None if args.quiet else (lambda text: print(f"  ... {text}", file=sys.stderr, flush=True))
    result = vopr.sweep(seeds, knobs, workers, args.time_budget, not args.no_shrink, progress)
    ran = len(result.outcomes)
    rate = ran / result.wall_seconds * 60 / workers if result.wall_seconds else 0.0
    for outcome in result.failures:
        replay = f"gossip-agent sim --random --seeds {outcome.seed}{replay_knobs}"
        data = vopr.trace(outcome, knobs, replay, result.shrunk.get(outcome.seed))
        try:
            path = vopr.write_trace(Path(args.traces), data)
        except OSError as exc:
            raise CliError(f"cannot write traces to {args.traces}: {exc.strerror}") from None
        print(_say(outcome))
        print(f"  first violation: {json.dumps(outcome.violation, default=str)[:400]}")
        print(f"  replay: {replay}")
        shrunk = result.shrunk.get(outcome.seed)
        if shrunk is not None:
            print(f"  shrunk to {len(shrunk[0].steps)} of {outcome.steps} steps in {shrunk[1]} runs "
                  f"({shrunk[2]:.1f} s); replay it: gossip-agent sim --schedule {path}")  # fmt: skip
            for step in shrunk[0].steps[:12]:
                print(f"    {json.dumps(step.to_dict())}")
        print(f"  trace: {path}")
    classes = result.by_invariant()
    summary = {
        "seeds": args.seeds,
        "node_range": list(args.node_range),
        "ran": ran,
        "failed": len(result.failures),
        "failures_by_invariant": classes,
        "wall_seconds": round(result.wall_seconds, 1),
        "seeds_per_minute_per_core": round(rate, 1),
        "shrunk": {seed: {"steps": len(s.steps), "runs": runs, "seconds": round(sec, 1)}
                   for seed, (s, runs, sec) in result.shrunk.items()},
    }  # fmt: skip
    try:
        Path(args.traces).mkdir(parents=True, exist_ok=True)
        (Path(args.traces) / "summary.json").write_text(json.dumps(summary, indent=1))
    except OSError as exc:
        raise CliError(f"cannot write traces to {args.traces}: {exc.strerror}") from None
    print(f"{ran} seeds run in {result.wall_seconds:.1f} s ({rate:.0f} seeds/min/core), {len(result.failures)} failed")
    for invariant, failed in sorted(classes.items()):
        more = " ..." if len(failed) > 20 else ""
        print(f"  {invariant}: {len(failed)} (seeds {', '.join(map(str, failed[:20]))}{more})")
    if ran < len(seeds):
        print(f"time budget reached: {len(seeds) - ran} seeds not run")
    verdict = "PASS" if not result.failures and ran else "FAIL"
    print(f"{verdict}: {ran - len(result.failures)} passed, {len(result.failures)} failed")
    return 0 if verdict == "PASS" else 1


def run_sim(args: argparse.Namespace) -> int:
    if args.schedule:
        return run_schedule_file(args)
    if args.random:
        return run_random(args)
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
