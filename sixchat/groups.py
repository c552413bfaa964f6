"""
Key-exchange groups of spec §5.2: share encoding, validation and the shared secret.

The initiator makes a L{PendingShare} per offered group (its private half) and later calls
C{finish(responder_share)}; the responder calls L{respond} on the chosen initiator share and
gets its own share and the secret in one step. Every validation failure is
C{illegal_parameter}, except the two places the spec forbids any distinguishable failure:
an OAEP decryption failure and ML-KEM implicit rejection (both show later as
C{bad_record_mac}).

Ephemeral keys and randomness come from an L{Entropy}, so tests can make the handshake vector
reproduce byte for byte; production uses fresh keys from the OS.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Protocol

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, mlkem, padding, rsa, x25519

from sixchat.errors import IllegalParameter

X25519 = "x25519"
SECP256R1 = "secp256r1"
X25519_MLKEM768 = "x25519-mlkem768"
RSA_OAEP = "rsa-oaep"

#: Every group we implement, in our default preference order (rsa-oaep off unless enabled).
GROUPS = (X25519_MLKEM768, X25519, SECP256R1, RSA_OAEP)
DEFAULT_GROUPS = (X25519_MLKEM768, X25519, SECP256R1)

MLKEM768_EK_LEN = 1184
MLKEM768_CT_LEN = 1088
X25519_LEN = 32
P256_POINT_LEN = 65
RSA_SECRET_LEN = 32

_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


class Entropy:
    """Where randomness and ephemeral keys come from; override for deterministic tests."""

    def random(self, n: int) -> bytes:
        return os.urandom(n)

    def x25519(self) -> x25519.X25519PrivateKey:
        return x25519.X25519PrivateKey.generate()

    def p256(self) -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def mlkem768(self) -> mlkem.MLKEM768PrivateKey:
        return mlkem.MLKEM768PrivateKey.generate()


class FixedEntropy(Entropy):
    """
    Entropy that hands out given values first (test vectors), then falls back to fresh ones.
    """

    def __init__(
        self,
        randoms: list[bytes] | None = None,
        x25519_keys: list[bytes] | None = None,
        mlkem_seeds: list[bytes] | None = None,
    ) -> None:
        self._randoms = list(randoms or [])
        self._x25519 = list(x25519_keys or [])
        self._mlkem = list(mlkem_seeds or [])

    def random(self, n: int) -> bytes:
        if self._randoms and len(self._randoms[0]) == n:
            return self._randoms.pop(0)
        return super().random(n)

    def x25519(self) -> x25519.X25519PrivateKey:
        if self._x25519:
            return x25519.X25519PrivateKey.from_private_bytes(self._x25519.pop(0))
        return super().x25519()

    def mlkem768(self) -> mlkem.MLKEM768PrivateKey:
        if self._mlkem:
            return mlkem.MLKEM768PrivateKey.from_seed_bytes(self._mlkem.pop(0))
        return super().mlkem768()


def _x25519_public(data: bytes) -> x25519.X25519PublicKey:
    if len(data) != X25519_LEN:
        raise IllegalParameter("X25519 share must be 32 bytes")
    return x25519.X25519PublicKey.from_public_bytes(data)


def _x25519_exchange(private: x25519.X25519PrivateKey, peer: bytes) -> bytes:
    try:
        secret = private.exchange(_x25519_public(peer))
    except ValueError:  # cryptography refuses an all-zero result
        raise IllegalParameter("X25519 share gives an all-zero secret") from None
    if secret == bytes(X25519_LEN):  # pragma: no cover - refused above on current versions
        raise IllegalParameter("X25519 share gives an all-zero secret")
    return secret


def _x25519_bytes(private: x25519.X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes_raw()


def _p256_public(data: bytes) -> ec.EllipticCurvePublicKey:
    if len(data) != P256_POINT_LEN or data[0] != 0x04:
        raise IllegalParameter("secp256r1 share must be an uncompressed point")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), data)
    except ValueError:
        raise IllegalParameter("secp256r1 share is not on the curve") from None


def _p256_bytes(private: ec.EllipticCurvePrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def _mlkem_public(data: bytes) -> mlkem.MLKEM768PublicKey:
    try:
        return mlkem.MLKEM768PublicKey.from_public_bytes(data)
    except ValueError:  # includes the FIPS 203 modulus check
        raise IllegalParameter("ML-KEM-768 encapsulation key is invalid") from None


def rsa_key_id(leaf_der: bytes) -> bytes:
    """The value an C{rsa-oaep} share's C{key} attribute carries (before base64)."""
    return hashlib.sha256(leaf_der).digest()


class PendingShare(Protocol):
    """The initiator's private half of one offered share."""

    group: str
    share: bytes

    def finish(self, responder_share: bytes) -> bytes:
        """The shared secret (IKM) from the responder's share."""


class _X25519Pending:
    def __init__(self, entropy: Entropy) -> None:
        self.group = X25519
        self._private = entropy.x25519()
        self.share = _x25519_bytes(self._private)

    def finish(self, responder_share: bytes) -> bytes:
        return _x25519_exchange(self._private, responder_share)


class _P256Pending:
    def __init__(self, entropy: Entropy) -> None:
        self.group = SECP256R1
        self._private = entropy.p256()
        self.share = _p256_bytes(self._private)

    def finish(self, responder_share: bytes) -> bytes:
        return self._private.exchange(ec.ECDH(), _p256_public(responder_share))


class _HybridPending:
    def __init__(self, entropy: Entropy) -> None:
        self.group = X25519_MLKEM768
        self._kem = entropy.mlkem768()
        self._x25519 = entropy.x25519()
        self.share = self._kem.public_key().public_bytes_raw() + _x25519_bytes(self._x25519)

    def finish(self, responder_share: bytes) -> bytes:
        if len(responder_share) != MLKEM768_CT_LEN + X25519_LEN:
            raise IllegalParameter("x25519-mlkem768 responder share must be 1120 bytes")
        ciphertext = responder_share[:MLKEM768_CT_LEN]
        kem_secret = self._kem.decapsulate(ciphertext)  # implicit rejection: never fails
        return kem_secret + _x25519_exchange(self._x25519, responder_share[MLKEM768_CT_LEN:])


class _RsaOaepPending:
    """Key transport to a responder certificate we already hold (IRP or a pin)."""

    def __init__(self, entropy: Entropy, responder_leaf_der: bytes) -> None:
        from cryptography import x509

        self.group = RSA_OAEP
        self.responder_leaf_der = responder_leaf_der
        public_key = x509.load_der_x509_certificate(responder_leaf_der).public_key()
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise ValueError("rsa-oaep needs a responder certificate with an RSA key")
        self._secret = entropy.random(RSA_SECRET_LEN)
        self.share = public_key.encrypt(self._secret, _OAEP)
        self.key_id = rsa_key_id(responder_leaf_der)

    def finish(self, responder_share: bytes) -> bytes:
        if responder_share:
            raise IllegalParameter("rsa-oaep responder share must be empty")
        return self._secret


def start_share(
    group: str, entropy: Entropy, responder_leaf_der: bytes | None = None
) -> PendingShare:
    """The initiator's share for C{group}."""
    if group == X25519:
        return _X25519Pending(entropy)
    if group == SECP256R1:
        return _P256Pending(entropy)
    if group == X25519_MLKEM768:
        return _HybridPending(entropy)
    if group == RSA_OAEP:
        if responder_leaf_der is None:
            raise ValueError("rsa-oaep needs the responder's certificate")
        return _RsaOaepPending(entropy, responder_leaf_der)
    raise ValueError(f"unknown group {group!r}")


def respond(
    group: str,
    initiator_share: bytes,
    entropy: Entropy,
    rsa_key: rsa.RSAPrivateKey | None = None,
) -> tuple[bytes, bytes]:
    """
    The responder's side: validate the chosen initiator share, return (our share, secret).

    @raise IllegalParameter: for an invalid share (§5.2).
    """
    if group == X25519:
        private = entropy.x25519()
        return _x25519_bytes(private), _x25519_exchange(private, initiator_share)
    if group == SECP256R1:
        peer = _p256_public(initiator_share)
        p256 = entropy.p256()
        return _p256_bytes(p256), p256.exchange(ec.ECDH(), peer)
    if group == X25519_MLKEM768:
        if len(initiator_share) != MLKEM768_EK_LEN + X25519_LEN:
            raise IllegalParameter("x25519-mlkem768 initiator share must be 1216 bytes")
        encapsulation_key = _mlkem_public(initiator_share[:MLKEM768_EK_LEN])
        private = entropy.x25519()
        x_secret = _x25519_exchange(private, initiator_share[MLKEM768_EK_LEN:])
        kem_secret, ciphertext = encapsulation_key.encapsulate()
        return ciphertext + _x25519_bytes(private), kem_secret + x_secret
    if group == RSA_OAEP:
        assert rsa_key is not None
        if len(initiator_share) != (rsa_key.key_size + 7) // 8:
            raise IllegalParameter("rsa-oaep ciphertext length differs from the modulus")
        return b"", rsa_oaep_decrypt(rsa_key, initiator_share, entropy.random)
    raise ValueError(f"unknown group {group!r}")


def rsa_oaep_decrypt(
    key: rsa.RSAPrivateKey, ciphertext: bytes, random: Callable[[int], bytes]
) -> bytes:
    """
    Decrypt the transported secret; on any failure continue with random bytes and say nothing
    (§5.2: no padding oracle), so the initiator fails later with C{bad_record_mac}.
    """
    replacement = random(RSA_SECRET_LEN)
    try:
        secret = key.decrypt(ciphertext, _OAEP)
    except ValueError:
        return replacement
    return secret if len(secret) == RSA_SECRET_LEN else replacement
