"""
Tests of L{sixchat._sqlite.DatabaseThread}, the one thread that owns a store's connection:
calls run in order on that thread, results and failures come back in the reactor thread,
and a call leaves no reference cycle behind (the garbage collector of a busy registry has
nothing of it to find).
"""

from __future__ import annotations

import gc
import threading

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from sixchat._sqlite import DatabaseThread


class DatabaseThreadTests(TestCase):
    def started(self) -> DatabaseThread:
        worker = DatabaseThread(reactor, "sixchat-test-db")
        worker.start()
        self.addCleanup(worker.stop)
        return worker

    async def test_calls_run_in_order_on_one_thread(self) -> None:
        worker = self.started()
        seen: list[tuple[int, str]] = []

        def call(i: int, *, tag: str) -> int:
            seen.append((i, threading.current_thread().name))
            return i * 2

        results = await defer.gatherResults([worker.run(call, i, tag="x") for i in range(20)])
        self.assertEqual(results, [i * 2 for i in range(20)])
        self.assertEqual([i for i, _ in seen], list(range(20)))
        self.assertEqual({name for _, name in seen}, {"sixchat-test-db"})

    async def test_failure_comes_back_and_the_thread_goes_on(self) -> None:
        worker = self.started()

        def boom() -> None:
            raise ValueError("no such table")

        with self.assertRaisesRegex(ValueError, "no such table"):
            await worker.run(boom)
        self.assertEqual(await worker.run(lambda: 7), 7)

    async def test_results_fire_in_the_reactor_thread(self) -> None:
        worker = self.started()
        fired_in: list[threading.Thread] = []
        d = worker.run(lambda: None)
        d.addCallback(lambda _: fired_in.append(threading.current_thread()))
        await d
        self.assertEqual(fired_in, [threading.main_thread()])

    async def test_a_call_leaves_no_cycle(self) -> None:
        worker = self.started()
        await worker.run(lambda: None)
        gc.collect()
        gc.disable()
        try:
            for _ in range(50):
                await worker.run(lambda: [1, 2, 3])
            found = gc.collect()
        finally:
            gc.enable()
        # Twisted's ThreadPool left 4 objects (a self-referencing closure) per call.
        self.assertEqual(found, 0)

    def test_stop_runs_what_was_queued_then_joins(self) -> None:
        worker = DatabaseThread(reactor, "sixchat-test-db")
        self.assertFalse(worker.running)
        worker.start()
        self.assertRaises(RuntimeError, worker.start)
        gate = threading.Event()
        ran: list[int] = []
        worker.run(gate.wait)
        worker.run(ran.append, 1)
        gate.set()
        worker.stop()
        self.assertEqual(ran, [1])
        self.assertFalse(worker.running)
        self.assertRaises(RuntimeError, worker.run, ran.append, 2)
        worker.stop()  # stopping a stopped thread does nothing

    async def test_several_threads_share_the_queue(self) -> None:
        worker = DatabaseThread(reactor, "sixchat-test-pool", threads=3)
        worker.start()
        self.addCleanup(worker.stop)
        barrier = threading.Barrier(3, timeout=10)  # passes only if 3 calls run at once

        def meet() -> str:
            barrier.wait()
            return threading.current_thread().name

        names = await defer.gatherResults([worker.run(meet) for _ in range(3)])
        self.assertEqual(sorted(names), [f"sixchat-test-pool-{i}" for i in range(3)])

    def test_needs_a_thread(self) -> None:
        self.assertRaises(ValueError, DatabaseThread, reactor, "none", threads=0)
