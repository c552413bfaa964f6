"""
Own-device sync with real processes (issue 12, item 5): a registry, C{twistd -n sixchat}
agents for two nodes of alice and two of bob, each with its own key, and the C{sixchat}
command line (C{send}, C{inbox}, C{devices}).

The scenario: alice's laptop sends while no node of bob's is online, then goes offline;
alice's always-on home node delivers when bob's phone comes online; alice's laptop, back,
shows C{delivered}; bob's laptop, started last, holds the message once (from bob's phone,
since alice's nodes owe nothing once one of bob's nodes has it); bob's reply reaches both of
alice's nodes.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.python import log

from sixchat.test.processes import eventually
from sixchat.test.test_agent_e2e import ALICE, BOB, DELIVERY_TIMEOUT, AgentProcess, E2ECase


def linked(agent: AgentProcess, node: str) -> Any:
    """Fires (truthy) once C{agent} says it is linked with its own node C{node}."""

    def probe() -> Any:
        def check(devices: dict[str, Any]) -> bool:
            return any(n["node"] == node and n["linked"] for n in devices["own_nodes"])

        return agent.cli_json("devices").addCallback(check)

    return eventually(probe, DELIVERY_TIMEOUT, f"{agent.name} linked with {node}")


def holds(agent: AgentProcess, message_id: str, state: str | None = None) -> Any:
    """Fires with C{agent}'s history entry for C{message_id} once it has it (in C{state})."""

    def probe() -> Any:
        def find(history: list[dict[str, Any]]) -> Any:
            found = [m for m in history if m["id"] == message_id]
            if found and (state is None or found[0].get("state") == state):
                return found[0]
            return None

        return agent.inbox().addCallback(find)

    what = f"{agent.name} holds {message_id}" + (f" {state}" if state else "")
    return eventually(probe, DELIVERY_TIMEOUT, what)


class AlwaysOnNodeTests(E2ECase):
    timeout = 400

    @defer.inlineCallbacks
    def test_home_node_delivers_what_the_laptop_queued(self) -> Any:
        yield self.startRegistry()
        bob_phone = self.agent("bob-phone", BOB, node="phone")
        bob_laptop = self.agent("bob-laptop", BOB, node="blaptop")
        # bob registered once (so alice's send finds him), then went offline
        yield bob_phone.start()
        yield bob_phone.stop()

        laptop = self.agent("alice-laptop", ALICE, node="laptop")
        home = self.agent("alice-home", ALICE, node="home")
        yield defer.gatherResults([laptop.start(), home.start()])
        yield linked(laptop, "home")
        yield linked(home, "laptop")

        result = yield laptop.cli_json("send", BOB, "while you were away")
        message_id = result["id"]
        # the home node holds it, queued, before the laptop goes away
        entry = yield holds(home, message_id)
        self.assertEqual((entry["direction"], entry["state"]), ("out", "queued"))
        yield laptop.stop()

        yield bob_phone.start()
        yield holds(home, message_id, "delivered")
        phone_inbox = yield bob_phone.inbox()
        self.assertExactlyOnce(phone_inbox, ALICE, ["while you were away"])

        yield laptop.start()
        entry = yield holds(laptop, message_id, "delivered")
        self.assertEqual(entry["delivered_nodes"], 1)

        yield bob_laptop.start()
        yield holds(bob_laptop, message_id)
        laptop_inbox = yield bob_laptop.inbox()
        self.assertExactlyOnce(laptop_inbox, ALICE, ["while you were away"])
        # alice's nodes never owed bob's laptop anything: it came from bob's phone
        for node in (home, laptop):
            entry = yield holds(node, message_id, "delivered")
            self.assertEqual((entry["delivered_nodes"], entry["total_nodes"]), (1, 1))

        reply = yield bob_laptop.cli_json("send", ALICE, "got it")
        for node in (laptop, home):
            yield holds(node, reply["id"])
            inbox = yield node.inbox()
            self.assertExactlyOnce(inbox, BOB, ["got it"])
        # the phone learns what bob's laptop sent, and that it was delivered
        yield holds(bob_phone, reply["id"], "delivered")

        devices = yield home.cli_json("devices")
        self.assertEqual(devices["node"], "home")
        (other,) = devices["own_nodes"]
        self.assertEqual((other["node"], other["registered"], other["linked"]),
                         ("laptop", True, True))  # fmt: skip
        out, err, code = yield home.cli("status")
        self.assertEqual(code, 0, err)
        self.assertIn("own nodes:   1 besides this one (home)", out)
        self.assertIn("  laptop  linked", out)


class SyncCrashTests(E2ECase):
    """
    SIGKILLs of every node during a 500-message burst: alice's laptop queues it while its
    sync partner (alice's home node) is killed and restarted, bob's phone is killed and
    restarted while receiving, and the laptop itself is killed once everything is queued.
    In the end bob holds each message once, and both of alice's nodes hold each once,
    delivered.
    """

    timeout = 900
    BURST = 500

    @defer.inlineCallbacks
    def test_sigkills_during_a_burst_lose_and_duplicate_nothing(self) -> Any:
        from sixchat.test.processes import bounded

        yield self.startRegistry()
        phone = self.agent("bob-phone", BOB, node="phone")
        laptop = self.agent("alice-laptop", ALICE, node="laptop")
        home = self.agent("alice-home", ALICE, node="home")
        yield defer.gatherResults([phone.start(), laptop.start(), home.start()])
        yield linked(laptop, "home")
        yield linked(home, "laptop")
        client = yield laptop.control(self)

        received = r"message \S+ from alice@example\.com: burst "

        def restart(agent: AgentProcess) -> Any:
            return agent.kill().addCallback(lambda _: agent.start())

        assert phone.proc is not None
        home_back = phone.proc.wait(received, count=60, timeout=BURST)
        home_back.addCallback(lambda _: restart(home))
        phone_back = phone.proc.wait(received, count=150, timeout=BURST)
        phone_back.addCallback(lambda _: restart(phone))

        bodies = [f"burst {i:03d}" for i in range(self.BURST)]
        sends = defer.gatherResults([client.send(BOB, body) for body in bodies])
        results = yield bounded(sends, DELIVERY_TIMEOUT, "queueing the burst", laptop.tail)
        ids = {r["id"] for r in results}
        self.assertEqual(len(ids), self.BURST)
        status = yield client.status()
        owed_at_kill = sum(status["outbox"].values())
        yield restart(laptop)  # everything queued, some of it maybe still in flight
        yield defer.gatherResults([home_back, phone_back])
        for agent in (home, phone, laptop):
            self.assertEqual(len(agent.runs), 2, f"{agent.name} was not restarted")
        stored_first = phone.runs[0].count(received)
        self.assertGreaterEqual(stored_first, 150)
        self.assertLess(stored_first, self.BURST, "the burst was over before the phone's kill")
        log.msg(f"burst: phone stored {stored_first} before its kill; {owed_at_kill} owed "
                "when the laptop was killed")  # fmt: skip

        def all_delivered(agent: AgentProcess) -> Any:
            def check(history: list[dict[str, Any]]) -> bool:
                out = [m for m in history if m["direction"] == "out"]
                return len(out) == self.BURST and all(m["state"] == "delivered" for m in out)

            return eventually(
                lambda: agent.inbox(BOB, limit=self.BURST * 2).addCallback(check),
                BURST, f"{agent.name} holds the burst delivered",
            )  # fmt: skip

        def all_received() -> Any:
            return phone.inbox(ALICE, limit=self.BURST * 2).addCallback(
                lambda inbox: len({m["id"] for m in inbox}) == self.BURST
            )

        yield eventually(all_received, BURST, "bob's phone holds the burst")
        inbox = yield phone.inbox(ALICE, limit=self.BURST * 2)
        self.assertExactlyOnce(inbox, ALICE, bodies)
        self.assertEqual({m["id"] for m in inbox}, ids)
        for agent in (laptop, home):
            yield all_delivered(agent)
            history = yield agent.inbox(BOB, limit=self.BURST * 2)
            self.assertEqual(sorted(m["id"] for m in history), sorted(ids))
            status = yield agent.cli_json("status")
            self.assertEqual(status["outbox"], {"queued": 0, "sent": 0, "delivered": 0})


#: Bound for the burst's waits (seconds): three agents and three restarts on a loaded machine.
BURST = 300.0


class ReceivedFileTests(E2ECase):
    """A file one node of alice received reaches her other node (protocol.md 8.6, "Files")."""

    timeout = 400

    @defer.inlineCallbacks
    def test_a_file_the_laptop_received_is_listed_with_a_path_on_the_home_node(self) -> Any:
        import os

        from sixchat.test.test_agent_files_e2e import sha256_of, write_file

        yield self.startRegistry()
        laptop = yield self.agent("alice-laptop", ALICE, node="laptop").start()
        bob = yield self.agent("bob", BOB).start()
        path = os.path.join(self.base, "scan.pdf")
        size = 1024 * 1024 + 5
        digest = write_file(path, size)
        out, err, code = yield bob.cli("send-file", ALICE, path, "--wait", str(DELIVERY_TIMEOUT))
        self.assertEqual(code, 0, f"{out}{err}")
        [sent] = yield bob.cli_json("files")
        # home starts after the laptop got the file: bob owes it nothing, the laptop hands it on
        home = yield self.agent("alice-home", ALICE, node="home").start()

        def listed() -> Any:
            def find(files: list[dict[str, Any]]) -> Any:
                return [f for f in files if f["id"] == sent["id"] and f.get("path")]

            return home.cli_json("files").addCallback(find)

        try:
            [entry] = yield eventually(listed, DELIVERY_TIMEOUT, "home lists the file")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.dump(laptop, home)}") from None
        self.assertEqual(
            {k: entry[k] for k in ("peer", "direction", "name", "size", "state", "sha256")},
            {"peer": BOB, "direction": "in", "name": "scan.pdf", "size": size,
             "state": "received", "sha256": digest},
        )  # fmt: skip
        self.assertEqual(entry["path"], os.path.join(home.data_dir, "files", "scan.pdf"))
        self.assertEqual(sha256_of(entry["path"]), digest)
        out, err, code = yield home.cli("files")
        self.assertEqual(code, 0, err)
        self.assertIn("<- bob@example.com  scan.pdf", out)
        # one copy each, never a file from alice herself
        for node in (laptop, home):
            files = yield node.cli_json("files")
            self.assertEqual([(f["peer"], f["id"]) for f in files], [(BOB, sent["id"])])
