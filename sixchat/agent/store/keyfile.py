"""
The store key file (C{<data-dir>/store.key}): the encrypted message store's random 32-byte
database key, wrapped with a key derived from the identity's PKCS#12 password.

Format (JSON, one object, version 1)::

    {"sixchat-store-key": 1,
     "kdf": {"name": "argon2id", "salt": B64, "iterations": 3, "lanes": 4,
             "memory_kib": 65536},           # or {"name": "scrypt", "salt", "n", "r", "p"}
     "aead": "aes-256-gcm",
     "check": B64,                           # 16 bytes: tells a wrong password apart
     "nonce": B64,                           # 12 bytes
     "wrapped": B64}                         # the 32-byte key + the 16-byte GCM tag

The KDF yields 64 bytes: the first 32 are the AES-256-GCM wrapping key; HMAC-SHA256 of the
last 32 over a fixed label, cut to 16 bytes, is C{check}. The AEAD's associated data is the
canonical JSON of the version, C{kdf} and C{aead} fields, so changing a parameter is
detected. A wrong password fails C{check} (L{WrongPassword}); a right password whose unwrap
fails means the file was altered (L{KeyFileDamaged}). C{check} and the tag both let a thief
test password guesses offline at the KDF's cost, no faster than the AEAD alone would.

KDF: Argon2id (RFC 9106's second recommended setting: 64 MiB, 3 passes, 4 lanes) when the
installed C{cryptography}/OpenSSL offers it, scrypt (N=2^17, r=8, p=1) otherwise. Parameters
read from a file are bounded (L{KeyFileDamaged} past them), so an altered file cannot make
the agent allocate gigabytes.

Written crash-safely: a temporary file (mode 0600) is written and fsynced, renamed over the
target, and the directory fsynced.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from sixchat.agent.store.cipher import KEY_BYTES, fsync_path
from sixchat.agent.store.records import StoreError

__all__ = [
    "KEY_FILENAME",
    "KdfParams",
    "KeyFileDamaged",
    "KeyFileError",
    "WrongPassword",
    "default_params",
    "read_key_file",
    "write_key_file",
]

#: The key file's name in the data directory.
KEY_FILENAME = "store.key"
FORMAT = "sixchat-store-key"
VERSION = 1
_CHECK_LABEL = b"sixchat store key password check"

# Bounds on parameters read from a file.
_MAX_MEMORY_KIB = 1 << 20  # 1 GiB
_MAX_ITERATIONS = 64
_MAX_LANES = 64
_MAX_SCRYPT_N = 1 << 20


class KeyFileError(StoreError):
    """The key file is missing, unreadable or malformed."""


class WrongPassword(KeyFileError):
    """The password does not unlock the key file."""


class KeyFileDamaged(KeyFileError):
    """The key file was altered or damaged (its parameters or its wrapped key)."""


@dataclass(frozen=True)
class KdfParams:
    """The KDF and its cost. C{name} is C{argon2id} (memory_kib, iterations, lanes) or
    C{scrypt} (n, r, p)."""

    name: str
    memory_kib: int = 65536
    iterations: int = 3
    lanes: int = 4
    n: int = 1 << 17
    r: int = 8
    p: int = 1

    def as_json(self, salt: bytes) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "salt": _b64(salt)}
        if self.name == "argon2id":
            data.update(iterations=self.iterations, lanes=self.lanes, memory_kib=self.memory_kib)
        else:
            data.update(n=self.n, r=self.r, p=self.p)
        return data


def _argon2id() -> Any:
    try:
        from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
    except ImportError:
        return None
    try:
        Argon2id(salt=b"\x00" * 16, length=32, iterations=1, lanes=1, memory_cost=8).derive(b"")
    except UnsupportedAlgorithm:
        return None
    return Argon2id


def default_params() -> KdfParams:
    """Argon2id if this machine has it, else scrypt."""
    return KdfParams("argon2id" if _argon2id() is not None else "scrypt")


def _derive(password: bytes, salt: bytes, params: KdfParams) -> bytes:
    if params.name == "argon2id":
        argon = _argon2id()
        if argon is None:
            raise KeyFileError("the key file uses Argon2id, which this machine's OpenSSL lacks")
        kdf = argon(
            salt=salt,
            length=64,
            iterations=params.iterations,
            lanes=params.lanes,
            memory_cost=params.memory_kib,
        )
        return bytes(kdf.derive(password))
    return bytes(Scrypt(salt=salt, length=64, n=params.n, r=params.r, p=params.p).derive(password))


def _check(derived: bytes) -> bytes:
    return hmac.new(derived[32:], _CHECK_LABEL, hashlib.sha256).digest()[:16]


def _aad(version: int, kdf: dict[str, Any], aead: str) -> bytes:
    header = {"sixchat-store-key": version, "kdf": kdf, "aead": aead}
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any, what: str, size: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise KeyFileDamaged(f"the key file's {what} is not text")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileDamaged(f"the key file's {what} is not base64") from None
    if size is not None and len(data) != size:
        raise KeyFileDamaged(f"the key file's {what} has the wrong length")
    return data


def write_key_file(path: str, key: bytes, password: bytes, params: KdfParams | None = None) -> None:
    """Wrap C{key} with C{password} and write it to C{path} (mode 0600, crash-safe)."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"a store key is {KEY_BYTES} bytes")
    params = params or default_params()
    salt = os.urandom(16)
    derived = _derive(password, salt, params)
    kdf = params.as_json(salt)
    nonce = os.urandom(12)
    wrapped = AESGCM(derived[:32]).encrypt(nonce, key, _aad(VERSION, kdf, "aes-256-gcm"))
    body = {
        FORMAT: VERSION,
        "kdf": kdf,
        "aead": "aes-256-gcm",
        "check": _b64(_check(derived)),
        "nonce": _b64(nonce),
        "wrapped": _b64(wrapped),
    }
    text = json.dumps(body, indent=1, sort_keys=True).encode() + b"\n"
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_path(os.path.dirname(os.path.abspath(path)))


def _int(kdf: dict[str, Any], name: str, low: int, high: int) -> int:
    value = kdf.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise KeyFileDamaged(f"the key file's KDF parameter {name} is missing or out of range")
    return value


def _params(kdf: Any) -> tuple[KdfParams, bytes]:
    if not isinstance(kdf, dict):
        raise KeyFileDamaged("the key file has no KDF parameters")
    salt = _unb64(kdf.get("salt"), "salt")
    if not 16 <= len(salt) <= 64:
        raise KeyFileDamaged("the key file's salt has the wrong length")
    name = kdf.get("name")
    if name == "argon2id":
        params = KdfParams(
            "argon2id",
            memory_kib=_int(kdf, "memory_kib", 8, _MAX_MEMORY_KIB),
            iterations=_int(kdf, "iterations", 1, _MAX_ITERATIONS),
            lanes=_int(kdf, "lanes", 1, _MAX_LANES),
        )
        if params.memory_kib < 8 * params.lanes:
            raise KeyFileDamaged("the key file's Argon2id memory is below 8 KiB per lane")
    elif name == "scrypt":
        n = _int(kdf, "n", 2, _MAX_SCRYPT_N)
        if n & (n - 1):
            raise KeyFileDamaged("the key file's scrypt n is not a power of two")
        params = KdfParams("scrypt", n=n, r=_int(kdf, "r", 1, 32), p=_int(kdf, "p", 1, 16))
    else:
        raise KeyFileDamaged(f"the key file names an unknown KDF {name!r}")
    return params, salt


def read_key_file(path: str, password: bytes) -> bytes:
    """
    Unwrap the database key.

    @raise KeyFileError: the file is missing or unreadable.
    @raise WrongPassword: the password is not the one the key was wrapped with.
    @raise KeyFileDamaged: the file is malformed, of an unknown version, or altered.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(64 * 1024)
    except FileNotFoundError:
        raise KeyFileError(
            f"the message store is encrypted but its key file {path} is missing"
        ) from None
    except OSError as e:
        raise KeyFileError(f"cannot read the store key file {path}: {e.strerror or e}") from None
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise KeyFileDamaged(f"the store key file {path} is not valid JSON (damaged?)") from None
    if not isinstance(body, dict) or FORMAT not in body:
        raise KeyFileDamaged(f"{path} is not a sixchat store key file")
    version = body[FORMAT]
    if version != VERSION:
        raise KeyFileDamaged(
            f"the store key file {path} has version {version!r}; this sixchat knows {VERSION}"
        )
    if body.get("aead") != "aes-256-gcm":
        raise KeyFileDamaged(f"the store key file {path} names an unknown cipher")
    params, salt = _params(body.get("kdf"))
    check = _unb64(body.get("check"), "check value", 16)
    nonce = _unb64(body.get("nonce"), "nonce", 12)
    wrapped = _unb64(body.get("wrapped"), "wrapped key", KEY_BYTES + 16)
    memo = (hashlib.sha256(raw).digest(), hashlib.sha256(password).digest())
    if _last_unwrapped is not None and hmac.compare_digest(_last_unwrapped[0], b"".join(memo)):
        return _last_unwrapped[1]
    derived = _derive(password, salt, params)
    if not hmac.compare_digest(_check(derived), check):
        raise WrongPassword(
            "wrong password for the encrypted message store (it is your identity file's "
            "PKCS#12 password: --password-file or SIXCHAT_P12_PASSWORD)"
        )
    try:
        aad = _aad(VERSION, body["kdf"], "aes-256-gcm")
        key = AESGCM(derived[:32]).decrypt(nonce, wrapped, aad)
    except InvalidTag:
        raise KeyFileDamaged(
            f"the store key file {path} was altered or damaged: its key does not unwrap"
        ) from None
    _remember(b"".join(memo), bytes(key))
    return bytes(key)


#: The last key unwrapped in this process, by (hash of the file's bytes, hash of the
#: password): C{twistd sixchat} checks the password while parsing its options and the store
#: opens moments later, and the KDF (~0.5 s, 64 MiB) then runs once, not twice. The same
#: file with the same password gives the same key; anything else derives again.
_last_unwrapped: tuple[bytes, bytes] | None = None


def _remember(memo: bytes, key: bytes) -> None:
    global _last_unwrapped
    _last_unwrapped = (memo, key)
