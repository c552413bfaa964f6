"""
Our own identity (spec §4): the leaf certificate, the chain we present with it, and the key
that signs our handshakes; plus the identity comparison rules of spec §3 that every module
uses for C{to}, C{name}, access lists and pins.

Loading decides between PKCS#12 and PEM by looking at the bytes, never at the file name, and
turns every way it can fail into one L{IdentityLoadError} line that tells the user what to
do. Passwords come from a file or the environment, never the command line, where any local
user could read them in the process list.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import PublicKeyAlgorithmOID

from sixchat import sigalgs
from sixchat.errors import BadCertificate, SixchatError

__all__ = [
    "MAX_CHAIN",
    "PASSWORD_ENV",
    "Identity",
    "IdentityLoadError",
    "is_valid_identity",
    "load_identity",
    "normalize_identity",
    "rfc822_names",
    "read_password",
    "same_identity",
    "san_rfc822_names",
    "spki_sha256",
]

#: Environment variable read by L{read_password} when no password file is given.
PASSWORD_ENV = "SIXCHAT_P12_PASSWORD"  # noqa: S105 - a variable name, not a password

#: At most this many certificates travel in an C{identity} element (§7.4).
MAX_CHAIN = 8

_PASSWORD_HINT = f"use --password-file or {PASSWORD_ENV}"


class IdentityLoadError(SixchatError):
    """
    Our identity could not be loaded. The message is a single line meant for the user;
    C{code} says which case it was, for programs: C{missing}, C{unreadable}, C{password},
    C{format}, C{no_key}, C{key_mismatch}, C{no_identity}, C{key_type}, C{chain}.
    """

    def __init__(self, message: str, code: str = "format") -> None:
        super().__init__(message)
        self.code = code


# -- identity comparison (§3) ------------------------------------------------------------

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
_LOCAL = re.compile(r"[\x21-\x7e]{1,64}\Z")


def normalize_identity(s: str) -> str:
    """
    The canonical form of an identity: the domain ASCII-lowercased, the local part untouched
    (§3: local parts compare byte for byte). Only ASCII letters are folded, so a non-ASCII
    domain can never be made to collide with an A-label.

    @raise ValueError: if C{s} has no C{@}.
    """
    local, at, domain = s.rpartition("@")
    if not at:
        raise ValueError(f"{s!r} is not an identity (local@domain)")
    return f"{local}@{domain.translate(_ASCII_LOWER)}"


def same_identity(a: str, b: str) -> bool:
    """Whether two identities are the same under §3; anything without an C{@} matches nothing."""
    try:
        return normalize_identity(a) == normalize_identity(b)
    except ValueError:
        return False


def is_valid_identity(s: str) -> bool:
    """
    Whether C{s} is an identity version 1 can prove: C{local@domain} with exactly one C{@},
    a local part of 1-64 printable ASCII characters (rfc822Name is an IA5String and SmtpUTF8
    mailboxes are out of scope), and a domain of LDH labels (internationalised domains as
    A-labels), at most 253 characters. No whitespace or control characters anywhere.
    """
    if not isinstance(s, str) or s.count("@") != 1:
        return False
    local, domain = s.split("@")
    if not _LOCAL.match(local):
        return False
    if not domain or len(domain) > 253:
        return False
    return all(_LABEL.match(label) for label in domain.split("."))


def rfc822_names(cert: x509.Certificate) -> tuple[str, ...]:
    """
    The identities a certificate proves: its rfc822Name SANs that are valid identities, in
    certificate order. Other rfc822Name forms (a bare domain, as in name constraints) prove
    nothing and are left out.

    @raise ValueError: if the extensions cannot be parsed.
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return san_rfc822_names(san)


def san_rfc822_names(san: x509.SubjectAlternativeName) -> tuple[str, ...]:
    """L{rfc822_names} from an already parsed subjectAltName value."""
    return tuple(n for n in san.get_values_for_type(x509.RFC822Name) if is_valid_identity(n))


def spki_sha256(public_key: CertificatePublicKeyTypes) -> bytes:
    """SHA-256 of the DER SubjectPublicKeyInfo: what pins hold (§9.3)."""
    return hashlib.sha256(
        public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).digest()


def _is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


class Identity:
    """
    One identity we serve: leaf, chain and private key, checked to belong together.

    The chain is what we send in C{identity} (§7.4): the leaf first, then the intermediates
    in the order they were loaded. Self-signed certificates are dropped because peers use
    their own anchors and every extra certificate counts toward the limit of eight; a
    self-signed leaf is kept (it is then the only certificate).

    @ivar names: the leaf's rfc822Name identities, in certificate order.
    @ivar alg: the C{verify} algorithm token the key implies (§4 table).
    @ivar spki_sha256: what a peer pins for us (§9.3).
    """

    def __init__(
        self,
        private_key: PrivateKeyTypes,
        leaf: x509.Certificate,
        chain: Iterable[x509.Certificate] = (),
        *,
        source: str = "identity",
        check: bool = True,
        server: bool = False,
    ) -> None:
        """
        @param chain: further certificates (intermediates; anchors are dropped).
        @param source: how to name the identity in error messages (usually its file name).
        @param check: with C{False}, skip the §4 profile checks (key/certificate match, an
            rfc822Name, an allowed key type). Only tests use that, to present certificates
            a peer must refuse; C{alg} is then C{""} for a key type the protocol forbids.
        @param server: a TLS server certificate (the registry's): the key must match, but no
            rfc822Name or §4 key type is required.
        @raise IdentityLoadError: if a check fails.
        """
        self.private_key = private_key
        self._sign_alg: tuple[PrivateKeyTypes, str] | None = None
        self.leaf = leaf
        self.leaf_der = leaf.public_bytes(serialization.Encoding.DER)
        self.source = source
        try:
            self.names: tuple[str, ...] = rfc822_names(leaf)
            public_key = leaf.public_key()
        except (ValueError, UnsupportedAlgorithm):
            raise IdentityLoadError(
                f"the certificate in {source} cannot be parsed (malformed extensions or an "
                "unknown key type)",
                "format",
            ) from None
        self.spki_sha256 = spki_sha256(public_key)

        if check:
            if spki_sha256(private_key.public_key()) != self.spki_sha256:  # type: ignore[arg-type]
                raise IdentityLoadError(
                    f"the private key in {source} does not match its certificate",
                    "key_mismatch",
                )
            if not self.names and not server:
                raise IdentityLoadError(
                    f"the certificate in {source} has no rfc822Name (email address) "
                    "identity in its subjectAltName",
                    "no_identity",
                )
        try:
            if leaf.public_key_algorithm_oid == PublicKeyAlgorithmOID.RSASSA_PSS:
                raise BadCertificate("RSA-PSS (id-RSASSA-PSS) leaf keys are not allowed")
            self.alg = sigalgs.alg_for_public_key(public_key)
        except BadCertificate as e:
            if check and not server:
                raise IdentityLoadError(
                    f"{source}: {e.text}; use an Ed25519, ECDSA P-256/P-384 or "
                    "RSA (2048 bits or more) key",
                    "key_type",
                ) from None
            self.alg = ""

        seen = {self.leaf_der}
        chain_der = [self.leaf_der]
        for cert in chain:
            der = cert.public_bytes(serialization.Encoding.DER)
            if der in seen or _is_self_signed(cert):
                continue
            seen.add(der)
            chain_der.append(der)
        if check and len(chain_der) > MAX_CHAIN:
            raise IdentityLoadError(
                f"{source} carries {len(chain_der)} certificates; a peer accepts at most "
                f"{MAX_CHAIN}",
                "chain",
            )
        self.chain_der: list[bytes] = chain_der

    @property
    def default_name(self) -> str:
        """The identity used when a peer's M1 has no C{to} (§7.2)."""
        return self.names[0]

    @property
    def leaf_sha256(self) -> bytes:
        """SHA-256 of the leaf DER: what an C{rsa-oaep} share's C{key} names (§5.2)."""
        return hashlib.sha256(self.leaf_der).digest()

    def fingerprint(self) -> str:
        """The SPKI pin as lowercase hex, for people comparing keys out of band."""
        return self.spki_sha256.hex()

    def serves(self, name: str) -> bool:
        """Whether this identity proves C{name} (§3 comparison)."""
        return any(same_identity(name, n) for n in self.names)

    def sign(self, data: bytes) -> bytes:
        """Sign with the one algorithm the key implies (§4)."""
        key = self.private_key
        cached = self._sign_alg
        if cached is None or cached[0] is not key:
            # Worked out once per key (a P-256 key derives its public key to tell its curve).
            cached = self._sign_alg = (key, sigalgs.alg_for_private_key(key))
        return sigalgs.sign_as(cached[1], key, data)

    def __repr__(self) -> str:
        return f"<Identity {', '.join(self.names) or '(no name)'} {self.alg or '?'}>"


# -- passwords ----------------------------------------------------------------------------


def read_password(
    password_file: str | os.PathLike[str] | None,
    environ: Mapping[str, str] = os.environ,
) -> bytes | None:
    """
    The password for a PKCS#12 file or encrypted key: the first line of C{password_file}
    (its line ending removed), else C{$SIXCHAT_P12_PASSWORD}, else C{None}. An empty
    variable counts as unset, so C{export SIXCHAT_P12_PASSWORD=} clears it; an empty
    password can still be given with a file holding an empty line.

    @raise IdentityLoadError: if the password file cannot be read.
    """
    if password_file is not None:
        try:
            with open(password_file, "rb") as f:
                line = f.readline()
        except FileNotFoundError:
            raise IdentityLoadError(
                f"password file {os.fspath(password_file)} does not exist", "missing"
            ) from None
        except OSError as e:
            raise IdentityLoadError(
                f"cannot read password file {os.fspath(password_file)}: {e.strerror}",
                "unreadable",
            ) from None
        if line.endswith(b"\n"):
            line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
        return line
    value = environ.get(PASSWORD_ENV)
    if value:
        return os.fsencode(value)
    return None


# -- loading ------------------------------------------------------------------------------


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise IdentityLoadError(f"{path} does not exist", "missing") from None
    except IsADirectoryError:
        raise IdentityLoadError(
            f"{path} is a directory, not an identity file", "unreadable"
        ) from None
    except OSError as e:
        raise IdentityLoadError(f"cannot read {path}: {e.strerror}", "unreadable") from None


def _der_header(data: bytes, pos: int) -> tuple[int, int, int] | None:
    """(tag, content start, content length) of the DER element at C{pos}, if well formed."""
    if pos + 2 > len(data):
        return None
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            return None
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    return tag, pos, length


def _looks_like_pkcs12(data: bytes) -> bool:
    """
    Whether C{data} is shaped like a PFX (SEQUENCE { INTEGER 3, ContentInfo, ... }), so a
    failure to open it can be blamed on the password rather than the format.
    """
    outer = _der_header(data, 0)
    if outer is None or outer[0] != 0x30:
        return False
    version = _der_header(data, outer[1])
    if version is None or version[0] != 0x02 or version[2] != 1 or version[1] >= len(data):
        return False
    return data[version[1]] == 3


def _load_pkcs12(
    data: bytes, path: str, password: bytes | None
) -> tuple[PrivateKeyTypes | None, list[x509.Certificate]]:
    # An unprotected file opens with None or b"" depending on the tool that wrote it, and a
    # spare password for an unprotected file is harmless; try the given one first.
    attempts: list[bytes | None] = [password] if password is not None else []
    attempts += [None, b""]
    for attempt in attempts:
        try:
            p12 = pkcs12.load_pkcs12(data, attempt)
        except ValueError:
            continue
        except UnsupportedAlgorithm:
            raise IdentityLoadError(
                f"{path} uses an encryption this system cannot read (re-export it with "
                "AES, e.g. 'openssl pkcs12 -export' from OpenSSL 3)",
                "format",
            ) from None
        certs = ([p12.cert.certificate] if p12.cert is not None else []) + [
            c.certificate for c in p12.additional_certs
        ]
        return p12.key, certs
    if password is None:
        raise IdentityLoadError(f"{path} is password-protected ({_PASSWORD_HINT})", "password")
    raise IdentityLoadError(f"wrong password for {path} ({_PASSWORD_HINT})", "password")


_PEM_KEY = re.compile(
    rb"-----BEGIN ((?:ENCRYPTED |RSA |EC |)PRIVATE KEY)-----.*?-----END \1-----", re.DOTALL
)


def _load_pem_key(
    data: bytes, path: str, password: bytes | None
) -> PrivateKeyTypes | None:
    """The private key in PEM C{data} (the first, if several), or C{None} if there is none."""
    match = _PEM_KEY.search(data)
    if match is None:
        return None
    block = match.group(0)
    try:
        return serialization.load_pem_private_key(block, password)
    except TypeError:
        if password is None:
            raise IdentityLoadError(
                f"the private key in {path} is encrypted ({_PASSWORD_HINT})", "password"
            ) from None
        return serialization.load_pem_private_key(block, None)
    except ValueError:
        # PKCS#8 says "ENCRYPTED PRIVATE KEY"; traditional PEM says "Proc-Type: 4,ENCRYPTED".
        if b"ENCRYPTED" in block and password is not None:
            raise IdentityLoadError(
                f"wrong password for {path} ({_PASSWORD_HINT})", "password"
            ) from None
        raise IdentityLoadError(f"the private key in {path} is damaged", "format") from None
    except UnsupportedAlgorithm:
        raise IdentityLoadError(
            f"the private key in {path} is of an unsupported type", "key_type"
        ) from None


def _load_key_file(key_path: str, password: bytes | None) -> PrivateKeyTypes:
    data = _read_file(key_path)
    if b"-----BEGIN" in data:
        key = _load_pem_key(data, key_path, password)
        if key is None:
            raise IdentityLoadError(f"{key_path} holds no private key", "no_key")
        return key
    try:
        return serialization.load_der_private_key(data, password)
    except TypeError:
        raise IdentityLoadError(
            f"the private key in {key_path} is encrypted ({_PASSWORD_HINT})", "password"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise IdentityLoadError(
            f"{key_path} is not a private key (PEM or DER PKCS#8)", "format"
        ) from None


def _pick_leaf(
    key: PrivateKeyTypes, certs: Sequence[x509.Certificate], path: str
) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """The certificate of C{key}, wherever the file put it, and the others in file order."""
    wanted = spki_sha256(key.public_key())  # type: ignore[arg-type]
    for i, cert in enumerate(certs):
        try:
            if spki_sha256(cert.public_key()) == wanted:
                return cert, [c for j, c in enumerate(certs) if j != i]
        except (ValueError, UnsupportedAlgorithm):
            continue
    raise IdentityLoadError(
        f"the private key in {path} does not match its certificate", "key_mismatch"
    )


def load_identity(
    path: str | os.PathLike[str],
    password: bytes | None = None,
    key_path: str | os.PathLike[str] | None = None,
    *,
    server: bool = False,
) -> Identity:
    """
    Load our identity from a PKCS#12 file (chain from its extra certificates) or PEM
    (certificate and key in one file, or the key in C{key_path}; further CERTIFICATE blocks
    are the chain). The leaf is whichever certificate matches the key, so files that list
    the chain root-first still load.

    @param password: for a protected PKCS#12 file or an encrypted PEM key; see
        L{read_password}.
    @param server: load a TLS server certificate (see L{Identity}).
    @raise IdentityLoadError: with a one-line explanation of what to fix.
    """
    path = os.fspath(path)
    data = _read_file(path)
    key: PrivateKeyTypes | None
    if b"-----BEGIN" in data:
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError:
            if b"-----BEGIN CERTIFICATE-----" in data:
                raise IdentityLoadError(f"a certificate in {path} is damaged", "format") from None
            raise IdentityLoadError(f"{path} holds no certificate", "format") from None
        key = _load_pem_key(data, path, password)
    elif _looks_like_pkcs12(data):
        key, certs = _load_pkcs12(data, path, password)
        if not certs:
            raise IdentityLoadError(f"{path} holds no certificate", "format")
    else:
        raise IdentityLoadError(
            f"{path} is neither a PKCS#12 (.p12/.pfx) nor a PEM file", "format"
        )
    if key_path is not None:
        key = _load_key_file(os.fspath(key_path), password)
    if key is None:
        raise IdentityLoadError(
            f"{path} has no private key (put the key in the same file or give its key file)",
            "no_key",
        )
    leaf, rest = _pick_leaf(key, certs, path)
    return Identity(key, leaf, rest, source=path, server=server)
