"""
Deciding whether a peer's certificate chain proves its identity (spec §4, §11.7, §11.8), and
remembering which keys we have seen for each identity (§9.3, §11.15).

The package is split along the seams of that work, so that each rule has one home:

  - L{chain}: L{TrustStore}, path validation through OpenSSL, the validated-chain cache;
  - L{profile}: chain strength (§11.7) and the leaf profile (§4);
  - L{crl}: every CRL rule (number, key identifier, signature, §11.8 revocation) and the CRLs
    a store holds; the agent's CRL updater uses the same rules;
  - L{der}: the few DER steps that find an issuer field without parsing;
  - L{files}: anchors and CRLs from the user's files;
  - L{pins}: the keys seen per identity, and what a key change means.

Everything other code imports from C{sixchat.trust} is re-exported here.
"""

from sixchat.trust.chain import (
    CHAIN_CACHE_SIZE,
    ISSUER_CACHE_SIZE,
    OPENSSL_ERRORS,
    PeerCertificate,
    TrustStore,
)
from sixchat.trust.crl import MAX_CRL_CANDIDATES
from sixchat.trust.der import issuer_field as _issuer_field
from sixchat.trust.files import TrustLoadError
from sixchat.trust.pins import PIN_POLICIES, InMemoryPinStore, IPinStore, PinPolicy

__all__ = [
    "CHAIN_CACHE_SIZE",
    "ISSUER_CACHE_SIZE",
    "MAX_CRL_CANDIDATES",
    "OPENSSL_ERRORS",
    "PIN_POLICIES",
    "IPinStore",
    "InMemoryPinStore",
    "PeerCertificate",
    "PinPolicy",
    "TrustLoadError",
    "TrustStore",
    "_issuer_field",
]
