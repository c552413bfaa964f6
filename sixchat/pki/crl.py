"""
Building CRLs (spec §11.8) for the certificates a CA issued: what C{sixchat pki revoke} and
the registry's CA publish. Reading and checking CRLs is L{sixchat.trust.crl}'s.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from sixchat.pki.issue import _aki, _hash_for, _now

__all__ = ["issue_crl"]


def issue_crl(
    ca_key: CertificateIssuerPrivateKeyTypes,
    ca_cert: x509.Certificate,
    revoked_serials: Iterable[int | tuple[int, datetime.datetime]],
    next_update_days: float = 7,
    *,
    last_update: datetime.datetime | None = None,
    next_update: datetime.datetime | None = None,
    crl_number: int | None = None,
) -> x509.CertificateRevocationList:
    """
    A complete CRL (spec §11.8: no delta or indirect CRLs) for the certificates C{ca_cert}
    issued. The CRL number defaults to the issue time in seconds, so a later CRL from the
    same CA always compares newer. Each revoked entry is a serial (revoked "now") or a
    C{(serial, revocation time)} pair, as a registry that remembers when it revoked has it.
    """
    if last_update is None:
        last_update = _now()
    if next_update is None:
        next_update = last_update + datetime.timedelta(days=next_update_days)
    if crl_number is None:
        crl_number = int(last_update.timestamp())
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(last_update)
        .next_update(next_update)
        .add_extension(_aki(ca_cert), critical=False)
        .add_extension(x509.CRLNumber(crl_number), critical=False)
    )
    for entry in revoked_serials:
        serial, when = entry if isinstance(entry, tuple) else (entry, last_update)
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(min(when, last_update))
            .build()
        )
    return builder.sign(ca_key, _hash_for(ca_key))
