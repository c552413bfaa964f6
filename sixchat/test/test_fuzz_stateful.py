"""
Stateful fuzzing (hypothesis C{RuleBasedStateMachine}s) of both handshake roles and of the IRP
server, with random sequences of valid and invalid messages (docs/security.md).

  - L{ResponderMachine} / L{InitiatorMachine}: the connection under test talks to an honest
    peer through an attacker who may deliver the honest bytes in any slicing, flip bytes in
    them, drop, duplicate or reorder records, inject records (PLAIN or SEALED, random or
    hello-like) and reflect the victim's own records. Whatever happens: the victim never
    raises, fails at most once and then ignores input, holds at most one partial record,
    ends every failure with one alert, completes a handshake only with the honest peer's
    exact transcript (same exporter secret, right identity), and delivers only stanzas the
    honest peer sent, in order.
  - L{RegistryMachine}: clients (two users, an anonymous one) send random valid and invalid
    requests and random bytes to one registry (the real server and SQLite store, run
    synchronously on a fake clock), while a model tracks every binding. Every lookup and
    push agrees with the model, every request gets exactly one answer unless the
    connection ended for malformed input, and nothing ever answers C{internal}.

Example counts are modest so the module runs in well under a minute; raise them with
C{SIXCHAT_FUZZ_EXAMPLES}.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.internet import task
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from sixchat.connection import (
    INITIATOR,
    RESPONDER,
    AlertReceived,
    CloseReceived,
    Connection,
    ConnectionFailed,
    HandshakeComplete,
    StanzaReceived,
)
from sixchat.errors import AlertError, StanzaError
from sixchat.groups import FixedEntropy
from sixchat.handshake import PeerConfig
from sixchat.irp.messages import clamp_expires
from sixchat.irp.server import IRPServerFactory, RegistryConfig
from sixchat.irp.server.authority import Authority
from sixchat.record import PLAIN, SEALED, RecordReader, header, plain_record
from sixchat.stanza_fastpaths import (
    parse_application,
)
from sixchat.stanzas import (
    APPLICATION_STANZAS,
    Message,
    Ping,
    Receipt,
    Typing,
)
from sixchat.test import certs
from sixchat.test.fuzz_target import SyncSQLiteStore
from sixchat.xmlcodec import Element, parse, serialize

EXAMPLES = int(os.environ.get("SIXCHAT_FUZZ_EXAMPLES", "200"))
STATEFUL = settings(
    max_examples=EXAMPLES,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

ALICE = "alice@example.com"
BOB = "bob@example.com"
CA = certs.make_ca()
TRUST = certs.trust_for(CA)
IDENTITIES = {
    ALICE: certs.make_identity(ALICE, CA),
    BOB: certs.make_identity(BOB, CA),
}
#: What an anonymous client gets for an authenticated request: parsing comes first.
ANONYMOUS_REFUSALS = ("unauthenticated", "bad_request")
#: At most one partial record.
MAX_BUFFERED = 4 + 65_552


def split_records(data: bytes) -> list[bytes]:
    """Whole records (header included), without checks; a trailing partial one is dropped."""
    out = []
    while len(data) >= 4 and len(data) >= 4 + int.from_bytes(data[1:4], "big"):
        end = 4 + int.from_bytes(data[1:4], "big")
        out.append(data[:end])
        data = data[end:]
    return out


# ---------------------------------------------------------------------------------------------
# Handshake roles


_TAGS = st.sampled_from(
    ["hello", "identity", "verify", "finished", "alert", "message", "receipt", "ping", "close",
     "rekey", "error", "typing", "x"]
)  # fmt: skip
_VALUES = st.sampled_from(
    ["1", "2", "", "AAAA", "x25519", "aes-256-gcm", ALICE, BOB, "protocol_error", "m1",
     "2026-11-26T00:25:21.123Z", "A" * 43 + "="]
)  # fmt: skip
_ELEMENTS = st.recursive(
    st.builds(
        Element,
        _TAGS,
        st.dictionaries(
            st.sampled_from(
                [
                    "id",
                    "reason",
                    "version",
                    "versions",
                    "random",
                    "to",
                    "group",
                    "suite",
                    "name",
                    "alg",
                    "ts",
                ]
            ),
            _VALUES,
            max_size=3,
        ),  # fmt: skip
        st.just([]),
        _VALUES,
    ),
    lambda kids: st.builds(Element, _TAGS, st.just({}), st.lists(kids, max_size=3), _VALUES),
    max_leaves=5,
)
_INJECTED = st.one_of(
    _ELEMENTS.map(lambda e: plain_record(serialize(e))),
    st.binary(min_size=0, max_size=64).map(lambda b: header(SEALED, len(b) + 16) + b + bytes(16)),
    st.binary(min_size=1, max_size=40),
    st.sampled_from(
        [
            plain_record(b'<alert reason="protocol_error"/>'),
            plain_record(b"<alert/>"),
            header(PLAIN, 65_537),
            header(SEALED, 0),
            header(0x17, 3) + b"abc",
            plain_record(b'<!DOCTYPE a [<!ENTITY b "c">]><hello/>'),
        ]
    ),  # fmt: skip
)


class _HandshakeMachine(RuleBasedStateMachine):
    """
    The victim (C{role}) and an honest peer; the attacker sits between them. Bytes the honest
    peer writes go to C{self.wire} (to the victim) record by record, and the victim's output
    goes back to the honest peer unless the attacker diverts it.
    """

    role: str
    victim_name: str
    honest_name: str

    # Every byte both sides write must be the same in every run of an example, or hypothesis
    # cannot replay and shrink it (a flipped bit may or may not leave valid base64): fixed
    # randoms and X25519 keys, and the x25519 group only (ML-KEM encapsulation draws its own
    # randomness; the hybrid's parsing is fuzzed by atheris and test_handshake).
    @initialize(
        padding=st.sampled_from([0, 16]),
        suite=st.sampled_from(["aes-256-gcm", "chacha20-poly1305", "aes-128-gcm"]),
        attacks=st.integers(0, 3),
    )
    def setup(self, padding: int, suite: str = "aes-256-gcm", attacks: int = 1) -> None:
        other = INITIATOR if self.role == RESPONDER else RESPONDER

        def config(name: str) -> PeerConfig:
            seed = 1 if name == ALICE else 3
            entropy = FixedEntropy([bytes([seed]) * 32], [bytes([seed + 1]) * 32])
            return PeerConfig(
                [IDENTITIES[name]], TRUST, padding=padding, entropy=entropy, suites=(suite,)
            )

        extra: dict[str, Any] = {"groups": ("x25519",)}
        victim_kw = dict(to=BOB, **extra) if self.role == INITIATOR else {}
        honest_kw = dict(to=BOB, **extra) if other == INITIATOR else {}
        self.victim = Connection(config(self.victim_name), self.role, **victim_kw)
        self.honest = Connection(config(self.honest_name), other, **honest_kw)
        self.tainted = False  # the attacker changed what the victim received
        self.attacks = attacks  # how many times the attacker may act (most runs complete)
        self.victim_done: HandshakeComplete | None = None
        self.honest_done: HandshakeComplete | None = None
        self.victim_failed = False
        self.victim_delivered: list[Any] = []
        self.honest_sent: list[Any] = []
        self.wire = b""  # honest -> victim, not yet delivered
        self.back = b""  # victim -> honest, not yet delivered
        self.honest_dead = False
        self.counter = 0
        self.victim.start()
        self.honest.start()
        self._collect()

    # plumbing --------------------------------------------------------------------------

    def _collect(self) -> None:
        self.wire += self.honest.data_to_send()
        out = self.victim.data_to_send()
        if self.victim_failed:
            return
        self.back += out

    def _feed_victim(self, data: bytes) -> None:
        was_closed = self.victim.state == "closed"
        events = self.victim.receive_data(data)
        assert isinstance(events, list)
        if was_closed:
            assert events == [], events
        terminal = [e for e in events if isinstance(e, ConnectionFailed | AlertReceived)]
        assert len(terminal) <= 1, events
        if terminal:
            assert events[-1] is terminal[0], events
            assert self.victim.state == "closed"
        for event in events:
            if isinstance(event, HandshakeComplete):
                assert self.victim_done is None, "completed twice"
                self.victim_done = event
            elif isinstance(event, StanzaReceived):
                assert self.victim_done is not None, "a stanza before the handshake completed"
                self.victim_delivered.append(event.stanza)
            elif isinstance(event, ConnectionFailed):
                assert isinstance(event.error, AlertError)
                self.victim_failed = True
                out = split_records(self.victim.data_to_send())
                assert out, "a failure queued no alert"
                if out[-1][0] == PLAIN:
                    assert parse(out[-1][4:]).get("reason") == event.error.reason
            elif isinstance(event, AlertReceived):
                self.victim_failed = True
            else:
                assert isinstance(event, CloseReceived), event
        if self.victim.state != "closed":
            assert self.victim.buffered < MAX_BUFFERED
        else:
            assert self.victim.buffered == 0

    def _feed_honest(self, data: bytes) -> None:
        if self.honest_dead:
            return
        for event in self.honest.receive_data(data):
            if isinstance(event, HandshakeComplete):
                self.honest_done = event
            elif isinstance(event, ConnectionFailed | AlertReceived):
                self.honest_dead = True

    # rules: the honest flow --------------------------------------------------------------

    @precondition(lambda self: self.wire)
    @rule(fraction=st.floats(0.01, 1.0))
    def deliver(self, fraction: float) -> None:
        """Deliver a prefix of the honest bytes, cut anywhere."""
        n = max(1, int(len(self.wire) * fraction))
        chunk, self.wire = self.wire[:n], self.wire[n:]
        self._feed_victim(chunk)
        self._collect()

    @precondition(lambda self: self.wire or self.back)
    @rule()
    def run_honestly(self) -> None:
        """Deliver everything pending, both ways, until nothing moves."""
        for _ in range(6):
            if not (self.wire or self.back):
                break
            if self.wire:
                self.deliver(1.0)
            if self.back:
                self.deliver_back()

    @rule()
    def quiet(self) -> None:
        """Nothing in flight, nothing to do: the victim stays as it is (always enabled)."""
        before = self.victim.state
        self._feed_victim(b"")
        assert self.victim.state == before

    @precondition(lambda self: self.back)
    @rule()
    def deliver_back(self) -> None:
        data, self.back = self.back, b""
        self._feed_honest(data)
        self._collect()

    @precondition(lambda self: self.honest.state == "open" and not self.honest_dead)
    @rule(kind=st.sampled_from(["message", "ping", "typing", "receipt", "rekey"]),
          body=st.text(max_size=30).filter(lambda t: "\r" not in t))  # fmt: skip
    def honest_sends(self, kind: str, body: str) -> None:
        self.counter += 1
        stanza: Any
        if kind == "message":
            try:
                serialize(Element("x", text=body))
            except ValueError:
                body = "x"
            stanza = Message(f"m{self.counter}", "2026-11-26T00:25:21.123Z", body)
        elif kind == "ping":
            stanza = Ping(f"p{self.counter}")
        elif kind == "typing":
            stanza = Typing("composing")
        elif kind == "receipt":
            stanza = Receipt(f"r{self.counter}")
        else:
            self.honest.rekey()
            self._collect()
            return
        self.honest.send(stanza)
        if not isinstance(stanza, Ping):
            self.honest_sent.append(stanza)
        self._collect()

    # rules: the attacker -----------------------------------------------------------------

    @precondition(lambda self: self.wire and self.attacks)
    @rule(data=st.data())
    def flip(self, data: st.DataObject) -> None:
        position = data.draw(st.integers(0, len(self.wire) - 1))
        bit = data.draw(st.integers(0, 7))
        wire = bytearray(self.wire)
        wire[position] ^= 1 << bit
        self.wire = bytes(wire)
        self._attacked()

    @precondition(lambda self: self.attacks and len(split_records(self.wire)) >= 1)
    @rule(how=st.sampled_from(["drop", "duplicate", "swap"]))
    def tamper_records(self, how: str) -> None:
        records = split_records(self.wire)
        rest = self.wire[sum(map(len, records)) :]
        if how == "drop":
            records = records[1:]
        elif how == "duplicate":
            records = [records[0], *records]
        elif len(records) >= 2:
            records[0], records[1] = records[1], records[0]
        else:
            return
        self.wire = b"".join(records) + rest
        self._attacked()

    @precondition(lambda self: self.attacks)
    @rule(record=_INJECTED)
    def inject(self, record: bytes) -> None:
        self.wire = record + self.wire
        self._attacked()

    @precondition(lambda self: self.back and self.attacks)
    @rule()
    def reflect(self) -> None:
        """The victim's own pending records, sent back to it."""
        records = split_records(self.back)
        if records:
            self.wire = records[0] + self.wire
            self._attacked()

    def _attacked(self) -> None:
        self.attacks -= 1
        self.tainted = True

    # invariants ----------------------------------------------------------------------------

    @invariant()
    def only_the_honest_peer_gets_in(self) -> None:
        if not hasattr(self, "victim"):
            return
        done = self.victim_done
        if done is not None:
            result = done.result
            assert result.peer_name == self.honest_name, result.peer_name
            # The victim's transcript is the honest peer's: the honest side completed (or
            # will on the victim's last flight) with the same exporter secret.
            honest = self.honest.handshake
            if self.honest_done is not None:
                assert self.honest_done.result.exporter_secret == result.exporter_secret
            else:
                assert honest.secrets is not None or self.honest_dead
        sent = self.honest_sent
        got = self.victim_delivered
        assert got == sent[: len(got)], (got, sent)

    @invariant()
    def untainted_never_fails(self) -> None:
        if hasattr(self, "victim") and not self.tainted:
            assert not self.victim_failed

    def teardown(self) -> None:
        if not hasattr(self, "victim") or self.tainted:
            return
        self.run_honestly()  # an untouched flow completes
        assert self.victim_done is not None
        assert self.victim_delivered == self.honest_sent


class ResponderMachine(_HandshakeMachine):
    role = RESPONDER
    victim_name = BOB
    honest_name = ALICE


class InitiatorMachine(_HandshakeMachine):
    role = INITIATOR
    victim_name = ALICE
    honest_name = BOB


class HandshakeRoleTests(SynchronousTestCase):
    def test_responder(self) -> None:
        run_state_machine_as_test(ResponderMachine, settings=STATEFUL)

    def test_initiator(self) -> None:
        run_state_machine_as_test(InitiatorMachine, settings=STATEFUL)

    def test_machines_notice_a_forgery(self) -> None:
        """The invariant fires when a stanza the honest peer never sent is delivered."""
        machine = ResponderMachine()
        machine.setup(padding=0, attacks=0)
        machine.run_honestly()
        self.assertIsNotNone(machine.victim_done)
        machine.victim_delivered.append(Typing("paused"))
        self.assertRaises(AssertionError, machine.only_the_honest_peer_gets_in)


# ---------------------------------------------------------------------------------------------
# Fast-path parser vs the hardened parser (stanza_fastpaths.parse_application skips the tree)


def _slow(data: bytes) -> Any:
    try:
        element = parse(data)
    except AlertError:
        return "fatal"
    cls = APPLICATION_STANZAS.get(element.tag)
    if cls is None:
        return "other"
    try:
        return cls.from_element(element)
    except StanzaError:
        return "error"


_FAST_FORMS = st.one_of(
    st.builds(
        lambda i, ts, body: b'<message id="' + i + b'" ts="' + ts + b'"><body>' + body
        + b"</body></message>",
        st.sampled_from([b"m1", b"a-b_C", b"", b"x" * 65, b"a b", b"\xc3\xa9"]),
        st.sampled_from([b"2026-11-26T00:25:21.123Z", b"2026-02-30T00:00:00Z", b"2026-11-26",
                         b"2026-11-26T24:00:00Z", b"2026-11-26T23:59:60.5Z"]),
        st.binary(max_size=24) | st.sampled_from(
            [b"]]>", b"a]]b", b"&amp;", b"\r\n", b"\x00", b"\xef\xbf\xbe", b"\xed\xa0\x80",
             b"\xc0\x80", b"<b/>", b"\x7f", b"\xc2\x85", b"\xf4\x90\x80\x80"])),  # fmt: skip
    st.builds(
        lambda tag, i, tail: b"<" + tag + b' id="' + i + tail,
        st.sampled_from([b"receipt", b"ping", b"pong"]),
        st.sampled_from([b"r1", b"", b"x" * 64, b"x" * 65, b"a\x00"]),
        st.sampled_from([b'"/>', b'" />', b'"/> ', b'"></receipt>', b'"/><x/>', b'" a="b"/>']),
    ),
)  # fmt: skip


class FastPathTests(SynchronousTestCase):
    @given(_FAST_FORMS)
    @settings(max_examples=400, deadline=None)
    def test_fast_path_agrees_with_the_hardened_parser(self, data: bytes) -> None:
        """Whatever the shortcut accepts, the generic path accepts as exactly that stanza."""
        fast = parse_application(data)
        if fast is not None:
            self.assertEqual(fast, _slow(data), data)


# ---------------------------------------------------------------------------------------------
# The IRP server


class RegistryClient:
    def __init__(self, factory: IRPServerFactory, peers: dict[Any, Any], peer: Any) -> None:
        self.transport = StringTransport()
        self.protocol = factory.buildProtocol(None)
        peers[self.transport] = peer
        self.protocol.makeConnection(self.transport)
        self.reader = RecordReader()
        self.fatal = False
        self.answers: dict[str, list[Element]] = {}
        self.presences: list[Element] = []
        self.watching: set[str] = set()

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def read(self) -> None:
        self.reader.feed(self.transport.value())
        self.transport.clear()
        while (record := self.reader.next_record(False)) is not None:
            element = parse(record[2])
            rid = element.get("id")
            assert element.get("reason") != "internal", serialize(element)
            if element.tag == "presence":
                self.presences.append(element)
            elif rid is None:
                assert element.tag == "error" and element.get("reason") == "bad_request"
                self.fatal = True
            else:
                self.answers.setdefault(rid, []).append(element)

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)


# Half valid, half not, so that registrations succeed often enough to matter.
_NODES = st.one_of(
    st.sampled_from(["laptop", "phone", "n-1", "a.b", "x" * 64]),
    st.sampled_from(["x" * 65, "bad node", "", "n'--", "ph\u00f6ne"]),
)
_HOSTS = st.sampled_from(["192.0.2.7", "2001:db8::5", "::ffff:192.0.2.8", "127.0.0.1",
                          "example.com", "fe80::1%eth0", "0.0.0.0", "2001:DB8::5", ""])  # fmt: skip
_PORTS = st.sampled_from(["4605", "1", "65535", "0", "65536", "x", "04605", ""])
_CONTACTS = st.one_of(
    st.lists(st.tuples(st.sampled_from(["192.0.2.7", "2001:db8::5", "198.51.100.1"]),
                       st.sampled_from(["4605", "1"])), min_size=1, max_size=3),
    st.lists(st.tuples(_HOSTS, _PORTS), max_size=10),
)  # fmt: skip
_EXPIRES = st.one_of(
    st.sampled_from([None, "30", "300", "99999", "-7"]),
    st.sampled_from(["5", "1.5", "x", "0300"]),
)
_WHO = st.sampled_from([ALICE, BOB, "carol@example.com", "alice@EXAMPLE.com", "Alice@example.com",
                        "bad", "a@b@c", "", "x'--@example.com"])  # fmt: skip


class RegistryMachine(RuleBasedStateMachine):
    clients = Bundle("clients")

    def __init__(self) -> None:
        super().__init__()
        self.clock = task.Clock()
        self.clock.advance(time.time())
        self.store = SyncSQLiteStore(":memory:", self.clock)
        self.peers: dict[Any, Any] = {}
        self.authority = Authority(CA.key, CA.cert, self.store, now=self.now)
        self.factory = IRPServerFactory(
            self.store,
            self.authority,
            self.clock,
            RegistryConfig(allow_private_addresses=True, max_requests_per_second=10**6),
            peer_for=lambda transport: self.peers.get(transport),
        )
        self.store.open()
        self.factory.start()
        self.model: dict[str, dict[str, tuple[tuple[tuple[str, int], ...], float]]] = {
            ALICE: {},
            BOB: {},
        }
        self.known: set[str] = set()
        self.counter = 0
        self.all_clients: list[RegistryClient] = []

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), UTC)

    def teardown(self) -> None:
        self.factory.stop()
        self.store.close()

    # helpers --------------------------------------------------------------------------------

    def _rid(self) -> str:
        self.counter += 1
        return f"r{self.counter}"

    def _live(self, who: str) -> dict[str, tuple[tuple[tuple[str, int], ...], float]]:
        now = self.clock.seconds()
        return {n: v for n, v in self.model[who].items() if v[1] > now + 1e-6}

    def _request(self, client: RegistryClient, element: Element, check: Any = None) -> None:
        if client.closed:
            return
        client.send(plain_record(serialize(element)))
        client.read()
        rid = element.get("id") or ""
        if client.fatal:
            return
        answers = client.answers.pop(rid, [])
        assert len(answers) == 1, (serialize(element), answers)
        if check is not None:
            check(answers[0])

    # rules ----------------------------------------------------------------------------------

    @rule(target=clients, who=st.sampled_from([ALICE, BOB, None]))
    def connect(self, who: str | None) -> RegistryClient:
        peer = (
            certs.trust_for(CA).validate(IDENTITIES[who].chain_der, self.now())
            if who is not None
            else None
        )
        client = RegistryClient(self.factory, self.peers, peer)
        client.who = who  # type: ignore[attr-defined]
        self.all_clients.append(client)
        return client

    @rule(client=clients, node=_NODES, contacts=_CONTACTS, expires=_EXPIRES)
    def register(self, client: RegistryClient, node: str, contacts: list[tuple[str, str]],
                 expires: str | None) -> None:  # fmt: skip
        attrs = {"id": self._rid(), "node": node}
        if expires is not None:
            attrs["expires"] = expires
        element = Element("register", attrs, [Element("contact", {"host": h, "port": p})
                                              for h, p in contacts])  # fmt: skip
        who = client.who  # type: ignore[attr-defined]

        def check(answer: Element) -> None:
            if who is None:
                assert answer.get("reason") in ANONYMOUS_REFUSALS, serialize(answer)
                return
            if answer.tag == "registered":
                granted = int(answer.get("expires") or "0")
                assert granted == clamp_expires(expires)
                stored = tuple(dict.fromkeys((_canonical(h), int(p)) for h, p in contacts))
                self.model[who][node] = (stored, self.clock.seconds() + granted)
                self.known.add(who)
            elif answer.get("reason") == "conflict":
                assert node not in self._live(who) and len(self._live(who)) >= 16
            else:
                assert answer.get("reason") == "bad_request", serialize(answer)

        self._request(client, element, check)

    @rule(client=clients, node=_NODES)
    def unregister(self, client: RegistryClient, node: str) -> None:
        who = client.who  # type: ignore[attr-defined]

        def check(answer: Element) -> None:
            if who is None:
                assert answer.get("reason") in ANONYMOUS_REFUSALS, serialize(answer)
            elif answer.tag == "unregistered":
                self.model[who].pop(node, None)
            else:
                assert answer.get("reason") == "bad_request"

        self._request(client, Element("unregister", {"id": self._rid(), "node": node}), check)

    @rule(client=clients, who=_WHO)
    def lookup(self, client: RegistryClient, who: str) -> None:
        asker = client.who  # type: ignore[attr-defined]

        def check(answer: Element) -> None:
            if asker is None:
                assert answer.get("reason") in ANONYMOUS_REFUSALS, serialize(answer)
                return
            key = {ALICE: ALICE, "alice@EXAMPLE.com": ALICE, BOB: BOB}.get(who)
            if key is None:
                assert answer.get("reason") in ("not_found", "bad_request"), serialize(answer)
                return
            if key not in self.known:
                assert answer.get("reason") == "not_found", serialize(answer)
                return
            assert answer.tag == "record", serialize(answer)
            self._check_nodes(key, answer)

        self._request(client, Element("lookup", {"id": self._rid(), "identity": who}), check)

    @rule(client=clients, who=_WHO)
    def watch(self, client: RegistryClient, who: str) -> None:
        asker = client.who  # type: ignore[attr-defined]

        def check(answer: Element) -> None:
            if asker is None:
                assert answer.get("reason") in ANONYMOUS_REFUSALS, serialize(answer)
            elif answer.tag == "watching":
                key = {ALICE: ALICE, "alice@EXAMPLE.com": ALICE, BOB: BOB}.get(who)
                if key is not None:
                    client.watching.add(key)
            else:
                assert answer.get("reason") == "bad_request", serialize(answer)

        self._request(client, Element("watch", {"id": self._rid(), "identity": who}), check)

    @rule(client=clients)
    def ping(self, client: RegistryClient) -> None:
        self._request(
            client,
            Element("ping", {"id": self._rid()}),
            lambda a: assert_tag(a, "pong"),
        )

    @rule(client=clients, element=_ELEMENTS)
    def random_element(self, client: RegistryClient, element: Element) -> None:
        if client.closed:
            return
        rid = element.get("id")
        client.send(plain_record(serialize(element)))
        client.read()
        if rid is not None and not client.fatal:
            client.answers.pop(rid, None)  # whatever it was, at most one answer
        if element.get("identity") is None and element.tag in ("register", "unregister"):
            # a random register/unregister of our own identity: resynchronise the model
            self._resync(client)

    @rule(client=clients, data=st.binary(max_size=80))
    def random_bytes(self, client: RegistryClient, data: bytes) -> None:
        if client.closed:
            return
        client.send(data)
        client.read()
        if client.fatal:
            assert client.closed
        self._resync(client)

    @rule(seconds=st.sampled_from([0.25, 1.5, 29.75, 301.5]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    # invariants ---------------------------------------------------------------------------------

    @invariant()
    def watchers_see_the_current_state(self) -> None:
        """The last presence a watcher got is the model's state of that identity now."""
        for client in self.all_clients:
            client.read()
            if client.closed:
                continue
            for key in client.watching:
                pushed = [p for p in client.presences if (p.get("identity") or "").lower() == key]
                if pushed:
                    self._check_nodes(key, pushed[-1])

    def _check_nodes(self, who: str, element: Element) -> None:
        live = self._live(who)
        got = {
            n.get("name"): tuple(
                (c.get("host"), int(c.get("port") or 0)) for c in n.findall("contact")
            )
            for n in element.findall("node")
        }
        borderline = {
            n for n, v in self.model[who].items() if abs(v[1] - self.clock.seconds()) < 1e-3
        }
        expected = {n: v[0] for n, v in live.items()}
        for n in borderline:
            got.pop(n, None)
            expected.pop(n, None)
        assert got == expected, (got, expected)

    def _resync(self, client: RegistryClient) -> None:
        """After random input the model cannot predict, read the truth through the store."""
        for who in (ALICE, BOB):
            state = self.store.state(who, self.now()).result  # type: ignore[attr-defined]
            self.model[who] = {
                b.node: (
                    tuple((c.host, c.port) for c in b.contacts),
                    b.until.timestamp(),
                )  # fmt: skip
                for b in state.bindings
            }
            if state.known:
                self.known.add(who)


def assert_tag(element: Element, tag: str) -> None:
    assert element.tag == tag, serialize(element)


def _canonical(host: str) -> str:
    import ipaddress

    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


class RegistryMachineTests(SynchronousTestCase):
    def test_registry(self) -> None:
        run_state_machine_as_test(RegistryMachine, settings=STATEFUL)
        self.assertEqual(self.flushLoggedErrors(), [])
