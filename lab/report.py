"""results/<run-id>/: results.json, PNG plots and a one-page report (Markdown and HTML).

Plots: convergence over time per network with the fault window shaded; delivery-latency CDF;
bytes sent per host.
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
    ax.set_xlabel("seconds since the first phase started")
    ax.set_ylabel("% of (member, entry) pairs held")
    ax.set_ylim(0, 105)
    ax.set_title("Convergence per network")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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


def write(out: Path, result: dict[str, Any], latencies: list[float], summary: list[tuple[str, Any]]) -> Path:
    """Write everything; returns the HTML report's path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    _convergence_plot(result, out / "convergence.png")
    _latency_plot(latencies, out / "latency-cdf.png")
    _bytes_plot(result["verdict"]["bytes_out"], out / "bytes-per-host.png")
    verdict = "PASS" if result["valid"] else "FAIL"
    title = f"Experiment {result['name']} ({result['mode']}) {result['run_id']}: {verdict}"
    rows = "\n".join(f"| {k} | {v} |" for k, v in summary)
    images = ["convergence.png", "latency-cdf.png", "bytes-per-host.png"]
    (out / "report.md").write_text(
        f"# {title}\n\n{result['spec']}\n\nSeed {result['seed']}, commit {result['commit']}.\n\n"
        f"| figure | value |\n|---|---|\n{rows}\n\n"
        + "\n\n".join(f"![{i}]({i})" for i in images)
        + "\n\nEvidence: `results.json` (verdict, churn history, faults, samples).\n"
    )
    cells = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in summary)
    colour = "#1a7f37" if result["valid"] else "#cf222e"
    (out / "report.html").write_text(
        "<!doctype html><meta charset=utf-8><title>" + html.escape(title) + "</title>"
        "<body style='font-family:sans-serif;max-width:860px;margin:2em auto'>"
        f"<h1 style='color:{colour}'>{html.escape(title)}</h1>"
        f"<p>{html.escape(result['spec'])}</p><p>Seed {result['seed']}, commit {html.escape(result['commit'])}.</p>"
        f"<table border=1 cellpadding=4 style='border-collapse:collapse'>{cells}</table>"
        + "".join(f"<p><img src='{i}' alt='{i}'></p>" for i in images)
        + "<p>Evidence: <a href='results.json'>results.json</a></p></body>"
    )
    return out / "report.html"
