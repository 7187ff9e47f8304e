"""The `gossip-agent` command.

gossip-agent sim --nodes 1000 --networks 4 --endpoints 10000 --seed 7 [--loss 0.1]
                 [--partition halves:5s-15s] [--crash 0.1@5s-20s] [--json out.json]
gossip-agent sim --random --seeds 1-1000 [--jobs N] [--time-budget S]   (generated runs)
gossip-agent sim --schedule results/vopr/seed-7.json                   (replay one schedule)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

from . import __version__
from .sim.partitions import SHAPES as PARTITION_SHAPES


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


def _int_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW-HIGH such as 3-9, got {text!r}") from None
    if not 2 <= first <= last:
        raise argparse.ArgumentTypeError(f"expected 2 <= LOW <= HIGH, got {text!r}")
    return first, last


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
        help=f"a partition ({', '.join(PARTITION_SHAPES)}), e.g. halves:5s-15s; repeatable",
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
    gen = sim.add_argument_group(
        "generated runs",
        "--random draws, from each seed, a whole schedule of operations (writes, deletes, bursts, attach, "
        "detach) and faults (crash, new life, leave, pause, cold start, partitions of every shape, loss, "
        "duplication, delay, corruption, replays, forged clocks), checks safety at every step and liveness "
        "after a quiet phase, and shrinks each failure to a small schedule written under --traces.",
    )
    gen.add_argument("--random", action="store_true", help="run generated schedules instead of a fixed workload")
    gen.add_argument("--seeds", default="1-100", metavar="N|N-M|LIST", help="seeds to run (default 1-100)")
    gen.add_argument("--node-range", type=_int_range, default=(3, 9), metavar="LOW-HIGH",
                     help="nodes per generated run (default 3-9)")  # fmt: skip
    gen.add_argument("--jobs", type=int, default=0, help="worker processes (default: one per core)")
    gen.add_argument("--time-budget", type=float, metavar="SECONDS", help="stop starting new seeds after this long")
    gen.add_argument("--no-shrink", action="store_true", help="report failures without shrinking them")
    gen.add_argument("--traces", default="results/vopr", metavar="DIR",
                     help="where failures are written as JSON (default results/vopr)")  # fmt: skip
    gen.add_argument("--show-schedule", action="store_true", help="print each seed's schedule as JSON")
    gen.add_argument("--schedule", metavar="FILE",
                     help="replay one schedule: a JSON schedule, or a trace (its shrunk schedule)")  # fmt: skip
    add_run_parser(sub)
    add_ctl_parser(sub)
    return parser


# === run =========================================================================================


def add_run_parser(sub: Any) -> None:
    run = sub.add_parser(
        "run",
        help="run the agent daemon",
        description="Run the gossip agent until SIGTERM/SIGINT, which makes it leave the cluster gracefully. "
        "A bad configuration is reported in one line and exits 2.",
    )
    run.add_argument("--config", default="/etc/gossip-agent/agent.yaml", help="agent configuration (YAML)")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {"ts": record.created, "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        )


def _import_asyncio_without_tls() -> None:
    """asyncio imports ssl, for TLS the agent never speaks, and with it libssl and libcrypto:
    4.3 MiB of every agent's RSS. Kept out while asyncio is first imported (its `try: import
    ssl` then leaves TLS out); a later `import ssl`, the metrics endpoint's, still works."""
    if "asyncio" in sys.modules or "ssl" in sys.modules:
        return
    sys.modules["ssl"] = None  # type: ignore[assignment]  # an import of it now raises ImportError
    try:
        import asyncio  # noqa: F401
    finally:
        del sys.modules["ssl"]


def run_agent(args: argparse.Namespace) -> int:
    _import_asyncio_without_tls()
    import asyncio

    from .runtime.config import ConfigError, load
    from .runtime.crypto import KeyringError

    try:
        config = load(args.config)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    handler = logging.StreamHandler()
    handler.setFormatter(
        _JsonFormatter() if config.log_format == "json" else logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    )
    logging.basicConfig(level=config.log_level.upper(), handlers=[handler])
    try:
        return int(asyncio.run(_serve(config)))
    except KeyringError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot start: {exc.strerror or exc}") from None


async def _serve(config: Any) -> int:
    from .runtime.api import Api
    from .runtime.daemon import Agent

    agent = Agent(config)
    api = Api(agent)
    try:
        return await agent.run(on_ready=api.start)
    finally:
        await api.close()


# === ctl =========================================================================================


def add_ctl_parser(sub: Any) -> None:
    ctl = sub.add_parser(
        "ctl",
        help="talk to the local agent through its control API",
        description="Query and drive the local agent over its unix socket.",
    )
    ctl.add_argument(
        "--socket",
        default=os.environ.get("GOSSIP_AGENT_SOCKET", "/run/gossip-agent/api.sock"),
        help="API socket (default /run/gossip-agent/api.sock or $GOSSIP_AGENT_SOCKET)",
    )
    ctl.add_argument("--json", action="store_true", help="print JSON instead of tables")
    verbs = ctl.add_subparsers(dest="verb", required=True, metavar="VERB")
    verbs.add_parser("health", help="is the agent up; its name, address and networks")
    verbs.add_parser("members", help="cluster members with state and incarnation")
    verbs.add_parser("networks", help="networks this node is in, with their members")
    verbs.add_parser("stats", help="protocol counters and queue depths")
    verbs.add_parser("metrics", help="the Prometheus exposition")
    verbs.add_parser("attach", help="join a network").add_argument("network")
    verbs.add_parser("detach", help="leave a network (own entries are deleted)").add_argument("network")
    put = verbs.add_parser("put", help="create or update one entry")
    for name in ("network", "table", "key", "value"):
        put.add_argument(name)
    delete = verbs.add_parser("delete", help="delete one entry")
    for name in ("network", "table", "key"):
        delete.add_argument(name)
    dump = verbs.add_parser("dump", help="a network's table (owner, Lamport time, origin and first-seen time)")
    dump.add_argument("network")
    dump.add_argument("--all", action="store_true", help="include tombstones and withdrawn entries")
    churn = verbs.add_parser("churn", help="create (or delete) many entries at a given rate, locally")
    churn.add_argument("network")
    churn.add_argument("--count", type=_positive_int, required=True)
    churn.add_argument("--rate", type=float, default=0.0, help="entries per second (0: as fast as possible)")
    churn.add_argument("--table", default="endpoints")
    churn.add_argument("--prefix", default="ep-", help="keys are PREFIX0, PREFIX1, ...")
    churn.add_argument("--start", type=int, default=0, help="first key number")
    churn.add_argument("--batch", type=_positive_int, default=500, help="entries per API call")
    churn.add_argument("--delete", action="store_true", help="delete the keys instead of creating them")
    churn.add_argument("--tag", default="", help="values are NETWORK/KEY#TAG (default NETWORK/KEY): an update")
    keys = verbs.add_parser("keys", help="keyring: list, install, use (make primary), remove")
    keys.add_argument("action", choices=("list", "install", "use", "remove", "generate"))
    keys.add_argument("key", nargs="?", help="base64 32-byte key")
    fault = verbs.add_parser("fault", help="fault hook: drop/delay traffic to a peer, or clear all")
    fault.add_argument("action", choices=("set", "clear"))
    fault.add_argument("peer", nargs="?", help="peer address")
    fault.add_argument("--drop", type=float, default=0.0, help="loss probability 0-1")
    fault.add_argument("--delay-ms", type=float, default=0.0, help="added delay in ms")
    add_container_parser(verbs)


def add_container_parser(verbs: Any) -> None:
    container = verbs.add_parser(
        "container",
        help="containers: namespaces on a network's bridge whose endpoints the agent gossips (root)",
        description="A container is a network namespace gc-VXLANID-I with a veth into the network's bridge "
        "gbr-VXLANID, an address and MAC from this host's block of the network's subnet, and its endpoint "
        "registered in the agent's overlay table. Mistakes exit 2, a failure midway exits 1 (having removed "
        "what it made).",
    )
    actions = container.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="make containers at the lowest free addresses; all or nothing")
    create.add_argument("network")
    create.add_argument("--count", type=_positive_int, default=1, help="how many (default 1)")
    delete = actions.add_parser("delete", help="withdraw containers' endpoints, then remove their namespaces")
    delete.add_argument("network")
    delete.add_argument("names", nargs="*", metavar="NAME", help="containers to delete, e.g. gc-4097-3")
    delete.add_argument("--count", type=_positive_int, help="the N highest-numbered containers")
    delete.add_argument("--all", action="store_true", help="every container of the network on this host")
    listing = actions.add_parser("list", help="this host's containers and whether their endpoints are registered")
    listing.add_argument("network", nargs="?", help="one network (default: all)")


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _churn(args: argparse.Namespace, call: Any) -> dict[str, Any]:
    started = time.monotonic()
    done = 0
    keys = [f"{args.prefix}{i}" for i in range(args.start, args.start + args.count)]
    for offset in range(0, len(keys), args.batch):
        chunk = keys[offset : offset + args.batch]
        if args.delete:
            call(
                "DELETE",
                f"/networks/{args.network}/entries",
                {"entries": [{"table": args.table, "key": k} for k in chunk]},
            )
        else:
            tag = f"#{args.tag}" if args.tag else ""
            items = [{"table": args.table, "key": k, "value": f"{args.network}/{k}{tag}"} for k in chunk]
            call("POST", f"/networks/{args.network}/entries", {"entries": items})
        done += len(chunk)
        if args.rate > 0 and done < len(keys):  # pace between batches; the last one ends the run
            ahead = done / args.rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    elapsed = time.monotonic() - started
    return {
        "network": args.network,
        "deleted" if args.delete else "written": done,
        "seconds": round(elapsed, 3),
        "rate": round(done / elapsed, 1) if elapsed > 0 else None,
    }


def _container(args: argparse.Namespace, call: Any) -> int:
    from .runtime import containers

    def progress(text: str) -> None:
        print(f"  ... {text}", file=sys.stderr, flush=True)

    try:
        if args.action == "create":
            result: Any = containers.create(call, args.network, args.count, progress=progress)
            line = (f"created {len(result['created'])} containers in {args.network} in {result['seconds']:.2f} s "
                    f"({result['rate']:.0f}/s)")  # fmt: skip
        elif args.action == "delete":
            result = containers.delete(call, args.network, args.count, args.names, args.all)
            line = (f"deleted {len(result['deleted'])} containers of {args.network} ({result['endpoints']} endpoints "
                    f"withdrawn) in {result['seconds']:.2f} s")  # fmt: skip
        else:
            result = containers.list_containers(call, args.network)
            shown = [{**row, "registered": "yes" if row["registered"] else "no",
                      "namespace": "yes" if row["namespace"] else "missing"} for row in result]  # fmt: skip
            line = _table(shown, ["name", "network", "ip", "mac", "registered", "namespace"])
    except containers.ContainerError as exc:
        raise CliError(str(exc)) from None
    except (containers.ContainerFailure, containers.KernelError, OSError) as exc:
        # Midway, or before anything changed (the kernel refused a listing, the lock file):
        # one line, not a traceback.
        print(f"gossip-agent: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else line)
    return 0


def run_ctl(args: argparse.Namespace) -> int:
    from .runtime.client import ApiFailure, ApiUnavailable
    from .runtime.client import call as api_call
    from .runtime.crypto import new_key

    def call(method: str, path: str, body: Any = None) -> Any:
        return api_call(args.socket, method, path, body)

    verb = args.verb
    try:
        if verb == "keys" and args.action == "generate":
            print(new_key())
            return 0
        if verb == "container":
            return _container(args, call)
        if verb in ("health", "members", "networks", "stats"):
            result = call("GET", f"/{verb}")
        elif verb == "metrics":
            print(call("GET", "/metrics"), end="")
            return 0
        elif verb == "attach":
            result = call("POST", "/networks", {"network": args.network})
        elif verb == "detach":
            result = call("DELETE", f"/networks/{args.network}")
        elif verb == "put":
            entry = {"table": args.table, "key": args.key, "value": args.value}
            result = call("POST", f"/networks/{args.network}/entries", {"entries": [entry]})
        elif verb == "delete":
            result = call(
                "DELETE", f"/networks/{args.network}/entries", {"entries": [{"table": args.table, "key": args.key}]}
            )
        elif verb == "dump":
            result = call("GET", f"/networks/{args.network}/entries" + ("?all=1" if args.all else ""))
        elif verb == "churn":
            result = _churn(args, call)
        elif verb == "keys":
            if args.action == "list":
                result = call("GET", "/keys")
            elif not args.key:
                raise CliError(f"ctl keys {args.action} needs a KEY (make one with: gossip-agent ctl keys generate)")
            else:
                method = {"install": "POST", "use": "PUT", "remove": "DELETE"}[args.action]
                result = call(method, "/keys", {"key": args.key})
        else:  # fault
            if args.action == "clear":
                result = call("DELETE", "/faults")
            elif not args.peer:
                raise CliError("ctl fault set needs a PEER address")
            else:
                result = call("PUT", "/faults", {"peer": args.peer, "drop": args.drop, "delay_ms": args.delay_ms})
    except ApiUnavailable as exc:
        raise CliError(str(exc)) from None
    except ApiFailure as exc:
        raise CliError(f"the agent refused: {exc}") from None
    if args.json:
        print(json.dumps(result, indent=2))
    elif verb == "members":
        for row in result:
            row["networks"] = ",".join(row["networks"])
        print(_table(result, ["name", "address", "state", "incarnation", "networks"]))
    elif verb == "networks":
        for row in result:
            row["members"] = ",".join(row["members"])
        print(_table(result, ["network", "entries", "queue", "members"]))
    elif verb == "dump":
        print(_table(result["entries"], ["table", "key", "owner", "lamport", "value"]))
    else:
        print("\n".join(f"{k}: {v}" for k, v in result.items()) if isinstance(result, dict) else result)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return run_agent(args)
        if args.command == "ctl":
            return run_ctl(args)
        from .sim.command import run_sim

        return run_sim(args)
    except CliError as exc:
        print(f"gossip-agent: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
