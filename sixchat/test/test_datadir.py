"""
Data directories (L{sixchat.agent.datadir}): the default per identity, finding the running
agent, and refusing a directory other users can reach.
"""

from __future__ import annotations

import os
import socket

from twisted.trial import unittest

from sixchat.agent import datadir
from sixchat.agent.datadir import default_data_dir, prepare_data_dir, resolve_data_dir
from sixchat.agent.errors import BadArgument, DataDirError, NoAgentRunning
from sixchat.test.control_support import short_tempdir
from sixchat.testing.agent import ALICE, BOB


class DataDirTests(unittest.TestCase):
    def test_default_data_dir(self) -> None:
        env = {"XDG_DATA_HOME": "/x/share", "HOME": "/home/a"}
        self.assertEqual(default_data_dir(ALICE, env), f"/x/share/sixchat/{ALICE}/")
        self.assertEqual(
            default_data_dir(ALICE, {"HOME": "/home/a"}),
            f"/home/a/.local/share/sixchat/{ALICE}/",
        )
        self.assertRaises(BadArgument, default_data_dir, "../etc", env)

    def test_resolve(self) -> None:
        xdg = short_tempdir(self)
        env = {"XDG_DATA_HOME": xdg}
        error = self.assertRaises(NoAgentRunning, resolve_data_dir, None, None, env)
        self.assertIn("no sixchat agent found under", str(error))
        self.assertEqual(resolve_data_dir("/d", ALICE, env), "/d")
        self.assertEqual(resolve_data_dir(None, BOB, env), os.path.join(xdg, "sixchat", BOB) + "/")
        socks = []
        for who in (ALICE, BOB):
            path = os.path.join(xdg, "sixchat", who)
            os.makedirs(path)
            socks.append(socket.socket(socket.AF_UNIX))
            socks[-1].bind(os.path.join(path, "control.sock"))
            if who == ALICE:
                self.assertEqual(resolve_data_dir(None, None, env), path)
        os.makedirs(os.path.join(xdg, "sixchat", "empty@example.com"))
        error = self.assertRaises(NoAgentRunning, resolve_data_dir, None, None, env)
        self.assertIn(f"several agents under {xdg}/sixchat ({ALICE}, {BOB})", str(error))
        self.assertIn("--as IDENTITY", str(error))
        for s in socks:
            s.close()

    def test_chmod_failure_refused(self) -> None:
        self.data_dir = os.path.join(short_tempdir(self), ALICE)
        os.mkdir(self.data_dir, 0o755)
        os.chmod(self.data_dir, 0o755)

        def refuse(path: str, mode: int) -> None:
            raise PermissionError(1, "Operation not permitted")

        self.patch(datadir.os, "chmod", refuse)
        error = self.assertRaises(DataDirError, prepare_data_dir, self.data_dir)
        self.assertIn("accessible to other users (mode 0755)", str(error))
        self.assertIn("Operation not permitted", str(error))


class DataDirLockTests(unittest.TestCase):
    def test_second_lock_names_the_holder(self) -> None:
        path = prepare_data_dir(os.path.join(short_tempdir(self), "d"))
        first = datadir.DataDirLock(path)
        first.acquire()
        self.addCleanup(first.release)
        second = datadir.DataDirLock(path)
        error = self.assertRaises(datadir.DataDirInUse, second.acquire)
        self.assertEqual(error.pid, os.getpid())
        self.assertEqual(
            str(error),
            f"another sixchat agent (PID {os.getpid()}) is already running on {path}: stop it, "
            "or give this one another --data-dir",
        )
        self.assertFalse(second.held)
        first.release()
        second.acquire()  # free again
        self.assertTrue(second.held)
        second.release()

    def test_holder_without_a_pid(self) -> None:
        path = prepare_data_dir(os.path.join(short_tempdir(self), "d"))
        lock_path = os.path.join(path, "agent.lock")
        for text in (b"", b"garbage\n", b"-3\n"):
            with open(lock_path, "wb") as f:
                f.write(text)
            fd = os.open(lock_path, os.O_RDONLY)
            self.addCleanup(os.close, fd)
            self.assertIsNone(datadir.DataDirLock.holder(fd))
