"""
CRLs (spec E2E §4, §11.8): the one definition of every rule about them, used by the trust
store at each validation and by the agent (L{sixchat.agent.crls}) when it takes CRLs from the
registry and ends sessions they revoke.

The rules, each written once here:

  - B{CRL number} (L{crl_number}) and B{which of two CRLs is newer} (L{crl_is_newer}: the
    higher number when both have one and they differ, else the later thisUpdate);
  - B{authority key identifier} (L{authority_key_id}): with the issuer name, what a CRL is
    held per;
  - B{the signature check} (L{crl_signature_valid}: with the issuer certificate's key, never
    raising) and B{"issued by this CA"} (L{crl_signed_by}: names it and verifies with its key);
  - B{revocation} (§11.8, L{revoking_crl}, L{revoked_on_path}): a CRL counts for a
    certificate when its issuer name equals the certificate's issuer name and its signature
    verifies with the key of the next certificate on the verified path; the certificate is
    revoked when its serial number is on a CRL that counts for it.

What a CRL must be to be used at all (RFC 5280 §5.2, §6.3.3; L{crl_unusable}, checked when
it is added, a refused CRL being reported once): a complete CRL this module can read. Refused:
a delta CRL (deltaCRLIndicator), a CRL without a CRL number or with a critical one, a CRL with
any other critical extension than the authority key identifier and the issuing distribution
point, an issuing distribution point that limits the CRL to some reasons, to attribute
certificates, makes it indirect or names its distribution point relative to the issuer, and a
CRL with a critical entry extension other than reasonCode and invalidityDate. Used, but only
for the certificates in its scope (L{crl_in_scope}): an issuing distribution point limited to
user or to CA certificates, or naming a distribution point by full name (the certificate's
cRLDistributionPoints must share a name with it). A certificate whose distribution point names
a cRLIssuer has no CRL in scope (indirect CRLs are not supported). The CRL's signer must be
allowed to sign CRLs (keyUsage with cRLSign, or no keyUsage: L{may_sign_crls}). A CRL may be
signed by another certificate of the certificate's issuer (same name, another key: key
rollover, a separate CRL-signing key) when the caller gives that certificate as a signer it
has validated (L{sixchat.trust.crlset.CRLSet.check}, C{signers}).

B{Revocation modes} (L{sixchat.trust.crlset.CRLSet.check}): C{soft} (the default, spec §4)
uses a stale CRL with a warning and, without a usable CRL in scope, warns once and does not
check; C{hard} refuses the chain (C{bad_certificate}) unless every certificate on the path
but the anchor has a usable, current (nextUpdate not past) CRL in scope.

Where the trust store and the agent used to have copies that differed, the safer behaviour
was kept:

  - B{Which counting CRL decides.} The trust store looked only at the newest CRL that counted;
    the agent at every one. Now a certificate is revoked when I{any} CRL that counts for it
    lists it (fail closed). The store still keeps one CRL per issuer name and key identifier
    (an older one of the same issuer key is superseded and dropped), so this differs only when
    an issuer has CRLs under several key identifiers (one without the extension, say).
  - B{Whose name a CRL must carry.} The agent also required the CRL's issuer to equal the
    subject of the certificate whose key verifies it; the trust store, as §11.8 says, only the
    certificate's issuer name. OpenSSL links a certificate to its issuer by names compared
    case-insensitively, C{cryptography} compares them exactly: the extra condition made a
    genuine CRL not count when the two spellings differ, so a revoked peer kept its session.
    The signature binds the CRL to the issuer's key; the name check is the certificate's.
  - B{A key that cannot be loaded.} The trust store's cached check read the issuer's key
    outside its guard (an anchor with an unsupported key made loading a CRL crash instead
    of refusing it); now such a key verifies nothing.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509.oid import CRLEntryExtensionOID, ExtensionOID

__all__ = [
    "MAX_CRL_CANDIDATES",
    "REVOCATION_MODES",
    "authority_key_id",
    "crl_age_key",
    "crl_is_newer",
    "crl_number",
    "crl_signature_valid",
    "crl_in_scope",
    "crl_signed_by",
    "crl_unusable",
    "may_sign_crls",
    "name_key",
    "name_text",
    "revoked_on_path",
    "revoking_crl",
    "same_name",
    "subject_key_id",
    "subject_text",
]

CRL = x509.CertificateRevocationList
#: Checks a CRL's signature with a certificate's key (L{crl_signature_valid}, or a cache of it).
Verifier = Callable[[CRL, x509.Certificate], bool]

#: The revocation modes (see L{CRLSet.check}): C{soft} is the spec's default.
REVOCATION_MODES = ("soft", "hard")

#: Unverified CRLs held per issuer besides the newest genuine one (see L{CRLSet}).
MAX_CRL_CANDIDATES = 4


def name_text(name: x509.Name) -> str:
    """A name for logs and errors; never raises."""
    try:
        return name.rfc4514_string() or "(empty name)"
    except ValueError:  # pragma: no cover - undecodable attribute values
        return "(unprintable name)"


def subject_text(cert: x509.Certificate) -> str:
    try:
        return cert.subject.rfc4514_string() or "(empty subject)"
    except ValueError:  # pragma: no cover - undecodable attribute values
        return "(unprintable subject)"


NameKey = tuple[tuple[tuple[str, object], ...], ...]


def name_key(name: x509.Name) -> NameKey:
    """
    C{name} in the form RFC 5280 §7.1 compares names in (as OpenSSL links certificates):
    attribute values case-folded, with leading, trailing and repeated inner white space
    removed; the attributes of each RDN as a set. Two names are the same when their keys are.
    """
    return tuple(
        tuple(
            sorted(
                (
                    attr.oid.dotted_string,
                    " ".join(attr.value.casefold().split())
                    if isinstance(attr.value, str)
                    else attr.value,
                )
                for attr in rdn
            )
        )
        for rdn in name.rdns
    )


def same_name(a: x509.Name, b: x509.Name) -> bool:
    """Whether two names are the same by RFC 5280 §7.1 (L{name_key}); exact equality first."""
    return a == b or name_key(a) == name_key(b)


# -- what a CRL says about itself --------------------------------------------------------


def crl_number(crl: CRL) -> int | None:
    """The CRL number; None if the CRL has none or its extensions are malformed."""
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except (x509.ExtensionNotFound, ValueError):
        return None


def crl_is_newer(new: CRL, old: CRL) -> bool:
    """Whether C{new} supersedes C{old}: by CRL number when both have one, else by thisUpdate."""
    n_new, n_old = crl_number(new), crl_number(old)
    if n_new is not None and n_old is not None and n_new != n_old:
        return n_new > n_old
    return new.last_update_utc >= old.last_update_utc


def crl_age_key(crl: CRL) -> tuple[int, datetime.datetime]:
    """Sort key, newest last: CRL number (-1 without one), then thisUpdate."""
    number = crl_number(crl)
    return (-1 if number is None else number), crl.last_update_utc


def authority_key_id(crl: CRL) -> bytes | None:
    """The key identifier of the CRL's authorityKeyIdentifier; None if absent or malformed."""
    try:
        return crl.extensions.get_extension_for_class(
            x509.AuthorityKeyIdentifier
        ).value.key_identifier
    except (x509.ExtensionNotFound, ValueError):
        return None


def subject_key_id(cert: x509.Certificate) -> bytes | None:
    """The certificate's subjectKeyIdentifier; None if absent."""
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return None


def crl_unusable(crl: CRL) -> str | None:
    """
    Why C{crl} cannot be used as a complete CRL of its issuer (RFC 5280 §6.3.3, and what
    version 1 supports), as the end of a sentence starting with the CRL's name; None if it can.
    """
    try:
        extensions = list(crl.extensions)
    except ValueError:
        return "has malformed extensions"
    has_number = False
    for ext in extensions:
        oid = ext.oid
        if oid == ExtensionOID.DELTA_CRL_INDICATOR:
            return "is a delta CRL (not supported)"
        if oid == ExtensionOID.CRL_NUMBER:
            if ext.critical:
                return "marks its CRL number critical (RFC 5280 §5.2.3 forbids it)"
            has_number = True
        elif oid == ExtensionOID.ISSUING_DISTRIBUTION_POINT:
            idp = ext.value
            assert isinstance(idp, x509.IssuingDistributionPoint)
            if idp.indirect_crl:
                return "is an indirect CRL (not supported)"
            if idp.only_some_reasons:
                return "covers only some revocation reasons (not supported)"
            if idp.only_contains_attribute_certs:
                return "covers only attribute certificates"
            if idp.relative_name is not None:
                return "names its distribution point relative to its issuer (not supported)"
        elif ext.critical and oid != ExtensionOID.AUTHORITY_KEY_IDENTIFIER:
            return f"has an unrecognised critical extension ({oid.dotted_string})"
    if not has_number:
        return "has no CRL number (RFC 5280 §5.2.3 requires one)"
    try:
        for entry in crl:
            for ext in entry.extensions:
                if ext.critical and ext.oid not in _ENTRY_EXTENSIONS:
                    return (
                        "has an unrecognised critical entry extension "
                        f"({ext.oid.dotted_string})"
                    )
    except ValueError:
        return "has malformed entries"
    return None


#: CRL entry extensions understood (RFC 5280 §5.3): the others, when critical, make the CRL
#: unusable (the certificateIssuer extension, critical by definition, belongs to indirect CRLs).
_ENTRY_EXTENSIONS = (CRLEntryExtensionOID.CRL_REASON, CRLEntryExtensionOID.INVALIDITY_DATE)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (x509.ExtensionNotFound, ValueError):
        return False


def issuing_distribution_point(crl: CRL) -> x509.IssuingDistributionPoint | None:
    try:
        return crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    except (x509.ExtensionNotFound, ValueError):
        return None


def crl_in_scope(
    crl: CRL, cert: x509.Certificate, idp: x509.IssuingDistributionPoint | None = None
) -> bool:
    """
    Whether a usable C{crl} (L{crl_unusable} is None) covers C{cert} (RFC 5280 §6.3.3 (b)):
    not when C{cert}'s distribution points name a cRLIssuer (only an indirect CRL could), nor
    when the CRL's issuing distribution point excludes it (only user or only CA
    certificates, or a distribution point none of C{cert}'s shares a full name with).
    C{idp}: the CRL's issuing distribution point if the caller has it at hand.
    """
    try:
        points: x509.CRLDistributionPoints | None = cert.extensions.get_extension_for_class(
            x509.CRLDistributionPoints
        ).value
    except x509.ExtensionNotFound:
        points = None
    except ValueError:
        return False
    if points is not None and any(point.crl_issuer for point in points):
        return False  # only an indirect CRL of that cRLIssuer could cover it
    if idp is None:
        idp = issuing_distribution_point(crl)
        if idp is None:
            return True
    if idp.only_contains_user_certs and _is_ca(cert):
        return False
    if idp.only_contains_ca_certs and not _is_ca(cert):
        return False
    if idp.full_name is not None:
        if points is None:
            return False
        names = set(idp.full_name)
        return any(p.full_name is not None and names.intersection(p.full_name) for p in points)
    return True


def points_to_crl_issuer(cert: x509.Certificate) -> bool:
    """Whether a distribution point of C{cert} names a cRLIssuer (an indirect CRL)."""
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    return any(point.crl_issuer for point in points)


def may_sign_crls(cert: x509.Certificate) -> bool:
    """Whether C{cert}'s key may sign CRLs: its keyUsage, if present, allows cRLSign."""
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value.crl_sign
    except x509.ExtensionNotFound:
        return True
    except ValueError:
        return False


def _listed(crl: CRL, serial: int) -> bool:
    """Whether C{serial} is on C{crl}; never raises (a negative serial, RFC 5280 §4.1.2.2
    notwithstanding, is looked up by comparing the entries)."""
    try:
        return crl.get_revoked_certificate_by_serial_number(serial) is not None
    except (ValueError, OverflowError):
        return any(entry.serial_number == serial for entry in crl)


# -- who signed it -----------------------------------------------------------------------


def crl_signature_valid(crl: CRL, issuer: x509.Certificate) -> bool:
    """
    Whether C{crl}'s signature verifies with C{issuer}'s public key. Never raises: a key that
    cannot be loaded or cannot sign CRLs verifies nothing.
    """
    try:
        return crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError, UnsupportedAlgorithm):
        return False


def crl_signed_by(
    crl: CRL, issuer: x509.Certificate, *, verify: Verifier = crl_signature_valid
) -> bool:
    """Whether the CA C{issuer} issued C{crl}: the CRL names it and verifies with its key."""
    return crl.issuer == issuer.subject and verify(crl, issuer)


# -- revocation (§11.8) ------------------------------------------------------------------


def revoking_crl(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    crls: Iterable[CRL],
    *,
    verify: Verifier = crl_signature_valid,
    counted: bool = False,
) -> CRL | None:
    """
    The §11.8 rule: the first of C{crls} that counts for C{cert} (its issuer name is
    C{cert}'s issuer name and its signature verifies with C{issuer}'s key, C{issuer} being the
    next certificate on the verified path) and lists C{cert}'s serial number; None if none.

    Any CRL that counts decides, not only the newest (see the module docstring). The
    signature is checked last, only for a CRL that lists the serial: it is the costly part.
    C{counted}: every one of C{crls} is already known to count (L{CRLSet.counting} checked
    both conditions), so only the serial is looked up; comparing the names again would cost
    more than the rest of the step (building C{Name} objects).
    """
    serial = cert.serial_number
    for crl in crls:
        if not counted and (
            not same_name(crl.issuer, cert.issuer)
            or crl_unusable(crl)
            or not crl_in_scope(crl, cert)
        ):
            continue
        if not _listed(crl, serial):
            continue
        if counted or (may_sign_crls(issuer) and verify(crl, issuer)):
            return crl
    return None


def revoked_on_path(
    path: Sequence[x509.Certificate], crls: Iterable[CRL]
) -> tuple[int, CRL] | None:
    """
    The first certificate of a verified C{path} (leaf first, ending with the anchor) that one
    of C{crls} revokes by L{revoking_crl}, as (depth, CRL); C{None} if none is.
    """
    crls = list(crls)
    for depth in range(len(path) - 1):
        crl = revoking_crl(path[depth], path[depth + 1], crls)
        if crl is not None:
            return depth, crl
    return None


# -- the CRLs a trust store holds --------------------------------------------------------
