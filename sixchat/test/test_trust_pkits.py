"""
The NIST PKITS path tests (4.1 to 4.16) through L{sixchat.trust.TrustStore}, in both
revocation modes (docs/security.md, "What is validated and how").

The table and the way each test's certificates and CRLs are found are in
L{sixchat.test.pkits_support}. B{The leaf profile is set aside, and only it}: PKITS end
entities carry no rfc822Name and often no digitalSignature keyUsage, so §4's leaf profile
(L{sixchat.trust.profile.check_leaf}, the last step of a validation) would refuse every one
of them (L{LeafProfileTests} shows it); these tests replace that one function with one that
accepts any leaf. Path validation, chain strength, policy processing and revocation are the
trust store's own.

What the outcomes must be, beside the PKITS expectation (V or I):
  - B{DSA} (4.1.4 to 4.1.6): refused in both modes, as §4 refuses DSA keys;
  - B{hard}: every Invalid path refused; every Valid path accepted except the DSA ones and
    those that need a CRL feature version 1 does not support (L{HARD_UNSUPPORTED}: a
    distribution point relative to the issuer, reason-partitioned, indirect and delta CRLs),
    which fail closed;
  - B{soft}: the same, except that an Invalid path whose only fault is that its revocation
    status cannot be known (missing, stale, unusable or unsupported CRL: L{SOFT_ACCEPTED}) is
    accepted with a warning, as §4 says; and 4.15.5, whose certificate is on hold in the base
    CRL and released by a delta CRL we do not read, is refused (fail closed) in both modes.
"""

from __future__ import annotations

import random
from collections import Counter
from unittest import mock

from cryptography import x509
from twisted.trial.unittest import SynchronousTestCase

from sixchat.errors import AlertError, BadCertificate
from sixchat.test.pkits_support import PKITS, PKITS_DIR, PKITS_TIME, pkits_case
from sixchat.trust import TrustStore
from sixchat.trust import chain as chain_module

DSA = {"4.1.4", "4.1.5", "4.1.6"}

#: Valid paths refused in hard mode: their revocation needs an unsupported CRL feature.
HARD_UNSUPPORTED = {
    # a CRL naming its distribution point relative to the issuer (4.14.5, 4.14.7), and a
    # certificate whose distribution point has no complete CRL besides (4.14.4)
    "4.14.4", "4.14.5", "4.14.7",
    # CRLs partitioned by reason (onlySomeReasons)
    "4.14.18", "4.14.19",
    # indirect CRLs
    "4.14.22", "4.14.24", "4.14.25", "4.14.28", "4.14.29", "4.14.30", "4.14.33",
    # issuers that publish delta CRLs
    "4.15.2", "4.15.5", "4.15.7", "4.15.8",
}  # fmt: skip

#: Invalid paths accepted (with a warning) in soft mode: only their revocation status fails.
SOFT_ACCEPTED = {
    "4.4.1",  # no CRL
    "4.4.4",  # the CRL's signature fails
    "4.4.5",  # the CRL names another issuer
    "4.4.6",  # the wrong CRL
    "4.4.8", "4.4.9", "4.4.10",  # unrecognised critical (entry) extensions: CRL unusable
    "4.4.11", "4.4.12",  # stale CRL, used with a warning; its certificate is not on it
    "4.4.21",  # the CRL signer's own certificate is revoked: no usable CRL
    "4.7.4", "4.7.5",  # the CRL's signer lacks cRLSign
    # distribution points, reasons, attribute certificates, indirect CRLs: out of scope or
    # unsupported, so no usable CRL
    "4.14.3", "4.14.6", "4.14.8", "4.14.9", "4.14.11", "4.14.12", "4.14.14", "4.14.15",
    "4.14.16", "4.14.17", "4.14.20", "4.14.21", "4.14.23", "4.14.26", "4.14.27", "4.14.31",
    "4.14.32", "4.14.34", "4.14.35",
    "4.15.1", "4.15.4", "4.15.10",  # only delta CRLs, or what only a delta CRL says
}  # fmt: skip

#: Valid paths refused in soft mode too (fail closed on an unsupported delta CRL).
SOFT_REFUSED_VALID = {"4.15.5"}


def _any_leaf(cert: x509.Certificate, require_key_encipherment: bool = False):
    """The leaf profile set aside (module docstring)."""
    return (), "pkits", cert.public_key()


def run(stem: str, mode: str, shuffle: random.Random | None = None) -> tuple[str, list[str]]:
    """
    Validate PKITS test C{stem} in C{mode}: ("A", warnings) if accepted, ("R: <alert>",
    warnings) if refused. C{shuffle}: send the intermediates in a random order.
    """
    case = pkits_case(stem)
    warnings: list[str] = []
    chain = list(case.certs_der)
    if shuffle is not None:
        rest = chain[1:]
        shuffle.shuffle(rest)
        chain = [chain[0], *rest]
    with mock.patch.object(chain_module, "check_leaf", _any_leaf):
        store = TrustStore([case.anchor], case.crls, warn=warnings.append, revocation=mode)
        try:
            store.validate(chain, PKITS_TIME)
        except AlertError as e:
            return f"R: {e.reason}", warnings
    return "A", warnings


def expected(test_id: str, outcome: str, mode: str) -> bool:
    """Whether the trust store must accept PKITS test C{test_id} in C{mode}."""
    if test_id in DSA:
        return False
    if mode == "hard":
        return outcome == "V" and test_id not in HARD_UNSUPPORTED
    if outcome == "V":
        return test_id not in SOFT_REFUSED_VALID
    return test_id in SOFT_ACCEPTED


def section(test_id: str) -> str:
    return test_id.rsplit(".", 1)[0]


class TableTests(SynchronousTestCase):
    if PKITS_DIR is None:
        skip = "cryptography-vectors is not installed (pip install -e '.[test]')"

    def test_every_path_test_once(self):
        ids = [t for t, _, _ in PKITS]
        self.assertEqual(len(ids), len(set(ids)))
        self.assertEqual(
            Counter(section(t) for t in ids),
            {"4.1": 6, "4.2": 8, "4.3": 11, "4.4": 21, "4.5": 8, "4.6": 17, "4.7": 5,
             "4.8": 20, "4.9": 8, "4.10": 14, "4.11": 11, "4.12": 10, "4.13": 38,
             "4.14": 35, "4.15": 10, "4.16": 2},
        )  # fmt: skip
        for _, stem, outcome in PKITS:
            assert PKITS_DIR is not None
            self.assertTrue((PKITS_DIR / "certs" / f"{stem}EE.crt").is_file(), stem)
            self.assertIn(outcome, "VI")
            if stem.startswith("Valid"):
                self.assertEqual(outcome, "V", stem)
            if stem.startswith("Invalid"):
                self.assertEqual(outcome, "I", stem)

    def test_the_sets_name_real_tests(self):
        ids = {t: o for t, _, o in PKITS}
        for test_id in HARD_UNSUPPORTED | SOFT_REFUSED_VALID:
            self.assertEqual(ids[test_id], "V", test_id)
        for test_id in SOFT_ACCEPTED:
            self.assertEqual(ids[test_id], "I", test_id)


def _section_test(name: str, mode: str):
    def test(self):
        got, want = {}, {}
        for test_id, stem, outcome in PKITS:
            if section(test_id) != name:
                continue
            result, warnings = run(stem, mode)
            got[test_id] = result == "A"
            want[test_id] = expected(test_id, outcome, mode)
            if result == "A" and outcome == "I":
                # accepted although Invalid: only in soft mode, and never silently
                self.assertEqual(mode, "soft", test_id)
                self.assertTrue(warnings, test_id)
        self.assertEqual(got, want)

    test.__name__ = f"test_{mode}_{name.replace('.', '_')}"
    test.__doc__ = f"PKITS {name}, revocation={mode}: every outcome as expected."
    return test


class PKITSTests(SynchronousTestCase):
    if PKITS_DIR is None:
        skip = "cryptography-vectors is not installed (pip install -e '.[test]')"

    for _name in sorted({section(t) for t, _, _ in PKITS}, key=lambda s: int(s.split(".")[1])):
        for _mode in ("soft", "hard"):
            _t = _section_test(_name, _mode)
            locals()[_t.__name__] = _t
    del _name, _mode, _t

    def test_invalid_in_hard_mode_gets_an_alert(self):
        """Refusals are alerts (never another exception): 4.4.15's negative serial too."""
        for test_id, stem in [("4.4.15", "InvalidNegativeSerialNumberTest15"),
                              ("4.4.1", "InvalidMissingCRLTest1"),
                              ("4.4.3", "InvalidRevokedEETest3"),
                              ("4.15.3", "InvaliddeltaCRLTest3")]:  # fmt: skip
            result, _ = run(stem, "hard")
            self.assertEqual(
                result,
                {"4.4.15": "R: certificate_revoked", "4.4.1": "R: bad_certificate",
                 "4.4.3": "R: certificate_revoked",
                 "4.15.3": "R: certificate_revoked"}[test_id],  # fmt: skip
                test_id,
            )

    def test_negative_serial_valid(self):
        self.assertEqual(run("ValidNegativeSerialNumberTest14", "hard")[0], "A")

    def test_unsupported_crls_are_never_complete(self):
        """
        A delta CRL (4.15.3: the base CRL revokes, the delta does not) is refused with a
        warning and never replaces the base CRL; an indirect or reason-partitioned CRL is
        refused and warned about once.
        """
        result, warnings = run("InvaliddeltaCRLTest3", "soft")
        self.assertEqual(result, "R: certificate_revoked")
        self.assertTrue(any("is a delta CRL (not supported)" in w for w in warnings))
        for stem, text in [
            ("InvalidIDPwithindirectCRLTest23", "is an indirect CRL (not supported)"),
            ("InvalidonlySomeReasonsTest15", "covers only some revocation reasons"),
        ]:
            result, warnings = run(stem, "soft")
            self.assertEqual(result, "A")
            # said once: validating again adds no warning
            case = pkits_case(stem)
            seen: list[str] = []
            with mock.patch.object(chain_module, "check_leaf", _any_leaf):
                store = TrustStore([case.anchor], case.crls, warn=seen.append)
                store.validate(case.certs_der, PKITS_TIME)
                count = len(seen)
                store.validate(case.certs_der, PKITS_TIME)
            self.assertEqual(len(seen), count, stem)
            self.assertTrue(any(text in w for w in warnings), stem)
            self.assertEqual(run(stem, "hard")[0], "R: bad_certificate")

    def test_intermediates_in_any_order(self):
        """The outcome does not depend on the order of the intermediates."""
        rng = random.Random(16)
        for test_id, stem, _ in PKITS:
            case = pkits_case(stem)
            if len(case.certs_der) < 4:
                continue
            first = run(stem, "hard")[0]
            for _ in range(3):
                self.assertEqual(run(stem, "hard", rng)[0], first, test_id)


class LeafProfileTests(SynchronousTestCase):
    if PKITS_DIR is None:
        skip = "cryptography-vectors is not installed (pip install -e '.[test]')"

    def test_pkits_leaves_fail_the_leaf_profile(self):
        """Why the profile is set aside: a PKITS leaf has no rfc822Name identity."""
        case = pkits_case("ValidCertificatePathTest1")
        store = TrustStore([case.anchor], case.crls)
        error = self.assertRaises(BadCertificate, store.validate, case.certs_der, PKITS_TIME)
        self.assertIn("rfc822Name", error.text)
