"""
The own-device sync stanzas (L{sixchat.sync.stanzas}): round trips (hypothesis), every
malformed form answered C{bad_request} (never fatal), and the connection's rule that they
exist only between two ends proving the same identity.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sixchat.connection import INITIATOR, RESPONDER, Connection, StanzaReceived
from sixchat.errors import StanzaError
from sixchat.handshake import PeerConfig
from sixchat.stanzas import ErrorStanza
from sixchat.sync.stanzas import (
    MAX_ITEMS,
    SYNC_STANZAS,
    CancelledItem,
    ContactItem,
    FileMeta,
    InItem,
    NodeEntry,
    OutItem,
    PinItem,
    SyncBatch,
    SyncHello,
    SyncPull,
)
from sixchat.test import certs
from sixchat.xmlcodec import Element, b64encode, parse, serialize

CA = certs.make_ca()
TS = "2026-12-07T05:00:00.000Z"
STORE = "0123456789abcdef" * 2

ids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
nodes = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)
identities = st.sampled_from(["bob@example.com", "Carol@Example.COM", "x@y.z"])
uints = st.integers(0, 2**63 - 1)
texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=50)
entries = st.builds(
    NodeEntry,
    nodes,
    st.sampled_from(["queued", "sent", "delivered", "failed", "expired"]),
    st.none() | uints,
    st.none() | st.from_regex(r"[a-z_]{1,20}", fullmatch=True),
)


file_metas = st.builds(
    FileMeta,
    texts.filter(bool),
    uints,
    st.binary(min_size=32, max_size=32),
    st.none() | st.sampled_from(["image/jpeg", "application/pdf"]),
)


@st.composite
def out_items(draw: Any) -> OutItem:
    outcome = draw(st.sampled_from([None, "expired", "failed"]))
    chosen = draw(st.lists(entries, max_size=4, unique_by=lambda e: e.node))
    return OutItem(
        draw(ids), draw(identities), TS, draw(uints), draw(texts),
        draw(st.none() | texts), draw(st.none() | ids), draw(st.none() | nodes),
        outcome,
        draw(st.none() | st.just("declined")) if outcome else None,
        draw(st.none() | uints) if outcome else None,
        tuple(chosen),
        draw(st.none() | file_metas),
    )  # fmt: skip


items = st.one_of(
    out_items(),
    st.builds(
        InItem,
        identities,
        ids,
        st.just(TS),
        uints,
        texts,
        st.none() | texts,
        st.none() | ids,
        st.booleans(),
    ),  # fmt: skip
    st.builds(CancelledItem, ids),
    st.builds(ContactItem, identities, uints, st.none() | uints),
    st.builds(PinItem, identities, st.binary(min_size=32, max_size=32), st.booleans(), uints),
)


def roundtrip(stanza: Any) -> Any:
    element = parse(serialize(stanza.to_element()))
    return SYNC_STANZAS[element.tag].from_element(element)


class RoundTripTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(st.builds(SyncBatch, ids, st.just(STORE), uints, st.booleans(),
                     st.lists(items, max_size=5).map(tuple)))  # fmt: skip
    def test_batch(self, batch: SyncBatch) -> None:
        self.assertEqual(roundtrip(batch), batch)

    @given(st.builds(SyncHello, ids, nodes, st.just(STORE), uints, st.booleans()))
    def test_hello(self, hello: SyncHello) -> None:
        self.assertEqual(roundtrip(hello), hello)

    def test_hello_says_out_files_last_and_only_when_it_takes_them(self) -> None:
        self.assertEqual(
            serialize(SyncHello("h1", "laptop", STORE, 5, out_files=True).to_element()),
            f'<sync-hello id="h1" node="laptop" store="{STORE}" top="5" out-files="1"/>'.encode(),
        )
        self.assertEqual(
            serialize(SyncHello("h1", "laptop", STORE, 5).to_element()),
            f'<sync-hello id="h1" node="laptop" store="{STORE}" top="5"/>'.encode(),
        )

    def test_hello_out_files_other_than_1_is_not_a_yes(self) -> None:
        for value in ("0", "true", "yes", "", "11"):
            element = Element(
                "sync-hello",
                {"id": "h1", "node": "laptop", "store": STORE, "top": "5", "out-files": value},
            )
            self.assertFalse(SyncHello.from_element(element).out_files, value)

    @given(st.builds(SyncPull, ids, st.just(STORE), uints, st.integers(1, MAX_ITEMS)))
    def test_pull(self, pull: SyncPull) -> None:
        self.assertEqual(roundtrip(pull), pull)


def bad(tag: str, attrs: dict[str, str], children: list[Element] | None = None) -> StanzaError:
    try:
        SYNC_STANZAS[tag].from_element(Element(tag, attrs, children or []))
    except StanzaError as e:
        return e
    raise AssertionError(f"{tag} {attrs} was accepted")


class MalformedTests(SynchronousTestCase):
    def test_hello(self) -> None:
        self.assertEqual(bad("sync-hello", {"node": "a", "store": STORE, "top": "1"}).ref, None)
        for attrs in (
            {"id": "h", "node": "a b", "store": STORE, "top": "1"},
            {"id": "h", "node": "a", "store": "XYZ", "top": "1"},
            {"id": "h", "node": "a", "store": STORE, "top": "-1"},
            {"id": "h", "node": "a", "store": STORE, "top": "9" * 20},
        ):
            error = bad("sync-hello", attrs)
            self.assertEqual((error.reason, error.ref), ("bad_request", "h"))

    def test_pull(self) -> None:
        for most in ("0", str(MAX_ITEMS + 1), "x"):
            error = bad("sync-pull", {"id": "p", "store": STORE, "after": "0", "max": most})
            self.assertEqual((error.reason, error.ref), ("bad_request", "p"))

    def test_batch(self) -> None:
        attrs = {"ref": "p", "store": STORE, "next": "3", "more": "0"}
        cases: list[list[Element]] = [
            [Element("unknown")],
            [
                Element(
                    "in",
                    {"from": "nobody", "id": "m", "ts": TS, "at": "1", "read": "0"},
                    [Element("body")],
                )
            ],  # fmt: skip
            [
                Element(
                    "in",
                    {"from": "a@b.c", "id": "m", "ts": "yesterday", "at": "1", "read": "0"},
                    [Element("body")],
                )
            ],  # fmt: skip
            [
                Element(
                    "in",
                    {"from": "a@b.c", "id": "m", "ts": TS, "at": "1", "read": "2"},
                    [Element("body")],
                )
            ],  # fmt: skip
            [Element("out", {"id": "m", "to": "a@b.c", "ts": TS, "at": "1"})],
            [
                Element(
                    "out",
                    {"id": "m", "to": "a@b.c", "ts": TS, "at": "1", "outcome": "lost"},
                    [Element("body")],
                )
            ],  # fmt: skip
            [
                Element(
                    "out",
                    {"id": "m", "to": "a@b.c", "ts": TS, "at": "1"},
                    [Element("body"), Element("node", {"name": "p", "state": "gone"})],
                )
            ],
            [
                Element(
                    "out",
                    {"id": "m", "to": "a@b.c", "ts": TS, "at": "1"},
                    [
                        Element("body"),
                        Element("node", {"name": "p", "state": "queued"}),
                        Element("node", {"name": "p", "state": "queued"}),
                    ],
                )
            ],  # fmt: skip
            [
                Element(
                    "pin", {"identity": "a@b.c", "spki": "AB" * 32, "pinned": "1", "version": "1"}
                )
            ],  # fmt: skip
            [Element("contact", {"identity": "a@b.c"})],
            [Element("cancelled", {"id": "bad id"})],
        ]
        for children in cases:
            error = bad("sync-batch", attrs, children)
            self.assertEqual((error.reason, error.ref), ("bad_request", "p"), children[0].tag)
        error = bad("sync-batch", attrs, [Element("cancelled", {"id": "x"})] * (MAX_ITEMS + 1))
        self.assertEqual(error.reason, "too_large")
        error = bad("sync-batch", {**attrs, "more": "yes"})
        self.assertEqual(error.reason, "bad_request")

    def test_file_in_out(self) -> None:
        """An C{out} item's C{file}: name, size, a 32-byte sha256, an optional mime; one."""
        attrs = {"ref": "p", "store": STORE, "next": "3", "more": "0"}
        good = {"name": "a.jpg", "size": "10", "sha256": b64encode(b"\x01" * 32)}
        out = {"id": "m", "to": "a@b.c", "ts": TS, "at": "1"}
        item = SyncBatch.from_element(
            Element(
                "sync-batch", attrs, [Element("out", out, [Element("body"), Element("file", good)])]
            )
        ).items[0]
        assert isinstance(item, OutItem)
        self.assertEqual(item.file, FileMeta("a.jpg", 10, b"\x01" * 32, None))
        for broken in (
            {**good, "name": ""},
            {k: v for k, v in good.items() if k != "name"},
            {**good, "name": "x" * 1025},
            {**good, "size": "-1"},
            {**good, "size": "ten"},
            {**good, "sha256": b64encode(b"\x01" * 31)},
            {**good, "sha256": "not base64!"},
            {k: v for k, v in good.items() if k != "sha256"},
            {**good, "mime": ""},
            {**good, "mime": "m" * 256},
        ):
            children = [Element("out", out, [Element("body"), Element("file", broken)])]
            error = bad("sync-batch", attrs, children)
            self.assertEqual((error.reason, error.ref), ("bad_request", "p"), broken)
        two = [Element("body"), Element("file", good), Element("file", good)]
        error = bad("sync-batch", attrs, [Element("out", out, two)])
        self.assertEqual(
            (error.reason, error.text), ("bad_request", "<out> with more than one file")
        )

    def test_body_over_the_limit_is_too_large(self) -> None:
        body = Element("body", text="x" * 32_769)
        error = bad(
            "sync-batch",
            {"ref": "p", "store": STORE, "next": "3", "more": "0"},
            [
                Element(
                    "in", {"from": "a@b.c", "id": "m", "ts": TS, "at": "1", "read": "0"}, [body]
                )
            ],  # fmt: skip
        )
        self.assertEqual(error.reason, "too_large")


def config(name: str, **options: Any) -> PeerConfig:
    return PeerConfig([certs.make_identity(name, CA)], certs.trust_for(CA), **options)


def wire(initiator: str, responder: str, own_sync: bool = True) -> tuple[Any, Any, list[Any]]:
    a = Connection(config(initiator, own_sync=own_sync), INITIATOR, to=responder)
    b = Connection(config(responder, own_sync=own_sync), RESPONDER)
    seen: list[Any] = []
    a.start()

    def deliver() -> list[Any]:
        answers = []
        while True:
            out = a.data_to_send()
            if out:
                seen.extend(b.receive_data(out))
            back = b.data_to_send()
            if back:
                answers.extend(a.receive_data(back))
            if not out and not back:
                return answers

    deliver()
    seen.clear()
    return a, deliver, seen


class ConnectionGateTests(SynchronousTestCase):
    hello = SyncHello("h1", "laptop", STORE, 5)

    def test_between_nodes_of_one_identity_they_are_events(self) -> None:
        a, deliver, seen = wire("alice@example.com", "alice@example.com")
        a.send(self.hello)
        self.assertEqual(deliver(), [])
        self.assertEqual(seen, [StanzaReceived(self.hello)])

    def test_any_other_peer_gets_error_unsupported(self) -> None:
        a, deliver, seen = wire("mallory@example.com", "alice@example.com")
        a.send(self.hello)
        a.send(SyncPull("p1", STORE, 0))
        answers = deliver()
        self.assertEqual(seen, [])
        self.assertEqual(
            [(e.stanza.reason, e.stanza.ref) for e in answers if isinstance(e.stanza, ErrorStanza)],
            [("unsupported", "h1"), ("unsupported", "p1")],
        )
        self.assertEqual(a.state, "open")

    def test_without_sync_even_our_own_node_gets_error_unsupported(self) -> None:
        a, deliver, seen = wire("alice@example.com", "alice@example.com", own_sync=False)
        a.send(self.hello)
        answers = deliver()
        self.assertEqual(seen, [])
        self.assertEqual(
            [(e.stanza.reason, e.stanza.ref) for e in answers], [("unsupported", "h1")]
        )

    def test_malformed_from_own_node_is_bad_request_not_fatal(self) -> None:
        a, deliver, seen = wire("alice@example.com", "alice@example.com")
        a._send_element(
            Element("sync-pull", {"id": "p1", "store": STORE, "after": "x", "max": "1"})
        )
        answers = deliver()
        self.assertEqual(seen, [])
        self.assertEqual(
            [(e.stanza.reason, e.stanza.ref) for e in answers], [("bad_request", "p1")]
        )
        self.assertEqual(a.state, "open")
