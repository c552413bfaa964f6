"""
The parent's side of the worker processes: start one, send it commands, read its events.

Each worker's stderr goes to C{<workdir>/<name>.log}, so a failing benchmark can be
diagnosed; its stdout carries one JSON event per line. Every wait has a timeout, and
L{Worker.stop} ends the process (closing stdin, then SIGTERM, then SIGKILL) — only the
processes this harness started, by their own handles.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any


class WorkerError(Exception):
    """A worker failed, died or did not answer in time."""


class WorkerExited(WorkerError):
    """The worker's output ended (it exited)."""


class Worker:
    def __init__(self, name: str, spec: dict[str, Any], workdir: str) -> None:
        self.name = name
        self.log_path = os.path.join(workdir, f"{name}.log")
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sixchat.bench.worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            cwd=workdir,
        )
        self.pid = self.process.pid
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                self._events.put(json.loads(line))
            except ValueError:
                self._events.put({"event": "noise", "text": line.decode(errors="replace")})
        self._events.put(None)

    def send(self, cmd: str, **fields: Any) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write((json.dumps({"cmd": cmd, **fields}) + "\n").encode())
            self.process.stdin.flush()
        except BrokenPipeError:
            raise WorkerError(f"{self.name} is gone: {self.tail()}") from None

    def next(self, timeout: float) -> dict[str, Any]:
        """The next event (errors raise, noise is skipped)."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise WorkerError(f"{self.name}: no answer within {timeout:.0f} s: {self.tail()}")
            try:
                event = self._events.get(timeout=left)
            except queue.Empty:
                continue
            if event is None:
                self.process.wait(timeout=10)
                raise WorkerExited(
                    f"{self.name} exited ({self.process.returncode}): {self.tail()}"
                )
            if event.get("event") == "error":
                raise WorkerError(f"{self.name}: {event.get('error')}")
            if event.get("event") == "noise":
                continue
            return event

    def expect(self, name: str, timeout: float) -> dict[str, Any]:
        event = self.next(timeout)
        if event.get("event") != name:
            raise WorkerError(f"{self.name}: expected {name}, got {event}")
        return event

    def events_until_exit(self, timeout: float) -> Iterator[dict[str, Any]]:
        """Every event, as it comes, until the worker exits successfully."""
        end = time.monotonic() + timeout
        while True:
            try:
                event = self.next(max(0.1, end - time.monotonic()))
            except WorkerExited:
                if self.process.returncode == 0:
                    return
                raise
            yield event

    def tail(self, lines: int = 15) -> str:
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self, grace: float = 5.0) -> None:
        process = self.process
        if process.poll() is None:
            try:
                if process.stdin is not None:
                    process.stdin.close()
            except OSError:
                pass
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                process.terminate()
                try:
                    process.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self._log.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
