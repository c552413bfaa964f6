"""
C{--plot FILE.png}: the same-run ratios as a chart (needs matplotlib: the C{bench} extra).

Left: every ratio (ours ÷ baseline) with the issue's target marked; right: handshakes per
second, ours next to TLS 1.3, for each configuration and mode.
"""

from __future__ import annotations

from typing import Any


def ratio_bars(report: dict[str, Any]) -> list[tuple[str, float, float | None, str]]:
    """(label, ratio, target, op) for every ratio the report has, in table order."""
    from sixchat.bench.results import HEADLINES

    bars = []
    figures = report.get("ratios", {})
    for h in HEADLINES:
        if h.kind == "min_ratio":
            for ours, base in h.variants:
                value = figures.get(f"{h.bench}.{ours}/{base}.{h.metric}")
                if value is not None:
                    impl, mode, config = ours.split("-", 2)
                    cold = " (cold)" if impl == "ourscold" else ""
                    bars.append((f"handshake {mode} {config}{cold}", value, h.target, h.op))
        elif h.kind == "ratio" and report.get(h.key) is not None:
            bars.append((h.key, report[h.key], h.target, h.op))
    return bars


def plot(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = ratio_bars(report)
    figures = report.get("figures", {})
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 6.5), gridspec_kw={"width_ratios": [1, 1]})
    if bars:
        labels = [b[0] for b in bars]
        values = [b[1] for b in bars]
        colors = []
        for _, value, target, op in bars:
            met = target is None or (value >= target if op == ">=" else value <= target)
            colors.append("tab:green" if met else "tab:red")
        y = range(len(bars))
        left.barh(list(y), values, color=colors)
        for i, (_, value, target, _op) in enumerate(bars):
            left.text(value, i, f" {value:.2f}x", va="center", fontsize=8)
            if target is not None:
                left.plot([target, target], [i - 0.4, i + 0.4], color="black", linewidth=2)
        left.axvline(1.0, color="grey", linestyle=":", linewidth=1)
        left.set_yticks(list(y))
        left.set_yticklabels(labels, fontsize=8)
        left.invert_yaxis()
        left.set_xscale("log")
        ticks = [0.125, 0.25, 0.5, 1.0, 1.5, 2.0]
        left.set_xticks(ticks)
        left.set_xticklabels([f"{t:g}" for t in ticks])
        left.minorticks_off()
        left.set_xlabel("ours / baseline, same run (black tick: target; memory: lower is better)")
        left.set_title("Same-run ratios")
    groups = []
    for mode in ("seq", "conc"):
        for config in ("ed25519-x25519mlkem768", "ed25519-x25519", "p256-x25519mlkem768",
                       "p256-x25519"):  # fmt: skip
            ours = figures.get(f"handshake.ours-{mode}-{config}.hs_per_s")
            tls = figures.get(f"handshake.tls-{mode}-{config}.hs_per_s")
            if ours and tls:
                key, group = config.split("-")
                label = "{}\n{}\n{}".format(
                    "1 at a time" if mode == "seq" else "50 in flight",
                    {"ed25519": "Ed25519", "p256": "P-256"}[key],
                    {"x25519mlkem768": "ML-KEM hybrid", "x25519": "X25519"}[group],
                )
                groups.append((label, ours["median"], tls["median"]))
    if groups:
        x = range(len(groups))
        width = 0.4
        right.bar([i - width / 2 for i in x], [g[1] for g in groups], width, label="sixchat")
        right.bar([i + width / 2 for i in x], [g[2] for g in groups], width, label="TLS 1.3")
        right.set_xticks(list(x))
        right.set_xticklabels([g[0] for g in groups], fontsize=6.5)
        right.set_ylabel("full mutual-auth handshakes / s")
        right.set_title("Handshakes (medians)")
        right.legend()
    meta = report.get("meta", {})
    machine = meta.get("machine", {})
    fig.suptitle(
        f"sixchat vs Twisted TLS — {meta.get('profile', '?')} run, "
        f"{machine.get('cpus', '?')} CPUs, Python {machine.get('python', '?')}, "
        f"Twisted {machine.get('twisted', '?')}, {machine.get('openssl', '?')}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
