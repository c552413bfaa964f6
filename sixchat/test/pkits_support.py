"""
The NIST PKITS path tests (Public Key Interoperability Test Suite, sections 4.1 to 4.16) as
data for L{sixchat.test.test_trust_pkits}: the test table and the finding of each test's
certificates and CRLs in C{cryptography-vectors} (C{x509/PKITS_data}).

B{The table} (L{PKITS}): test id, the end-entity certificate's file stem, and the outcome the
PKITS document expects with its default settings (user-initial-policy-set any-policy,
initial-explicit-policy, -policy-mapping-inhibit and -any-policy-inhibit all false): C{V}alid
or C{I}nvalid. Tests whose names carry no Valid/Invalid prefix (4.8.x, 4.12.3) and the policy
mapping tests whose name says "Valid" only for a given initial policy set are listed with the
default-setting outcome.

B{A test's inputs} (L{pkits_case}): PKITS names no chain per test (its LDIF publishes
certificates by directory name), so the intermediates are found the way a relying party would
find them in a directory: every CA certificate whose subject matches, in the RFC 5280 §7.1
comparison (case-insensitive, whitespace-collapsed), the issuer of a certificate already
found, starting from the end entity and stopping at the trust anchor. All of them are sent,
in file-name order (the order must not matter). The CRLs are every CRL whose issuer matches
the subject of a certificate found (the anchor included). A CRL issued by a third party
(indirect CRLs, 4.14.22 and later) is therefore not found: that is the unsupported feature.
"""

from __future__ import annotations

import datetime
import os
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from cryptography import x509
from OpenSSL import crypto

__all__ = ["PKITS", "PKITS_DIR", "PKITS_TIME", "PKITSCase", "pkits_case"]


def _data_dir() -> Path | None:
    try:
        import cryptography_vectors  # type: ignore[import-untyped]
    except ImportError:
        return None
    path = Path(os.path.dirname(cryptography_vectors.__file__)) / "x509" / "PKITS_data"
    return path if path.is_dir() else None


#: Where the PKITS certificates and CRLs are, or None without C{cryptography-vectors}.
PKITS_DIR = _data_dir()

#: Every PKITS certificate and CRL is valid at this time (their periods run 2010 to 2030,
#: the deliberately expired and not-yet-valid ones aside).
PKITS_TIME = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)

V, I = "V", "I"  # noqa: E741 - the PKITS document's two outcomes

#: (test id, end-entity file stem without "EE.crt", expected outcome)
PKITS: tuple[tuple[str, str, str], ...] = (
    # 4.1 Signature Verification
    ("4.1.1", "ValidCertificatePathTest1", V),
    ("4.1.2", "InvalidCASignatureTest2", I),
    ("4.1.3", "InvalidEESignatureTest3", I),
    ("4.1.4", "ValidDSASignaturesTest4", V),
    ("4.1.5", "ValidDSAParameterInheritanceTest5", V),
    ("4.1.6", "InvalidDSASignatureTest6", I),
    # 4.2 Validity Periods
    ("4.2.1", "InvalidCAnotBeforeDateTest1", I),
    ("4.2.2", "InvalidEEnotBeforeDateTest2", I),
    ("4.2.3", "Validpre2000UTCnotBeforeDateTest3", V),
    ("4.2.4", "ValidGeneralizedTimenotBeforeDateTest4", V),
    ("4.2.5", "InvalidCAnotAfterDateTest5", I),
    ("4.2.6", "InvalidEEnotAfterDateTest6", I),
    ("4.2.7", "Invalidpre2000UTCEEnotAfterDateTest7", I),
    ("4.2.8", "ValidGeneralizedTimenotAfterDateTest8", V),
    # 4.3 Verifying Name Chaining
    ("4.3.1", "InvalidNameChainingTest1", I),
    ("4.3.2", "InvalidNameChainingOrderTest2", I),
    ("4.3.3", "ValidNameChainingWhitespaceTest3", V),
    ("4.3.4", "ValidNameChainingWhitespaceTest4", V),
    ("4.3.5", "ValidNameChainingCapitalizationTest5", V),
    ("4.3.6", "ValidNameUIDsTest6", V),
    ("4.3.7", "ValidRFC3280MandatoryAttributeTypesTest7", V),
    ("4.3.8", "ValidRFC3280OptionalAttributeTypesTest8", V),
    ("4.3.9", "ValidUTF8StringEncodedNamesTest9", V),
    ("4.3.10", "ValidRolloverfromPrintableStringtoUTF8StringTest10", V),
    ("4.3.11", "ValidUTF8StringCaseInsensitiveMatchTest11", V),
    # 4.4 Basic Certificate Revocation Tests
    ("4.4.1", "InvalidMissingCRLTest1", I),
    ("4.4.2", "InvalidRevokedCATest2", I),
    ("4.4.3", "InvalidRevokedEETest3", I),
    ("4.4.4", "InvalidBadCRLSignatureTest4", I),
    ("4.4.5", "InvalidBadCRLIssuerNameTest5", I),
    ("4.4.6", "InvalidWrongCRLTest6", I),
    ("4.4.7", "ValidTwoCRLsTest7", V),
    ("4.4.8", "InvalidUnknownCRLEntryExtensionTest8", I),
    ("4.4.9", "InvalidUnknownCRLExtensionTest9", I),
    ("4.4.10", "InvalidUnknownCRLExtensionTest10", I),
    ("4.4.11", "InvalidOldCRLnextUpdateTest11", I),
    ("4.4.12", "Invalidpre2000CRLnextUpdateTest12", I),
    ("4.4.13", "ValidGeneralizedTimeCRLnextUpdateTest13", V),
    ("4.4.14", "ValidNegativeSerialNumberTest14", V),
    ("4.4.15", "InvalidNegativeSerialNumberTest15", I),
    ("4.4.16", "ValidLongSerialNumberTest16", V),
    ("4.4.17", "ValidLongSerialNumberTest17", V),
    ("4.4.18", "InvalidLongSerialNumberTest18", I),
    ("4.4.19", "ValidSeparateCertificateandCRLKeysTest19", V),
    ("4.4.20", "InvalidSeparateCertificateandCRLKeysTest20", I),
    ("4.4.21", "InvalidSeparateCertificateandCRLKeysTest21", I),
    # 4.5 Verifying Paths with Self-Issued Certificates
    ("4.5.1", "ValidBasicSelfIssuedOldWithNewTest1", V),
    ("4.5.2", "InvalidBasicSelfIssuedOldWithNewTest2", I),
    ("4.5.3", "ValidBasicSelfIssuedNewWithOldTest3", V),
    ("4.5.4", "ValidBasicSelfIssuedNewWithOldTest4", V),
    ("4.5.5", "InvalidBasicSelfIssuedNewWithOldTest5", I),
    ("4.5.6", "ValidBasicSelfIssuedCRLSigningKeyTest6", V),
    ("4.5.7", "InvalidBasicSelfIssuedCRLSigningKeyTest7", I),
    ("4.5.8", "InvalidBasicSelfIssuedCRLSigningKeyTest8", I),
    # 4.6 Verifying Basic Constraints
    ("4.6.1", "InvalidMissingbasicConstraintsTest1", I),
    ("4.6.2", "InvalidcAFalseTest2", I),
    ("4.6.3", "InvalidcAFalseTest3", I),
    ("4.6.4", "ValidbasicConstraintsNotCriticalTest4", V),
    ("4.6.5", "InvalidpathLenConstraintTest5", I),
    ("4.6.6", "InvalidpathLenConstraintTest6", I),
    ("4.6.7", "ValidpathLenConstraintTest7", V),
    ("4.6.8", "ValidpathLenConstraintTest8", V),
    ("4.6.9", "InvalidpathLenConstraintTest9", I),
    ("4.6.10", "InvalidpathLenConstraintTest10", I),
    ("4.6.11", "InvalidpathLenConstraintTest11", I),
    ("4.6.12", "InvalidpathLenConstraintTest12", I),
    ("4.6.13", "ValidpathLenConstraintTest13", V),
    ("4.6.14", "ValidpathLenConstraintTest14", V),
    ("4.6.15", "ValidSelfIssuedpathLenConstraintTest15", V),
    ("4.6.16", "InvalidSelfIssuedpathLenConstraintTest16", I),
    ("4.6.17", "ValidSelfIssuedpathLenConstraintTest17", V),
    # 4.7 Key Usage
    ("4.7.1", "InvalidkeyUsageCriticalkeyCertSignFalseTest1", I),
    ("4.7.2", "InvalidkeyUsageNotCriticalkeyCertSignFalseTest2", I),
    ("4.7.3", "ValidkeyUsageNotCriticalTest3", V),
    ("4.7.4", "InvalidkeyUsageCriticalcRLSignFalseTest4", I),
    ("4.7.5", "InvalidkeyUsageNotCriticalcRLSignFalseTest5", I),
    # 4.8 Certificate Policies (default settings)
    ("4.8.1", "ValidCertificatePathTest1", V),
    ("4.8.2", "AllCertificatesNoPoliciesTest2", V),
    ("4.8.3", "DifferentPoliciesTest3", V),
    ("4.8.4", "DifferentPoliciesTest4", I),
    ("4.8.5", "DifferentPoliciesTest5", I),
    ("4.8.6", "OverlappingPoliciesTest6", V),
    ("4.8.7", "DifferentPoliciesTest7", I),
    ("4.8.8", "DifferentPoliciesTest8", I),
    ("4.8.9", "DifferentPoliciesTest9", I),
    ("4.8.10", "AllCertificatesSamePoliciesTest10", V),
    ("4.8.11", "AllCertificatesanyPolicyTest11", V),
    ("4.8.12", "DifferentPoliciesTest12", I),
    ("4.8.13", "AllCertificatesSamePoliciesTest13", V),
    ("4.8.14", "AnyPolicyTest14", V),
    ("4.8.15", "UserNoticeQualifierTest15", V),
    ("4.8.16", "UserNoticeQualifierTest16", V),
    ("4.8.17", "UserNoticeQualifierTest17", V),
    ("4.8.18", "UserNoticeQualifierTest18", V),
    ("4.8.19", "UserNoticeQualifierTest19", V),
    ("4.8.20", "CPSPointerQualifierTest20", V),
    # 4.9 Require Explicit Policy
    ("4.9.1", "ValidrequireExplicitPolicyTest1", V),
    ("4.9.2", "ValidrequireExplicitPolicyTest2", V),
    ("4.9.3", "InvalidrequireExplicitPolicyTest3", I),
    ("4.9.4", "ValidrequireExplicitPolicyTest4", V),
    ("4.9.5", "InvalidrequireExplicitPolicyTest5", I),
    ("4.9.6", "ValidSelfIssuedrequireExplicitPolicyTest6", V),
    ("4.9.7", "InvalidSelfIssuedrequireExplicitPolicyTest7", I),
    ("4.9.8", "InvalidSelfIssuedrequireExplicitPolicyTest8", I),
    # 4.10 Policy Mappings (default settings: any-policy)
    ("4.10.1", "ValidPolicyMappingTest1", V),
    ("4.10.2", "InvalidPolicyMappingTest2", I),
    ("4.10.3", "ValidPolicyMappingTest3", V),
    ("4.10.4", "InvalidPolicyMappingTest4", I),
    ("4.10.5", "ValidPolicyMappingTest5", V),
    ("4.10.6", "ValidPolicyMappingTest6", V),
    ("4.10.7", "InvalidMappingFromanyPolicyTest7", I),
    ("4.10.8", "InvalidMappingToanyPolicyTest8", I),
    ("4.10.9", "ValidPolicyMappingTest9", V),
    ("4.10.10", "InvalidPolicyMappingTest10", I),
    ("4.10.11", "ValidPolicyMappingTest11", V),
    ("4.10.12", "ValidPolicyMappingTest12", V),
    ("4.10.13", "ValidPolicyMappingTest13", V),
    ("4.10.14", "ValidPolicyMappingTest14", V),
    # 4.11 Inhibit Policy Mapping
    ("4.11.1", "InvalidinhibitPolicyMappingTest1", I),
    ("4.11.2", "ValidinhibitPolicyMappingTest2", V),
    ("4.11.3", "InvalidinhibitPolicyMappingTest3", I),
    ("4.11.4", "ValidinhibitPolicyMappingTest4", V),
    ("4.11.5", "InvalidinhibitPolicyMappingTest5", I),
    ("4.11.6", "InvalidinhibitPolicyMappingTest6", I),
    ("4.11.7", "ValidSelfIssuedinhibitPolicyMappingTest7", V),
    ("4.11.8", "InvalidSelfIssuedinhibitPolicyMappingTest8", I),
    ("4.11.9", "InvalidSelfIssuedinhibitPolicyMappingTest9", I),
    ("4.11.10", "InvalidSelfIssuedinhibitPolicyMappingTest10", I),
    ("4.11.11", "InvalidSelfIssuedinhibitPolicyMappingTest11", I),
    # 4.12 Inhibit Any Policy
    ("4.12.1", "InvalidinhibitAnyPolicyTest1", I),
    ("4.12.2", "ValidinhibitAnyPolicyTest2", V),
    ("4.12.3", "inhibitAnyPolicyTest3", V),
    ("4.12.4", "InvalidinhibitAnyPolicyTest4", I),
    ("4.12.5", "InvalidinhibitAnyPolicyTest5", I),
    ("4.12.6", "InvalidinhibitAnyPolicyTest6", I),
    ("4.12.7", "ValidSelfIssuedinhibitAnyPolicyTest7", V),
    ("4.12.8", "InvalidSelfIssuedinhibitAnyPolicyTest8", I),
    ("4.12.9", "ValidSelfIssuedinhibitAnyPolicyTest9", V),
    ("4.12.10", "InvalidSelfIssuedinhibitAnyPolicyTest10", I),
    # 4.13 Name Constraints
    ("4.13.1", "ValidDNnameConstraintsTest1", V),
    ("4.13.2", "InvalidDNnameConstraintsTest2", I),
    ("4.13.3", "InvalidDNnameConstraintsTest3", I),
    ("4.13.4", "ValidDNnameConstraintsTest4", V),
    ("4.13.5", "ValidDNnameConstraintsTest5", V),
    ("4.13.6", "ValidDNnameConstraintsTest6", V),
    ("4.13.7", "InvalidDNnameConstraintsTest7", I),
    ("4.13.8", "InvalidDNnameConstraintsTest8", I),
    ("4.13.9", "InvalidDNnameConstraintsTest9", I),
    ("4.13.10", "InvalidDNnameConstraintsTest10", I),
    ("4.13.11", "ValidDNnameConstraintsTest11", V),
    ("4.13.12", "InvalidDNnameConstraintsTest12", I),
    ("4.13.13", "InvalidDNnameConstraintsTest13", I),
    ("4.13.14", "ValidDNnameConstraintsTest14", V),
    ("4.13.15", "InvalidDNnameConstraintsTest15", I),
    ("4.13.16", "InvalidDNnameConstraintsTest16", I),
    ("4.13.17", "InvalidDNnameConstraintsTest17", I),
    ("4.13.18", "ValidDNnameConstraintsTest18", V),
    ("4.13.19", "ValidDNnameConstraintsTest19", V),
    ("4.13.20", "InvalidDNnameConstraintsTest20", I),
    ("4.13.21", "ValidRFC822nameConstraintsTest21", V),
    ("4.13.22", "InvalidRFC822nameConstraintsTest22", I),
    ("4.13.23", "ValidRFC822nameConstraintsTest23", V),
    ("4.13.24", "InvalidRFC822nameConstraintsTest24", I),
    ("4.13.25", "ValidRFC822nameConstraintsTest25", V),
    ("4.13.26", "InvalidRFC822nameConstraintsTest26", I),
    ("4.13.27", "ValidDNandRFC822nameConstraintsTest27", V),
    ("4.13.28", "InvalidDNandRFC822nameConstraintsTest28", I),
    ("4.13.29", "InvalidDNandRFC822nameConstraintsTest29", I),
    ("4.13.30", "ValidDNSnameConstraintsTest30", V),
    ("4.13.31", "InvalidDNSnameConstraintsTest31", I),
    ("4.13.32", "ValidDNSnameConstraintsTest32", V),
    ("4.13.33", "InvalidDNSnameConstraintsTest33", I),
    ("4.13.34", "ValidURInameConstraintsTest34", V),
    ("4.13.35", "InvalidURInameConstraintsTest35", I),
    ("4.13.36", "ValidURInameConstraintsTest36", V),
    ("4.13.37", "InvalidURInameConstraintsTest37", I),
    ("4.13.38", "InvalidDNSnameConstraintsTest38", I),
    # 4.14 Distribution Points
    ("4.14.1", "ValiddistributionPointTest1", V),
    ("4.14.2", "InvaliddistributionPointTest2", I),
    ("4.14.3", "InvaliddistributionPointTest3", I),
    ("4.14.4", "ValiddistributionPointTest4", V),
    ("4.14.5", "ValiddistributionPointTest5", V),
    ("4.14.6", "InvaliddistributionPointTest6", I),
    ("4.14.7", "ValiddistributionPointTest7", V),
    ("4.14.8", "InvaliddistributionPointTest8", I),
    ("4.14.9", "InvaliddistributionPointTest9", I),
    ("4.14.10", "ValidNoissuingDistributionPointTest10", V),
    ("4.14.11", "InvalidonlyContainsUserCertsTest11", I),
    ("4.14.12", "InvalidonlyContainsCACertsTest12", I),
    ("4.14.13", "ValidonlyContainsCACertsTest13", V),
    ("4.14.14", "InvalidonlyContainsAttributeCertsTest14", I),
    ("4.14.15", "InvalidonlySomeReasonsTest15", I),
    ("4.14.16", "InvalidonlySomeReasonsTest16", I),
    ("4.14.17", "InvalidonlySomeReasonsTest17", I),
    ("4.14.18", "ValidonlySomeReasonsTest18", V),
    ("4.14.19", "ValidonlySomeReasonsTest19", V),
    ("4.14.20", "InvalidonlySomeReasonsTest20", I),
    ("4.14.21", "InvalidonlySomeReasonsTest21", I),
    ("4.14.22", "ValidIDPwithindirectCRLTest22", V),
    ("4.14.23", "InvalidIDPwithindirectCRLTest23", I),
    ("4.14.24", "ValidIDPwithindirectCRLTest24", V),
    ("4.14.25", "ValidIDPwithindirectCRLTest25", V),
    ("4.14.26", "InvalidIDPwithindirectCRLTest26", I),
    ("4.14.27", "InvalidcRLIssuerTest27", I),
    ("4.14.28", "ValidcRLIssuerTest28", V),
    ("4.14.29", "ValidcRLIssuerTest29", V),
    ("4.14.30", "ValidcRLIssuerTest30", V),
    ("4.14.31", "InvalidcRLIssuerTest31", I),
    ("4.14.32", "InvalidcRLIssuerTest32", I),
    ("4.14.33", "ValidcRLIssuerTest33", V),
    ("4.14.34", "InvalidcRLIssuerTest34", I),
    ("4.14.35", "InvalidcRLIssuerTest35", I),
    # 4.15 Delta-CRLs
    ("4.15.1", "InvaliddeltaCRLIndicatorNoBaseTest1", I),
    ("4.15.2", "ValiddeltaCRLTest2", V),
    ("4.15.3", "InvaliddeltaCRLTest3", I),
    ("4.15.4", "InvaliddeltaCRLTest4", I),
    ("4.15.5", "ValiddeltaCRLTest5", V),
    ("4.15.6", "InvaliddeltaCRLTest6", I),
    ("4.15.7", "ValiddeltaCRLTest7", V),
    ("4.15.8", "ValiddeltaCRLTest8", V),
    ("4.15.9", "InvaliddeltaCRLTest9", I),
    ("4.15.10", "InvaliddeltaCRLTest10", I),
    # 4.16 Private Certificate Extensions
    ("4.16.1", "ValidUnknownNotCriticalCertificateExtensionTest1", V),
    ("4.16.2", "InvalidUnknownCriticalCertificateExtensionTest2", I),
)


def _name_key(name: x509.Name) -> tuple[tuple[tuple[str, str], ...], ...]:
    """RFC 5280 §7.1 name comparison, near enough: case-folded, whitespace collapsed."""
    return tuple(
        tuple(
            sorted(
                (attr.oid.dotted_string, " ".join(str(attr.value).casefold().split()))
                for attr in rdn
            )
        )
        for rdn in name.rdns
    )


_Key = tuple[tuple[tuple[str, str], ...], ...]
#: pyOpenSSL's short names of the attribute types in the names cryptography cannot read.
_SHORT = {"C": "2.5.4.6", "O": "2.5.4.10", "OU": "2.5.4.11", "CN": "2.5.4.3"}


def _fold(value: str) -> str:
    return " ".join(value.casefold().split())


def _name_key(name: x509.Name) -> _Key:
    """RFC 5280 §7.1 name comparison, near enough: case-folded, whitespace collapsed."""
    return tuple(
        tuple(sorted((attr.oid.dotted_string, _fold(str(attr.value))) for attr in rdn))
        for rdn in name.rdns
    )


def _names(der: bytes) -> tuple[_Key, _Key]:
    """(subject, issuer) keys of a certificate, also one cryptography cannot parse (DSA
    parameters inherited from the issuer, 4.1.5)."""
    try:
        cert = x509.load_der_x509_certificate(der)
        return _name_key(cert.subject), _name_key(cert.issuer)
    except ValueError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ossl = crypto.load_certificate(crypto.FILETYPE_ASN1, der)
        pairs = (ossl.get_subject().get_components(), ossl.get_issuer().get_components())
    subject, issuer = (
        tuple(((_SHORT[k.decode()], _fold(v.decode())),) for k, v in comps) for comps in pairs
    )
    return subject, issuer


@dataclass(frozen=True)
class PKITSCase:
    """One test's inputs: the end entity and intermediates (DER), the anchor, the CRLs."""

    certs_der: tuple[bytes, ...]
    anchor: x509.Certificate
    crls: tuple[x509.CertificateRevocationList, ...]
    intermediates: tuple[str, ...]
    crl_names: tuple[str, ...]


@cache
def _library() -> tuple[
    dict[str, tuple[bytes, _Key, _Key]], dict[str, x509.CertificateRevocationList]
]:
    assert PKITS_DIR is not None
    certs = {}
    with warnings.catch_warnings():
        # 4.4.14 and 4.4.15: negative serial numbers, which cryptography warns about
        warnings.simplefilter("ignore")
        for path in sorted((PKITS_DIR / "certs").glob("*.crt")):
            der = path.read_bytes()
            certs[path.name] = (der, *_names(der))
        crls = {}
        for path in sorted((PKITS_DIR / "crls").glob("*.crl")):
            crls[path.name] = x509.load_der_x509_crl(path.read_bytes())
    return certs, crls


ANCHOR_FILE = "TrustAnchorRootCertificate.crt"


def pkits_case(stem: str) -> PKITSCase:
    """The certificates and CRLs of the PKITS test whose end entity is C{stem}EE.crt."""
    certs, crls = _library()
    leaf_der, _, leaf_issuer = certs[stem + "EE.crt"]
    anchor_der, anchor_key, _ = certs[ANCHOR_FILE]
    cas = {
        name: entry
        for name, entry in certs.items()
        if not name.endswith("EE.crt") and name != ANCHOR_FILE
    }
    found: dict[str, _Key] = {}
    wanted = [leaf_issuer]
    seen_names = set()
    while wanted:
        key = wanted.pop()
        if key in seen_names or key == anchor_key:
            continue
        seen_names.add(key)
        for name, (_, subject, issuer) in cas.items():
            if name not in found and subject == key:
                found[name] = subject
                wanted.append(issuer)
    subjects = set(found.values()) | {anchor_key}
    chosen = {n: c for n, c in crls.items() if _name_key(c.issuer) in subjects}
    names = tuple(sorted(found))
    return PKITSCase(
        certs_der=(leaf_der, *(certs[n][0] for n in names)),
        anchor=x509.load_der_x509_certificate(anchor_der),
        crls=tuple(chosen.values()),
        intermediates=names,
        crl_names=tuple(sorted(chosen)),
    )
