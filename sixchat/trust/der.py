"""
Just enough DER to find a certificate's issuer field without parsing the certificate.

Validation asks for a certificate's issuer name on every handshake (the key of the
once-per-issuer "no CRL" warning); building C{cryptography}'s C{Name} objects for it costs
more than the rest of the revocation step. These few bytes-level steps find the same field
in the DER the peer sent. They never decide trust: a result they cannot find (None) only
sends the caller back to the parsed certificate.
"""

from __future__ import annotations

__all__ = ["issuer_field"]


def _der_skip(data: bytes, pos: int, tag: int | None = None) -> int:
    """The position after the DER element at C{pos} (of C{tag}, if given)."""
    if tag is not None and data[pos] != tag:
        raise ValueError("unexpected tag")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        return pos + first
    n = first & 0x7F
    if not 1 <= n <= 4:
        raise ValueError("unsupported length")
    return pos + n + int.from_bytes(data[pos : pos + n], "big")


def _der_enter(data: bytes, pos: int, tag: int) -> int:
    """The position of the first element inside the constructed element at C{pos}."""
    if data[pos] != tag:
        raise ValueError("unexpected tag")
    first = data[pos + 1]
    return pos + 2 + (first & 0x7F if first >= 0x80 else 0)


def issuer_field(der: bytes) -> bytes | None:
    """
    The bytes of the issuer field of a certificate's DER (Certificate, tbsCertificate,
    [0] version, serialNumber, signature, issuer), or None if they are not there.
    """
    try:
        pos = _der_enter(der, _der_enter(der, 0, 0x30), 0x30)
        if der[pos] == 0xA0:
            pos = _der_skip(der, pos)
        pos = _der_skip(der, _der_skip(der, pos, 0x02), 0x30)
        end = _der_skip(der, pos, 0x30)
    except (IndexError, ValueError):
        return None
    if end > len(der):
        return None
    return der[pos:end]
