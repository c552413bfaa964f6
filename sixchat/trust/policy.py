"""
Certificate policy processing (RFC 5280 §6.1.2-6.1.5) with the default inputs: the
user-initial-policy-set is any-policy; initial-explicit-policy, initial-policy-mapping-inhibit
and initial-any-policy-inhibit are false. The constraints come from the certificates
(policyConstraints: requireExplicitPolicy, inhibitPolicyMapping; inhibitAnyPolicy;
policyMappings).

OpenSSL does this itself when C{X509_V_FLAG_POLICY_CHECK} is set, and the trust store sets it;
but OpenSSL reads an empty user-initial-policy-set (pyOpenSSL cannot set one) as I{no}
acceptable policy, so every path that requires an explicit policy fails with
C{X509_V_ERR_NO_EXPLICIT_POLICY} (43) even when it has one. The trust store therefore asks
L{explicit_policy_holds} only in that case: with the user set any-policy, the path is
acceptable when the explicit_policy counter stays positive or the valid_policy_tree is not
empty at the end, which is what this module computes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.x509.oid import CertificatePoliciesOID

from sixchat.trust.der import policy_mappings

__all__ = ["explicit_policy_holds"]

ANY_POLICY = CertificatePoliciesOID.ANY_POLICY


@dataclass(eq=False)
class _Node:
    valid: x509.ObjectIdentifier
    expected: set[x509.ObjectIdentifier]
    parent: _Node | None
    children: list[_Node] = field(default_factory=list)


def _ext(cert: x509.Certificate, kind: type) -> object | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


_POLICY_MAPPINGS = x509.ObjectIdentifier("2.5.29.33")


def _mappings(cert: x509.Certificate) -> dict[x509.ObjectIdentifier, set[x509.ObjectIdentifier]]:
    """issuerDomainPolicy -> its subjectDomainPolicy values (policyMappings)."""
    try:
        ext = cert.extensions.get_extension_for_oid(_POLICY_MAPPINGS).value
    except x509.ExtensionNotFound:
        return {}
    if not isinstance(ext, x509.UnrecognizedExtension):  # pragma: no cover - parsed one day
        raise ValueError("policyMappings parsed by cryptography: update this module")
    mapped: dict[x509.ObjectIdentifier, set[x509.ObjectIdentifier]] = {}
    for issuer, subject in policy_mappings(ext.value):
        mapped.setdefault(x509.ObjectIdentifier(issuer), set()).add(
            x509.ObjectIdentifier(subject)
        )
    return mapped


def _prune(levels: list[list[_Node]], below: int) -> None:
    """Delete nodes of depth < C{below} without children, repeatedly (§6.1.3 (d)(3))."""
    for depth in range(below - 1, -1, -1):
        keep = []
        for node in levels[depth]:
            if node.children:
                keep.append(node)
            elif node.parent is not None:
                node.parent.children.remove(node)
        levels[depth] = keep


def explicit_policy_holds(path: Sequence[x509.Certificate]) -> bool:
    """
    Whether the verified C{path} (leaf first, ending with the trust anchor, which is not
    processed) passes RFC 5280 policy processing with the default inputs above. Malformed
    policy extensions fail.
    """
    certs = list(reversed(path[:-1]))  # certificate 1 (issued by the anchor) .. n (leaf)
    n = len(certs)
    root = _Node(ANY_POLICY, {ANY_POLICY}, None)
    levels: list[list[_Node]] = [[root]]
    tree = True
    explicit = inhibit_any = mapping = n + 1
    try:
        for i, cert in enumerate(certs, start=1):
            self_issued = cert.subject == cert.issuer
            policies = _ext(cert, x509.CertificatePolicies)
            levels.append([])
            if policies is not None and tree:
                assert isinstance(policies, x509.CertificatePolicies)
                oids = [p.policy_identifier for p in policies]
                for oid in oids:
                    if oid == ANY_POLICY:
                        continue
                    parents = [p for p in levels[i - 1] if oid in p.expected]
                    if not parents:
                        parents = [p for p in levels[i - 1] if p.valid == ANY_POLICY][:1]
                    for parent in parents:
                        child = _Node(oid, {oid}, parent)
                        parent.children.append(child)
                        levels[i].append(child)
                if ANY_POLICY in oids and (inhibit_any > 0 or (i < n and self_issued)):
                    for parent in levels[i - 1]:
                        have = {c.valid for c in parent.children}
                        for oid in parent.expected:
                            if oid not in have:
                                child = _Node(oid, {oid}, parent)
                                parent.children.append(child)
                                levels[i].append(child)
                _prune(levels, i)
                tree = bool(levels[i])
            elif policies is None:
                tree = False
            if not tree:
                levels[i] = []
            if explicit <= 0 and not tree:
                return False
            if i == n:
                break
            mapped = _mappings(cert)
            if mapped:
                if any(ANY_POLICY == k or ANY_POLICY in v for k, v in mapped.items()):
                    return False
                if tree:
                    for issuer_policy, subjects in mapped.items():
                        nodes = [x for x in levels[i] if x.valid == issuer_policy]
                        if mapping > 0:
                            for node in nodes:
                                node.expected = set(subjects)
                            anys = [x for x in levels[i] if x.valid == ANY_POLICY]
                            if not nodes and anys and anys[0].parent is not None:
                                parent = anys[0].parent
                                child = _Node(issuer_policy, set(subjects), parent)
                                parent.children.append(child)
                                levels[i].append(child)
                        else:
                            for node in nodes:
                                levels[i].remove(node)
                                if node.parent is not None:
                                    node.parent.children.remove(node)
                            _prune(levels, i)
                            tree = bool(levels[i])
            if not self_issued:
                explicit, mapping, inhibit_any = (
                    max(explicit - 1, 0), max(mapping - 1, 0), max(inhibit_any - 1, 0)
                )  # fmt: skip
            constraints = _ext(cert, x509.PolicyConstraints)
            if constraints is not None:
                assert isinstance(constraints, x509.PolicyConstraints)
                if constraints.require_explicit_policy is not None:
                    explicit = min(explicit, constraints.require_explicit_policy)
                if constraints.inhibit_policy_mapping is not None:
                    mapping = min(mapping, constraints.inhibit_policy_mapping)
            inhibit = _ext(cert, x509.InhibitAnyPolicy)
            if inhibit is not None:
                assert isinstance(inhibit, x509.InhibitAnyPolicy)
                inhibit_any = min(inhibit_any, inhibit.skip_certs)
        leaf = certs[-1] if certs else None
        if leaf is not None:
            explicit = max(explicit - 1, 0)
            constraints = _ext(leaf, x509.PolicyConstraints)
            if isinstance(constraints, x509.PolicyConstraints) and (
                constraints.require_explicit_policy == 0
            ):
                explicit = 0
    except ValueError:  # a malformed policy extension
        return False
    return explicit > 0 or tree
