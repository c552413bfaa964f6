"""
Reading trust anchors and CRLs from the files a user points at (C{--trust}, C{--crl}).

Every failure becomes a L{TrustLoadError} with one actionable line naming the file, because
these errors reach the user at start-up (twistd, C{sixchat probe}) and nothing else explains
them. Nothing is trusted here: the trust store checks what is loaded.
"""

from __future__ import annotations

import re
from pathlib import Path

from cryptography import x509

from sixchat.errors import SixchatError

__all__ = ["TrustLoadError", "load_anchors", "load_crls"]


class TrustLoadError(SixchatError):
    """The trust anchors or CRLs could not be loaded; one actionable line for the user."""


_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.*?-----END X509 CRL-----", re.DOTALL)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TrustLoadError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise TrustLoadError(f"cannot read {what} {path}: {e.strerror}") from None


def _certs_in(data: bytes, path: Path) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE-----" in data:
        try:
            return x509.load_pem_x509_certificates(data)
        except ValueError:
            raise TrustLoadError(f"a certificate in {path} is damaged") from None
    return []


def load_anchors(path: Path) -> list[x509.Certificate]:
    if path.is_dir():
        anchors: list[x509.Certificate] = []
        try:
            entries = sorted(path.iterdir())
        except OSError as e:
            raise TrustLoadError(f"cannot list trust directory {path}: {e.strerror}") from None
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_file():
                continue
            anchors += _certs_in(_read(entry, "trust anchor file"), entry)
        if not anchors:
            raise TrustLoadError(f"no PEM certificate found in trust directory {path}")
        return anchors
    data = _read(path, "trust anchor file")
    anchors = _certs_in(data, path)
    if not anchors:
        try:
            anchors = [x509.load_der_x509_certificate(data)]
        except ValueError:
            raise TrustLoadError(f"no certificate found in trust anchor file {path}") from None
    return anchors


def load_crls(path: Path) -> list[x509.CertificateRevocationList]:
    data = _read(path, "CRL file")
    try:
        if b"-----BEGIN" in data:
            crls = [x509.load_pem_x509_crl(block) for block in _PEM_CRL.findall(data)]
            if not crls:
                raise TrustLoadError(f"{path} holds no X509 CRL")
            return crls
        return [x509.load_der_x509_crl(data)]
    except ValueError:
        raise TrustLoadError(f"{path} is not a readable CRL (PEM or DER)") from None

