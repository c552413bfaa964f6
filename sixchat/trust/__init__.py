"""Deciding whether a peer's certificate chain proves its identity; see L{chain}."""

from sixchat.trust.chain import (
    OPENSSL_ERRORS,
    PIN_POLICIES,
    InMemoryPinStore,
    IPinStore,
    PeerCertificate,
    PinPolicy,
    TrustLoadError,
    TrustStore,
)
from sixchat.trust.chain import _crl_key_id as _crl_key_id
from sixchat.trust.chain import _issuer_field as _issuer_field

__all__ = [
    "OPENSSL_ERRORS",
    "PIN_POLICIES",
    "IPinStore",
    "InMemoryPinStore",
    "PeerCertificate",
    "PinPolicy",
    "TrustLoadError",
    "TrustStore",
]
