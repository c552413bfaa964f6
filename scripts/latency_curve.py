"""
Draw the latency-under-load curve of a benchmark report: offered load (messages a second,
log scale) against the p50 and p99 of send-to-delivered, one message at a time for the
leftmost point (the warm latency) and at each rate of C{--latency-loads} for the others.

    python -m sixchat.bench --only latency --no-postgres --latency-loads default --json r.json
    python scripts/latency_curve.py r.json docs/latency-load.png

Needs matplotlib (the C{bench} extra). docs/benchmarks.md shows the chart and its figures.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def curve(report: dict[str, Any]) -> list[tuple[float, float, float, float]]:
    """(offered messages/s, achieved messages/s, p50 ms, p99 ms) per load, by load."""
    points = []
    for sample in report.get("samples", []):
        if sample["bench"] == "latency_load":
            m = sample["metrics"]
            points.append((m["offered_per_s"], m["sent_per_s"], m["p50_ms"], m["p99_ms"]))
    return sorted(points)


def warm(report: dict[str, Any]) -> tuple[float, float] | None:
    """The one-at-a-time warm latency (p50, p99 ms), if the report has it."""
    for sample in report.get("samples", []):
        if sample["bench"] == "latency" and sample["variant"] == "warm":
            return sample["metrics"]["p50_ms"], sample["metrics"]["p99_ms"]
    return None


def plot(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = curve(report)
    if not points:
        sys.exit("the report has no latency_load samples: run the bench with --latency-loads")
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    rates = [p[0] for p in points]
    ax.plot(rates, [p[2] for p in points], "o-", color="tab:blue", label="p50")
    ax.plot(rates, [p[3] for p in points], "s-", color="tab:red", label="p99")
    for rate, achieved, _p50, p99 in points:
        if achieved < 0.9 * rate:  # the agent could not keep up with the offered rate
            ax.annotate(f"sent {achieved:.0f}/s", (rate, p99), textcoords="offset points",
                        xytext=(0, 6), ha="center", fontsize=7)  # fmt: skip
    one = warm(report)
    if one is not None:
        ax.axhline(one[0], color="tab:blue", linestyle=":", linewidth=1,
                   label="p50, one at a time")  # fmt: skip
        ax.axhline(one[1], color="tab:red", linestyle=":", linewidth=1,
                   label="p99, one at a time")  # fmt: skip
    ax.axhline(5, color="black", linestyle="--", linewidth=1, label="target p99 (one at a time)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered load, messages/s (alice -> bob, one session, open loop)")
    ax.set_ylabel("send -> delivered, ms")
    ax.set_title("Delivery latency under load (two agents, durable stores, receipts)")
    ax.grid(True, which="both", linewidth=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python scripts/latency_curve.py REPORT.json OUT.png", file=sys.stderr)
        return 2
    try:
        with open(argv[0]) as f:
            report = json.load(f)
    except (OSError, ValueError) as e:
        print(f"cannot read {argv[0]}: {e}", file=sys.stderr)
        return 1
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("this needs matplotlib: pip install 'sixchat[bench]'", file=sys.stderr)
        return 1
    plot(report, argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
