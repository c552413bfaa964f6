"""
The handshake's shortcuts are exact (docs/benchmarks.md, "What was changed"): each is
checked against the generic code it bypasses, which stays the definition.

  - the key schedule's one-block HKDF-Expand-Label over precomputed labels (and its HMAC
    through OpenSSL's context) gives what C{cryptography}'s C{HKDFExpand} gives, for every
    label, context and length;
  - the handshake serialisers (M1..M8) are byte for byte C{serialize(stanza.to_element())},
    and raise where that raises;
  - L{handshake_fastpaths.parse_handshake} returns nothing, or exactly the tree L{xmlcodec.parse}
    returns, for any input: in particular it accepts nothing the hardened parser refuses;
  - a trust store's cache of validated chains gives, at any time and with any CRLs, the
    outcome a validation without the cache gives (same result, same error, same warnings).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sixchat import handshake_fastpaths as H
from sixchat import keyschedule as K
from sixchat.connection import (
    INITIATOR,
    RESPONDER,
    Connection,
    ConnectionFailed,
    HandshakeComplete,
)
from sixchat.errors import AlertError
from sixchat.handshake import PeerConfig
from sixchat.pki import create_intermediate, issue_crl
from sixchat.stanzas import ClientHello, Finished, IdentityStanza, ServerHello, Share, Verify
from sixchat.test import certs
from sixchat.test.test_fastpaths import mutations
from sixchat.trust import TrustStore, _issuer_field
from sixchat.xmlcodec import parse, serialize

HYPOTHESIS = settings(max_examples=300, deadline=None)


def _outcome(f: Any, *args: Any) -> tuple[str, Any]:
    try:
        return ("ok", f(*args))
    except (ValueError, OverflowError) as e:
        return (type(e).__name__, str(e))


# -- key schedule ----------------------------------------------------------------------------

_LABELS = st.one_of(
    st.sampled_from(
        [b"key", b"iv", b"finished", b"traffic upd", b"derived", b"r hs traffic",
         b"i hs traffic", b"i ap traffic", b"r ap traffic", b"exporter"]
    ),
    st.binary(max_size=40),
)  # fmt: skip
_SECRETS = st.binary(max_size=80)


class KeyScheduleTests(SynchronousTestCase):
    @HYPOTHESIS
    @given(_SECRETS, _LABELS, st.binary(max_size=64), st.integers(1, 80))
    def test_expand_label(self, secret: bytes, label: bytes, context: bytes, length: int) -> None:
        self.assertEqual(
            K.hkdf_expand_label(secret, label, context, length),
            K.hkdf_expand_label_generic(secret, label, context, length),
        )

    @HYPOTHESIS
    @given(_SECRETS, _LABELS, st.one_of(st.binary(min_size=32, max_size=32), st.binary()))
    def test_derive_secret(self, secret: bytes, label: bytes, transcript: bytes) -> None:
        self.assertEqual(
            K.derive_secret(secret, label, transcript),
            K.hkdf_expand_label_generic(secret, label, transcript, K.HASH_LEN),
        )

    @HYPOTHESIS
    @given(_SECRETS, st.sampled_from([12, 16, 24, 32]), st.binary(max_size=40))
    def test_traffic_and_finished(self, secret: bytes, key_length: int, digest: bytes) -> None:
        generic = K.hkdf_expand_label_generic
        self.assertEqual(
            K.traffic_key_iv(secret, key_length),
            (generic(secret, b"key", b"", key_length), generic(secret, b"iv", b"", 12)),
        )
        finished_key = generic(secret, b"finished", b"", K.HASH_LEN)
        self.assertEqual(K.finished_key(secret), finished_key)
        self.assertEqual(
            K.finished_verify_data(secret, digest),
            hmac.new(finished_key, digest, hashlib.sha256).digest(),
        )
        self.assertEqual(
            K.next_traffic_secret(secret), generic(secret, b"traffic upd", b"", K.HASH_LEN)
        )

    @HYPOTHESIS
    @given(_SECRETS, st.binary(max_size=100))
    def test_extract_and_hmac(self, salt: bytes, ikm: bytes) -> None:
        self.assertEqual(K.hkdf_extract(salt, ikm), hmac.new(salt, ikm, hashlib.sha256).digest())
        self.assertEqual(K._hmac_digest(salt, ikm, "sha256"), hmac.digest(salt, ikm, "sha256"))

    def test_edge_lengths(self) -> None:
        """Lengths outside one block go to the generic code, refusals included."""
        for length in (0, 33, 255 * 32, 255 * 32 + 1):
            self.assertEqual(
                _outcome(K.hkdf_expand_label, b"s" * 32, b"key", b"", length),
                _outcome(K.hkdf_expand_label_generic, b"s" * 32, b"key", b"", length),
            )


# -- serialisers -----------------------------------------------------------------------------

_TRICKY = st.sampled_from(
    list("\r\n\t &<>\"'=/+:") + ["]]>", "\x00", "\x01", "\x1f", "\x7f", "\ufffe", "\ud800",
    "\U0001f600", "é"]
)  # fmt: skip
_TEXT = st.one_of(
    st.text(max_size=20),
    st.lists(st.one_of(_TRICKY, st.characters()), max_size=12).map("".join),
    st.from_regex(r"[a-z0-9@.-]{0,20}", fullmatch=True),
)
_B64_TEXT = st.one_of(st.binary(max_size=40).map(lambda b: H._b64(b).decode()), _TEXT)
_SHARES = st.lists(
    st.builds(Share, _TEXT, _B64_TEXT, st.one_of(st.none(), _B64_TEXT, _TEXT)), max_size=3
)
_CLIENT_HELLOS = st.builds(
    ClientHello,
    st.lists(_TEXT, max_size=3),
    st.binary(max_size=40),
    st.lists(_TEXT, max_size=3),
    _SHARES,
    st.one_of(st.none(), _TEXT),
)
_SERVER_HELLOS = st.builds(ServerHello, _TEXT, st.binary(max_size=40), _TEXT, _SHARES)
_CERT_LISTS = st.lists(st.binary(max_size=60), max_size=4)


class _Identity:
    """What L{H.serialize_identity} reads of an identity: its chain."""

    def __init__(self, chain_der: list[bytes]) -> None:
        self.chain_der = chain_der


class SerializerTests(SynchronousTestCase):
    @HYPOTHESIS
    @given(_CLIENT_HELLOS)
    def test_client_hello(self, hello: ClientHello) -> None:
        self.assertEqual(
            _outcome(H.serialize_client_hello, hello),
            _outcome(lambda: serialize(hello.to_element())),
        )

    @HYPOTHESIS
    @given(_SERVER_HELLOS)
    def test_server_hello(self, hello: ServerHello) -> None:
        self.assertEqual(
            _outcome(H.serialize_server_hello, hello),
            _outcome(lambda: serialize(hello.to_element())),
        )

    @HYPOTHESIS
    @given(_TEXT, _CERT_LISTS)
    def test_identity(self, name: str, chain: list[bytes]) -> None:
        generic = _outcome(lambda: serialize(IdentityStanza(name, chain).to_element()))
        self.assertEqual(_outcome(H.serialize_identity_stanza, name, chain), generic)
        identity = _Identity(chain)
        for _ in range(2):  # made, then from the cache
            self.assertEqual(_outcome(H.serialize_identity, name, identity), generic)

    def test_identity_cache_follows_the_chain(self) -> None:
        identity = _Identity([b"one", b"two"])
        first = H.serialize_identity("a@example.com", identity)  # type: ignore[arg-type]
        identity.chain_der = [b"three"]
        self.assertEqual(
            H.serialize_identity("a@example.com", identity),  # type: ignore[arg-type]
            serialize(IdentityStanza("a@example.com", [b"three"]).to_element()),
        )
        identity.chain_der.append(b"four")  # changed in place
        self.assertEqual(
            H.serialize_identity("a@example.com", identity),  # type: ignore[arg-type]
            serialize(IdentityStanza("a@example.com", [b"three", b"four"]).to_element()),
        )
        self.assertNotEqual(first, H.serialize_identity("a@example.com", identity))  # type: ignore[arg-type]

    @HYPOTHESIS
    @given(_TEXT, st.binary(max_size=80))
    def test_verify(self, alg: str, signature: bytes) -> None:
        self.assertEqual(
            _outcome(H.serialize_verify, alg, signature),
            _outcome(lambda: serialize(Verify(alg, signature).to_element())),
        )

    @HYPOTHESIS
    @given(st.binary(max_size=40))
    def test_finished(self, verify_data: bytes) -> None:
        self.assertEqual(
            H.serialize_finished(verify_data), serialize(Finished(verify_data).to_element())
        )


# -- parse_handshake -------------------------------------------------------------------------


def _generic_parse(data: bytes) -> object:
    try:
        return parse(data)
    except AlertError as e:
        return ("alert", e.reason)


_CANONICAL_TEXT = st.from_regex(r"[ -~]{0,16}", fullmatch=True)
_TOKENS = st.from_regex(r"[A-Za-z0-9._-]{0,12}", fullmatch=True)
_CANONICAL_SHARES = st.lists(
    st.builds(
        Share,
        _CANONICAL_TEXT,
        st.binary(max_size=30).map(lambda b: H._b64(b).decode()),
        st.one_of(st.none(), _CANONICAL_TEXT),
    ),
    max_size=3,
)


def _serialized(f: Any, *args: Any) -> bytes | None:
    try:
        return f(*args)  # type: ignore[no-any-return]
    except ValueError:
        return None


_WIRE = st.one_of(
    st.builds(
        ClientHello,
        st.lists(_CANONICAL_TEXT, max_size=2),
        st.binary(max_size=32),
        st.lists(_TOKENS, max_size=3),
        _CANONICAL_SHARES,
        st.one_of(st.none(), _CANONICAL_TEXT),
    ).map(H.serialize_client_hello),
    st.builds(
        ServerHello, _CANONICAL_TEXT, st.binary(max_size=32), _CANONICAL_TEXT, _CANONICAL_SHARES
    ).map(H.serialize_server_hello),
    st.builds(H.serialize_identity_stanza, _CANONICAL_TEXT, _CERT_LISTS),
    st.builds(H.serialize_verify, _CANONICAL_TEXT, st.binary(max_size=72)),
    st.builds(H.serialize_finished, st.binary(max_size=32)),
    # the general serialisers: texts that need escaping, or cannot be written at all
    _CLIENT_HELLOS.map(lambda h: _serialized(H.serialize_client_hello, h)),
    _SERVER_HELLOS.map(lambda h: _serialized(H.serialize_server_hello, h)),
    st.builds(lambda n, c: _serialized(H.serialize_identity_stanza, n, c), _TEXT, _CERT_LISTS),
    st.builds(lambda a, s: _serialized(H.serialize_verify, a, s), _TEXT, st.binary(max_size=9)),
).filter(lambda data: data is not None)


#: What mutated handshake messages get inserted (see L{test_fastpaths.mutations}).
_HANDSHAKE_PIECES = [
    b"\r", b"&", b"&amp;", b"&#65;", b"<", b">", b"]]>", b"\x00", b"\x01", b"\xff", b"\xc3",
    b"\xef\xbf\xbe", b"\xef\xbb\xbf", b'"', b"'", b" ", b"\t", b"\n", b"<!---->", b"<b/>",
    b"<![CDATA[x]]>", b' x="1"', b' key="a"', b' to="b"', b"/", b"=", b":", b"hello",
    b"<suite>a</suite>", b"<cert>AA==</cert>", b'<share group="g">AA==</share>', b"A",
    b"+", b"\xc3\xa9", b"<?x?>", b"<!DOCTYPE a>",
]  # fmt: skip


def _mutations(data: bytes) -> st.SearchStrategy[bytes]:
    return mutations(data, _HANDSHAKE_PIECES, max_drop=3)


class ParseHandshakeTests(SynchronousTestCase):
    def check(self, data: bytes) -> None:
        fast = H.parse_handshake(data)
        if fast is not None:
            generic = _generic_parse(data)
            self.assertEqual(fast, generic, data)
            # Element equality ignores attribute order; keep the document's order too.
            assert not isinstance(generic, tuple)
            for got, want in zip(fast.iter(), generic.iter(), strict=True):
                self.assertEqual(list(got.attrs.items()), list(want.attrs.items()))

    @HYPOTHESIS
    @given(_WIRE)
    def test_what_we_send(self, data: bytes) -> None:
        self.check(data)

    @HYPOTHESIS
    @given(_WIRE.flatmap(_mutations))
    def test_mutated(self, data: bytes) -> None:
        self.check(data)

    @HYPOTHESIS
    @given(
        st.sampled_from([b"<finished>", b"<verify ", b"<identity ", b"<hello versions=",
                         b"<hello version="]),
        st.binary(max_size=80),
    )  # fmt: skip
    def test_arbitrary_bytes(self, prefix: bytes, data: bytes) -> None:
        self.check(data)
        self.check(prefix + data)

    def test_taken_for_what_we_send(self) -> None:
        """Every message of a real handshake takes the shortcut (else it would buy nothing)."""
        seen: list[bytes] = []
        original = H.parse_handshake

        def spy(data: bytes) -> Any:
            result = original(data)
            self.assertIsNotNone(result, data)
            self.assertEqual(result, parse(data))
            seen.append(data)
            return result

        self.patch(H, "parse_handshake", spy)
        import sixchat.connection as connection_module

        self.patch(connection_module, "parse_handshake", spy)
        for key_type, group in (("ed25519", "x25519-mlkem768"), ("p256", "x25519")):
            initiator, responder = _pair(key_type, [group])
            self.assertIsInstance(_run(initiator, responder)[0], HandshakeComplete)
        self.assertEqual(len(seen), 16)

    def test_left_to_the_generic_path(self) -> None:
        for data in (
            b"<finished>AA==</finished> ",
            b"<finished>AA&#61;=</finished>",
            b"<finished><![CDATA[AA==]]></finished>",
            b"<finished>AA<!-- -->==</finished>",
            b'<verify alg="a&amp;b">AA==</verify>',
            b"<verify alg='ed25519'>AA==</verify>",
            b'<verify alg="ed25519" >AA==</verify>',
            b'<identity name="a@b"><cert>AA==</cert> </identity>',
            b'<identity name="a@b"></identity>',
            b'<hello versions="1" random="AA==" x="y"></hello>',
            b'<hello version="1" random="AA==" suite="s"/>',
            b'<hello versions="1" random="AA=="><suite>a b</suite></hello>',
        ):
            self.assertIsNone(H.parse_handshake(data), data)


# -- validated chains ------------------------------------------------------------------------

CA = certs.make_ca()
BASE = datetime.datetime.now(datetime.UTC).replace(microsecond=0) + datetime.timedelta(days=1)


def _pair(key_type: str, groups: list[str]) -> tuple[Connection, Connection]:
    alice = PeerConfig(
        [certs.make_identity("alice@example.com", CA, key_type=key_type)], certs.trust_for(CA)
    )
    bob = PeerConfig(
        [certs.make_identity("bob@example.com", CA, key_type=key_type)], certs.trust_for(CA)
    )
    return (
        Connection(alice, INITIATOR, to="bob@example.com", groups=groups),
        Connection(bob, RESPONDER),
    )


def _run(initiator: Connection, responder: Connection) -> list[Any]:
    initiator.start()
    responder.receive_data(initiator.data_to_send())
    events = initiator.receive_data(responder.data_to_send())
    events += responder.receive_data(initiator.data_to_send())
    return events


def _at(seconds: float) -> datetime.datetime:
    return BASE + datetime.timedelta(seconds=seconds)


def _validation(store: TrustStore, chain: list[bytes], when: datetime.datetime) -> object:
    """Everything a validation tells: the result's contents, or the error and its text."""
    try:
        peer = store.validate(chain, when)
    except AlertError as e:
        return (type(e).__name__, str(e))
    return (
        peer.leaf_der,
        peer.names,
        peer.alg,
        peer.spki_sha256,
        tuple(c.public_bytes(_DER) for c in peer.chain),
    )


_DER = Encoding.DER
_INTERMEDIATE_KEY = certs.key_for("ed25519", "int:cache test")


def _chain(leaf_window: tuple[int, int], intermediate_window: tuple[int, int] | None) -> Any:
    """A leaf (and perhaps an intermediate) valid in the given windows (seconds from BASE)."""
    issuer = CA
    if intermediate_window is not None:
        key, cert = create_intermediate(
            CA.key, CA.cert, "cache test", key=_INTERMEDIATE_KEY,
            not_before=_at(intermediate_window[0]), not_after=_at(intermediate_window[1]),
        )  # fmt: skip
        issuer = certs.TestCA(key=key, cert=cert, anchor=CA.anchor, chain=(cert,))
    identity = certs.make_identity(
        "alice@example.com", issuer,
        not_before=_at(leaf_window[0]), not_after=_at(leaf_window[1]),
    )  # fmt: skip
    return identity, issuer


_WINDOWS = st.tuples(st.integers(-30, 6), st.integers(1, 60)).map(lambda t: (t[0], t[0] + t[1]))


class ChainCacheTests(SynchronousTestCase):
    @settings(max_examples=60, deadline=None)
    @given(
        _WINDOWS,
        st.one_of(st.none(), _WINDOWS),
        st.lists(
            st.tuples(
                st.one_of(st.integers(-34, 64), st.sampled_from([-1, 0, 1, 2, 3])),
                st.sampled_from([0, 1, 500_000, 999_999]), st.booleans(),
            ),
            min_size=4, max_size=16,
        ),
        st.lists(st.integers(0, 11), max_size=2),
    )  # fmt: skip
    def test_same_as_without_cache(
        self,
        leaf_window: tuple[int, int],
        intermediate_window: tuple[int, int] | None,
        times: list[tuple[int, int, bool]],
        crl_steps: list[int],
    ) -> None:
        """At any sequence of times, with CRLs arriving in between, cached == uncached."""
        identity, issuer = _chain(leaf_window, intermediate_window)
        cached_warnings: list[str] = []
        plain_warnings: list[str] = []
        cached = TrustStore([CA.anchor], warn=cached_warnings.append)
        plain = TrustStore([CA.anchor], warn=plain_warnings.append, chain_cache=0)
        chain = identity.chain_der
        serial = identity.leaf.serial_number
        for step, (seconds, micro, revoke) in enumerate(times):
            if step in crl_steps:  # a CRL arrives: stale or not, revoking the leaf or not
                crl = issue_crl(
                    issuer.key, issuer.cert, [serial] if revoke else [],
                    last_update=_at(-100 + step), next_update=_at(seconds - 1 + 3 * (step % 2)),
                    crl_number=step + 1,
                )  # fmt: skip
                self.assertEqual(cached.add_crl(crl), plain.add_crl(crl))
            when = _at(seconds) + datetime.timedelta(microseconds=micro)
            self.assertEqual(_validation(cached, chain, when), _validation(plain, chain, when))
            self.assertEqual(cached_warnings, plain_warnings)

    def test_hits_and_misses(self) -> None:
        identity, _ = _chain((-100, 100), None)
        store = TrustStore([CA.anchor])
        calls: list[object] = []
        original = store._validate

        def counting(*args: Any) -> Any:
            calls.append(args)
            return original(*args)

        self.patch(store, "_validate", counting)
        first = store.validate(identity.chain_der, _at(0))
        self.assertIs(store.validate(identity.chain_der, _at(50)), first)  # a hit
        self.assertEqual(len(calls), 1)
        store.validate(identity.chain_der, _at(0), require_key_encipherment=False)
        self.assertEqual(len(calls), 1)
        with self.assertRaises(AlertError):  # past notAfter: validated again, and refused
            store.validate(identity.chain_der, _at(101))
        self.assertEqual(len(calls), 2)
        with self.assertRaises(AlertError):  # before notBefore
            store.validate(identity.chain_der, _at(-101))
        self.assertEqual(len(calls), 3)
        store.validate(list(identity.chain_der), _at(97))  # still a hit
        self.assertEqual(len(calls), 3)
        store.validate(identity.chain_der, _at(99))  # notAfter less than two seconds ahead
        self.assertEqual(len(calls), 4)
        store.validate(identity.chain_der, _at(98))  # the entry made at 0 still holds
        self.assertEqual(len(calls), 4)

    def test_revocation_checked_at_every_use(self) -> None:
        identity, _ = _chain((-100, 100), None)
        store = TrustStore([CA.anchor])
        store.validate(identity.chain_der, _at(0))
        store.add_crl(issue_crl(CA.key, CA.cert, [identity.leaf.serial_number], crl_number=1))
        with self.assertRaises(AlertError) as caught:
            store.validate(identity.chain_der, _at(1))
        self.assertEqual(caught.exception.reason, "certificate_revoked")

    def test_bounded(self) -> None:
        store = TrustStore([CA.anchor], chain_cache=3)
        chains = [_chain((-100, 100 + i), None)[0].chain_der for i in range(5)]
        for chain in chains:
            store.validate(chain, _at(0))
        self.assertEqual(len(store._validated), 3)
        self.assertEqual(
            [key[0] for key in store._validated], [tuple(chain) for chain in chains[2:]]
        )

    def test_key_encipherment_is_part_of_the_key(self) -> None:
        identity, _ = _chain((-100, 100), None)  # keyUsage digitalSignature only
        store = TrustStore([CA.anchor])
        store.validate(identity.chain_der, _at(0))
        with self.assertRaises(AlertError):
            store.validate(identity.chain_der, _at(0), require_key_encipherment=True)


_NAMES = ("alice@example.com", "bob@example.com", "carol@example.com")


def _counting(test: SynchronousTestCase, store: TrustStore) -> list[object]:
    """The full validations C{store} makes from now on (calls of C{_validate})."""
    calls: list[object] = []
    original = store._validate

    def counting(*args: Any) -> Any:
        calls.append(args)
        return original(*args)

    test.patch(store, "_validate", counting)
    return calls


def _intermediate(window: tuple[int, int], name: str = "cache test", extra: Any = ()) -> Any:
    """An intermediate under CA valid in C{window}, with C{extra} (value, critical) added."""
    key, cert = create_intermediate(
        CA.key, CA.cert, name, key=_INTERMEDIATE_KEY,
        not_before=_at(window[0]), not_after=_at(window[1]),
    )  # fmt: skip
    if extra:
        builder = (
            x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
            .public_key(cert.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(cert.not_valid_before_utc).not_valid_after(cert.not_valid_after_utc)
        )  # fmt: skip
        for ext in cert.extensions:
            builder = builder.add_extension(ext.value, ext.critical)
        for value, critical in extra:
            builder = builder.add_extension(value, critical)
        cert = builder.sign(CA.key, None)
    return certs.TestCA(key=key, cert=cert, anchor=CA.anchor, chain=(cert,))


def _leaf(issuer: Any, name: str, window: tuple[int, int] = (-100, 100)) -> list[bytes]:
    identity = certs.make_identity(
        name, issuer, not_before=_at(window[0]), not_after=_at(window[1])
    )
    return list(identity.chain_der)


class KnownIssuerTests(SynchronousTestCase):
    """
    The known-issuer cache: a new leaf under an intermediate validated before is checked by
    OpenSSL against that intermediate alone, with exactly the result a full validation gives.
    """

    @settings(max_examples=40, deadline=None)
    @given(
        _WINDOWS,
        st.lists(
            st.tuples(
                st.integers(0, 2), _WINDOWS,
                st.one_of(st.integers(-34, 64), st.sampled_from([-1, 0, 1, 2, 3])),
                st.sampled_from([0, 999_999]),
            ),
            min_size=3, max_size=10,
        ),
        st.lists(st.tuples(st.integers(0, 9), st.sampled_from(["none", "leaf", "int"])),
                 max_size=3),
    )  # fmt: skip
    def test_same_as_without_cache(
        self,
        intermediate_window: tuple[int, int],
        steps: list[tuple[int, tuple[int, int], int, int]],
        crl_steps: list[tuple[int, str]],
    ) -> None:
        """
        New leaves under one intermediate at any times, with CRLs of the root (revoking the
        intermediate or not) and of the intermediate (revoking a leaf or not) arriving in
        between: the store with the cache and the one without agree on every result, error
        and warning.
        """
        issuer = _intermediate(intermediate_window)
        cached_warnings: list[str] = []
        plain_warnings: list[str] = []
        cached = TrustStore([CA.anchor], warn=cached_warnings.append, chain_cache=0)
        plain = TrustStore(
            [CA.anchor], warn=plain_warnings.append, chain_cache=0, issuer_cache=0
        )
        crls = dict(crl_steps)
        for step, (who, leaf_window, seconds, micro) in enumerate(steps):
            chain = _leaf(issuer, _NAMES[who], leaf_window)
            if step in crls:
                what = crls[step]
                if what == "int":  # the root revokes the intermediate, or not
                    crl = issue_crl(CA.key, CA.cert, [issuer.cert.serial_number],
                                    last_update=_at(-100), next_update=_at(seconds + step),
                                    crl_number=100 + step)  # fmt: skip
                else:  # the intermediate revokes this leaf, or no one
                    serial = x509.load_der_x509_certificate(chain[0]).serial_number
                    crl = issue_crl(issuer.key, issuer.cert, [serial] if what == "leaf" else [],
                                    last_update=_at(-100), next_update=_at(seconds - 1 + step),
                                    crl_number=step + 1)  # fmt: skip
                self.assertEqual(cached.add_crl(crl), plain.add_crl(crl))
            when = _at(seconds) + datetime.timedelta(microseconds=micro)
            self.assertEqual(_validation(cached, chain, when), _validation(plain, chain, when))
            self.assertEqual(cached_warnings, plain_warnings)

    def test_a_new_leaf_under_a_known_intermediate(self) -> None:
        issuer = _intermediate((-100, 100))
        store = TrustStore([CA.anchor], chain_cache=0)
        calls = _counting(self, store)
        store.validate(_leaf(issuer, "alice@example.com"), _at(0))
        self.assertEqual(len(calls), 1)
        peer = store.validate(_leaf(issuer, "bob@example.com"), _at(1))
        self.assertEqual(len(calls), 1)  # through the known issuer
        self.assertEqual(peer.names, ("bob@example.com",))
        self.assertEqual(
            [c.public_bytes(_DER) for c in peer.chain[1:]],
            [issuer.cert.public_bytes(_DER), CA.anchor.public_bytes(_DER)],
        )

    def test_a_revoked_intermediate_is_refused(self) -> None:
        """Revocation of the intermediate is checked at every use of the cache."""
        issuer = _intermediate((-100, 100))
        store = TrustStore([CA.anchor], chain_cache=0)
        store.validate(_leaf(issuer, "alice@example.com"), _at(0))
        store.add_crl(issue_crl(CA.key, CA.cert, [issuer.cert.serial_number], crl_number=7))
        with self.assertRaises(AlertError) as caught:
            store.validate(_leaf(issuer, "bob@example.com"), _at(1))
        self.assertEqual(caught.exception.reason, "certificate_revoked")
        self.assertIn("depth 1", caught.exception.text)

    def test_revocation_checked_even_without_a_crl_change(self) -> None:
        """The cache is not what refuses: a revocation the CRLs held is seen at each use."""
        issuer = _intermediate((-100, 100))
        store = TrustStore([CA.anchor], chain_cache=0)
        bob = _leaf(issuer, "bob@example.com")
        serial = x509.load_der_x509_certificate(bob[0]).serial_number
        store.add_crl(issue_crl(issuer.key, issuer.cert, [serial], crl_number=1))
        calls = _counting(self, store)
        store.validate(_leaf(issuer, "alice@example.com"), _at(0))
        with self.assertRaises(AlertError) as caught:
            store.validate(bob, _at(1))
        self.assertEqual(caught.exception.reason, "certificate_revoked")
        self.assertEqual(len(calls), 1)  # refused through the cache, by the revocation step

    def test_an_expired_intermediate_is_refused(self) -> None:
        issuer = _intermediate((-100, 10))
        store = TrustStore([CA.anchor], chain_cache=0)
        calls = _counting(self, store)
        store.validate(_leaf(issuer, "alice@example.com", (-100, 100)), _at(0))
        with self.assertRaises(AlertError) as caught:
            store.validate(_leaf(issuer, "bob@example.com", (-100, 100)), _at(11))
        self.assertEqual(caught.exception.reason, "certificate_expired")
        self.assertEqual(len(calls), 2)  # past the intermediate's notAfter: in full

    def test_an_expired_leaf_is_refused(self) -> None:
        issuer = _intermediate((-100, 100))
        store = TrustStore([CA.anchor], chain_cache=0)
        store.validate(_leaf(issuer, "alice@example.com"), _at(0))
        with self.assertRaises(AlertError) as caught:
            store.validate(_leaf(issuer, "bob@example.com", (-100, 5)), _at(6))
        self.assertEqual(caught.exception.reason, "certificate_expired")

    def test_a_changed_intermediate_is_validated_in_full(self) -> None:
        """Keyed by the exact DER: the same name and key in another certificate is new."""
        store = TrustStore([CA.anchor], chain_cache=0)
        calls = _counting(self, store)
        store.validate(_leaf(_intermediate((-100, 100)), "alice@example.com"), _at(0))
        other = _intermediate((-100, 101))
        store.validate(_leaf(other, "bob@example.com"), _at(1))
        self.assertEqual(len(calls), 2)
        der = other.cert.public_bytes(_DER)
        forged = der[:-1] + bytes([der[-1] ^ 1])  # its signature damaged
        with self.assertRaises(AlertError) as caught:
            store.validate([_leaf(other, "carol@example.com")[0], forged], _at(2))
        self.assertEqual(caught.exception.reason, "bad_certificate")
        self.assertEqual(len(calls), 3)

    def test_a_crl_change_empties_it(self) -> None:
        issuer = _intermediate((-100, 100))
        store = TrustStore([CA.anchor], chain_cache=0)
        store.validate(_leaf(issuer, "alice@example.com"), _at(0))
        self.assertEqual(len(store._issuers), 1)
        store.add_crl(issue_crl(CA.key, CA.cert, [], crl_number=3))
        self.assertEqual(len(store._issuers), 0)

    def test_a_leaf_of_another_issuer_gets_the_full_error(self) -> None:
        """A leaf not issued by the known intermediate: the full validation decides."""
        issuer = _intermediate((-100, 100))
        store = TrustStore([CA.anchor], chain_cache=0)
        plain = TrustStore([CA.anchor], chain_cache=0, issuer_cache=0)
        store.validate(_leaf(issuer, "alice@example.com"), _at(0))
        stranger = certs.make_intermediate(certs.make_ca("ed25519", "another root"))
        chain = [_leaf(stranger, "bob@example.com")[0], issuer.cert.public_bytes(_DER)]
        self.assertEqual(_validation(store, chain, _at(1)), _validation(plain, chain, _at(1)))
        self.assertEqual(_validation(store, chain, _at(1))[0], "UnknownCA")

    def test_path_dependent_intermediates_are_not_kept(self) -> None:
        """Name constraints or policy constraints above the leaf: every leaf in full."""
        for extra in (
            (x509.NameConstraints(permitted_subtrees=[x509.RFC822Name("example.com")],
                                  excluded_subtrees=None), True),
            (x509.PolicyConstraints(require_explicit_policy=None, inhibit_policy_mapping=0),
             True),
            (x509.InhibitAnyPolicy(0), True),
        ):  # fmt: skip
            issuer = _intermediate((-100, 100), extra=[extra])
            store = TrustStore([CA.anchor], chain_cache=0)
            calls = _counting(self, store)
            store.validate(_leaf(issuer, "alice@example.com"), _at(0))
            store.validate(_leaf(issuer, "bob@example.com"), _at(1))
            self.assertEqual((len(calls), len(store._issuers)), (2, 0), extra)

    def test_only_the_exact_path_in_order(self) -> None:
        """Extra or reordered certificates after the leaf are validated in full."""
        issuer = _intermediate((-100, 100))
        store = TrustStore([CA.anchor], chain_cache=0)
        calls = _counting(self, store)
        store.validate(_leaf(issuer, "alice@example.com"), _at(0))
        bob = _leaf(issuer, "bob@example.com")
        store.validate([*bob, CA.anchor.public_bytes(_DER)], _at(1))
        self.assertEqual(len(calls), 2)
        self.assertEqual(len(store._issuers), 1)  # the longer chain is not kept either

    def test_leaves_under_a_root_are_not_concerned(self) -> None:
        store = TrustStore([CA.anchor], chain_cache=0)
        store.validate(_leaf(CA, "alice@example.com"), _at(0))
        self.assertEqual(len(store._issuers), 0)

    def test_handshakes_of_new_peers_under_a_known_intermediate(self) -> None:
        """
        Through the handshake: the responder validates the first initiator's chain in full,
        the next initiator (another leaf, the same intermediate) through the known issuer,
        and once the root's CRL revokes the intermediate the third is refused.
        """
        issuer = certs.make_intermediate(CA, "known issuer test")
        trust = TrustStore([CA.anchor], chain_cache=0)
        calls = _counting(self, trust)
        bob = PeerConfig([certs.make_identity("bob@example.com", CA)], trust)

        def handshake(name: str) -> list[Any]:
            alice = PeerConfig([certs.make_identity(name, issuer)], certs.trust_for(CA))
            initiator = Connection(alice, INITIATOR, to="bob@example.com")
            return _run(initiator, Connection(bob, RESPONDER))

        for name, full in (("alice@example.com", 1), ("carol@example.com", 1)):
            events = handshake(name)
            self.assertEqual([type(e) for e in events], [HandshakeComplete, HandshakeComplete])
            peer = events[1].result.peer
            self.assertEqual((peer.names, len(peer.chain), len(calls)), ((name,), 3, full))
        trust.add_crl(issue_crl(CA.key, CA.cert, [issuer.cert.serial_number], crl_number=9))
        events = handshake("dave@example.com")  # the initiator's completion, bob's refusal
        self.assertIsInstance(events[-1], ConnectionFailed)
        self.assertEqual(events[-1].error.reason, "certificate_revoked")
        self.assertEqual(len(calls), 2)  # the new CRL emptied the cache: validated in full

    def test_bounded(self) -> None:
        store = TrustStore([CA.anchor], chain_cache=0, issuer_cache=2)
        issuers = [_intermediate((-100, 100 + i)) for i in range(4)]
        for issuer in issuers:
            store.validate(_leaf(issuer, "alice@example.com"), _at(0))
        self.assertEqual(
            list(store._issuers), [(i.cert.public_bytes(_DER),) for i in issuers[2:]]
        )
        self.assertLessEqual(len(store._issuer_stores), 2)


class IssuerNameTests(SynchronousTestCase):
    """The no-CRL warning's key, read from the issuer field's bytes, is the name's DER."""

    @settings(max_examples=80, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from([NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME,
                                 NameOID.ORGANIZATIONAL_UNIT_NAME, NameOID.COUNTRY_NAME]),
                st.one_of(
                    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=16),
                    st.text(st.characters(max_codepoint=126), min_size=1, max_size=64),
                ),
            ),
            min_size=0, max_size=4,
        ),
        st.integers(1, 2**159 - 1),
    )  # fmt: skip
    def test_same_as_parsed_name(self, attributes: list[tuple[Any, str]], serial: int) -> None:
        attrs = []
        for oid, value in attributes:
            if oid == NameOID.COUNTRY_NAME:
                value = ("DE", "FR", "US")[len(value) % 3]
            attrs.append(x509.NameAttribute(oid, value))
        issuer = x509.Name(attrs)
        key = certs.key_for("ed25519", "leaf:issuer-test")
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(BASE)
            .not_valid_after(BASE + datetime.timedelta(days=1))
            .sign(CA.key, None)  # type: ignore[arg-type]
        )
        der = cert.public_bytes(_DER)
        expected = cert.issuer.public_bytes()
        self.assertEqual(_issuer_field(der), expected)
        store = TrustStore([CA.anchor])
        for _ in range(2):  # made, then remembered
            self.assertEqual(store._issuer_name_der(cert, der), expected)
        self.assertEqual(store._issuer_name_der(cert, None), expected)

    def test_not_a_certificate(self) -> None:
        for data in (b"", b"\x30", b"\x30\x03\x30\x01\x02", b"\x31\x00", b"\x30\x85" + b"\x00" * 9):
            self.assertIsNone(_issuer_field(data), data)
