"""
Tests for L{sixchat.agent.store.keyfile}: wrapping the store key with the PKCS#12 password.
"""

from __future__ import annotations

import base64
import json
import os
import stat

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sixchat.agent.store import keyfile
from sixchat.agent.store.keyfile import (
    KdfParams,
    KeyFileDamaged,
    KeyFileError,
    WrongPassword,
    read_key_file,
    write_key_file,
)

#: Cheap parameters for tests (the defaults cost ~0.5 s and 64 MiB per derivation).
FAST = KdfParams("argon2id", memory_kib=64, iterations=1, lanes=1)
FAST_SCRYPT = KdfParams("scrypt", n=1 << 4, r=8, p=1)
KEY = bytes(range(32))


class KeyFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = os.path.join(self.mktemp() + "-d", "store.key")
        os.makedirs(os.path.dirname(self.path))

    def body(self) -> dict[str, object]:
        with open(self.path) as f:
            data: dict[str, object] = json.load(f)
        return data

    def rewrite(self, body: dict[str, object]) -> None:
        with open(self.path, "w") as f:
            json.dump(body, f)

    def test_round_trip_argon2id(self) -> None:
        write_key_file(self.path, KEY, b"secret", FAST)
        self.assertEqual(read_key_file(self.path, b"secret"), KEY)
        body = self.body()
        self.assertEqual(body["sixchat-store-key"], 1)
        self.assertEqual(body["aead"], "aes-256-gcm")
        kdf = body["kdf"]
        assert isinstance(kdf, dict)
        self.assertEqual(
            (kdf["name"], kdf["memory_kib"], kdf["iterations"], kdf["lanes"]),
            ("argon2id", 64, 1, 1),
        )
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertNotIn(KEY.hex(), open(self.path).read())
        self.assertFalse(os.path.exists(self.path + ".tmp"))

    def test_round_trip_scrypt(self) -> None:
        write_key_file(self.path, KEY, b"secret", FAST_SCRYPT)
        self.assertEqual(read_key_file(self.path, b"secret"), KEY)
        self.assertEqual(self.body()["kdf"]["n"], 16)  # type: ignore[index]

    def test_default_is_argon2id_with_rfc9106_cost(self) -> None:
        params = keyfile.default_params()
        self.assertEqual(params.name, "argon2id")  # cryptography >= 46 has it
        self.assertEqual((params.memory_kib, params.iterations, params.lanes), (65536, 3, 4))

    def test_each_write_is_fresh(self) -> None:
        write_key_file(self.path, KEY, b"secret", FAST)
        first = self.body()
        write_key_file(self.path, KEY, b"secret", FAST)
        second = self.body()
        self.assertNotEqual(first["kdf"]["salt"], second["kdf"]["salt"])  # type: ignore[index]
        self.assertNotEqual(first["nonce"], second["nonce"])

    def test_wrong_password(self) -> None:
        write_key_file(self.path, KEY, b"secret", FAST)
        e = self.assertRaises(WrongPassword, read_key_file, self.path, b"Secret")
        self.assertIn("wrong password", str(e))
        self.assertIn("SIXCHAT_P12_PASSWORD", str(e))

    def test_a_right_read_never_unlocks_a_wrong_one(self) -> None:
        """The last unwrapped key is remembered (one KDF per start), but only for the same
        file bytes and the same password."""
        write_key_file(self.path, KEY, b"secret", FAST)
        self.assertEqual(read_key_file(self.path, b"secret"), KEY)
        self.assertEqual(read_key_file(self.path, b"secret"), KEY)
        self.assertRaises(WrongPassword, read_key_file, self.path, b"secreT")
        body = self.body()
        body["nonce"] = base64.b64encode(b"\x01" * 12).decode()
        self.rewrite(body)
        self.assertRaises(KeyFileDamaged, read_key_file, self.path, b"secret")

    def test_missing(self) -> None:
        e = self.assertRaises(KeyFileError, read_key_file, self.path, b"secret")
        self.assertIn("key file", str(e))
        self.assertIn("missing", str(e))

    def test_tampered_wrapped_key(self) -> None:
        write_key_file(self.path, KEY, b"secret", FAST)
        body = self.body()
        wrapped = bytearray(base64.b64decode(str(body["wrapped"])))
        wrapped[0] ^= 1
        body["wrapped"] = base64.b64encode(bytes(wrapped)).decode()
        self.rewrite(body)
        e = self.assertRaises(KeyFileDamaged, read_key_file, self.path, b"secret")
        self.assertIn("altered or damaged", str(e))

    def test_tampered_nonce(self) -> None:
        write_key_file(self.path, KEY, b"secret", FAST)
        body = self.body()
        body["nonce"] = base64.b64encode(b"\x00" * 12).decode()
        self.rewrite(body)
        self.assertRaises(KeyFileDamaged, read_key_file, self.path, b"secret")

    def test_extra_kdf_field_is_authenticated(self) -> None:
        write_key_file(self.path, KEY, b"secret", FAST)
        body = self.body()
        body["kdf"]["extra"] = 1  # type: ignore[index]
        self.rewrite(body)
        self.assertRaises(KeyFileDamaged, read_key_file, self.path, b"secret")

    def test_changed_kdf_parameter_never_unwraps(self) -> None:
        write_key_file(self.path, KEY, b"secret", FAST)
        body = self.body()
        body["kdf"]["iterations"] = 2  # type: ignore[index]
        self.rewrite(body)
        # A different derivation: indistinguishable from a wrong password, and refused.
        self.assertRaises(KeyFileError, read_key_file, self.path, b"secret")

    def test_malformed(self) -> None:
        write_key_file(self.path, KEY, b"secret", FAST)
        good = self.body()
        cases: list[object] = [
            "not json",
            [],
            {"other": 1},
            {**good, "sixchat-store-key": 2},
            {**good, "aead": "chacha"},
            {**good, "kdf": "argon2id"},
            {**good, "kdf": {**good["kdf"], "name": "pbkdf2"}},  # type: ignore[dict-item]
            {**good, "kdf": {**good["kdf"], "memory_kib": 1 << 30}},  # type: ignore[dict-item]
            {**good, "kdf": {**good["kdf"], "iterations": True}},  # type: ignore[dict-item]
            {**good, "kdf": {**good["kdf"], "salt": "AAAA"}},  # type: ignore[dict-item]
            {**good, "nonce": "!!"},
            {**good, "wrapped": base64.b64encode(b"short").decode()},
            {**good, "check": 5},
        ]
        for case in cases:
            with open(self.path, "w") as f:
                f.write(case if isinstance(case, str) else json.dumps(case))
            self.assertRaises(KeyFileDamaged, read_key_file, self.path, b"secret")

    def test_scrypt_n_must_be_power_of_two(self) -> None:
        write_key_file(self.path, KEY, b"secret", FAST_SCRYPT)
        body = self.body()
        body["kdf"]["n"] = 17  # type: ignore[index]
        self.rewrite(body)
        e = self.assertRaises(KeyFileDamaged, read_key_file, self.path, b"secret")
        self.assertIn("power of two", str(e))

    def test_key_length(self) -> None:
        self.assertRaises(ValueError, write_key_file, self.path, b"short", b"pw", FAST)

    @settings(max_examples=25, deadline=None)
    @given(st.binary(max_size=600))
    def test_garbage_never_crashes(self, data: bytes) -> None:
        with open(self.path, "wb") as f:
            f.write(data)
        self.assertRaises(KeyFileError, read_key_file, self.path, b"secret")

    @settings(max_examples=15, deadline=None)
    @given(st.binary(min_size=32, max_size=32), st.binary(max_size=40))
    def test_any_key_and_password_round_trip(self, key: bytes, password: bytes) -> None:
        write_key_file(self.path, key, password, FAST)
        self.assertEqual(read_key_file(self.path, password), key)
