"""The certificate-authority side of the protocol's PKI (spec §4); see L{issue}."""

# serialization: some callers reach it as pki.serialization.
from cryptography.hazmat.primitives import serialization as serialization

from sixchat.pki.issue import (
    CA_CERT_NAMES,
    CA_KEY_NAMES,
    CLOCK_SKEW,
    EKU_NAMES,
    KEY_TYPES,
    P12_KDF_ROUNDS,
    PKIError,
    create_ca,
    create_intermediate,
    describe_key,
    generate_key,
    init_ca,
    issue_crl,
    issue_leaf,
    issue_server,
    load_ca,
    load_ca_cert,
    load_ca_chain,
    random_serial,
    write_ca,
    write_p12,
    write_private_file,
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
