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
has validated (L{CRLSet.check}, C{signers}).

B{Revocation modes} (L{CRLSet.check}): C{soft} (the default, spec §4) uses a stale CRL with a
warning and, without a usable CRL in scope, warns once and does not check; C{hard} refuses the
chain (C{bad_certificate}) unless every certificate on the path but the anchor has a usable,
current (nextUpdate not past) CRL in scope.

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
import hashlib
from collections.abc import Callable, Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import CRLEntryExtensionOID, ExtensionOID

from sixchat.errors import BadCertificate, CertificateRevoked
from sixchat.identity import spki_sha256
from sixchat.trust.der import issuer_field

__all__ = [
    "MAX_CRL_CANDIDATES",
    "REVOCATION_MODES",
    "CRLSet",
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


def _subject(cert: x509.Certificate) -> str:
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


class CRLSet:
    """
    The CRLs a trust store holds, and the revocation step of its validations.

    Per (issuer name, authority key identifier): candidate CRLs, newest first. Only a CRL
    that names an anchor can be checked when it is added; one from an intermediate is checked
    against the path's issuer at validation. Keeping candidates (not just the newest) means
    an unverifiable CRL with a higher number cannot displace the genuine one and turn
    revocation into a soft fail; validation then drops what it proves forged or superseded.

    @param warn: called with one line per situation (no CRL for an issuer, a stale CRL, a CRL
        with a bad signature), each reported once.
    """

    def __init__(self, warn: Callable[[str], None]) -> None:
        self.warn = warn
        self.held: dict[tuple[x509.Name, bytes | None], list[CRL]] = {}
        self._verified: dict[tuple[bytes, bytes], bool] = {}
        self._warned: set[object] = set()
        self._issuer_names: dict[bytes, bytes] = {}
        self._facts_of: dict[
            int, tuple[CRL, x509.IssuingDistributionPoint | None, bool, bytes]
        ] = {}
        self._spkis: dict[int, tuple[x509.Certificate, bytes]] = {}
        self._certs: dict[int, tuple[x509.Certificate, bool, bool]] = {}
        #: Name keys of issuers a delta CRL was seen (and refused) for.
        self._deltas: set[NameKey] = set()
        self._name_keys: dict[x509.Name, NameKey] = {}
        self._issuer_keys: dict[bytes, NameKey] = {}

    def newest(self) -> list[CRL]:
        """The newest CRL held per issuer (name and key identifier)."""
        return [candidates[0] for candidates in self.held.values()]

    def add(self, crl: CRL, anchors: Sequence[x509.Certificate]) -> str | None:
        """
        Hold C{crl}; returns why it was not taken (an older CRL than the one held, or one
        that names one of C{anchors} as issuer but is not signed by it), or None.
        """
        issuer = crl.issuer
        named_anchors = [a for a in anchors if a.subject == issuer]
        if named_anchors and not any(
            crl_signed_by(crl, a, verify=self.verify) for a in named_anchors
        ):
            return f"CRL of {name_text(issuer)} is not signed by that anchor's key; ignored"
        key = (issuer, authority_key_id(crl))
        candidates = self.held.get(key, [])
        if named_anchors:
            # Verified just now: it supersedes every candidate it is newer than.
            if candidates and not crl_is_newer(crl, candidates[0]):
                return f"CRL of {name_text(issuer)} is older than the one already held; ignored"
            candidates = [crl]
        else:
            good = [c for c in candidates if self._known_good(c)]
            if (good and not crl_is_newer(crl, good[0])) or any(
                c.fingerprint(hashes.SHA256()) == crl.fingerprint(hashes.SHA256())
                for c in candidates
            ):
                return f"CRL of {name_text(issuer)} is older than the one already held; ignored"
            candidates = sorted([*candidates, crl], key=crl_age_key, reverse=True)
            while len(candidates) > MAX_CRL_CANDIDATES:
                # Drop the oldest candidate, never the newest one known to be genuine.
                keep = good[0] if good else None
                victim = next(c for c in reversed(candidates) if c is not keep)
                candidates.remove(victim)
        self.held[key] = candidates
        return None

    def _known_good(self, crl: CRL) -> bool:
        """Has C{crl} verified with some issuer's key (at validation) before?"""
        digest = self._facts(crl)[3]
        return any(ok for (d, _), ok in self._verified.items() if d == digest)

    def verify(self, crl: CRL, issuer: x509.Certificate) -> bool:
        """L{crl_signature_valid}, remembered per CRL and issuer key."""
        # The CRL's digest and the key's hash are remembered per object (the objects a
        # store holds are used at every validation; hashing a long CRL's DER each time
        # would be most of the cost of a validation from the cache).
        spki = self._spkis.get(id(issuer))
        if spki is None or spki[0] is not issuer:
            try:
                spki = (issuer, spki_sha256(issuer.public_key()))
            except (TypeError, ValueError, UnsupportedAlgorithm):
                return False
            if len(self._spkis) > 1024:
                self._spkis.clear()
            self._spkis[id(issuer)] = spki
        cache_key = (self._facts(crl)[3], spki[1])
        verified = self._verified.get(cache_key)
        if verified is None:
            verified = crl_signature_valid(crl, issuer)
            if len(self._verified) > 4096:
                self._verified.clear()
            self._verified[cache_key] = verified
        return verified

    def _warn_once(self, key: object, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.warn(message)

    def issuer_name_der(self, cert: x509.Certificate, der: bytes | None) -> bytes:
        """
        C{cert.issuer.public_bytes()}, remembered by the issuer field's bytes in C{der}: the
        same value (it is made from those bytes alone) without building the name's objects
        on every handshake.
        """
        raw = issuer_field(der) if der is not None else None
        if raw is None:
            return cert.issuer.public_bytes()
        known = self._issuer_names.get(raw)
        if known is None:
            known = cert.issuer.public_bytes()
            if len(self._issuer_names) >= 256:
                self._issuer_names.clear()
            self._issuer_names[raw] = known
        return known

    def refuse_unusable(self, crl: CRL) -> bool:
        """
        Whether C{crl} cannot be used at all (L{crl_unusable}); if so, warns once per CRL.
        """
        reason = crl_unusable(crl)
        if reason is None:
            return False
        if reason.startswith("is a delta CRL"):
            self._deltas.add(self._name_key(crl.issuer))
        self._warn_once(
            ("unusable", crl.fingerprint(hashes.SHA256())),
            f"CRL of {name_text(crl.issuer)} {reason}; ignored",
        )
        return True

    def _facts(self, crl: CRL) -> tuple[CRL, x509.IssuingDistributionPoint | None, bool, bytes]:
        """
        (C{crl}, its issuing distribution point, whether it has freshestCRL, the SHA-256 of
        its DER), remembered per CRL object.
        """
        key = id(crl)
        known = self._facts_of.get(key)
        if known is None or known[0] is not crl:
            if len(self._facts_of) > 1024:
                self._facts_of.clear()
            try:
                crl.extensions.get_extension_for_class(x509.FreshestCRL)
                freshest = True
            except x509.ExtensionNotFound:
                freshest = False
            except ValueError:  # pragma: no cover - refused by crl_unusable already
                freshest = True
            digest = hashlib.sha256(crl.public_bytes(serialization.Encoding.DER)).digest()
            known = (crl, issuing_distribution_point(crl), freshest, digest)
            self._facts_of[key] = known
        return known

    def _cert_facts(self, cert: x509.Certificate) -> tuple[x509.Certificate, bool, bool]:
        """(C{cert}, L{may_sign_crls}, L{points_to_crl_issuer}), remembered per object."""
        known = self._certs.get(id(cert))
        if known is None or known[0] is not cert:
            if len(self._certs) > 1024:
                self._certs.clear()
            known = (cert, may_sign_crls(cert), points_to_crl_issuer(cert))
            self._certs[id(cert)] = known
        return known

    def _name_key(self, name: x509.Name) -> NameKey:
        """L{name_key} of a held CRL's issuer name, remembered."""
        known = self._name_keys.get(name)
        if known is None:
            if len(self._name_keys) > 1024:
                self._name_keys.clear()
            known = self._name_keys[name] = name_key(name)
        return known

    def _issuer_key(self, cert: x509.Certificate, cert_der: bytes | None = None) -> NameKey:
        """L{name_key} of C{cert}'s issuer, remembered by the issuer name's DER."""
        der = self.issuer_name_der(cert, cert_der)
        known = self._issuer_keys.get(der)
        if known is None:
            if len(self._issuer_keys) > 1024:
                self._issuer_keys.clear()
            known = self._issuer_keys[der] = name_key(cert.issuer)
        return known

    def counting(
        self,
        cert: x509.Certificate,
        issuer: x509.Certificate,
        signers: Sequence[x509.Certificate] = (),
        der: bytes | None = None,
    ) -> list[CRL]:
        """
        The held CRLs that count for C{cert} (§11.8, the two conditions of L{revoking_crl}),
        one per issuer key identifier: in each group named like C{cert}'s issuer (the name
        condition, once per group: every CRL of a group carries its name), the newest
        candidate in C{cert}'s scope (L{crl_in_scope}) that verifies with the key of
        C{issuer} or, failing that, of one of C{signers} (other validated certificates of
        the same CA: key rollover, a separate CRL key), the signer being allowed to sign CRLs
        (L{may_sign_crls}). Candidates proven forged or superseded are dropped on the way.
        """
        usable: list[CRL] = []
        keys = [c for c in (issuer, *signers) if self._cert_facts(c)[1]]
        if not keys or keys[0] is not issuer:
            self._warn_once(
                ("no-crl-sign", issuer.fingerprint(hashes.SHA256())),
                f"the key of {_subject(issuer)} may not sign CRLs (keyUsage without "
                "cRLSign): its CRLs are not used",
            )
        indirect: bool | None = None
        issuer_key: NameKey | None = None
        for (name, key_id), candidates in list(self.held.items()):
            if name != cert.issuer:
                if issuer_key is None:
                    issuer_key = self._issuer_key(cert, der)
                if self._name_key(name) != issuer_key:
                    continue
            if indirect is None:
                indirect = self._cert_facts(cert)[2]
            if indirect:
                break
            forged = []
            chosen = None
            for crl in candidates:
                idp = self._facts(crl)[1]
                if idp is not None and not crl_in_scope(crl, cert, idp):
                    continue
                if any(self.verify(crl, key) for key in keys):
                    chosen = crl
                    usable.append(crl)
                    break  # newest first: older candidates are superseded
                if not keys:
                    continue
                self._warn_once(
                    (
                        "bad-signature",
                        crl.fingerprint(hashes.SHA256()),
                        issuer.fingerprint(hashes.SHA256()),
                    ),
                    f"CRL naming {name_text(name)} is not signed by that issuer's key; ignored",
                )
                if key_id is not None and key_id == subject_key_id(issuer) and not signers:
                    forged.append(crl)  # names this very key, yet its signature fails
            if chosen is not None:
                # Keep the genuine one and what is newer but not proven forged; drop the
                # superseded older ones.
                index = next(i for i, c in enumerate(candidates) if c is chosen)
                kept = [c for c in candidates[:index] if all(c is not f for f in forged)]
                if len(kept) != index or index + 1 != len(candidates):
                    self.held[(name, key_id)] = [*kept, chosen]
            elif forged and len(forged) < len(candidates):
                self.held[(name, key_id)] = [
                    c for c in candidates if all(c is not f for f in forged)
                ]
        if indirect:
            self._warn_once(
                ("crl-issuer", self.issuer_name_der(cert, None)),
                f"certificates of {name_text(cert.issuer)} name another CRL issuer in their "
                "distribution points: indirect CRLs are not supported",
            )
        return usable

    def check(
        self,
        cert: x509.Certificate,
        issuer: x509.Certificate,
        now: datetime.datetime,
        depth: int,
        der: bytes | None = None,
        *,
        signers: Sequence[x509.Certificate] = (),
        hard: bool = False,
    ) -> None:
        """
        The revocation step of a validation for C{cert} at C{depth} of a verified path whose
        next certificate is C{issuer} (C{signers}: other validated certificates of that CA
        whose key may have signed its CRLs). No CRL that counts: soft fail, with a warning
        once per issuer name; in C{hard} mode C{bad_certificate}. A stale newest CRL is used,
        with a warning once per CRL; in C{hard} mode it is C{bad_certificate}. C{der}, if
        given, is C{cert}'s DER (it saves parsing the issuer name).

        @raise CertificateRevoked: by L{revoking_crl}.
        @raise BadCertificate: in C{hard} mode, without a usable and current CRL.
        """
        usable = self.counting(cert, issuer, signers, der)
        if not usable:
            if hard:
                raise BadCertificate(
                    f"revocation of the certificate at depth {depth} cannot be checked: no "
                    f"usable CRL of {name_text(cert.issuer)} covers it (revocation=hard)"
                )
            # Keyed by the issuer name's DER, and the message made only the first time: this
            # runs on every handshake with a peer whose CA publishes no CRL.
            key = ("no-crl", self.issuer_name_der(cert, der))
            if key not in self._warned:
                self._warn_once(
                    key,
                    f"no CRL for issuer {name_text(cert.issuer)}: revocation of the "
                    "certificates it issued is not checked",
                )
            return
        newest = usable[0]
        for other in usable[1:]:
            if crl_is_newer(other, newest):
                newest = other
        if hard and (
            self._facts(newest)[2]
            or (self._deltas and self._issuer_key(cert, der) in self._deltas)
        ):
            if revoking_crl(cert, issuer, usable, counted=True) is None:
                raise BadCertificate(
                    f"revocation of the certificate at depth {depth} cannot be checked: "
                    f"{name_text(cert.issuer)} publishes delta CRLs, which are not supported "
                    "(revocation=hard)"
                )
        next_update = newest.next_update_utc
        if next_update is not None and next_update < now:
            if hard and revoking_crl(cert, issuer, usable, counted=True) is None:
                raise BadCertificate(
                    f"revocation of the certificate at depth {depth} cannot be checked: the "
                    f"CRL of {name_text(newest.issuer)} is stale (its next update was due "
                    f"{next_update:%Y-%m-%d %H:%M}Z; revocation=hard)"
                )
            self._warn_once(
                ("stale", newest.fingerprint(hashes.SHA256())),
                f"CRL of {name_text(newest.issuer)} is stale (its next update was due "
                f"{next_update:%Y-%m-%d %H:%M}Z); using it anyway",
            )
        if revoking_crl(cert, issuer, usable, counted=True) is not None:
            raise CertificateRevoked(
                f"certificate at depth {depth} ({_subject(cert)}) is revoked"
            )
