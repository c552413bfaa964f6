"""
C{sixchat store status|encrypt|decrypt|rekey}: the agent's message store at rest
(L{sixchat.agent.store.encryption}). The agent must be stopped: these commands take the data
directory's lock, and refuse while an agent holds it.

The password is the identity's PKCS#12 password, from C{--password-file} or
C{$SIXCHAT_P12_PASSWORD} as for C{twistd sixchat}; C{--cert} checks that it opens the
identity file before anything is changed, so a mistyped password cannot lock the store with a
key the agent will not be able to unwrap.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from sixchat.cli import CommandError, UsageError

__all__ = ["register", "run_store"]


def _data_dir(args: argparse.Namespace) -> str:
    from sixchat.agent.datadir import default_data_dir

    if args.data_dir:
        path: str = args.data_dir
    elif args.identity:
        path = default_data_dir(args.identity)
    else:
        raise UsageError("say which data directory: --data-dir DIR or --as IDENTITY")
    if not os.path.isdir(path):
        raise CommandError(f"{path} is not a directory (no agent has used it)")
    return path


def _password(path: str | None, cert: str | None, what: str) -> bytes:
    from sixchat.identity import load_identity, read_password

    password = read_password(path)
    if password is None:
        raise UsageError(
            f"{what} needs the identity's PKCS#12 password: --password-file FILE or "
            "SIXCHAT_P12_PASSWORD (an identity without a password keeps a plain store)"
        )
    if cert:
        load_identity(cert, password)  # IdentityLoadError: one line
    return password


def run_store(args: argparse.Namespace) -> int:
    from sixchat.agent.datadir import DataDirLock
    from sixchat.agent.errors import AgentError
    from sixchat.agent.store import encryption

    data_dir = _data_dir(args)
    lock = DataDirLock(data_dir)
    try:
        lock.acquire()
    except AgentError as e:
        raise CommandError(f"{e}; stop it first (the store is changed only offline)") from None
    except OSError as e:
        raise CommandError(f"cannot lock {data_dir}: {e.strerror or e}") from None
    try:
        done = encryption.recover(data_dir)
        if done:
            print(done)
        action = args.action
        if action == "status":
            print(f"{data_dir}: message store {encryption.describe(data_dir)}")
            return 0
        if action == "encrypt":
            password = _password(args.password_file, args.cert, "encrypt")
            encryption.encrypt(data_dir, password)
        elif action == "decrypt":
            password = _password(args.password_file, args.cert, "decrypt")
            encryption.decrypt(data_dir, password)
        else:
            password = _password(args.password_file, None, "rekey")
            new = None
            if args.new_password_file:
                new = _password(args.new_password_file, args.cert, "rekey")
            elif args.cert:
                _password(args.password_file, args.cert, "rekey")
            encryption.rekey(data_dir, password, new)
        print(f"{data_dir}: message store {encryption.describe(data_dir)} ({action} done)")
        return 0
    finally:
        lock.release()


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "store",
        help="encrypt, decrypt or rekey a stopped agent's message store",
        description="Change how the agent's message store is kept at rest. The agent must "
        "be stopped. encrypt: a plain store becomes encrypted (SQLCipher) under a random key "
        "wrapped with the identity's PKCS#12 password (store.key); decrypt: back to plain; "
        "rekey: a new random key, wrapped with --new-password-file (after changing the "
        "PKCS#12 password) or the same password; status: plain, encrypted or absent. "
        "Each change is crash-safe: until it completes, the old store stays in use.",
    )
    p.add_argument("action", choices=("status", "encrypt", "decrypt", "rekey"))
    p.add_argument("--data-dir", metavar="DIR", help="the agent's data directory")
    p.add_argument(
        "--as",
        dest="identity",
        metavar="IDENTITY",
        help="the data directory of this identity ($XDG_DATA_HOME/sixchat/IDENTITY/)",
    )
    p.add_argument(
        "--password-file",
        metavar="FILE",
        help="file whose first line is the PKCS#12 password (default: $SIXCHAT_P12_PASSWORD)",
    )
    p.add_argument(
        "--new-password-file",
        metavar="FILE",
        help="rekey: wrap the new key with this password instead",
    )
    p.add_argument(
        "--cert",
        metavar="FILE.p12",
        help="check first that the (new) password opens this identity file",
    )
    p.set_defaults(handler=run_store)
