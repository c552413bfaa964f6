"""
Aggregating benchmark samples: medians, same-run ratios, the headline keys, the table.

Pure functions only (no I/O, no Twisted), so the arithmetic the report rests on has ordinary
unit tests (C{sixchat.test.test_bench}).

Vocabulary:

  - a B{sample} is one measurement of one I{variant} of one I{bench} in one I{round}:
    C{Sample("bulk", "tls", 2, {"mib_per_s": 812.0})};
  - a B{median} is taken over the rounds of one (bench, variant, metric);
  - a B{ratio} is ours ÷ baseline. It is computed per round from the two samples measured
    back to back in that round (same processes, same load on the machine), and the median of
    those per-round ratios is reported; rounds where either side is missing are skipped.
    Comparing medians across rounds would mix in whatever else the machine did meanwhile.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "HEADLINES",
    "Headline",
    "Sample",
    "format_markdown",
    "format_table",
    "headline_values",
    "median",
    "medians",
    "paired_ratio",
    "percentile",
    "summarize",
]


@dataclass(frozen=True)
class Sample:
    bench: str
    variant: str
    round: int
    metrics: Mapping[str, float]

    def to_json(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "variant": self.variant,
            "round": self.round,
            "metrics": dict(self.metrics),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Sample:
        metrics = {str(k): float(v) for k, v in data["metrics"].items() if _is_number(v)}
        return cls(str(data["bench"]), str(data["variant"]), int(data["round"]), metrics)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def median(values: Iterable[float]) -> float | None:
    """The median, or None for no values (an even count averages the middle two)."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return None
    mid = n // 2
    if n % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2


def percentile(values: Sequence[float], q: float) -> float | None:
    """
    The C{q}-th percentile (0–100) by the nearest-rank method: the smallest value with at
    least C{q}% of the values at or below it. None for no values.
    """
    if not 0 <= q <= 100:
        raise ValueError("percentile must be between 0 and 100")
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _values(samples: Iterable[Sample], bench: str, variant: str, metric: str) -> dict[int, float]:
    return {
        s.round: s.metrics[metric]
        for s in samples
        if s.bench == bench and s.variant == variant and metric in s.metrics
    }


def medians(samples: Iterable[Sample]) -> dict[tuple[str, str, str], float]:
    """The median of every (bench, variant, metric) over its rounds."""
    grouped: dict[tuple[str, str, str], list[float]] = {}
    for s in samples:
        for metric, value in s.metrics.items():
            grouped.setdefault((s.bench, s.variant, metric), []).append(value)
    out = {}
    for key, values in grouped.items():
        m = median(values)
        if m is not None:
            out[key] = m
    return out


def paired_ratio(
    samples: Sequence[Sample], bench: str, ours: str, baseline: str, metric: str
) -> float | None:
    """
    Median over rounds of ours ÷ baseline for one metric, pairing the samples of each round.
    None if no round has both (or the baseline is zero in every round).
    """
    mine = _values(samples, bench, ours, metric)
    theirs = _values(samples, bench, baseline, metric)
    ratios = [mine[r] / theirs[r] for r in sorted(mine) if r in theirs and theirs[r] != 0]
    return median(ratios)


@dataclass(frozen=True)
class Headline:
    """
    One JSON key of the report (the issue's item 3) and how it is computed.

    C{kind} is C{value} (the median of C{variant}'s C{metric}), C{ratio} (paired ours ÷
    C{baseline}) or C{min_ratio}/C{min_value}/C{max_value} (the worst over several
    C{variants}, paired with the same-named C{baseline} variants, so a target holds for every
    configuration, not only the friendliest). C{target} and C{op} say what the issue asks
    for (C{>=} or C{<=}); None when there is no target.
    """

    key: str
    bench: str
    metric: str
    kind: str = "value"
    variant: str = "ours"
    baseline: str | None = None
    variants: tuple[tuple[str, str], ...] = ()
    target: float | None = None
    op: str = ">="
    unit: str = ""
    label: str = ""

    def met(self, value: float | None) -> bool | None:
        if self.target is None or value is None:
            return None
        if self.op == ">=":
            return value >= self.target
        return value <= self.target


_HS_CONFIGS = tuple(
    f"{key}-{group}" for key in ("ed25519", "p256") for group in ("x25519mlkem768", "x25519")
)


def _hs_pairs(mode: str, ours: str = "ours") -> tuple[tuple[str, str], ...]:
    return tuple((f"{ours}-{mode}-{c}", f"tls-{mode}-{c}") for c in _HS_CONFIGS)


#: The report's keys, in the order the table prints them.
HEADLINES: tuple[Headline, ...] = (
    Headline("handshake_seq_ratio", "handshake", "hs_per_s", "min_ratio",
             variants=_hs_pairs("seq"), target=1.0,
             label="handshakes, one at a time, vs TLS 1.3 (worst of 4 configs)"),
    Headline("handshake_seq_ratio_cold", "handshake", "hs_per_s", "min_ratio",
             variants=_hs_pairs("seq", "ourscold"), target=1.0,
             label="  the same, every chain validated in full (no validated-chain cache)"),
    Headline("handshake_conc_ratio", "handshake", "hs_per_s", "min_ratio",
             variants=_hs_pairs("conc"), target=1.0,
             label="handshakes, 50 in flight, vs TLS 1.3 (worst of 4 configs)"),
    Headline("handshake_conc_ratio_cold", "handshake", "hs_per_s", "min_ratio",
             variants=_hs_pairs("conc", "ourscold"), target=1.0,
             label="  the same, every chain validated in full (no validated-chain cache)"),
    Headline("handshake_seq_hs_per_s", "handshake", "hs_per_s",
             variant="ours-seq-ed25519-x25519mlkem768", baseline="tls-seq-ed25519-x25519mlkem768",
             kind="ratio_row", unit="hs/s", label="handshakes/s, sequential, Ed25519, hybrid"),
    Headline("handshake_conc_hs_per_s", "handshake", "hs_per_s",
             variant="ours-conc-ed25519-x25519mlkem768",
             baseline="tls-conc-ed25519-x25519mlkem768",
             kind="ratio_row", unit="hs/s", label="handshakes/s, 50 in flight, Ed25519, hybrid"),
    Headline("bulk_ratio_tls", "bulk", "mib_per_s", "ratio", baseline="tls", target=0.8,
             unit="MiB/s", label="bulk, 16 KiB writes, vs Twisted TLS 1.3"),
    Headline("bulk_ratio_tcp", "bulk", "mib_per_s", "ratio", baseline="tcp",
             unit="MiB/s", label="bulk, 16 KiB writes, vs plain TCP (ceiling)"),
    # No target against XMPP that nobody receipts (issue 15 retired it: its transport packs a
    # reactor turn's stanzas into one TLS record, which our one element per record forbids).
    Headline("stanza_ratio_xmpp_tls", "stanza", "msgs_per_s", "ratio", baseline="xmpp_tls",
             unit="msgs/s", label="200-byte messages, one way, vs XMPP over TLS"),
    Headline("stanza_msgs_per_s", "stanza", "msgs_per_s", target=40_000, unit="msgs/s",
             label="200-byte messages/s, one way (ours)"),
    Headline("stanza_ratio_xmpp_tls_receipts", "stanza", "msgs_per_s", "ratio",
             baseline="xmpp_tls_receipts", target=1.5, unit="msgs/s",
             label="  the same vs XMPP over TLS with XEP-0184 receipts"),
    Headline("receipted_rate", "receipted", "msgs_per_s", unit="msgs/s",
             label="agent to agent: send, stored, receipt"),
    Headline("receipted_encrypted_ratio", "receipted", "msgs_per_s", "ratio",
             variant="encrypted", baseline="ours", unit="msgs/s",
             label="  the same, both stores encrypted (SQLCipher) vs plain"),
    Headline("deliver_latency_warm_p50_ms", "latency", "p50_ms", variant="warm", unit="ms",
             label="latency: send to delivered, session open, p50"),
    Headline("deliver_latency_warm_p99_ms", "latency", "p99_ms", variant="warm", target=5,
             op="<=", unit="ms", label="latency: send to delivered, session open, p99"),
    Headline("deliver_latency_cold_p50_ms", "latency", "p50_ms", variant="cold", target=50,
             op="<=", unit="ms",
             label="latency: first message to a new contact (registry, full handshake), p50"),
    Headline("deliver_latency_cold_p99_ms", "latency", "p99_ms", variant="cold", unit="ms",
             label="latency: first message to a new contact, p99"),
    Headline("registry_visibility_p50_ms", "registry_visibility", "p50_ms",
             variant="postgres", unit="ms",
             label="registration via registry A seen by a watch via B (PostgreSQL), p50"),
    Headline("registry_visibility_p99_ms", "registry_visibility", "p99_ms",
             variant="postgres", target=20, op="<=", unit="ms",
             label="registration via registry A seen by a watch via B (PostgreSQL), p99"),
    Headline("registry_lookups_per_s", "registry_sqlite", "lookups_per_s", variant="lookup",
             target=5_000, unit="lookups/s", label="registry lookups/s at saturation, SQLite"),
    Headline("registry_lookup_p99_ms", "registry_sqlite", "p99_ms", variant="lookup",
             target=50, op="<=", unit="ms",
             label="registry lookup p99 at the offered load, SQLite"),
    Headline("registry_register_per_s", "registry_sqlite", "per_s", variant="register",
             unit="registers/s", label="registry registers/s, SQLite"),
    Headline("registry_server_cpu_us", "registry_sqlite", "server_cpu_us", variant="lookup",
             unit="µs", label="registry CPU per lookup at saturation, SQLite"),
    Headline("registry_lookups_per_s_postgres", "registry_postgres", "lookups_per_s",
             variant="lookup", target=5_000, unit="lookups/s",
             label="registry lookups/s at saturation, PostgreSQL (one instance)"),
    Headline("registry_lookup_p99_ms_postgres", "registry_postgres", "p99_ms",
             variant="lookup", target=50, op="<=", unit="ms",
             label="registry lookup p99 at the offered load, PostgreSQL"),
    Headline("registry_register_per_s_postgres", "registry_postgres", "per_s",
             variant="register", unit="registers/s", label="registry registers/s, PostgreSQL"),
    Headline("registry_server_cpu_us_postgres", "registry_postgres", "server_cpu_us",
             variant="lookup", unit="µs",
             label="registry CPU per lookup at saturation, PostgreSQL (registry process)"),
    Headline("registry_db_cpu_us_postgres", "registry_postgres", "db_cpu_us",
             variant="lookup", unit="µs",
             label="  the database server's CPU per lookup"),
    Headline("registry_lookups_per_s_postgres_x2", "registry_postgres_x2", "lookups_per_s",
             variant="lookup", unit="lookups/s",
             label="registry lookups/s at saturation, PostgreSQL, two instances together"),
    Headline("registry_server_cpu_us_postgres_x2", "registry_postgres_x2", "server_cpu_us",
             variant="lookup", unit="µs",
             label="  CPU per lookup, both registry processes together"),
    Headline("registry_gc_pause_max_ms", "registry", "gc_pause_max_ms", "max_value",
             variants=(("registry_sqlite", "server"), ("registry_postgres", "server"),
                       ("registry_postgres_x2", "server"), ("registry_postgres_x2", "server2")),
             target=50, op="<=", unit="ms",
             label="registry: longest collector pause, worst of every backend"),
    Headline("idle_session_kib", "idle", "kib", unit="KiB",
             label="idle session, per endpoint (worse side)"),
    Headline("idle_memory_ratio_tls", "idle", "kib", "ratio", baseline="tls", target=0.25,
             op="<=", unit="KiB", label="idle session memory vs idle TLS 1.3 connection"),
    Headline("agent_idle_sessions", "agent_idle", "sessions_held", target=10_000,
             unit="sessions", label="idle sessions held by one agent"),
    Headline("agent_idle_session_kib", "agent_idle", "agent_kib", unit="KiB",
             label="agent memory per idle session"),
    Headline("file_ratio_tls", "file", "mib_per_s", "ratio", baseline="tls", target=0.5,
             unit="MiB/s", label="file agent to agent (stored, fsynced, SHA-checked, receipted) "
             "vs TLS 1.3 FileSender"),
    Headline("file_mib_per_s", "file", "mib_per_s", target=200, unit="MiB/s",
             label="file agent to agent, MiB/s (ours)"),
    Headline("file_rss_growth_mib", "file", "rss_growth_mib", target=64, op="<=", unit="MiB",
             label="file: resident size growth, worse of the two agents"),
)  # fmt: skip


def headline_values(
    samples: Sequence[Sample], headlines: Sequence[Headline] = HEADLINES
) -> dict[str, float | None]:
    """Every headline key and its value (None when its benchmark did not run)."""
    meds = medians(samples)
    out: dict[str, float | None] = {}
    for h in headlines:
        if h.kind in ("value", "ratio_row"):
            out[h.key] = meds.get((h.bench, h.variant, h.metric))
        elif h.kind == "ratio":
            assert h.baseline is not None
            out[h.key] = paired_ratio(samples, h.bench, h.variant, h.baseline, h.metric)
        elif h.kind == "min_ratio":
            ratios = [paired_ratio(samples, h.bench, o, b, h.metric) for o, b in h.variants]
            present = [r for r in ratios if r is not None]
            out[h.key] = min(present) if present else None
        elif h.kind == "max_value":  # the worst of several (bench, variant)s
            found = [meds.get((b, v, h.metric)) for b, v in h.variants]
            out[h.key] = max((f for f in found if f is not None), default=None)
        else:  # pragma: no cover - a programming error in HEADLINES
            raise ValueError(f"unknown headline kind {h.kind!r}")
    return out


@dataclass
class Row:
    label: str
    ours: float | None
    baseline_name: str = ""
    baseline: float | None = None
    ratio: float | None = None
    unit: str = ""
    target: str = ""
    met: bool | None = None
    key: str = ""
    notes: list[str] = field(default_factory=list)


def _target_text(h: Headline) -> str:
    if h.target is None:
        return ""
    return f"{h.op} {h.target:g}"


def table_rows(
    samples: Sequence[Sample], headlines: Sequence[Headline] = HEADLINES
) -> list[Row]:
    """The rows of the printed table: ours, baseline, ratio, target for each headline."""
    meds = medians(samples)
    values = headline_values(samples, headlines)
    rows = []
    for h in headlines:
        value = values[h.key]
        if h.kind == "min_ratio":
            rows.append(Row(h.label, None, "", None, value, "ratio", _target_text(h),
                            h.met(value), h.key))  # fmt: skip
            for ours, base in h.variants:
                config = ours.split("-", 2)[2]
                rows.append(
                    Row(
                        f"  {config}",
                        meds.get((h.bench, ours, h.metric)),
                        "TLS 1.3",
                        meds.get((h.bench, base, h.metric)),
                        paired_ratio(samples, h.bench, ours, base, h.metric),
                        "hs/s",
                    )
                )
            continue
        if h.kind == "ratio":
            assert h.baseline is not None
            rows.append(
                Row(
                    h.label,
                    meds.get((h.bench, h.variant, h.metric)),
                    h.baseline,
                    meds.get((h.bench, h.baseline, h.metric)),
                    value,
                    h.unit,
                    _target_text(h),
                    h.met(value),
                    h.key,
                )
            )
            continue
        if h.kind == "ratio_row":
            continue  # shown under the min_ratio rows
        rows.append(Row(h.label, value, "", None, None, h.unit, _target_text(h), h.met(value),
                        h.key))  # fmt: skip
    return rows


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_table(rows: Sequence[Row]) -> str:
    """A plain-text table (fixed-width columns) of L{table_rows}."""
    header = ("measure", "ours", "baseline", "base value", "ratio", "unit", "target", "met")
    lines = []
    body = []
    for r in rows:
        met = "" if r.met is None else ("yes" if r.met else "NO")
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}x"
        body.append(
            (r.label, _fmt(r.ours) if r.ours is not None or not r.ratio else "",
             r.baseline_name, _fmt(r.baseline) if r.baseline_name else "", ratio, r.unit,
             r.target, met)
        )  # fmt: skip
    widths = [max(len(str(x[i])) for x in [header, *body]) for i in range(len(header))]
    aligns = ["<", ">", "<", ">", ">", "<", "<", "<"]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, aligns, widths, strict=True))

    lines.append(line(header))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(line(b) for b in body)
    return "\n".join(line_.rstrip() for line_ in lines)


def format_markdown(rows: Sequence[Row]) -> str:
    """The same table as L{format_table}, as Markdown (for docs/benchmarks.md)."""
    out = [
        "| measure | ours | baseline | baseline value | ratio | unit | target | met |",
        "|---|--:|---|--:|--:|---|---|---|",
    ]
    for r in rows:
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}×"
        ours = _fmt(r.ours) if r.ours is not None or not r.ratio else ""
        base = _fmt(r.baseline) if r.baseline_name else ""
        label = r.label.replace("  ", "&nbsp;&nbsp;", 1) if r.label.startswith("  ") else r.label
        target = r.target.replace(">=", "≥").replace("<=", "≤")
        out.append(f"| {label} | {ours} | {r.baseline_name} | {base} | {ratio} | {r.unit} "
                   f"| {target} | {met} |")  # fmt: skip
    return "\n".join(out)


def summarize(samples: Sequence[Sample], meta: Mapping[str, Any]) -> dict[str, Any]:
    """The whole JSON report: the headline keys at top level, then every figure."""
    values = headline_values(samples)
    meds = medians(samples)
    figures: dict[str, dict[str, Any]] = {}
    for (bench, variant, metric), value in sorted(meds.items()):
        per_round = sorted(
            (s.round, s.metrics[metric])
            for s in samples
            if s.bench == bench and s.variant == variant and metric in s.metrics
        )
        figures[f"{bench}.{variant}.{metric}"] = {
            "median": value,
            "rounds": [v for _, v in per_round],
        }
    ratios = {}
    for h in HEADLINES:
        if h.kind == "min_ratio":
            for ours, base in h.variants:
                ratios[f"{h.bench}.{ours}/{base}.{h.metric}"] = paired_ratio(
                    samples, h.bench, ours, base, h.metric
                )
        elif h.kind == "ratio":
            assert h.baseline is not None
            ratios[f"{h.bench}.{h.variant}/{h.baseline}.{h.metric}"] = values[h.key]
    targets = {
        h.key: {"target": h.target, "op": h.op, "value": values[h.key], "met": h.met(values[h.key])}
        for h in HEADLINES
        if h.target is not None
    }
    report: dict[str, Any] = dict(values)
    report["targets"] = targets
    report["ratios"] = ratios
    report["figures"] = figures
    report["samples"] = [s.to_json() for s in samples]
    report["meta"] = dict(meta)
    return report
