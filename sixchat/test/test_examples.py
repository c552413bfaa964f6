"""
The examples in C{docs/examples/} work: C{agent.tac} loads as a Twisted application, and
C{twistd -n -y agent.tac} runs an agent that registers, answers peers (its echo observer),
serves its status page and control socket, logs its outbox, and stops cleanly.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.application import internet, service
from twisted.internet import defer, reactor

from sixchat.test.processes import (
    REPO,
    START_TIMEOUT,
    bounded,
    eventually,
    run_cli,
    spawn,
    twistd_argv,
)
from sixchat.test.test_agent_e2e import ALICE, BOB, DELIVERY_TIMEOUT, E2ECase

TAC = os.path.join(REPO, "docs", "examples", "agent.tac")


class AgentTacTests(E2ECase):
    def tacEnv(self, **extra: str) -> dict[str, str]:
        env = {
            "SIXCHAT_CERT": self.issue(ALICE),
            "SIXCHAT_TRUST": self.ca,
            "SIXCHAT_DATA_DIR": os.path.join(self.base, "alice"),
            "SIXCHAT_LISTEN": "tcp:0:interface=127.0.0.1",
            "SIXCHAT_STATUS": "tcp:0:interface=127.0.0.1",
        }
        env.update(extra)
        return env

    def test_loads(self) -> None:
        """loadApplication gives the agent, the status page and the timer, not started."""
        from sixchat.agent.service import UserAgentService

        env = self.tacEnv()
        self.patch(os, "environ", {**os.environ, **env})
        application = service.loadApplication(TAC, "python")
        services = list(service.IServiceCollection(application))
        self.assertEqual(len(services), 3)
        agent, page, timer = services
        self.assertIsInstance(agent, UserAgentService)
        self.assertEqual(agent.name_, ALICE)
        self.assertEqual(agent.data_dir, env["SIXCHAT_DATA_DIR"])
        self.assertEqual(type(page).__name__, "StatusPageService")
        self.assertIsInstance(timer, internet.TimerService)
        self.assertFalse(agent.running)

    def test_listens_on_loopback_by_default(self) -> None:
        """Issue 17 item 6: like the README, the example listens on loopback unless told."""
        env = self.tacEnv()
        del env["SIXCHAT_LISTEN"]
        self.patch(os, "environ", {**{k: v for k, v in os.environ.items()
                                      if k != "SIXCHAT_LISTEN"}, **env})  # fmt: skip
        application = service.loadApplication(TAC, "python")
        agent = list(service.IServiceCollection(application))[0]
        self.assertEqual(agent.listener.listen, "tcp:0:interface=127.0.0.1")

    def test_api_md_runs_it_beside_the_readme_agent(self) -> None:
        """Issue 17 items 6 and 7: api.md's command gives the example a data directory and
        node of its own (the README's agent uses `--data-dir alice`) and loopback."""
        with open(os.path.join(REPO, "docs", "api.md"), encoding="utf-8") as f:
            api = f.read()
        command = api[api.index("SIXCHAT_CERT=alice.p12") : api.index("agent.tac\n")]
        self.assertIn("SIXCHAT_DATA_DIR=alice-bot", command)
        self.assertIn("SIXCHAT_NODE=bot", command)
        self.assertIn("SIXCHAT_LISTEN=tcp:0:interface=127.0.0.1", command)
        with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
            readme = f.read()
        self.assertIn("--data-dir alice ", readme)
        self.assertNotIn("--data-dir alice-bot", readme)

    @defer.inlineCallbacks
    def test_twistd_runs_it(self) -> Any:
        """twistd -n -y agent.tac: registered, echoes bob, status page and CLI answer."""
        from twisted.web.client import Agent, readBody

        yield self.startRegistry()
        assert self.registry is not None
        bob = yield self.agent("bob", BOB).start()
        env = self.tacEnv(
            SIXCHAT_REGISTRY=self.registry.address,
            SIXCHAT_REGISTRY_CA=self.ca,
            SIXCHAT_NODE="desk",
            SIXCHAT_ECHO="1",
            SIXCHAT_OUTBOX_EVERY="0.5",
        )
        argv = [*twistd_argv(), "-n", "--pidfile=", "-y", TAC]
        tac = spawn("agent.tac", argv, self.base, env)
        self.addCleanup(tac.terminate)
        yield tac.wait(r"user agent alice@example\.com \(node desk\) ready", timeout=START_TIMEOUT)
        yield tac.wait(r"registered node desk at 127\.0\.0\.1:", timeout=START_TIMEOUT)
        match = yield tac.wait(r"status page on (http://127\.0\.0\.1:\d+/)", timeout=START_TIMEOUT)
        url = match.group(1)

        out, err, code = yield bob.cli("send", ALICE, "ping", "--wait", "30")
        self.assertEqual(code, 0, out + err + tac.tail())

        def echoed() -> Any:
            return bob.inbox(ALICE).addCallback(
                lambda h: [m for m in h if m["direction"] == "in" and m["body"] == "echo: ping"]
            )

        yield eventually(echoed, DELIVERY_TIMEOUT, "the echo reached bob")

        response = yield bounded(
            Agent(reactor).request(b"GET", url.encode()), 10, "status page", tac.tail
        )
        self.assertEqual(response.code, 200)
        page = json.loads((yield readBody(response)))
        self.assertEqual(page["status"]["identity"], ALICE)
        self.assertEqual(page["status"]["registry"]["state"], "registered")
        self.assertGreaterEqual(page["events"]["message"], 1)

        # the control socket is the agent's own: the CLI works as with `twistd sixchat`
        out, err, code = yield run_cli(
            ["status", "--json", "--data-dir", env["SIXCHAT_DATA_DIR"]], cwd=self.base
        )
        self.assertEqual(code, 0, out + err)
        self.assertEqual(json.loads(out)["node"], "desk")
        yield tac.wait(r"outbox: 0 queued, 0 sent, 0 delivered", timeout=10)

        yield tac.terminate()
        self.assertEqual(tac.exit[0], "signal")  # twistd re-raises SIGTERM after shutting down
        self.assertIn("Server Shut Down", tac.log)
        self.assertIn("unregistered node desk", tac.log)
        self.assertNotIn("Traceback", tac.log)
