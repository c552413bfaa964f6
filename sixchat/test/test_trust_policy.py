"""
Tests for L{sixchat.trust.policy} (RFC 5280 policy processing with the default inputs) on
PKITS paths, and that the trust store asks it exactly when OpenSSL reports
NO_EXPLICIT_POLICY. The whole of PKITS 4.8-4.12 runs in L{sixchat.test.test_trust_pkits}.
"""

from __future__ import annotations

from unittest import mock

from cryptography import x509
from twisted.trial.unittest import SynchronousTestCase

from sixchat.errors import BadCertificate
from sixchat.test.pkits_support import PKITS_DIR, pkits_case
from sixchat.test.test_trust_pkits import run
from sixchat.trust import chain as chain_module
from sixchat.trust.policy import explicit_policy_holds


def path_of(stem: str) -> list[x509.Certificate]:
    """The PKITS path of C{stem}, leaf first, ending with the anchor (in path order)."""
    case = pkits_case(stem)
    certs = [x509.load_der_x509_certificate(d) for d in case.certs_der]
    path = [certs[0]]
    rest = certs[1:]
    while path[-1].issuer != case.anchor.subject:
        issuer = next(c for c in rest if c.subject == path[-1].issuer)
        rest.remove(issuer)
        path.append(issuer)
    return [*path, case.anchor]


class PolicyTests(SynchronousTestCase):
    if PKITS_DIR is None:
        skip = "cryptography-vectors is not installed (pip install -e '.[test]')"

    def test_explicit_policy_cases(self):
        for stem, holds in [
            ("AllCertificatesSamePoliciesTest10", True),  # 4.8.10
            ("ValidrequireExplicitPolicyTest4", True),  # 4.9.4
            ("InvalidrequireExplicitPolicyTest3", False),  # 4.9.3
            ("ValidPolicyMappingTest1", True),  # 4.10.1
            ("InvalidPolicyMappingTest2", False),  # 4.10.2
            ("InvalidMappingFromanyPolicyTest7", False),  # 4.10.7: mapping from anyPolicy
            ("InvalidinhibitPolicyMappingTest1", False),  # 4.11.1
            ("ValidinhibitAnyPolicyTest2", True),  # 4.12.2
            ("InvalidinhibitAnyPolicyTest1", False),  # 4.12.1
        ]:
            self.assertEqual(explicit_policy_holds(path_of(stem)), holds, stem)

    def test_no_certificates_but_the_anchor(self):
        self.assertTrue(explicit_policy_holds(path_of("ValidCertificatePathTest1")[-1:]))

    def test_the_store_asks_it_on_no_explicit_policy(self):
        """4.8.10 is accepted only because policy.py says its path has a policy."""
        self.assertEqual(run("AllCertificatesSamePoliciesTest10", "hard")[0], "A")
        with mock.patch.object(chain_module, "explicit_policy_holds", lambda path: False):
            self.assertEqual(
                run("AllCertificatesSamePoliciesTest10", "hard")[0], "R: bad_certificate"
            )
        # a path without explicit policy requirements never gets there
        calls = []
        with mock.patch.object(chain_module, "explicit_policy_holds", calls.append):
            self.assertEqual(run("ValidCertificatePathTest1", "hard")[0], "A")
        self.assertEqual(calls, [])

    def test_refusal_text(self):
        case = pkits_case("InvalidrequireExplicitPolicyTest3")
        with mock.patch.object(chain_module, "check_leaf", lambda c, r=False: ((), "", None)):
            store = chain_module.TrustStore([case.anchor], case.crls)
            error = self.assertRaises(BadCertificate, store.validate, case.certs_der,
                                      chain_module.datetime.datetime(2025, 6, 1))  # fmt: skip
        self.assertIn("requireExplicitPolicy", error.text)
