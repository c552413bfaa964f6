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

from sixchat.errors import CertificateRevoked
from sixchat.identity import spki_sha256
from sixchat.trust.der import issuer_field

__all__ = [
    "MAX_CRL_CANDIDATES",
    "CRLSet",
    "authority_key_id",
    "crl_age_key",
    "crl_is_newer",
    "crl_number",
    "crl_signature_valid",
    "crl_signed_by",
    "name_text",
    "revoked_on_path",
    "revoking_crl",
    "subject_key_id",
]

CRL = x509.CertificateRevocationList
#: Checks a CRL's signature with a certificate's key (L{crl_signature_valid}, or a cache of it).
Verifier = Callable[[CRL, x509.Certificate], bool]

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
        if not counted and crl.issuer != cert.issuer:
            continue
        if crl.get_revoked_certificate_by_serial_number(serial) is None:
            continue
        if counted or verify(crl, issuer):
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
        digest = hashlib.sha256(crl.public_bytes(serialization.Encoding.DER)).digest()
        return any(ok for (d, _), ok in self._verified.items() if d == digest)

    def verify(self, crl: CRL, issuer: x509.Certificate) -> bool:
        """L{crl_signature_valid}, remembered per CRL and issuer key."""
        try:
            issuer_spki = spki_sha256(issuer.public_key())
        except (TypeError, ValueError, UnsupportedAlgorithm):
            return False
        cache_key = (
            hashlib.sha256(crl.public_bytes(serialization.Encoding.DER)).digest(),
            issuer_spki,
        )
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

    def counting(self, cert: x509.Certificate, issuer: x509.Certificate) -> list[CRL]:
        """
        The held CRLs that count for C{cert} (§11.8, the two conditions of L{revoking_crl}),
        one per issuer key identifier: in each group named like C{cert}'s issuer (the name
        condition, once per group: every CRL of a group carries its name), the newest
        candidate that verifies with C{issuer}'s key. Candidates it proves forged or
        superseded are dropped on the way.
        """
        usable = []
        for (name, key_id), candidates in list(self.held.items()):
            if name != cert.issuer:
                continue
            forged = []
            chosen = None
            for crl in candidates:
                if self.verify(crl, issuer):
                    chosen = crl
                    usable.append(crl)
                    break  # newest first: older candidates are superseded
                self._warn_once(
                    (
                        "bad-signature",
                        crl.fingerprint(hashes.SHA256()),
                        issuer.fingerprint(hashes.SHA256()),
                    ),
                    f"CRL naming {name_text(name)} is not signed by that issuer's key; ignored",
                )
                if key_id is not None and key_id == subject_key_id(issuer):
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
        return usable

    def check(
        self,
        cert: x509.Certificate,
        issuer: x509.Certificate,
        now: datetime.datetime,
        depth: int,
        der: bytes | None = None,
    ) -> None:
        """
        The revocation step of a validation for C{cert} at C{depth} of a verified path whose
        next certificate is C{issuer}. No CRL that counts: soft fail, with a warning once per
        issuer name. A stale newest CRL is used, with a warning once per CRL. C{der}, if
        given, is C{cert}'s DER (it saves parsing the issuer name).

        @raise CertificateRevoked: by L{revoking_crl}.
        """
        usable = self.counting(cert, issuer)
        if not usable:
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
        next_update = newest.next_update_utc
        if next_update is not None and next_update < now:
            self._warn_once(
                ("stale", newest.fingerprint(hashes.SHA256())),
                f"CRL of {name_text(newest.issuer)} is stale (its next update was due "
                f"{next_update:%Y-%m-%d %H:%M}Z); using it anyway",
            )
        if revoking_crl(cert, issuer, usable, counted=True) is not None:
            raise CertificateRevoked(
                f"certificate at depth {depth} ({_subject(cert)}) is revoked"
            )
