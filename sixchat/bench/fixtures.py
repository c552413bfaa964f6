"""
Certificates and keys for the benchmarks, written once by the parent into the work directory
and loaded by every worker process.

The same certificates serve our protocol and the TLS baselines: leaves carry an rfc822Name,
keyUsage digitalSignature and B{no} extendedKeyUsage. Our §4 profile accepts a leaf without
EKU, and so does OpenSSL's TLS purpose check on both sides; with EKU clientAuth +
emailProtection (our default) OpenSSL would refuse the responder's leaf as a TLS server
certificate, and the baseline would need another certificate.

Files (all PEM, no passwords: throwaway material in a temporary directory):

  - C{peer-ca.pem}, and for each of C{alice}, C{bob} and each key type C{ed25519}, C{p256}:
    C{<who>-<key>.key.pem}, C{<who>-<key>.cert.pem} (identity C{<who>@bench.example});
  - C{registry-ca.pem}, C{registry-ca.key.pem} (the registry's CA, which also issues its
    TLS certificate C{registry-server.*.pem} for 127.0.0.1) and C{registry-users.json}: the
    keys and certificates of the registry's clients C{user<i>@bench.example}.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

PEERS = ("alice", "bob")
KEY_TYPES = ("ed25519", "p256")
DOMAIN = "bench.example"


def _key_pem(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def peer_name(who: str) -> str:
    return f"{who}@{DOMAIN}"


def user_name(i: int) -> str:
    return f"user{i}@{DOMAIN}"


def make_all(workdir: str, registry_users: int = 0) -> None:
    """Write every file the workers need into C{workdir}."""
    from sixchat import pki

    ca_key, ca_cert = pki.create_ca("sixchat bench CA", key=pki.generate_key("ed25519"))
    _write(os.path.join(workdir, "peer-ca.pem"), _cert_pem(ca_cert))
    for who in PEERS:
        for key_type in KEY_TYPES:
            key = pki.generate_key(key_type)
            leaf = pki.issue_leaf(ca_key, ca_cert, [peer_name(who)], key.public_key(), eku=None)
            _write(os.path.join(workdir, f"{who}-{key_type}.key.pem"), _key_pem(key))
            _write(os.path.join(workdir, f"{who}-{key_type}.cert.pem"), _cert_pem(leaf))
    make_registry(workdir, registry_users)


def make_registry(workdir: str, users: int) -> None:
    """The registry CA, its server certificate, and C{users} client identities."""
    from sixchat import pki

    ca_key, ca_cert = pki.create_ca("sixchat bench registry CA", key=pki.generate_key("ed25519"))
    _write(os.path.join(workdir, "registry-ca.pem"), _cert_pem(ca_cert))
    _write(os.path.join(workdir, "registry-ca.key.pem"), _key_pem(ca_key))
    server_key = pki.generate_key("ed25519")
    server = pki.issue_server(ca_key, ca_cert, ["127.0.0.1"], server_key.public_key())
    _write(os.path.join(workdir, "registry-server.key.pem"), _key_pem(server_key))
    _write(os.path.join(workdir, "registry-server.cert.pem"), _cert_pem(server))
    entries = []
    for i in range(users):
        key = pki.generate_key("ed25519")
        leaf = pki.issue_leaf(ca_key, ca_cert, [user_name(i)], key.public_key())
        entries.append(
            {"name": user_name(i), "key": _key_pem(key).decode(), "cert": _cert_pem(leaf).decode()}
        )
    with open(os.path.join(workdir, "registry-users.json"), "w") as f:
        json.dump(entries, f)


# -- loading (workers) ----------------------------------------------------------------------


@dataclass(frozen=True)
class PeerFiles:
    key_path: str
    cert_path: str
    ca_path: str


def peer_files(workdir: str, who: str, key_type: str) -> PeerFiles:
    return PeerFiles(
        os.path.join(workdir, f"{who}-{key_type}.key.pem"),
        os.path.join(workdir, f"{who}-{key_type}.cert.pem"),
        os.path.join(workdir, "peer-ca.pem"),
    )


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def load_key(path: str) -> Any:
    return serialization.load_pem_private_key(_read(path), None)


def load_cert(path: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(_read(path))


def load_identity(workdir: str, who: str, key_type: str) -> Any:
    from sixchat.identity import Identity

    files = peer_files(workdir, who, key_type)
    return Identity(load_key(files.key_path), load_cert(files.cert_path), ())


def load_trust(workdir: str, chain_cache: int | None = None) -> Any:
    """The peers' trust store; C{chain_cache=0} turns its cache of validated chains off."""
    from sixchat.trust import TrustStore

    anchors = [load_cert(os.path.join(workdir, "peer-ca.pem"))]
    if chain_cache is None:
        return TrustStore(anchors)
    return TrustStore(anchors, chain_cache=chain_cache)


def load_registry_users(workdir: str, count: int) -> list[Any]:
    from sixchat.identity import Identity

    with open(os.path.join(workdir, "registry-users.json")) as f:
        entries = json.load(f)[:count]
    return [
        Identity(
            serialization.load_pem_private_key(e["key"].encode(), None),
            x509.load_pem_x509_certificate(e["cert"].encode()),
            (),
        )
        for e in entries
    ]
