"""
Tests for the benchmark harness (L{sixchat.bench}): argument parsing, aggregation, ratio
arithmetic, the report's keys, the certificates it makes. No timing is asserted anywhere;
one smoke run of the plumbing (a few handshakes and messages, in worker processes) checks
that a run produces a complete report.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from datetime import UTC, datetime

from twisted.trial.unittest import SynchronousTestCase

from sixchat.bench import cli, fixtures, results
from sixchat.bench.results import HEADLINES, Sample

#: The keys the issue (item 3) names; the JSON report must carry every one.
ISSUE_KEYS = (
    "handshake_seq_ratio",
    "handshake_conc_ratio",
    "bulk_ratio_tls",
    "bulk_ratio_tcp",
    "stanza_ratio_xmpp_tls",
    "receipted_rate",
    "registry_lookups_per_s",
    "registry_lookup_p99_ms",
    "registry_register_per_s",
    "registry_lookups_per_s_postgres",
    "registry_lookup_p99_ms_postgres",
    "registry_server_cpu_us",
    "registry_server_cpu_us_postgres",
    "registry_gc_pause_max_ms",
    "idle_session_kib",
    "idle_memory_ratio_tls",
)


class ArgumentTests(SynchronousTestCase):
    def test_defaults_are_the_full_run(self) -> None:
        options = cli.parse_args([])
        self.assertEqual(options.profile.name, "full")
        self.assertEqual(options.benches, cli.BENCHES)
        self.assertEqual(options.profile.rounds, 3)
        self.assertEqual(options.profile.bulk_total, 256 * 2**20)
        self.assertEqual(options.profile.bulk_write, 16 * 2**10)
        self.assertEqual(options.profile.hs_concurrency, 50)
        self.assertEqual(options.profile.registry_clients, 1000)
        self.assertEqual(options.profile.agent_sessions, 10_000)
        self.assertEqual(options.profile.stanza_bytes, 200)
        self.assertIsNone(options.json_path)
        self.assertIsNone(options.plot_path)

    def test_quick(self) -> None:
        options = cli.parse_args(["--quick"])
        self.assertEqual(options.profile.name, "quick")
        self.assertEqual(options.profile.rounds, 1)
        self.assertFalse(options.profile.registry_postgres)
        full = cli.PROFILES["full"]
        self.assertLess(options.profile.bulk_total, full.bulk_total)
        self.assertLess(options.profile.stanza_count, full.stanza_count)

    def test_profiles_are_not_shared(self) -> None:
        options = cli.parse_args(["--rounds", "7"])
        self.assertEqual(options.profile.rounds, 7)
        self.assertEqual(cli.PROFILES["full"].rounds, 3)

    def test_rounds_bound_the_slow_benchmarks(self) -> None:
        options = cli.parse_args(["--rounds", "5"])
        self.assertEqual(options.profile.registry_rounds, 3)
        self.assertEqual(options.profile.idle_rounds, 2)
        options = cli.parse_args(["--rounds", "1"])
        self.assertEqual((options.profile.registry_rounds, options.profile.idle_rounds), (1, 1))

    def test_only_and_skip(self) -> None:
        self.assertEqual(cli.parse_args(["--only", "bulk", "--only", "idle"]).benches,
                         ("bulk", "idle"))  # fmt: skip
        self.assertNotIn("registry", cli.parse_args(["--skip", "registry"]).benches)

    def test_no_postgres(self) -> None:
        self.assertFalse(cli.parse_args(["--no-postgres"]).profile.registry_postgres)
        self.assertTrue(cli.parse_args([]).profile.registry_postgres)

    def test_latency_is_in_the_full_run_and_selectable(self) -> None:
        self.assertIn("latency", cli.parse_args([]).benches)
        self.assertEqual(cli.parse_args(["--only", "latency"]).benches, ("latency",))
        self.assertNotIn("latency", cli.parse_args(["--skip", "latency"]).benches)
        self.assertTrue(cli.parse_args(["--quick"]).profile.latency_postgres)
        self.assertFalse(cli.parse_args(["--no-postgres"]).profile.latency_postgres)
        full, quick = cli.PROFILES["full"], cli.PROFILES["quick"]
        self.assertLess(quick.latency_warm, full.latency_warm)
        self.assertLess(quick.latency_cold, full.latency_cold)

    def test_latency_loads(self) -> None:
        self.assertEqual(cli.parse_args([]).profile.latency_loads, ())  # not in a plain run
        options = cli.parse_args(["--only", "latency", "--latency-loads", "10,200,1000"])
        self.assertEqual(options.profile.latency_loads, (10, 200, 1000))
        self.assertEqual(cli.parse_args(["--latency-loads", "default"]).profile.latency_loads,
                         cli.DEFAULT_LOADS)  # fmt: skip
        self.assertEqual(cli.PROFILES["full"].latency_loads, ())  # profiles stay untouched
        for bad in ("", "10,,20", "0", "-5", "fast", "10;20"):
            with self.assertRaises(SystemExit, msg=bad):
                cli.parse_args(["--latency-loads", bad])

    def test_json_and_workdir(self) -> None:
        options = cli.parse_args(["--json", "out.json", "--workdir", "w", "--quiet"])
        self.assertEqual((options.json_path, options.workdir, options.quiet),
                         ("out.json", "w", True))  # fmt: skip

    def test_refused(self) -> None:
        for argv in (["--only", "nothing"], ["--rounds", "0"], ["--rounds", "x"], ["--bogus"]):
            self.assertRaises(SystemExit, cli.parse_args, argv)


def _samples(pairs: dict[str, list[tuple[float, float]]], bench: str = "bulk",
             metric: str = "mib_per_s") -> list[Sample]:  # fmt: skip
    """Samples of 'ours' and the named baselines, one pair per round."""
    out = []
    for baseline, rounds in pairs.items():
        for r, (mine, theirs) in enumerate(rounds):
            if not any(s.variant == "ours" and s.round == r and s.bench == bench for s in out):
                out.append(Sample(bench, "ours", r, {metric: mine}))
            out.append(Sample(bench, baseline, r, {metric: theirs}))
    return out


class ArithmeticTests(SynchronousTestCase):
    def test_median(self) -> None:
        self.assertIsNone(results.median([]))
        self.assertEqual(results.median([3.0]), 3.0)
        self.assertEqual(results.median([3.0, 1.0, 2.0]), 2.0)
        self.assertEqual(results.median([4.0, 1.0, 3.0, 2.0]), 2.5)

    def test_percentile(self) -> None:
        values = [float(v) for v in range(1, 101)]
        self.assertEqual(results.percentile(values, 99), 99.0)
        self.assertEqual(results.percentile(values, 50), 50.0)
        self.assertEqual(results.percentile(values, 100), 100.0)
        self.assertEqual(results.percentile(values, 0), 1.0)
        self.assertEqual(results.percentile([5.0], 99), 5.0)
        self.assertIsNone(results.percentile([], 99))
        self.assertRaises(ValueError, results.percentile, values, 101)

    def test_medians_per_bench_variant_metric(self) -> None:
        samples = [
            Sample("bulk", "ours", 0, {"mib_per_s": 10.0, "seconds": 1.0}),
            Sample("bulk", "ours", 1, {"mib_per_s": 30.0, "seconds": 3.0}),
            Sample("bulk", "ours", 2, {"mib_per_s": 20.0, "seconds": 2.0}),
            Sample("bulk", "tls", 0, {"mib_per_s": 5.0}),
        ]
        meds = results.medians(samples)
        self.assertEqual(meds[("bulk", "ours", "mib_per_s")], 20.0)
        self.assertEqual(meds[("bulk", "ours", "seconds")], 2.0)
        self.assertEqual(meds[("bulk", "tls", "mib_per_s")], 5.0)

    def test_ratio_pairs_rounds(self) -> None:
        """Each round's ratio comes from that round's two samples; the median is reported."""
        samples = _samples({"tls": [(30.0, 10.0), (20.0, 20.0), (100.0, 25.0)]})
        # per-round ratios 3.0, 1.0, 4.0 -> median 3.0 (the ratio of medians would be 1.5)
        self.assertEqual(results.paired_ratio(samples, "bulk", "ours", "tls", "mib_per_s"), 3.0)

    def test_ratio_is_ours_over_baseline(self) -> None:
        samples = _samples({"tls": [(2.0, 8.0)]}, "idle", "kib")
        self.assertEqual(results.paired_ratio(samples, "idle", "ours", "tls", "kib"), 0.25)

    def test_ratio_skips_unpaired_rounds_and_zero_baselines(self) -> None:
        samples = _samples({"tls": [(30.0, 10.0), (20.0, 0.0)]})
        samples.append(Sample("bulk", "ours", 5, {"mib_per_s": 1.0}))
        self.assertEqual(results.paired_ratio(samples, "bulk", "ours", "tls", "mib_per_s"), 3.0)
        self.assertIsNone(results.paired_ratio(samples, "bulk", "ours", "tcp", "mib_per_s"))

    def test_min_ratio_is_the_worst_configuration(self) -> None:
        samples = []
        for i, config in enumerate(("ed25519-x25519mlkem768", "ed25519-x25519",
                                    "p256-x25519mlkem768", "p256-x25519")):  # fmt: skip
            samples.append(Sample("handshake", f"ours-seq-{config}", 0, {"hs_per_s": 100.0 + i}))
            samples.append(Sample("handshake", f"tls-seq-{config}", 0, {"hs_per_s": 100.0}))
        values = results.headline_values(samples)
        self.assertEqual(values["handshake_seq_ratio"], 1.0)
        self.assertIsNone(values["handshake_conc_ratio"])
        self.assertEqual(values["handshake_seq_hs_per_s"], 100.0)

    def test_worst_collector_pause_of_every_backend(self) -> None:
        samples = [
            Sample("registry_sqlite", "server", 0, {"gc_pause_max_ms": 12.0}),
            Sample("registry_postgres", "server", 0, {"gc_pause_max_ms": 30.0}),
            Sample("registry_postgres_x2", "server2", 0, {"gc_pause_max_ms": 61.0}),
            Sample("registry_postgres_x2", "lookup", 0, {"gc_pause_max_ms": 99.0}),
        ]
        values = results.headline_values(samples)
        self.assertEqual(values["registry_gc_pause_max_ms"], 61.0)
        by_key = {h.key: h for h in HEADLINES}
        self.assertFalse(by_key["registry_gc_pause_max_ms"].met(61.0))
        self.assertTrue(by_key["registry_lookups_per_s_postgres"].met(5_000))
        self.assertFalse(by_key["registry_lookup_p99_ms_postgres"].met(50.1))
        self.assertIsNone(results.headline_values([])["registry_gc_pause_max_ms"])

    def test_targets(self) -> None:
        by_key = {h.key: h for h in HEADLINES}
        # issue 15: bulk 0.8x TLS (the old 1.5x lay above plain TCP), first contact 1.0x,
        # 1.5x XMPP over TLS doing the same receipts
        self.assertTrue(by_key["bulk_ratio_tls"].met(0.8))
        self.assertFalse(by_key["bulk_ratio_tls"].met(0.79))
        self.assertTrue(by_key["handshake_seq_ratio_cold"].met(1.0))
        self.assertFalse(by_key["handshake_conc_ratio_cold"].met(0.99))
        self.assertTrue(by_key["stanza_ratio_xmpp_tls_receipts"].met(1.5))
        self.assertFalse(by_key["stanza_ratio_xmpp_tls_receipts"].met(1.49))
        self.assertTrue(by_key["idle_memory_ratio_tls"].met(0.25))
        self.assertFalse(by_key["idle_memory_ratio_tls"].met(0.26))
        self.assertTrue(by_key["registry_lookup_p99_ms"].met(49.9))
        self.assertIsNone(by_key["receipted_rate"].met(12.0))
        self.assertIsNone(by_key["bulk_ratio_tls"].met(None))

    def test_sample_json_round_trip(self) -> None:
        sample = Sample("stanza", "ours", 2, {"msgs_per_s": 5.0})
        self.assertEqual(Sample.from_json(json.loads(json.dumps(sample.to_json()))), sample)

    def test_sample_from_json_drops_non_numbers(self) -> None:
        event = {"bench": "b", "variant": "v", "round": 0,
                 "metrics": {"a": 1, "b": float("nan"), "c": "x", "d": True}}  # fmt: skip
        self.assertEqual(dict(Sample.from_json(event).metrics), {"a": 1.0})


def _full_samples() -> list[Sample]:
    """One round of every figure the headlines read."""
    samples = []
    for h in HEADLINES:
        if h.kind == "min_ratio":
            for ours, base in h.variants:
                samples.append(Sample(h.bench, ours, 0, {h.metric: 2.0}))
                samples.append(Sample(h.bench, base, 0, {h.metric: 1.0}))
        elif h.kind == "ratio_row":
            continue  # the same samples as the min_ratio rows above
        elif h.kind == "max_value":
            for bench, variant in h.variants:
                samples.append(Sample(bench, variant, 0, {h.metric: 3.0}))
        else:
            samples.append(Sample(h.bench, h.variant, 0, {h.metric: 3.0}))
            if h.baseline:
                samples.append(Sample(h.bench, h.baseline, 0, {h.metric: 6.0}))
    return samples


class ReportTests(SynchronousTestCase):
    def test_every_issue_key_in_the_report(self) -> None:
        report = results.summarize(_full_samples(), {"profile": "test"})
        for key in ISSUE_KEYS:
            self.assertIn(key, report)
            self.assertIsNotNone(report[key], key)
        self.assertEqual(report["handshake_seq_ratio"], 2.0)
        self.assertEqual(report["bulk_ratio_tls"], 0.5)
        self.assertEqual(report["idle_memory_ratio_tls"], 0.5)
        json.dumps(report)  # serialisable as is

    def test_missing_benchmarks_are_null(self) -> None:
        report = results.summarize([], {})
        for key in ISSUE_KEYS:
            self.assertIsNone(report[key])
        self.assertEqual(report["samples"], [])

    def test_figures_and_targets(self) -> None:
        samples = [Sample("bulk", "ours", r, {"mib_per_s": v}) for r, v in enumerate((1.0, 3.0))]
        samples += [Sample("bulk", "tls", r, {"mib_per_s": 1.0}) for r in range(2)]
        report = results.summarize(samples, {"profile": "x"})
        figure = report["figures"]["bulk.ours.mib_per_s"]
        self.assertEqual(figure, {"median": 2.0, "rounds": [1.0, 3.0]})
        self.assertEqual(report["targets"]["bulk_ratio_tls"]["value"], 2.0)
        self.assertTrue(report["targets"]["bulk_ratio_tls"]["met"])
        self.assertEqual(report["ratios"]["bulk.ours/tls.mib_per_s"], 2.0)
        self.assertEqual(report["meta"], {"profile": "x"})

    def test_table(self) -> None:
        text = results.format_table(results.table_rows(_full_samples()))
        lines = text.splitlines()
        self.assertTrue(lines[0].startswith("measure"))
        for h in HEADLINES:
            if h.kind != "ratio_row":
                self.assertIn(h.label, text)
        self.assertIn("2.00x", text)
        widths = {len(line) for line in lines[:2]}
        self.assertEqual(len(widths), 1)  # header and rule line up

    def test_markdown(self) -> None:
        text = results.format_markdown(results.table_rows(_full_samples()))
        lines = text.splitlines()
        self.assertTrue(all(line.startswith("|") and line.endswith("|") for line in lines))
        self.assertEqual(len({line.count("|") for line in lines}), 1)
        self.assertIn("2.00×", text)

    def test_table_marks_missed_targets(self) -> None:
        samples = [Sample("bulk", "ours", 0, {"mib_per_s": 1.0}),
                   Sample("bulk", "tls", 0, {"mib_per_s": 2.0})]  # fmt: skip
        row = next(r for r in results.table_rows(samples) if r.key == "bulk_ratio_tls")
        self.assertFalse(row.met)
        self.assertIn("NO", results.format_table([row]))

    def test_plot_bars(self) -> None:
        from sixchat.bench.plot import ratio_bars

        bars = ratio_bars(results.summarize(_full_samples(), {}))
        labels = [b[0] for b in bars]
        self.assertIn("bulk_ratio_tls", labels)
        self.assertIn("handshake seq ed25519-x25519mlkem768", labels)
        self.assertTrue(all(math.isfinite(b[1]) for b in bars))


class FixtureTests(SynchronousTestCase):
    def test_certificates_serve_both_protocols(self) -> None:
        from sixchat.bench import baselines

        workdir = self.mktemp()
        os.makedirs(workdir)
        fixtures.make_all(workdir, registry_users=2)
        trust = fixtures.load_trust(workdir)
        for who in fixtures.PEERS:
            for key in fixtures.KEY_TYPES:
                identity = fixtures.load_identity(workdir, who, key)
                peer = trust.validate(identity.chain_der, datetime.now(UTC))
                self.assertEqual(peer.names, (fixtures.peer_name(who),))
                ca = fixtures.load_cert(os.path.join(workdir, "peer-ca.pem"))
                baselines.tls_options(identity, ca, b"X25519MLKEM768")  # OpenSSL takes them
        users = fixtures.load_registry_users(workdir, 5)
        self.assertEqual([u.names[0] for u in users], ["user0@bench.example",
                                                       "user1@bench.example"])  # fmt: skip

    def test_xmpp_message_size(self) -> None:
        from sixchat.bench.baselines import xmpp_message

        data = xmpp_message("x" * 10, "id1")
        self.assertTrue(data.startswith(b"<message "))
        self.assertIn(b"<body>xxxxxxxxxx</body>", data)


class SmokeTests(SynchronousTestCase):
    """The plumbing of a run, end to end, with a few operations per benchmark."""

    def test_smoke_run(self) -> None:
        out = os.path.abspath(self.mktemp())
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=root)
        proc = subprocess.run(
            [sys.executable, "-m", "sixchat.bench", "--smoke", "--quiet", "--json", out,
             "--only", "handshake", "--only", "bulk", "--only", "stanza"],
            capture_output=True, text=True, timeout=120, env=env, check=False,
        )  # fmt: skip
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertIn("measure", proc.stdout)
        with open(out) as f:
            report = json.load(f)
        self.assertEqual(report["meta"]["failures"], {})
        for key in ("handshake_seq_ratio", "handshake_conc_ratio", "handshake_seq_ratio_cold",
                    "handshake_conc_ratio_cold", "bulk_ratio_tls", "bulk_ratio_tcp",
                    "stanza_ratio_xmpp_tls"):  # fmt: skip
            self.assertIsInstance(report[key], float, key)
        self.assertIsNone(report["receipted_rate"])  # not run
        variants = {(s["bench"], s["variant"]) for s in report["samples"]}
        self.assertIn(("stanza", "xmpp_tls"), variants)
        self.assertIn(("bulk", "tcp"), variants)
        self.assertIn(("handshake", "tls-conc-ed25519-x25519"), variants)


class LatencyLoadSmokeTests(SynchronousTestCase):
    """The load curve's plumbing: two agents, two offered rates, and the chart's script."""

    def test_curve_and_chart(self) -> None:
        out = os.path.abspath(self.mktemp())
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=root)
        proc = subprocess.run(
            [sys.executable, "-m", "sixchat.bench", "--smoke", "--quiet", "--json", out,
             "--only", "latency", "--no-postgres", "--latency-loads", "20,100"],
            capture_output=True, text=True, timeout=300, env=env, check=False,
        )  # fmt: skip
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        with open(out) as f:
            report = json.load(f)
        self.assertEqual(report["meta"]["failures"], {})
        loads = {s["variant"]: s["metrics"] for s in report["samples"]
                 if s["bench"] == "latency_load"}  # fmt: skip
        self.assertEqual(sorted(loads, key=float), ["20", "100"])
        for rate, metrics in loads.items():
            self.assertEqual(metrics["offered_per_s"], float(rate))
            self.assertGreaterEqual(metrics["samples"], 20)
            self.assertGreater(metrics["p99_ms"], 0)
            self.assertGreaterEqual(metrics["p99_ms"], metrics["p50_ms"])
        import importlib.util

        spec = importlib.util.spec_from_file_location(
            "latency_curve", os.path.join(root, "scripts", "latency_curve.py")
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        points = module.curve(report)
        self.assertEqual([p[0] for p in points], [20.0, 100.0])
        self.assertEqual(points[1][2], loads["100"]["p50_ms"])
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return
        png = os.path.abspath(self.mktemp()) + ".png"
        proc = subprocess.run([sys.executable, os.path.join(root, "scripts", "latency_curve.py"),
                               out, png], capture_output=True, text=True, timeout=120,
                              env=env, check=False)  # fmt: skip
        self.assertEqual(proc.returncode, 0, proc.stderr)
        with open(png, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")


#: The latency keys (issue 15, item 1), with the (bench, variant) each comes from.
LATENCY_KEYS = {
    "deliver_latency_warm_p50_ms": ("latency", "warm", "p50_ms"),
    "deliver_latency_warm_p99_ms": ("latency", "warm", "p99_ms"),
    "deliver_latency_cold_p50_ms": ("latency", "cold", "p50_ms"),
    "deliver_latency_cold_p99_ms": ("latency", "cold", "p99_ms"),
    "registry_visibility_p50_ms": ("registry_visibility", "postgres", "p50_ms"),
    "registry_visibility_p99_ms": ("registry_visibility", "postgres", "p99_ms"),
}


class LatencyReportTests(SynchronousTestCase):
    def test_keys_and_targets(self) -> None:
        samples = [
            Sample(bench, variant, 0, {metric: float(i + 1)})
            for i, (bench, variant, metric) in enumerate(LATENCY_KEYS.values())
        ]
        report = results.summarize(samples, {})
        for i, key in enumerate(LATENCY_KEYS):
            self.assertEqual(report[key], float(i + 1), key)
        targets = report["targets"]
        self.assertEqual(targets["deliver_latency_warm_p99_ms"]["target"], 5)
        self.assertTrue(targets["deliver_latency_warm_p99_ms"]["met"])  # 2 <= 5
        self.assertEqual(targets["deliver_latency_cold_p50_ms"]["target"], 50)
        self.assertEqual(targets["registry_visibility_p99_ms"]["target"], 20)
        self.assertEqual(targets["registry_visibility_p99_ms"]["op"], "<=")
        missed = results.summarize([Sample("latency", "warm", 0, {"p99_ms": 5.5})], {})
        self.assertFalse(missed["targets"]["deliver_latency_warm_p99_ms"]["met"])
        self.assertIsNone(missed["registry_visibility_p99_ms"])

    def test_stats(self) -> None:
        from sixchat.bench.latency import stats

        got = stats([float(i) for i in range(1, 101)])
        self.assertEqual((got["p50_ms"], got["p99_ms"], got["max_ms"], got["samples"]),
                         (50.0, 99.0, 100.0, 100.0))  # fmt: skip
        self.assertEqual(stats([])["samples"], 0.0)
        self.assertNotIn("queued_p50_ms", got)
        queued = stats([5.0, 6.0], [1.0, 3.0])
        self.assertEqual((queued["queued_p50_ms"], queued["queued_p99_ms"]), (1.0, 3.0))

    def test_delivery_clock_either_order(self) -> None:
        from sixchat.bench.latency import DeliveryClock

        clock = DeliveryClock()
        early = {"type": "delivery", "state": "delivered", "id": "m1"}
        clock.agentEvent(early)  # before the sender knew the id
        got: list[float] = []
        clock.delivered("m1").addCallback(got.append)
        self.assertEqual(len(got), 1)
        d = clock.delivered("m2")
        d.addCallback(got.append)
        clock.agentEvent({"type": "delivery", "state": "sent", "id": "m2"})
        clock.agentEvent({"type": "message", "id": "m2"})
        self.assertEqual(len(got), 1)  # only "delivered" counts
        clock.agentEvent({"type": "delivery", "state": "delivered", "id": "m2"})
        self.assertEqual(len(got), 2)
        self.assertLessEqual(got[0], got[1])
        self.assertEqual((clock.at, clock.waiting), ({}, {}))

    def test_visibility_skipped_without_postgres(self) -> None:
        from sixchat.bench import latency

        class FakeRun:
            def __init__(self) -> None:
                self.profile = cli.parse_args(["--no-postgres"]).profile
                self.notes: list[str] = []

            def worker(self, *a: object) -> None:
                raise AssertionError("no registry may be started")

        run = FakeRun()
        latency._visibility(run)
        self.assertEqual(run.notes, ["registry visibility skipped: --no-postgres"])


class LatencySmokeTests(SynchronousTestCase):
    """The latency benchmark's plumbing: warm and cold agents, two PostgreSQL registries."""

    def test_latency_smoke_run(self) -> None:
        from sixchat.test import pg

        out = os.path.abspath(self.mktemp())
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=root)
        proc = subprocess.run(
            [sys.executable, "-m", "sixchat.bench", "--smoke", "--quiet", "--json", out,
             "--only", "latency"],
            capture_output=True, text=True, timeout=600, env=env, check=False,
        )  # fmt: skip
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertIn("first message to a new contact", proc.stdout)
        with open(out) as f:
            report = json.load(f)
        self.assertEqual(report["meta"]["failures"], {})
        reason = pg.skip_reason()
        for key, (bench, _, _) in LATENCY_KEYS.items():
            if bench == "registry_visibility" and reason:
                self.assertIsNone(report[key], key)
                continue
            self.assertIsInstance(report[key], float, key)
            self.assertGreater(report[key], 0, key)
        if reason:
            self.assertIn(f"registry visibility skipped: {reason}", report["meta"]["notes"])
        counts = {(s["bench"], s["variant"]): s["metrics"]["samples"] for s in report["samples"]}
        self.assertEqual(counts[("latency", "warm")], 5)
        self.assertEqual(counts[("latency", "cold")], 2)
        if not reason:
            self.assertEqual(counts[("registry_visibility", "postgres")], 5)
        self.assertIsNone(report["receipted_rate"])  # not run


class FileSmokeTests(SynchronousTestCase):
    """The C{file} benchmark's plumbing: two agents and the TLS FileSender baseline."""

    def test_file_smoke_run(self) -> None:
        out = os.path.abspath(self.mktemp())
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=root)
        proc = subprocess.run(
            [sys.executable, "-m", "sixchat.bench", "--smoke", "--quiet", "--json", out,
             "--only", "file"],
            capture_output=True, text=True, timeout=300, env=env, check=False,
        )  # fmt: skip
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        with open(out) as f:
            report = json.load(f)
        self.assertEqual(report["meta"]["failures"], {})
        for key in ("file_ratio_tls", "file_mib_per_s", "file_rss_growth_mib"):
            self.assertIsInstance(report[key], float, key)
        self.assertGreater(report["file_mib_per_s"], 0)
        variants = {(s["bench"], s["variant"]) for s in report["samples"]}
        self.assertEqual(variants, {("file", "ours"), ("file", "tls")})


class HandshakeProfileScriptTests(SynchronousTestCase):
    """scripts/handshake_profile.py: warm and cold handshakes in one process."""

    def load(self):
        import importlib.util

        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        spec = importlib.util.spec_from_file_location(
            "handshake_profile", os.path.join(root, "scripts", "handshake_profile.py")
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    def test_cold_validates_every_chain(self):
        """Cold handshakes validate both chains each time; warm ones only the first time."""
        module = self.load()
        peers = module.Peers()
        calls = {False: 0, True: 0}
        for cold in (False, True):
            initiator, responder = module.Peers.configs(peers, cold)
            for config in (initiator, responder):
                original = config.trust._validate

                def counting(*args, _original=original, _cold=cold, **kwargs):
                    calls[_cold] += 1
                    return _original(*args, **kwargs)

                config.trust._validate = counting
            peers.configs = lambda c, _pair=(initiator, responder), _cold=cold: _pair
            peers.run(cold, 3)
        self.assertEqual(calls, {False: 2, True: 6})

    def test_usage(self):
        module = self.load()
        self.assertEqual(module.main([]), 2)
        self.assertEqual(module.main(["run", "lukewarm", "1"]), 2)
        self.assertEqual(module.main(["run", "cold", "1"]), 0)
