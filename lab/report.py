"""results/<run-id>/: results.json, PNG plots, the hosts' logs of a failed run, and a one-page
report (Markdown and HTML) that opens with the verdict and, when it failed, why.

Plots: convergence over time per network with the fault windows shaded (and, with containers,
when every host's routes were right and when the containers answered pings), and under it the
timeline of every operation (Jepsen's timeline: one row per process, invoke to completion,
coloured by outcome); delivery-latency CDF; bytes sent per host.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def _convergence_plot(result: dict[str, Any], path: Path) -> None:
    samples = result["samples"]
    fig, ax = plt.subplots(figsize=(8, 4))
    for network in result["networks"]:
        ax.plot([s["t"] for s in samples], [100 * s["converged"][network] for s in samples], label=network)
    for window in result["fault_windows"]:
        ax.axvspan(window["start"], window["end"], color="red", alpha=0.12, label=window["label"])
    for mark in result.get("marks", []):
        style = "--" if mark["label"].endswith("routes right") else ":"
        ax.axvline(mark["t"], color="black", linestyle=style, linewidth=0.8, label=mark["label"])
    ax.set_xlabel("seconds since the first phase started")
    ax.set_ylabel("% of (member, entry) pairs held")
    ax.set_ylim(0, 105)
    ax.set_title("Convergence per network")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


OUTCOME_COLOURS = {"ok": "#2da44e", "fail": "#cf222e", "info": "#bf8700", None: "#8c959f"}


def _timeline_plot(result: dict[str, Any], path: Path) -> None:
    """Operations per process over time: what ran when, and how it ended (grey: never ended)."""
    ops = result.get("history", [])
    starts = {op["index"]: op for op in ops if op["type"] == "invoke"}
    ends = {op["invoke"]: op for op in ops if op["type"] != "invoke"}
    origin = result.get("started_wall") or min((op["time"] for op in ops), default=0.0)
    processes = sorted({op["process"] for op in starts.values()})
    fig, ax = plt.subplots(figsize=(8, max(2.0, 0.6 + 0.28 * len(processes))))
    if not processes:
        ax.text(0.5, 0.5, "no operations recorded in this mode", ha="center", va="center", transform=ax.transAxes)
    last = max((op["time"] for op in ops), default=origin) - origin
    for row, process in enumerate(processes):
        for index, op in starts.items():
            if op["process"] != process:
                continue
            end = ends.get(index)
            left = op["time"] - origin
            width = (end["time"] - origin if end else last) - left
            ax.broken_barh([(left, max(width, 0.05))], (row - 0.4, 0.8),
                           color=OUTCOME_COLOURS[end["type"] if end else None])  # fmt: skip
    for window in result["fault_windows"]:
        ax.axvspan(window["start"], window["end"], color="red", alpha=0.12)
    ax.set_yticks(range(len(processes)), processes, fontsize=7)
    ax.set_xlabel("seconds since the run started (green ok, red fail, amber unknown, grey unfinished)")
    ax.set_title("Operations")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


FAILURE_KINDS = ("missing", "unexpected", "wrong", "resurrected")
NETWORK_COLUMNS = ("network", "members", "expected", "unsure", "deleted", *FAILURE_KINDS)


def _network_rows(result: dict[str, Any]) -> list[tuple[Any, ...]]:
    """One row per network: its members at the end, what the truth holds of it (keys that must be
    held, may be held, were deleted) and, summed over its members, what the verdict found wrong."""
    networks = result["networks"]
    truth = result.get("truth") or {}
    verdict = result["verdict"]
    rows = []
    for network in sorted(networks):
        members = networks[network] if isinstance(networks, dict) else []
        model = truth.get(network, {})
        found = [verdict.get(kind) for kind in FAILURE_KINDS]
        per_network = [sum(f.get(network, {}).values()) if isinstance(f, dict) else "" for f in found]
        listed = f"{len(members)}: {', '.join(members)}" if members else ""
        rows.append((network, listed, *(model.get(k, "") for k in ("expected", "unsure", "deleted")), *per_network))
    return rows


def _why(result: dict[str, Any]) -> list[str]:
    """The lines a reader needs first when the run failed: where it stopped, what was wrong where
    (with example keys), which targets were missed."""
    lines = []
    if result.get("stopped"):
        lines.append(f"Stopped while {result['stopped']['step']}: {result['stopped']['why']}")
    verdict = result["verdict"]
    for kind in FAILURE_KINDS:
        found = verdict.get(kind) or {}
        if not isinstance(found, dict):  # the simulator counts in all, not per network and host
            lines.append(f"{found} {kind}")
            continue
        for network, hosts in found.items():
            if not isinstance(hosts, dict):
                lines.append(f"{network}: {hosts} {kind}")
                continue
            for host, count in sorted(hosts.items()):
                keys = verdict.get("examples", {}).get(network, {}).get(host, {}).get(kind, [])
                lines.append(f"{network} on {host}: {count} {kind} (e.g. {', '.join(keys)})")
    routes = verdict.get("routes") or {}
    for kind in ("missing", "stale"):
        for network, hosts in (routes.get(kind) or {}).items():
            for host, count in sorted(hosts.items()):
                entries = routes.get("examples", {}).get(network, {}).get(host, {}).get(kind, [])
                lines.append(f"{network} on {host}: {count} routes {kind} (e.g. {', '.join(entries)})")
    if routes.get("error"):
        lines.append(f"routes not read: {routes['error']}")
    for ping in verdict.get("wrong_pings") or []:
        expected = "no answer" if not ping["must_answer"] else "an answer"
        lines.append(f"ping from {ping['container']} on {ping['from']} to {ping['to']}: expected {expected}")
    for kind in ("scope_leaks", "out_of_scope_received"):
        if verdict.get(kind):
            lines.append(f"{kind.replace('_', ' ')}: {verdict[kind]}")
    for host, error in sorted(verdict.get("unreachable", {}).items()):
        lines.append(f"{host} did not answer: {error}")
    lines += [f"target {t['target']} missed: " + ("not measured" if t["worst"] is None else f"{t['worst']:.2f}")
              + f" > {t['bound']:g}" for t in result.get("targets", []) if t["met"] is False]  # fmt: skip
    return lines


def _latency_plot(latencies: list[float], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4))
    ordered = sorted(latencies)
    if ordered:
        ax.plot(ordered, [100 * (i + 1) / len(ordered) for i in range(len(ordered))])
    ax.set_xlabel("seconds from write to first seen on a member")
    ax.set_ylabel("% of deliveries")
    ax.set_title("Delivery latency (CDF)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _bytes_plot(per_host: dict[str, int], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 3.5))
    names = sorted(per_host)
    ax.bar(names, [per_host[n] / 1024 for n in names])
    ax.set_ylabel("KiB sent (UDP)")
    ax.set_title("Gossip bytes sent per host")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(
    out: Path, result: dict[str, Any], latencies: list[float], summary: list[tuple[str, Any]], logs: dict[str, str]
) -> Path:
    """Write everything; returns the HTML report's path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    for host, text in logs.items():
        (out / "hosts" / host).mkdir(parents=True, exist_ok=True)
        (out / "hosts" / host / "agent.log").write_text(text)
    _convergence_plot(result, out / "convergence.png")
    _timeline_plot(result, out / "timeline.png")
    _latency_plot(latencies, out / "latency-cdf.png")
    _bytes_plot(result["verdict"]["bytes_out"], out / "bytes-per-host.png")
    title = f"Experiment {result['name']} ({result['mode']}) {result['run_id']}: {result['verdict_line']}"
    why = _why(result)
    rows = "\n".join(f"| {k} | {v} |" for k, v in summary)
    networks = _network_rows(result)
    network_md = (f"| {' | '.join(NETWORK_COLUMNS)} |\n|{'---|' * len(NETWORK_COLUMNS)}\n"
                  + "".join(f"| {' | '.join(str(c) for c in row)} |\n" for row in networks))  # fmt: skip
    images = ["convergence.png", "timeline.png", "latency-cdf.png", "bytes-per-host.png"]
    evidence = "`results.json` (verdict, history, truth, faults, samples)" + (", `hosts/*/agent.log`" if logs else "")
    (out / "report.md").write_text(
        f"# {title}\n\n" + "".join(f"- {line}\n" for line in why) + ("\n" if why else "")
        + f"{result['spec']}\n\nSeed {result['seed']}, commit {result['commit']}.\n\n"
        f"| figure | value |\n|---|---|\n{rows}\n\n## Networks\n\n{network_md}\n"
        + "\n\n".join(f"![{i}]({i})" for i in images)
        + f"\n\nEvidence: {evidence}.\n"
    )  # fmt: skip
    cells = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in summary)
    colour = "#1a7f37" if result["passed"] else "#cf222e"
    failures = "".join(f"<li>{html.escape(line)}</li>" for line in why)
    network_head = "".join(f"<th>{c}</th>" for c in NETWORK_COLUMNS)
    network_cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in networks
    )
    links = "".join(f" <a href='hosts/{h}/agent.log'>{html.escape(h)}</a>" for h in sorted(logs))
    (out / "report.html").write_text(
        "<!doctype html><meta charset=utf-8><title>" + html.escape(title) + "</title>"
        "<body style='font-family:sans-serif;max-width:860px;margin:2em auto'>"
        f"<h1 style='color:{colour}'>{html.escape(title)}</h1>"
        + (f"<ul style='color:{colour}'>{failures}</ul>" if failures else "")
        + f"<p>{html.escape(result['spec'])}</p><p>Seed {result['seed']}, commit {html.escape(result['commit'])}.</p>"
        f"<table border=1 cellpadding=4 style='border-collapse:collapse'>{cells}</table>"
        f"<h2>Networks</h2><table border=1 cellpadding=4 style='border-collapse:collapse'>"
        f"<tr>{network_head}</tr>{network_cells}</table>"
        + "".join(f"<p><img src='{i}' alt='{i}'></p>" for i in images)
        + "<p>Evidence: <a href='results.json'>results.json</a>"
        + (f"; agent logs:{links}" if logs else "") + "</p></body>"
    )  # fmt: skip
    return out / "report.html"
