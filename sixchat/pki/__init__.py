"""
The certificate-authority side of the protocol's PKI (spec §4): keys, CA and leaf
certificates (L{issue}), CRLs (L{crl}), and the files that carry them (L{files}).

Pure functions over C{cryptography} objects, so that the C{sixchat pki} command line, the
registry's CA and the tests all make certificates the same way; nothing in this package talks
to the network or imports Twisted. Every name is re-exported here.
"""

# serialization: some callers reach it as pki.serialization.
from cryptography.hazmat.primitives import serialization as serialization

from sixchat.pki.crl import issue_crl
from sixchat.pki.files import (
    CA_CERT_NAMES,
    CA_KEY_NAMES,
    P12_KDF_ROUNDS,
    PKIError,
    init_ca,
    load_ca,
    load_ca_cert,
    load_ca_chain,
    write_ca,
    write_p12,
    write_private_file,
)
from sixchat.pki.issue import (
    CLOCK_SKEW,
    EKU_NAMES,
    KEY_TYPES,
    create_ca,
    create_intermediate,
    describe_key,
    generate_key,
    issue_leaf,
    issue_server,
    random_serial,
)

__all__ = [
    "CA_CERT_NAMES",
    "CA_KEY_NAMES",
    "CLOCK_SKEW",
    "EKU_NAMES",
    "KEY_TYPES",
    "P12_KDF_ROUNDS",
    "PKIError",
    "create_ca",
    "create_intermediate",
    "describe_key",
    "generate_key",
    "init_ca",
    "issue_crl",
    "issue_leaf",
    "issue_server",
    "load_ca",
    "load_ca_cert",
    "load_ca_chain",
    "random_serial",
    "write_ca",
    "write_p12",
    "write_private_file",
]
