"""
C{python -m sixchat.bench}: run the benchmarks side by side with their baselines and report.

The parent process only orchestrates: it writes the certificates, starts worker processes
(each side of each benchmark in its own process, loopback only), collects their samples and
prints the table of medians and same-run ratios. See C{benchmarks/README.md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sixchat.bench import results
from sixchat.bench.proc import Worker, WorkerError
from sixchat.bench.results import Sample

#: Every benchmark family of the default run, in the order they run.
BENCHES = (
    "handshake", "bulk", "stanza", "receipted", "latency", "registry", "idle", "agent_idle",
    "file",
)  # fmt: skip
#: Also available with --only (not part of the default run).
EXTRA_BENCHES = ("scaling",)

HS_CONFIGS = ("ed25519-x25519mlkem768", "ed25519-x25519", "p256-x25519mlkem768", "p256-x25519")


@dataclass
class Profile:
    """How much each benchmark does; C{full} and C{quick} are the two shipped ones."""

    name: str
    rounds: int
    hs_count: dict[str, int]
    hs_concurrency: int
    hs_configs: tuple[str, ...]
    bulk_total: int
    bulk_write: int
    stanza_count: int
    stanza_bytes: int
    receipted_count: int
    registry_clients: int
    registry_lookup_rate: int
    registry_seconds: float
    registry_rounds: int
    registry_postgres: bool
    idle_count: int
    idle_rounds: int
    agent_sessions: int
    extra: dict[str, Any] = field(default_factory=dict)
    #: The C{file} benchmark's file (1 GiB in the full run).
    file_size: int = 2**30
    #: Latency: warm messages (one at a time), cold first contacts (one receiving agent
    #: each), registrations timed across two PostgreSQL registry instances.
    latency_warm: int = 1_000
    latency_cold: int = 50
    visibility_samples: int = 300
    #: The registry-visibility latency needs PostgreSQL (off with --no-postgres).
    latency_postgres: bool = True
    #: Offered loads (messages/s) for the latency-under-load curve (C{--latency-loads});
    #: none by default. Each load runs for C{latency_load_seconds}.
    latency_loads: tuple[int, ...] = ()
    latency_load_seconds: float = 3.0


PROFILES = {
    "full": Profile(
        name="full",
        rounds=3,
        hs_count={"seq": 150, "conc": 400},
        hs_concurrency=50,
        hs_configs=HS_CONFIGS,
        bulk_total=256 * 2**20,
        bulk_write=16 * 2**10,
        stanza_count=60_000,
        stanza_bytes=200,
        receipted_count=1_000,
        registry_clients=1_000,
        registry_lookup_rate=5_000,
        registry_seconds=4.0,
        registry_rounds=3,
        registry_postgres=True,
        idle_count=1_000,
        idle_rounds=2,
        agent_sessions=10_000,
    ),
    "quick": Profile(
        name="quick",
        rounds=1,
        hs_count={"seq": 40, "conc": 100},
        hs_concurrency=50,
        hs_configs=("ed25519-x25519mlkem768", "p256-x25519"),
        bulk_total=32 * 2**20,
        bulk_write=16 * 2**10,
        stanza_count=10_000,
        stanza_bytes=200,
        receipted_count=200,
        registry_clients=100,
        registry_lookup_rate=1_000,
        registry_seconds=2.0,
        registry_rounds=1,
        registry_postgres=False,
        idle_count=200,
        idle_rounds=1,
        agent_sessions=1_000,
        file_size=256 * 2**20,
        latency_warm=300,
        latency_cold=20,
        visibility_samples=100,
        latency_load_seconds=1.0,
    ),
    # Not for measuring: the smallest run that exercises every piece of plumbing (the unit
    # tests run it; numbers from it mean nothing).
    "smoke": Profile(
        name="smoke",
        rounds=1,
        hs_count={"seq": 2, "conc": 4},
        hs_concurrency=2,
        hs_configs=("ed25519-x25519",),
        bulk_total=64 * 2**10,
        bulk_write=16 * 2**10,
        stanza_count=40,
        stanza_bytes=200,
        receipted_count=5,
        registry_clients=3,
        registry_lookup_rate=30,
        registry_seconds=0.3,
        registry_rounds=1,
        registry_postgres=False,
        idle_count=5,
        idle_rounds=1,
        agent_sessions=5,
        file_size=2**20,
        latency_warm=5,
        latency_cold=2,
        visibility_samples=5,
        latency_load_seconds=0.2,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sixchat.bench",
        description="Benchmark sixchat against Twisted TLS 1.3, XMPP-style stanzas over TLS and "
        "plain TCP, side by side in one run, on loopback. Prints medians and same-run ratios.",
    )
    p.add_argument("--quick", action="store_true", help="a reduced set, under a minute")
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tests only
    p.add_argument("--json", metavar="FILE", help="write every figure to FILE (JSON)")
    p.add_argument("--plot", metavar="FILE.png", help="draw the ratios (needs matplotlib)")
    p.add_argument(
        "--only",
        metavar="BENCH",
        action="append",
        choices=BENCHES + EXTRA_BENCHES,
        help=f"run only this benchmark (repeatable): {', '.join(BENCHES + EXTRA_BENCHES)}",
    )
    p.add_argument("--skip", metavar="BENCH", action="append", choices=BENCHES, default=[],
                   help="skip this benchmark (repeatable)")  # fmt: skip
    p.add_argument("--rounds", type=_positive_int, help="interleaved rounds (default 3; quick 1)")
    p.add_argument("--no-postgres", action="store_true",
                   help="skip the PostgreSQL registry and registry-visibility latency")  # fmt: skip
    p.add_argument("--latency-loads", metavar="RATES", type=_rates,
                   help="with the latency benchmark, also measure p50/p99 at each offered "
                   "load (messages/s, comma-separated, e.g. "
                   f"{','.join(map(str, DEFAULT_LOADS))}; 'default' for that list)")  # fmt: skip
    p.add_argument("--workdir", help="keep certificates, databases and worker logs here")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


#: The offered loads of the latency curve in docs/benchmarks.md.
DEFAULT_LOADS = (10, 50, 100, 200, 400, 800, 1600)


def _rates(text: str) -> tuple[int, ...]:
    if text == "default":
        return DEFAULT_LOADS
    try:
        rates = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            "a comma-separated list of messages per second, e.g. 10,100,1000"
        ) from None
    if not rates or min(rates) < 1:
        raise argparse.ArgumentTypeError("every load must be at least 1 message/s")
    return rates


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


@dataclass
class Options:
    profile: Profile
    benches: tuple[str, ...]
    json_path: str | None
    plot_path: str | None
    workdir: str | None
    quiet: bool


def parse_args(argv: Sequence[str] | None = None) -> Options:
    args = build_parser().parse_args(argv)
    base = PROFILES["smoke" if args.smoke else "quick" if args.quick else "full"]
    profile = Profile(**{**base.__dict__})
    if args.rounds:
        profile.rounds = args.rounds
        profile.registry_rounds = min(args.rounds, profile.registry_rounds) or 1
        profile.idle_rounds = min(args.rounds, profile.idle_rounds) or 1
    if args.no_postgres:
        profile.registry_postgres = False
        profile.latency_postgres = False
    if args.latency_loads:
        profile.latency_loads = args.latency_loads
    benches = tuple(b for b in (args.only or BENCHES) if b not in args.skip)
    if args.plot:
        _check_matplotlib()
    return Options(profile, benches, args.json, args.plot, args.workdir, args.quiet)


def _check_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        sys.exit("--plot needs matplotlib: pip install 'sixchat[bench]'")


# -- running ------------------------------------------------------------------------------------


class Run:
    """One invocation: the work directory, the samples so far, progress output."""

    def __init__(self, options: Options, workdir: str) -> None:
        self.options = options
        self.profile = options.profile
        self.workdir = workdir
        self.samples: list[Sample] = []
        self.notes: list[str] = []
        self.cleanups: list[Callable[[], Any]] = []
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        if not self.options.quiet:
            elapsed = time.monotonic() - self.started
            print(f"[{elapsed:6.1f}s] {text}", file=sys.stderr, flush=True)

    def worker(self, name: str, spec: dict[str, Any]) -> Worker:
        spec = {"workdir": self.workdir, **spec}
        return Worker(name, spec, self.workdir)

    def record(self, event: dict[str, Any]) -> Sample:
        sample = Sample.from_json(event)
        self.samples.append(sample)
        self.say(f"  {sample.bench} {sample.variant} round {sample.round}: "
                 + ", ".join(f"{k} {v:.4g}" for k, v in sample.metrics.items()))  # fmt: skip
        return sample

    def collect(self, worker: Worker, timeout: float) -> list[Sample]:
        return [
            self.record(event)
            for event in worker.events_until_exit(timeout)
            if event.get("event") == "sample"
        ]


def _peer_server(run: Run, listeners: list[dict[str, str]]) -> tuple[Worker, dict[str, Any]]:
    server = run.worker("peer-server", {"role": "peer_server", "listeners": listeners})
    try:
        ready = server.expect("ready", 60)
    except BaseException:
        server.stop()
        raise
    return server, ready


def bench_handshake(run: Run) -> None:
    p = run.profile
    run.say("handshakes: ours vs Twisted TLS 1.3, mutual auth")
    listeners: list[dict[str, Any]] = [
        {"name": f"ours-{k}", "kind": "ours", "key": k} for k in ("ed25519", "p256")
    ]
    # The same responders with the trust store's cache of validated chains off (and the
    # initiators' too): every handshake validates the peer's chain in full, as TLS does.
    listeners += [
        {"name": f"ourscold-{k}", "kind": "ours", "key": k, "chain_cache": 0}
        for k in ("ed25519", "p256")
    ]
    listeners += [
        {"name": f"tls-{k}", "kind": "tls", "key": k, "app": "echo"} for k in ("ed25519", "p256")
    ]
    server, ready = _peer_server(run, listeners)
    with server:
        variants = [
            f"{impl}-{mode}-{config}"
            for mode in ("seq", "conc")
            for config in p.hs_configs
            for impl in ("ours", "ourscold", "tls")
        ]
        client = run.worker(
            "handshake-client",
            {
                "role": "handshake_client",
                "ports": ready["ports"],
                "server_pid": ready["pid"],
                "variants": variants,
                "rounds": p.rounds,
                "count": p.hs_count,
                "concurrency": p.hs_concurrency,
                "deadline": 900,
            },
        )
        with client:
            run.collect(client, 900)


def _stream(run: Run, bench: str, variants: list[str], spec: dict[str, Any]) -> None:
    apps = {"bulk": "sink", "stanza": "xmpp"}[bench]
    listeners = [
        {"name": "ours-ed25519", "kind": "ours", "key": "ed25519"},
        {"name": f"tls-{apps}", "kind": "tls", "key": "ed25519", "app": apps},
        {"name": f"tcp-{apps}", "kind": "tcp", "app": apps},
    ]
    if bench == "stanza":
        listeners.append(
            {"name": "tls-xmpp_receipts", "kind": "tls", "key": "ed25519", "app": "xmpp_receipts"}
        )
    server, ready = _peer_server(run, listeners)
    with server:
        client = run.worker(
            f"{bench}-client",
            {
                "role": "stream_client",
                "bench": bench,
                "ports": ready["ports"],
                "server_pid": ready["pid"],
                "variants": variants,
                "rounds": run.profile.rounds,
                "deadline": 900,
                **spec,
            },
        )
        with client:
            run.collect(client, 900)


def bench_bulk(run: Run) -> None:
    p = run.profile
    run.say(f"bulk: {p.bulk_total // 2**20} MiB in {p.bulk_write // 1024} KiB writes")
    _stream(run, "bulk", ["ours", "tls", "tcp"], {"total": p.bulk_total, "write": p.bulk_write})


def bench_stanza(run: Run) -> None:
    p = run.profile
    run.say(f"stanzas: {p.stanza_count} x {p.stanza_bytes}-byte messages, one way")
    _stream(
        run,
        "stanza",
        ["ours", "xmpp_tls", "xmpp_tcp", "xmpp_tls_receipts"],
        {"count": p.stanza_count, "stanza_bytes": p.stanza_bytes},
    )


def bench_idle(run: Run) -> None:
    p = run.profile
    run.say(f"idle memory: {p.idle_count} sessions, ours vs TLS 1.3")
    for rnd in range(p.idle_rounds):
        for impl in ("ours", "tls") if rnd % 2 == 0 else ("tls", "ours"):
            listener = (
                {"name": "s", "kind": "ours", "key": "ed25519"}
                if impl == "ours"
                else {"name": "s", "kind": "tls", "key": "ed25519", "app": "echo"}
            )
            server, ready = _peer_server(run, [listener])
            with server:
                client = run.worker(
                    f"idle-client-{impl}",
                    {
                        "role": "idle_client",
                        "impl": impl,
                        "port": ready["ports"]["s"],
                        "warm": 20,
                        "count": p.idle_count,
                        "concurrency": 32,
                        "deadline": 600,
                    },
                )
                with client:
                    warm = client.expect("warm", 120)
                    server.send("measure")
                    base = server.expect("measured", 60)
                    client.send("go")
                    done = client.expect("established", 600)
                    server.send("measure")
                    after = server.expect("measured", 60)
                    client.send("done")
            n = p.idle_count
            responder = (after["rss_kib"] - base["rss_kib"]) / n
            initiator = (done["rss_kib"] - warm["rss_kib"]) / n
            metrics = {
                "kib": max(responder, initiator),
                "responder_kib": responder,
                "initiator_kib": initiator,
                "held": float(done["held"]),
            }
            run.record({"bench": "idle", "variant": impl, "round": rnd, "metrics": metrics})


BENCH_FUNCTIONS: dict[str, Callable[[Run], None]] = {
    "handshake": bench_handshake,
    "bulk": bench_bulk,
    "stanza": bench_stanza,
    "idle": bench_idle,
}


def _register_optional() -> None:
    from sixchat.bench import agents, files, latency, registry, scaling

    BENCH_FUNCTIONS["scaling"] = scaling.bench_scaling
    BENCH_FUNCTIONS["receipted"] = agents.bench_receipted
    BENCH_FUNCTIONS["agent_idle"] = agents.bench_agent_idle
    BENCH_FUNCTIONS["latency"] = latency.bench_latency
    BENCH_FUNCTIONS["registry"] = registry.bench_registry
    BENCH_FUNCTIONS["file"] = files.bench_file


def machine() -> dict[str, Any]:
    import cryptography
    import OpenSSL
    from OpenSSL import SSL

    import twisted

    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "twisted": twisted.__version__,
        "cryptography": cryptography.__version__,
        "pyopenssl": OpenSSL.__version__,
        "openssl": SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load_average_at_start": list(os.getloadavg()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    _register_optional()
    from sixchat.bench import fixtures

    workdir = options.workdir or tempfile.mkdtemp(prefix="sixchat-bench-")
    os.makedirs(workdir, exist_ok=True)
    run = Run(options, workdir)
    failures: dict[str, str] = {}
    try:
        run.say(f"profile {options.profile.name}; work directory {workdir}")
        users = options.profile.registry_clients if "registry" in options.benches else 0
        if "latency" in options.benches:  # alice and one user per cold contact
            users = max(users, options.profile.latency_cold + 1, 2)
        fixtures.make_all(workdir, users)
        for bench in options.benches:
            try:
                BENCH_FUNCTIONS[bench](run)
            except WorkerError as e:
                failures[bench] = str(e)
                run.say(f"{bench} FAILED: {e}")
        meta = {
            "profile": options.profile.name,
            "rounds": options.profile.rounds,
            "benches": list(options.benches),
            "seconds": round(time.monotonic() - run.started, 1),
            "failures": failures,
            "notes": run.notes,
            "machine": machine(),
            "parameters": {k: v for k, v in options.profile.__dict__.items() if k != "extra"},
        }
        report = results.summarize(run.samples, meta)
        print(results.format_table(results.table_rows(run.samples)))
        print(f"\n{len(run.samples)} samples in {meta['seconds']} s; ratios are ours / baseline, "
              "median of per-round ratios (same processes, back to back)")  # fmt: skip
        for bench, why in failures.items():
            print(f"{bench}: FAILED: {why.splitlines()[0] if why else ''}")
        if options.json_path:
            with open(options.json_path, "w") as f:
                json.dump(report, f, indent=1, sort_keys=False)
                f.write("\n")
        if options.plot_path:
            from sixchat.bench.plot import plot

            plot(report, options.plot_path)
    finally:
        for cleanup in run.cleanups:
            try:
                cleanup()
            except Exception as e:  # noqa: BLE001 - best effort, reported
                print(f"cleanup failed: {e}", file=sys.stderr)
        if options.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0
