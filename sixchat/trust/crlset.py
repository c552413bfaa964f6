"""
The CRLs a trust store holds and the revocation step of its validations: the bookkeeping
(candidates per issuer name and key identifier, cached signature checks, warnings said once)
around the rules of L{sixchat.trust.crl}, which it applies and never restates.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable, Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization

from sixchat.errors import BadCertificate, CertificateRevoked
from sixchat.identity import spki_sha256
from sixchat.trust.crl import (
    CRL,
    MAX_CRL_CANDIDATES,
    NameKey,
    authority_key_id,
    crl_age_key,
    crl_in_scope,
    crl_is_newer,
    crl_signature_valid,
    crl_signed_by,
    crl_unusable,
    issuing_distribution_point,
    may_sign_crls,
    name_key,
    name_text,
    points_to_crl_issuer,
    revoking_crl,
    subject_key_id,
    subject_text,
)
from sixchat.trust.der import issuer_field

__all__ = ["CRLSet"]


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
                f"the key of {subject_text(issuer)} may not sign CRLs (keyUsage without "
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
                f"certificate at depth {depth} ({subject_text(cert)}) is revoked"
            )
