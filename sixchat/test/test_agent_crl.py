"""
The agent keeps the registry's CRLs current (L{sixchat.agent.crls}): fetched at start-up and
on a schedule (on a C{task.Clock}), checked against the CAs we trust, kept in the data
directory across restarts, and applied to open sessions (a revoked peer's session ends and
its next handshake is refused with C{certificate_revoked}). Most tests feed CRLs from a stub
in place of the registry; the last class runs the real registry over TLS on 127.0.0.1.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import defer, endpoints, reactor, task
from twisted.logger import globalLogPublisher
from twisted.python import usage
from twisted.trial import unittest

from sixchat import pki
from sixchat.agent import crls as agent_crls
from sixchat.agent import outbox as agent_outbox
from sixchat.agent import tap
from sixchat.agent.service import UserAgentService
from sixchat.cli.status import format_status
from sixchat.cli.watch import format_event
from sixchat.errors import CertificateRevoked
from sixchat.handshake import PeerConfig
from sixchat.identity import Identity
from sixchat.protocol import HandshakeFailed, connectPeer
from sixchat.stanzas import Message
from sixchat.test import certs
from sixchat.test.test_agent_service import Events, FakeDirectory

CA = certs.make_ca()
#: A CA nobody here trusts: what a forger signs with.
ROGUE = certs.make_ca(name="sixchat rogue CA")
#: The registry's issuing CA when it is an intermediate under CA.
INTERMEDIATE = certs.make_intermediate(CA, name="sixchat test users CA")


def wall() -> datetime:
    return datetime.now(UTC)


def crl_of(
    ca: certs.TestCA,
    revoked: list[Identity] = (),  # type: ignore[assignment]
    number: int = 1,
    *,
    signer: certs.TestCA | None = None,
    next_update: timedelta = timedelta(days=7),
    at: datetime | None = None,
) -> x509.CertificateRevocationList:
    """
    A CRL naming C{ca} as issuer, signed by C{signer}'s key (default: C{ca}'s own), issued a
    minute before C{at} (default: now).
    """
    now = (at or wall()) - timedelta(minutes=1)
    return pki.issue_crl(
        (signer or ca).key,
        ca.cert,
        [identity.leaf.serial_number for identity in revoked],
        last_update=now,
        next_update=now + next_update,
        crl_number=number,
    )


def der(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.DER)


class StubRegistry:
    """Stands in for the registry's C{crl}: answers with C{crls}, or fails with C{error}."""

    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock
        self.crls: list[x509.CertificateRevocationList] = []
        self.error: Exception | None = None
        self.calls: list[float] = []

    def __call__(self) -> defer.Deferred[list[x509.CertificateRevocationList]]:
        self.calls.append(self.clock.seconds())
        if self.error is not None:
            return defer.fail(self.error)
        return defer.succeed(list(self.crls))


class LogCapture:
    def __init__(self, case: unittest.TestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def texts(self, level: str | None = None) -> list[str]:
        from twisted.logger import formatEvent

        return [
            formatEvent(e)
            for e in self.events
            if level is None or getattr(e.get("log_level"), "name", None) == level
        ]


class CRLCase(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(time.time())
        self.registry = StubRegistry(self.clock)
        self.base = os.path.abspath(self.mktemp())
        self.directory = FakeDirectory()
        self.log = LogCapture(self)

    @defer.inlineCallbacks
    def agent(
        self,
        name: str = "alice@example.com",
        *,
        identity: Identity | None = None,
        ca: certs.TestCA = CA,
        fetch: Any = "stub",
        data_dir: str | None = None,
        **kw: Any,
    ) -> Any:
        identity = identity or certs.make_identity(name, ca)
        config = PeerConfig([identity], certs.trust_for(ca))
        agent = UserAgentService(
            reactor,
            config,
            data_dir or os.path.join(self.base, name),
            listen="tcp:0:interface=127.0.0.1",
            control=False,
            directory=self.directory,
            clock=self.clock,
            rand=lambda: 0.0,
            crl_fetch=self.registry if fetch == "stub" else fetch,
            **kw,
        )
        events = Events()
        agent.addObserver(events)
        agent.privilegedStartService()
        agent.startService()
        self.addCleanup(lambda: agent.stopService() if agent.running else None)
        yield agent.ready
        return agent, events

    def held(self, agent: UserAgentService) -> dict[str, int | None]:
        return {
            crl.issuer.rfc4514_string(): agent_crls.crl_number(crl)
            for crl in agent.config.trust.crls
        }

    def kept(self, agent: UserAgentService) -> list[bytes]:
        directory = os.path.join(agent.data_dir, "crls")
        if not os.path.isdir(directory):
            return []
        out = []
        for name in sorted(os.listdir(directory)):
            with open(os.path.join(directory, name), "rb") as f:
                out.append(f.read())
        return out

    def assertRevoked(self, agent: UserAgentService, identity: Identity) -> None:
        self.assertRaises(
            CertificateRevoked, agent.config.trust.validate, identity.chain_der, wall()
        )


class ScheduleTests(CRLCase):
    @defer.inlineCallbacks
    def test_fetched_at_start_and_every_refresh(self) -> Any:
        carol = certs.make_identity("carol@example.com", CA)
        self.registry.crls = [crl_of(CA, [carol], number=5)]
        alice, _ = yield self.agent(crl_refresh=3600)
        start = self.clock.seconds()
        self.assertEqual(self.registry.calls, [start])  # at start-up, without advancing
        self.assertEqual(self.held(alice), {CA.cert.subject.rfc4514_string(): 5})
        self.assertRevoked(alice, carol)
        self.clock.advance(3599)
        self.assertEqual(len(self.registry.calls), 1)
        self.clock.advance(1)
        self.assertEqual(self.registry.calls, [start, start + 3600])
        self.clock.advance(3600)
        self.assertEqual(len(self.registry.calls), 3)
        status = alice.crls.status()
        self.assertEqual(status["refresh"], 3600)
        self.assertIsNone(status["last_error"])
        self.assertEqual(
            status["next_fetch"],
            agent_crls._iso(datetime.fromtimestamp(start + 3 * 3600, UTC)),
        )

    @defer.inlineCallbacks
    def test_next_update_brings_the_fetch_forward(self) -> Any:
        self.registry.crls = [crl_of(CA, number=1, next_update=timedelta(minutes=20))]
        alice, _ = yield self.agent(crl_refresh=3600)
        until = (alice.config.trust.crls[0].next_update_utc - alice.now()).total_seconds()
        self.assertLess(until, 3600)
        self.clock.advance(until - 1)
        self.assertEqual(len(self.registry.calls), 1)
        # the registry reissued with a nextUpdate only 5 s away: not sooner than MIN_DELAY
        self.registry.crls = [
            crl_of(CA, number=2, next_update=timedelta(minutes=1, seconds=5), at=alice.now())
        ]
        self.clock.advance(1)
        self.assertEqual(len(self.registry.calls), 2)
        self.assertEqual(self.held(alice), {CA.cert.subject.rfc4514_string(): 2})
        self.clock.advance(agent_crls.MIN_DELAY - 0.5)
        self.assertEqual(len(self.registry.calls), 2)
        self.clock.advance(0.5)
        self.assertEqual(len(self.registry.calls), 3)

    @defer.inlineCallbacks
    def test_failures_back_off_then_recover(self) -> Any:
        self.registry.error = ConnectionRefusedError("registry down")
        alice, _ = yield self.agent(crl_refresh=3600)  # rand 0: each wait is base/2
        self.assertEqual(len(self.registry.calls), 1)
        waits = []
        for _ in range(8):
            before = len(self.registry.calls)
            last = self.registry.calls[-1]
            for _ in range(1200):
                self.clock.advance(1)
                if len(self.registry.calls) > before:
                    break
            waits.append(self.registry.calls[-1] - last)
        # RETRY_MIN 10: bases 20, 40, 80, … capped at min(RETRY_MAX, refresh) = 600
        self.assertEqual(waits, [10, 20, 40, 80, 160, 300, 300, 300])
        status = alice.crls.status()
        self.assertIn("registry down", status["last_error"])
        self.assertIsNone(status["last_fetch"])
        self.assertTrue(any("cannot fetch the CRLs" in t for t in self.log.texts("warn")))
        # the registry answers again: the failure count resets, back to the hourly refresh
        self.registry.error = None
        self.registry.crls = [crl_of(CA, number=3)]
        self.clock.advance(300)
        fetched_at = self.registry.calls[-1]
        self.assertEqual(self.held(alice), {CA.cert.subject.rfc4514_string(): 3})
        self.assertIsNone(alice.crls.status()["last_error"])
        self.clock.advance(3599)
        self.assertEqual(self.registry.calls[-1], fetched_at)
        self.clock.advance(1)
        self.assertEqual(self.registry.calls[-1], fetched_at + 3600)

    @defer.inlineCallbacks
    def test_keeper_reaching_the_registry_retries_a_failed_fetch(self) -> Any:
        self.registry.error = ConnectionRefusedError("registry down")
        alice, _ = yield self.agent()
        self.assertEqual(len(self.registry.calls), 1)
        self.registry.error = None
        alice.crls.registryReachable()
        self.clock.advance(0)
        self.assertEqual(len(self.registry.calls), 2)
        alice.crls.registryReachable()  # no failure pending: nothing extra
        self.clock.advance(0)
        self.assertEqual(len(self.registry.calls), 2)

    @defer.inlineCallbacks
    def test_disabled_with_zero(self) -> Any:
        self.registry.crls = [crl_of(CA, number=1)]
        alice, _ = yield self.agent(crl_refresh=0)
        self.clock.advance(7 * 86400)
        self.assertEqual(self.registry.calls, [])
        self.assertEqual(alice.config.trust.crls, [])
        status = alice.crls.status()
        self.assertEqual(
            (status["fetch"], status["refresh"], status["next_fetch"]), (None, 0, None)
        )
        self.assertIn("CRLs not fetched", "\n".join(format_status({"revocation": status})))

    @defer.inlineCallbacks
    def test_no_registry_means_no_fetch(self) -> Any:
        alice, _ = yield self.agent(fetch=None)
        self.assertFalse(alice.crls.enabled)
        self.assertIsNone(alice.crls.next_fetch())


class CheckTests(CRLCase):
    @defer.inlineCallbacks
    def test_crl_signed_by_an_untrusted_key_is_refused(self) -> Any:
        carol = certs.make_identity("carol@example.com", CA)
        forged = crl_of(CA, [], number=99, signer=ROGUE)  # names our anchor, wrong key
        foreign = crl_of(ROGUE, [carol], number=7)  # a CA we do not trust at all
        genuine = crl_of(CA, [carol], number=3)
        self.registry.crls = [forged, foreign, genuine]
        alice, _ = yield self.agent()
        yield alice.crls.idle()
        self.assertEqual(self.held(alice), {CA.cert.subject.rfc4514_string(): 3})
        self.assertRevoked(alice, carol)
        self.assertEqual(self.kept(alice), [der(genuine)])
        errors = [t for t in self.log.texts("error") if "REFUSED a CRL" in t]
        self.assertEqual(len(errors), 2)
        self.assertIn("number 99", errors[0])
        self.assertIn("sixchat rogue CA", errors[1])
        self.assertEqual(
            alice.crls.status()["last_error"], "refused 2 CRL(s) not signed by a CA we trust"
        )

    @defer.inlineCallbacks
    def test_forged_intermediate_crl_does_not_displace_the_genuine_one(self) -> Any:
        # TrustStore.add_crl alone takes any CRL whose issuer is not an anchor: a forged one
        # with a higher number would replace the intermediate's genuine CRL, and revocation
        # of what the intermediate issued would silently soft-fail.
        alice_id = certs.make_identity("alice@example.com", INTERMEDIATE)
        carol = certs.make_identity("carol@example.com", INTERMEDIATE)
        genuine = crl_of(INTERMEDIATE, [carol], number=10)
        self.registry.crls = [genuine]
        alice, _ = yield self.agent(identity=alice_id, ca=CA)
        subject = INTERMEDIATE.cert.subject.rfc4514_string()
        self.assertEqual(self.held(alice), {subject: 10})  # signed by a CA on our own path
        self.assertRevoked(alice, carol)
        self.registry.crls = [crl_of(INTERMEDIATE, [], number=1000, signer=ROGUE)]
        yield alice.crls.fetchNow()
        yield alice.crls.idle()
        self.assertEqual(self.held(alice), {subject: 10})
        self.assertRevoked(alice, carol)
        self.assertEqual(self.kept(alice), [der(genuine)])
        self.assertTrue(any("REFUSED a CRL" in t for t in self.log.texts("error")))

    @defer.inlineCallbacks
    def test_older_crl_does_not_replace_a_newer_one(self) -> Any:
        carol = certs.make_identity("carol@example.com", CA)
        newer = crl_of(CA, [carol], number=20)
        self.registry.crls = [newer]
        alice, _ = yield self.agent()
        yield alice.crls.idle()
        self.registry.crls = [crl_of(CA, [], number=10)]  # a rollback: carol not listed
        taken = yield alice.crls.fetchNow()
        yield alice.crls.idle()
        self.assertEqual(taken, [])
        self.assertEqual(self.held(alice), {CA.cert.subject.rfc4514_string(): 20})
        self.assertRevoked(alice, carol)
        self.assertEqual(self.kept(alice), [der(newer)])
        self.assertTrue(any("is older" in t for t in self.log.texts("info")))
        # the same CRL again is not news: nothing rewritten, no sweep
        self.registry.crls = [newer]
        taken = yield alice.crls.fetchNow()
        self.assertEqual(taken, [])

    @defer.inlineCallbacks
    def test_own_certificate_revoked_is_reported_loudly(self) -> Any:
        alice_id = certs.make_identity("alice@example.com", CA, key=certs.new_key("ed25519"))
        self.registry.crls = [crl_of(CA, [alice_id], number=4)]
        alice, events = yield self.agent(identity=alice_id)
        critical = [t for t in self.log.texts("critical") if "OUR OWN CERTIFICATE" in t]
        self.assertEqual(len(critical), 1)
        self.assertIn(f"{alice_id.leaf.serial_number:x}", critical[0])
        status = yield alice.status()
        revoked = status["revocation"]["own_certificate_revoked"]
        self.assertIn("our certificate", revoked)
        self.assertIn("REVOKED:", "\n".join(format_status(status)))
        # after a restart with the registry down, the kept CRL says so again
        yield alice.crls.idle()
        yield alice.stopService()
        self.registry.error = ConnectionRefusedError("registry down")
        again, _ = yield self.agent(identity=alice_id, data_dir=alice.data_dir)
        critical = [t for t in self.log.texts("critical") if "OUR OWN CERTIFICATE" in t]
        self.assertEqual(len(critical), 2)
        self.assertEqual(again.crls.status()["own_certificate_revoked"], revoked)


class PersistenceTests(CRLCase):
    @defer.inlineCallbacks
    def test_kept_and_reloaded_while_the_registry_is_down(self) -> Any:
        carol = certs.make_identity("carol@example.com", CA)
        crl = crl_of(CA, [carol], number=8)
        self.registry.crls = [crl]
        alice, _ = yield self.agent()
        yield alice.crls.idle()
        directory = os.path.join(alice.data_dir, "crls")
        names = os.listdir(directory)
        self.assertEqual(names, [agent_crls.file_name(crl)])  # no temporary file left
        self.assertEqual(self.kept(alice), [der(crl)])
        self.assertEqual(os.stat(directory).st_mode & 0o777, 0o700)
        self.assertEqual(os.stat(os.path.join(directory, names[0])).st_mode & 0o777, 0o600)
        yield alice.stopService()

        self.registry.error = ConnectionRefusedError("registry down")
        again, _ = yield self.agent(data_dir=alice.data_dir)
        self.assertIn("registry down", again.crls.status()["last_error"])
        self.assertEqual(self.held(again), {CA.cert.subject.rfc4514_string(): 8})
        self.assertRevoked(again, carol)

    @defer.inlineCallbacks
    def test_kept_files_are_checked_again_when_loaded(self) -> Any:
        data_dir = os.path.join(self.base, "alice")
        directory = os.path.join(data_dir, "crls")
        os.makedirs(directory)
        forged = crl_of(CA, [], number=50, signer=ROGUE)
        genuine = crl_of(CA, [], number=6)
        for name, crl in (("a.der", forged), ("b.der", genuine)):
            with open(os.path.join(directory, name), "wb") as f:
                f.write(der(crl))
        with open(os.path.join(directory, "c.der"), "wb") as f:
            f.write(b"not a CRL")
        alice, _ = yield self.agent(data_dir=data_dir, crl_refresh=0)
        self.assertEqual(self.held(alice), {CA.cert.subject.rfc4514_string(): 6})
        self.assertTrue(any("REFUSED a CRL" in t for t in self.log.texts("error")))
        self.assertTrue(any("skipping the kept CRL" in t for t in self.log.texts("warn")))


class SessionTests(CRLCase):
    @defer.inlineCallbacks
    def test_revoked_peer_session_ends_and_new_handshakes_are_refused(self) -> Any:
        self.patch(agent_outbox, "TICK", 0.05)
        self.patch(agent_outbox, "RETRY_BASE", 0.05)
        self.patch(agent_outbox, "RETRY_MAX", 0.2)
        carol_id = certs.make_identity("carol@example.com", CA)
        self.registry.crls = [crl_of(CA, [carol_id], number=1)]
        bob_id = certs.make_identity("bob@example.com", CA, key=certs.new_key("ed25519"))
        alice, alice_events = yield self.agent()
        bob, _ = yield self.agent("bob@example.com", identity=bob_id, fetch=None)
        self.directory.publish("alice@example.com", "n1", alice)
        self.directory.publish("bob@example.com", "n1", bob)
        # a session each way: alice's to bob, and bob's to alice
        sent = yield alice.send("bob@example.com", "hello bob")
        yield alice.waitDelivered(sent["id"], 10)
        sent = yield bob.send("alice@example.com", "hello alice")
        yield bob.waitDelivered(sent["id"], 10)
        sessions = list(alice.sessions.live)
        self.assertEqual(sorted(s.connection.role for s in sessions), ["initiator", "responder"])
        self.assertEqual({s.peer for s in sessions}, {"bob@example.com"})
        bob_sessions = list(bob.sessions.live)

        # the registry revokes bob; alice learns it at her next fetch
        self.registry.crls = [crl_of(CA, [carol_id, bob_id], number=2)]
        self.clock.advance(agent_crls.DEFAULT_REFRESH)
        self.assertEqual(len(self.registry.calls), 2)
        yield defer.DeferredList([s.whenEnded() for s in sessions + bob_sessions])
        self.assertEqual(alice.sessions.live, set())
        for session in bob_sessions:  # bob was told why, in a SEALED alert
            self.assertIsInstance(session.end_reason, HandshakeFailed)
            self.assertEqual(session.end_reason.reason, "certificate_revoked")  # type: ignore[union-attr]
            self.assertTrue(session.end_reason.sent_by_peer)  # type: ignore[union-attr]
        revoked = alice_events.of("revoked")
        self.assertEqual(len(revoked), 2)
        self.assertEqual(revoked[0]["serial"], f"{bob_id.leaf.serial_number:x}")
        self.assertIn("revoked by", format_event(revoked[0]))
        warnings = [t for t in self.log.texts("warn") if "ending the session with" in t]
        self.assertEqual(len(warnings), 2)
        status = yield alice.status()
        self.assertEqual(status["sessions"], [])

        # bob cannot get back in: alice refuses his handshake ...
        port = alice.listener.port.getHost().port
        attempt = connectPeer(
            reactor,
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port),
            bob_id,
            certs.trust_for(CA),
            "alice@example.com",
        )
        # (the initiator is done once it sent M8, before alice checks its certificate in M6:
        # alice's answer is the alert that ends it)
        session = yield attempt
        yield session.whenEnded()
        failure = session.end_reason
        assert isinstance(failure, HandshakeFailed), failure
        self.assertEqual((failure.reason, failure.sent_by_peer), ("certificate_revoked", True))
        self.assertEqual(alice.sessions.live, set())
        # ... and nothing more from him is stored, nor does alice deliver to him
        stored = yield alice.history("bob@example.com", None, 100)
        late = yield bob.send("alice@example.com", "still there?")
        mine = yield alice.send("bob@example.com", "are you?")
        yield task.deferLater(reactor, 0.5, lambda: None)  # both tried (their clock is fake)
        status = yield bob.status_of(late["id"])
        self.assertNotEqual(status["state"], "delivered")
        status = yield alice.status_of(mine["id"])
        self.assertNotEqual(status["state"], "delivered")
        refused = [t for t in self.log.texts() if "certificate_revoked" in t]
        self.assertTrue(refused, "no handshake was refused with certificate_revoked")
        history = yield alice.history("bob@example.com", None, 100)
        self.assertEqual(
            [h["body"] for h in history if h["direction"] == "in"],
            [h["body"] for h in stored if h["direction"] == "in"],
        )
        self.assertEqual([h["body"] for h in stored if h["direction"] == "in"], ["hello alice"])

    @defer.inlineCallbacks
    def test_handshake_validated_just_before_a_new_crl_is_checked_again(self) -> Any:
        bob_id = certs.make_identity("bob@example.com", CA, key=certs.new_key("ed25519"))
        alice, events = yield self.agent()
        # the CRL arrives between the validation of bob's chain and the session's start
        self.registry.crls = [crl_of(CA, [bob_id], number=2)]
        yield alice.crls.fetchNow()
        peer = certs.trust_for(CA).validate(bob_id.chain_der, wall())

        class Result:
            peer_name = "bob@example.com"

        Result.peer = peer  # type: ignore[attr-defined]
        ended: list[Any] = []

        class Conn:
            role = "responder"

        class FakeSession:
            result = Result()
            connection = Conn()
            ended = False

            def abort(self, error: Any) -> None:
                ended.append(error)

        session: Any = FakeSession()
        alice.inbox.sessionStarted(session)
        self.assertEqual(len(ended), 1)
        self.assertIsInstance(ended[0], CertificateRevoked)
        self.assertNotIn(session, alice.sessions.live)
        self.assertEqual(events.of("session"), [])  # never announced as open
        message = Message("m1", "2026-11-26T00:00:00.000Z", "let me in")
        self.assertIsNone((yield alice.inbox.messageReceived(session, message)))
        history = yield alice.history("bob@example.com", None, 10)
        self.assertEqual(history, [])


class OptionTests(unittest.TestCase):
    def options(self, *args: str) -> tap.Options:
        from sixchat.test.test_integration import alice_options

        return alice_options(self.mktemp(), *args)

    def test_crl_refresh(self) -> None:
        self.assertEqual(self.options()["crl-refresh"], 3600.0)
        self.assertEqual(self.options("--crl-refresh", "15m")["crl-refresh"], 900.0)
        self.assertEqual(self.options("--crl-refresh", "120")["crl-refresh"], 120.0)
        self.assertEqual(self.options("--crl-refresh", "0")["crl-refresh"], 0.0)
        for bad in ("30", "soon", "-5"):
            e = self.assertRaises(usage.UsageError, self.options, "--crl-refresh", bad)
            self.assertIn("--crl-refresh", str(e))
        on = tap.makeService(self.options("--registry", "127.0.0.1:4604", "--crl-refresh", "2h"))
        self.assertTrue(on.crls.enabled)  # type: ignore[attr-defined]
        self.assertEqual(on.crls.refresh, 7200.0)  # type: ignore[attr-defined]
        off = tap.makeService(self.options("--registry", "127.0.0.1:4604", "--crl-refresh", "0"))
        self.assertFalse(off.crls.enabled)  # type: ignore[attr-defined]
        alone = tap.makeService(self.options())
        self.assertFalse(alone.crls.enabled)  # type: ignore[attr-defined]


class RealRegistryTests(unittest.TestCase):
    """The agent's own fetch (an anonymous TLS connection) against the real registry."""

    timeout = 60

    @defer.inlineCallbacks
    def test_registry_revocation_ends_the_session(self) -> Any:
        from sixchat.irp.server import IRPServerService, RegistryConfig
        from sixchat.irp.server.authority import Authority
        from sixchat.irp.store.sqlite import SQLiteStore
        from sixchat.test.irp_harness import server_identity

        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        store = SQLiteStore(os.path.join(base, "irp.sqlite"), reactor)
        authority = Authority(
            CA.key, CA.cert, store, now=lambda: datetime.fromtimestamp(reactor.seconds(), UTC)
        )
        registry = IRPServerService(
            reactor,
            store,
            authority,
            server_identity(CA),
            "tcp:0:interface=127.0.0.1",
            RegistryConfig(allow_private_addresses=True),
        )
        registry.startService()
        self.addCleanup(registry.stopService)
        yield registry._opened
        address = f"127.0.0.1:{registry.port.getHost().port}"  # type: ignore[union-attr]
        clock = task.Clock()
        clock.advance(time.time())
        agents = {}
        for name in ("alice", "bob"):
            identity = certs.make_identity(f"{name}@example.com", CA, key=certs.new_key("ed25519"))
            agent = UserAgentService(
                reactor,
                PeerConfig([identity], certs.trust_for(CA)),
                os.path.join(base, name),
                listen="tcp:0:interface=127.0.0.1",
                control=False,
                registry=address,
                registry_anchors=[CA.anchor],
                node="n1",
                clock=clock,
                crl_refresh=600,
            )
            agent.privilegedStartService()
            agent.startService()
            self.addCleanup(lambda a=agent: a.stopService() if a.running else None)
            yield agent.ready
            agents[name] = agent
        alice, bob = agents["alice"], agents["bob"]
        yield alice.crls.fetchNow()  # the start-up fetch may still be on its way: wait for one
        self.assertEqual(
            {c.issuer for c in alice.config.trust.crls}, {CA.cert.subject}, alice.crls.status()
        )
        for _ in range(200):  # both registered (real time)
            if alice.keeper.state == bob.keeper.state == "registered":
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        sent = yield alice.send("bob@example.com", "hello")
        status = yield alice.waitDelivered(sent["id"], 10)
        self.assertEqual(status["state"], "delivered")
        [session] = list(alice.sessions.live)

        yield authority.revoke(bob.identity.leaf.serial_number)
        clock.advance(600)  # the scheduled fetch: a real TLS connection, so wait for it
        for _ in range(200):
            if session.ended:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertTrue(session.ended)
        self.assertRaises(
            CertificateRevoked, alice.config.trust.validate, bob.identity.chain_der, wall()
        )
        self.assertIsNone(alice.crls.status()["last_error"])
        yield alice.crls.idle()
        self.assertEqual(len(os.listdir(os.path.join(alice.data_dir, "crls"))), 1)
