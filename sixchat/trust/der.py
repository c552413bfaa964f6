"""
Just enough DER to find a certificate's issuer field without parsing the certificate.

Validation asks for a certificate's issuer name on every handshake (the key of the
once-per-issuer "no CRL" warning); building C{cryptography}'s C{Name} objects for it costs
more than the rest of the revocation step. These few bytes-level steps find the same field
in the DER the peer sent. They never decide trust: a result they cannot find (None) only
sends the caller back to the parsed certificate.
"""

from __future__ import annotations

__all__ = ["issuer_field", "policy_mappings"]


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


def _der_length(data: bytes, pos: int) -> tuple[int, int]:
    """(content start, content end) of the DER element at C{pos}."""
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        return pos, pos + first
    n = first & 0x7F
    if not 1 <= n <= 4:
        raise ValueError("unsupported length")
    return pos + n, pos + n + int.from_bytes(data[pos : pos + n], "big")


def _oid_text(body: bytes) -> str:
    if not body or body[-1] & 0x80:
        raise ValueError("bad object identifier")
    arcs: list[int] = []
    value = 0
    for byte in body:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in (first, arcs[0] - 40 * first, *arcs[1:]))


def policy_mappings(value: bytes) -> list[tuple[str, str]]:
    """
    The (issuerDomainPolicy, subjectDomainPolicy) pairs, as dotted OIDs, of a DER
    PolicyMappings extension value (RFC 5280 §4.2.1.5), which C{cryptography} does not parse.

    @raise ValueError: if C{value} is not one.
    """
    try:
        if value[0] != 0x30:
            raise ValueError("not a sequence")
        pos, end = _der_length(value, 0)
        if end != len(value):
            raise ValueError("trailing bytes")
        pairs = []
        while pos < end:
            if value[pos] != 0x30:
                raise ValueError("not a sequence")
            inner, after = _der_length(value, pos)
            oids = []
            while inner < after:
                if value[inner] != 0x06:
                    raise ValueError("not an object identifier")
                start, stop = _der_length(value, inner)
                oids.append(_oid_text(value[start:stop]))
                inner = stop
            if len(oids) != 2 or inner != after:
                raise ValueError("not a pair")
            pairs.append((oids[0], oids[1]))
            pos = after
    except IndexError:
        raise ValueError("truncated") from None
    return pairs
