"""
L{sixchat.web.server}, L{sixchat.web.api} and L{sixchat.web.stream} in this process: a
L{WebService} on a L{FakeAgent} (L{sixchat.testing}) listening on 127.0.0.1, spoken to over a
real loopback socket byte for byte; the heartbeat runs on a C{task.Clock}. Also the C{--web}
option's one-line errors and C{sixchat web}.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from typing import Any

from cryptography.hazmat.primitives import serialization
from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.python import usage
from twisted.trial import unittest

from sixchat.agent.datadir import DataDirLock
from sixchat.test import certs
from sixchat.test.processes import run_cli, run_twistd, short_tempdir
from sixchat.test.test_agent_e2e import E2ECase
from sixchat.test.web_support import raw_http, request
from sixchat.testing import FakeAgent
from sixchat.testing.agent import ALICE, BOB
from sixchat.web.security import SECURITY_HEADERS
from sixchat.web.server import URL_FILE, WebService, parse_web_endpoint, web_url

LOCAL = "tcp:0:interface=127.0.0.1"


class WebAgent(FakeAgent):
    """The fake agent with what the web layer reads of a real one."""

    def __init__(self, clock: Any, data_dir: str) -> None:
        super().__init__(clock)
        ca = certs.make_ca()
        self.identity = certs.make_identity(ALICE, ca)
        self.name_ = ALICE
        self.data_dir = data_dir
        self.directory = None
        self.on_fatal: Any = None
        self.ready: defer.Deferred[None] = defer.Deferred()


class EndpointTests(unittest.TestCase):
    def test_loopback_and_tls_accepted(self) -> None:
        self.assertEqual(parse_web_endpoint("tcp:8605:interface=127.0.0.1"), ("127.0.0.1", False))
        self.assertEqual(parse_web_endpoint(r"tcp6:8605:interface=\:\:1"), ("::1", False))
        key_pem, cert_pem, _ = tls_files(short_tempdir(self))
        text = f"ssl:8605:privateKey={key_pem}:certKey={cert_pem}:interface=192.0.2.7"
        self.assertEqual(parse_web_endpoint(text), ("192.0.2.7", True))

    def test_refusals_are_one_line(self) -> None:
        for text, words in (
            ("tcp:8605", "every address, which is not loopback: use TLS"),
            ("ssl:8605:privateKey=/nonexistent.pem", "cannot read /nonexistent.pem"),
            ("tcp:8605:interface=192.0.2.7", "192.0.2.7, which is not loopback"),
            ("unix:/tmp/x", "use a tcp:, tcp6: or ssl: endpoint"),
            ("tcp:notaport", "invalid literal"),
        ):
            e = self.assertRaises(ValueError, parse_web_endpoint, text)
            self.assertIn(words, str(e))
            self.assertNotIn("\n", str(e))

    def test_url(self) -> None:
        self.assertEqual(web_url("127.0.0.1", 8605, False), "http://127.0.0.1:8605/")
        self.assertEqual(web_url("::1", 8605, False, "T"), "http://[::1]:8605/?token=T")
        self.assertEqual(web_url("0.0.0.0", 443, True), "https://localhost:443/")  # noqa: S104


def tls_files(folder: str) -> tuple[str, str, bytes]:
    """A server key and certificate for 127.0.0.1 (PEM files) and its CA's PEM."""
    from sixchat import pki

    ca_key, ca_cert = pki.init_ca(os.path.join(folder, "ca"), "Web CA")
    key = pki.generate_key("p256")
    cert = pki.issue_server(ca_key, ca_cert, ["127.0.0.1"], key.public_key())
    key_pem = os.path.join(folder, "k.pem")
    cert_pem = os.path.join(folder, "c.pem")
    with open(key_pem, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    with open(cert_pem, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return key_pem, cert_pem, ca_cert.public_bytes(serialization.Encoding.PEM)


class _Stream(protocol.Protocol):
    """An open event stream: fires C{waiting} once the received text holds C{want}."""

    def __init__(self, head: bytes) -> None:
        self.head = head
        self.text = b""
        self.want: bytes | None = None
        self.waiting: defer.Deferred[bytes] | None = None

    def connectionMade(self) -> None:
        self.transport.write(self.head)

    def dataReceived(self, data: bytes) -> None:
        self.text += data
        self._check()

    def _check(self) -> None:
        if self.waiting is not None and self.want is not None and self.want in self.text:
            d, self.waiting = self.waiting, None
            d.callback(self.text)

    def until(self, want: bytes) -> defer.Deferred[bytes]:
        self.want = want
        self.waiting = defer.Deferred()
        d = self.waiting
        self._check()
        return d.addTimeout(10, reactor)


class ServiceTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = short_tempdir(self)
        self.clock = task.Clock()
        self.agent = WebAgent(self.clock, self.dir)
        self.web = WebService(reactor, self.agent, LOCAL, max_upload=1 << 20)
        self.web.startService()
        self.addCleanup(self.web.stopService)
        self.agent.ready.callback(None)
        self.port = self.web.port.getHost().port if self.web.port else 0
        self.host = f"127.0.0.1:{self.port}"
        self.token = self.web.secrets.token
        self.bearer = {"Authorization": f"Bearer {self.token}"}

    def call(self, method: str, path: str, body: Any = None, **headers: str) -> Any:
        data = b"" if body is None else json.dumps(body).encode()
        extra = {**self.bearer, **headers}
        if body is not None:
            extra.setdefault("Content-Type", "application/json")
        return raw_http(self.port, request(method, path, self.host, headers=extra, body=data))

    @defer.inlineCallbacks
    def json_call(self, method: str, path: str, body: Any = None, **headers: str) -> Any:
        code, _, data = yield self.call(method, path, body, **headers)
        return code, json.loads(data)

    # the link ------------------------------------------------------------------------------

    def test_link_file_private_and_removed_at_stop(self) -> Any:
        path = os.path.join(self.dir, URL_FILE)
        with open(path) as f:
            self.assertEqual(f.read(), f"http://{self.host}/?token={self.token}\n")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        d = defer.maybeDeferred(self.web.stopService)
        d.addCallback(lambda _: self.assertFalse(os.path.exists(path)))
        return d

    def test_not_listening_before_the_agent_is_ready(self) -> None:
        agent = WebAgent(self.clock, short_tempdir(self))
        web = WebService(reactor, agent, LOCAL)
        web.startService()
        self.addCleanup(web.stopService)
        self.assertIsNone(web.port)
        self.assertFalse(os.path.exists(os.path.join(agent.data_dir, URL_FILE)))

    @defer.inlineCallbacks
    def test_a_port_in_use_is_fatal_in_one_line(self) -> Any:
        agent = WebAgent(self.clock, short_tempdir(self))
        lines: list[str] = []
        agent.on_fatal = lines.append
        web = WebService(reactor, agent, f"tcp:{self.port}:interface=127.0.0.1")
        web.startService()
        self.addCleanup(web.stopService)
        agent.ready.callback(None)
        yield task.deferLater(reactor, 0.05, lambda: None)
        (line,) = lines
        self.assertIn(f"--web tcp:{self.port}:interface=127.0.0.1: cannot listen", line)

    # the page and its assets ---------------------------------------------------------------

    @defer.inlineCallbacks
    def test_page_and_assets_with_security_headers(self) -> Any:
        for path, kind in (
            ("/", "text/html"),
            ("/static/app.js", "javascript"),
            ("/static/app.css", "text/css"),
            ("/static/icon.svg", "image/svg+xml"),
        ):
            code, headers, body = yield self.call("GET", path)
            self.assertEqual(code, 200, path)
            self.assertIn(kind, headers["content-type"])
            for name, value in SECURITY_HEADERS:
                self.assertEqual(headers[name.decode()], value.decode(), (path, name))
        code, _, page = yield self.call("GET", "/")
        self.assertNotIn(b"<script>", page)  # no inline script
        self.assertNotIn(b"style=", page)
        self.assertNotIn(b"http://", page)  # nothing from elsewhere
        self.assertNotIn(b"https://", page)

    @defer.inlineCallbacks
    def test_errors_carry_the_headers_too(self) -> Any:
        code, headers, _ = yield raw_http(self.port, request("GET", "/", self.host))
        self.assertEqual(code, 401)
        self.assertIn("default-src 'none'", headers["content-security-policy"])
        code, _, _ = yield self.call("GET", "/static/")  # no directory listing
        self.assertEqual(code, 404)
        code, _, _ = yield self.call("GET", "/static/../server.py")
        self.assertEqual(code, 404)
        code, _, _ = yield self.call("POST", "/", body={})
        self.assertEqual(code, 405)

    @defer.inlineCallbacks
    def test_token_visit_then_cookie_and_csrf(self) -> Any:
        code, headers, _ = yield raw_http(
            self.port, request("GET", f"/?token={self.token}", self.host)
        )
        self.assertEqual((code, headers["location"]), (303, "/"))
        cookie = headers["set-cookie"].split(";")[0]
        code, session = yield self.json_call("GET", "/api/session", Authorization="")
        self.assertEqual(code, 403)  # an empty Authorization is a wrong credential
        plain = {"Cookie": cookie}
        code, _, data = yield raw_http(
            self.port, request("GET", "/api/session", self.host, headers=plain)
        )
        session = json.loads(data)
        self.assertEqual(session, {"identity": ALICE, "csrf": self.web.secrets.csrf})
        body = json.dumps({"to": BOB, "body": "hi"}).encode()
        post = {**plain, "Content-Type": "application/json", "Origin": f"http://{self.host}"}
        code, _, data = yield raw_http(
            self.port, request("POST", "/api/send", self.host, headers=post, body=body)
        )
        self.assertEqual(code, 403)  # no CSRF token
        self.assertEqual(self.agent.sends(), [])
        post["X-Sixchat-CSRF"] = session["csrf"]
        code, _, data = yield raw_http(
            self.port, request("POST", "/api/send", self.host, headers=post, body=body)
        )
        self.assertEqual((code, json.loads(data)["state"]), (200, "queued"))
        self.assertEqual(self.agent.sends(), [("send", BOB, "hi", None, None)])

    @defer.inlineCallbacks
    def test_a_body_is_refused_before_it_is_read(self) -> Any:
        # no credential: the answer comes while the announced megabytes were never sent
        head = request("POST", "/api/send", self.host, headers={"Content-Length": "99999999"})
        head = head.replace(b"Content-Length: 0\r\n", b"")
        code, headers, body = yield raw_http(self.port, head)
        self.assertEqual(code, 401)
        self.assertEqual(headers["connection"], "close")
        # a small body in the same packet: still one answer, the request is not processed
        small = request("POST", "/api/send", self.host, body=b'{"to": "bob@example.com"}')
        code, _, body = yield raw_http(self.port, small)
        self.assertEqual(code, 401)
        self.assertNotIn(b"HTTP/1.1", body)
        self.assertEqual(self.agent.sends(), [])
        # with one, over the upload bound: 413
        big = {**self.bearer, "Content-Length": str((1 << 20) * 3)}
        head = request("POST", "/api/files?to=bob@example.com&name=x", self.host, headers=big)
        code, _, _ = yield raw_http(self.port, head.replace(b"Content-Length: 0\r\n", b""))
        self.assertEqual(code, 413)
        # chunked: refused (a length is needed to bound it)
        chunked = {**self.bearer, "Transfer-Encoding": "chunked", "Origin": f"http://{self.host}"}
        head = request("POST", "/api/send", self.host, headers=chunked)
        head = head.replace(b"Content-Length: 0\r\n", b"")
        code, _, _ = yield raw_http(self.port, head + b"0\r\n\r\n")
        self.assertEqual(code, 411)

    # the API -------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_reads(self) -> Any:
        code, conversations = yield self.json_call("GET", "/api/conversations")
        self.assertEqual(code, 200)
        self.assertEqual(conversations, (yield self.agent.conversations()))
        code, history = yield self.json_call("GET", f"/api/history?peer={BOB}")
        self.assertEqual(code, 200)
        self.assertIn(("history", BOB, None, 50), self.agent.calls)
        code, contacts = yield self.json_call("GET", "/api/contacts")
        self.assertEqual(contacts, self.agent.contact_list)
        code, status = yield self.json_call("GET", "/api/status")
        self.assertEqual(status["certificate"]["subject"], ALICE)
        self.assertEqual(
            status["certificate"]["spki_sha256"], self.agent.identity.spki_sha256.hex()
        )
        self.assertIsNone(status["own_nodes"])  # no registry
        code, files = yield self.json_call("GET", "/api/files")
        self.assertEqual([f["id"] for f in files], ["in1"])

    @defer.inlineCallbacks
    def test_argument_errors(self) -> Any:
        for path, body, code, words in (
            ("/api/send", {"to": "bob", "body": "x"}, 400, "is not an identity"),
            ("/api/send", {"to": BOB, "body": ""}, 400, "empty message"),
            ("/api/send", {"to": BOB}, 400, "'body' must be a string"),
            ("/api/send", [1], 400, "must be a JSON object"),
            ("/api/send", {"to": "nobody@example.com", "body": "x"}, 404, "not known"),
            ("/api/send", {"to": "boom@example.com", "body": "x"}, 500, "the agent failed"),
            ("/api/typing", {"to": BOB, "state": "dancing"}, 400, "composing or paused"),
            ("/api/typing", {"to": "offline@example.com", "state": "paused"}, 409, "no session"),
            ("/api/trust", {"identity": BOB}, 400, "'accept' must be true or false"),
            ("/api/nothing", {}, 404, "no such endpoint"),
        ):
            got, answer = yield self.json_call("POST", path, body)
            self.assertEqual(got, code, (path, body, answer))
            self.assertIn(words, answer["error"])
        self.flushLoggedErrors(RuntimeError)
        got, answer = yield self.json_call("GET", "/api/send")
        self.assertEqual(got, 405)
        for query in ("limit=0", "limit=10001", "limit=x", "peer=bob"):
            got, answer = yield self.json_call("GET", f"/api/history?{query}")
            self.assertEqual(got, 400, query)
        code, _, data = yield self.call(
            "POST", "/api/send", {"to": BOB, "body": "x"}, **{"Content-Type": "text/plain"}
        )
        self.assertEqual((code, json.loads(data)["error"]), (400, "send the request body as "
                                                                  "application/json"))  # fmt: skip
        self.assertNotIn("secret internals", repr(self.agent.calls))

    @defer.inlineCallbacks
    def test_trust_and_typing_reach_the_agent(self) -> Any:
        code, answer = yield self.json_call("POST", "/api/trust", {"identity": BOB, "accept": True})
        self.assertEqual(code, 200)
        self.assertIn(("trust", BOB, True, False), self.agent.calls)
        code, _ = yield self.json_call("POST", "/api/typing", {"to": BOB, "state": "composing"})
        self.assertEqual(code, 200)
        self.assertEqual(self.agent.typings(), [("typing", BOB, "composing")])

    @defer.inlineCallbacks
    def test_upload_then_send_file(self) -> Any:
        data = os.urandom(70_000)
        head = request(
            "POST", "/api/files?to=bob%40example.com&name=..%2F..%2Fetc%2Fpasswd", self.host,
            headers={**self.bearer, "Content-Type": "application/octet-stream"}, body=data,
        )  # fmt: skip
        code, _, body = yield raw_http(self.port, head)
        self.assertEqual(code, 200, body)
        answer = json.loads(body)
        self.assertEqual(answer["name"], "passwd")  # the name's path is dropped
        path = answer["path"]
        self.assertTrue(path.startswith(os.path.join(self.dir, "web-uploads") + os.sep))
        with open(path, "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode), 0o700)
        # kept while the agent may still read it; removed once delivered
        self.agent.emit({"type": "file", "id": answer["id"], "direction": "out",
                         "state": "sending"})  # fmt: skip
        self.agent.emit({"type": "file", "id": "in1", "direction": "in", "state": "failed"})
        yield task.deferLater(reactor, 0.1, lambda: None)
        self.assertTrue(os.path.exists(path))
        self.agent.emit({"type": "file", "id": answer["id"], "direction": "out",
                         "state": "delivered"})  # fmt: skip
        for _ in range(50):
            if not os.path.exists(os.path.dirname(path)):
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertFalse(os.path.exists(os.path.dirname(path)))

    @defer.inlineCallbacks
    def test_refused_upload_is_not_kept(self) -> Any:
        head = request(
            "POST", "/api/files?to=nobody%40example.com&name=a.txt", self.host,
            headers=self.bearer, body=b"data",
        )  # fmt: skip
        code, _, body = yield raw_http(self.port, head)
        self.assertEqual(code, 404, body)
        uploads = os.path.join(self.dir, "web-uploads")
        for _ in range(50):
            if not os.listdir(uploads):
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(os.listdir(uploads), [])

    @defer.inlineCallbacks
    def test_download_only_received_files(self) -> Any:
        received = os.path.join(self.dir, "photo.jpg")
        with open(received, "wb") as f:
            f.write(b"<html><script>alert(1)</script>")
        self.agent.transfers[0]["path"] = received
        code, headers, body = yield self.call("GET", "/api/files/in1")
        self.assertEqual((code, body), (200, b"<html><script>alert(1)</script>"))
        self.assertEqual(headers["content-type"], "application/octet-stream")
        self.assertEqual(headers["content-disposition"], "attachment; filename*=UTF-8''photo.jpg")
        self.agent.transfers[0]["state"] = "receiving"
        code, _, _ = yield self.call("GET", "/api/files/in1")
        self.assertEqual(code, 404)
        code, _, _ = yield self.call("GET", "/api/files/nope")
        self.assertEqual(code, 404)

    # live events ---------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_events_stream(self) -> Any:
        head = request("GET", "/api/events", self.host, headers=self.bearer)
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        stream = yield endpoints.connectProtocol(endpoint, _Stream(head))
        self.addCleanup(stream.transport.loseConnection)
        yield stream.until(b": sixchat events\n\n")
        self.assertIn(b"text/event-stream", stream.text)
        assert self.web.stream is not None
        self.assertEqual(len(self.web.stream.listeners), 1)
        observers = len(self.agent.observers)
        self.agent.emit({"type": "overflow-not-for-pages"})
        self.agent.emit({"type": "message", "peer": BOB, "body": "<b>hi</b>\nthere"})
        text = yield stream.until(b"there")
        (line,) = [x for x in text.split(b"\n") if x.startswith(b"data: ")]
        self.assertEqual(json.loads(line[6:])["body"], "<b>hi</b>\nthere")  # one line of JSON
        self.assertNotIn(b"overflow-not-for-pages", text)
        self.clock.advance(15)
        yield stream.until(b": keep-alive\n\n")
        stream.transport.loseConnection()
        yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(self.agent.observers), observers - 1)  # it left with the page
        self.assertEqual(self.web.stream.listeners, [])

    @defer.inlineCallbacks
    def test_events_need_credentials(self) -> Any:
        code, _, _ = yield raw_http(self.port, request("GET", "/api/events", self.host))
        self.assertEqual(code, 401)
        self.assertEqual(self.web.stream.listeners if self.web.stream else None, [])


class StreamBackPressureTests(unittest.TestCase):
    def test_paused_page_misses_events_then_gets_overflow(self) -> None:
        from twisted.web.test.requesthelper import DummyRequest

        from sixchat.web.stream import EventStream

        agent = FakeAgent(task.Clock())
        request = DummyRequest([b""])
        request.registerProducer = lambda producer, streaming: None  # type: ignore[method-assign]
        EventStream(agent, agent.clock).render_GET(request)
        (listener,) = agent.observers
        listener.pauseProducing()  # type: ignore[attr-defined]
        before = len(request.written)
        agent.emit({"type": "message", "body": "lost"})
        self.assertEqual(len(request.written), before)
        listener.resumeProducing()  # type: ignore[attr-defined]
        self.assertEqual(request.written[-1], b'data: {"type":"overflow"}\n\n')


class CommandLineTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = short_tempdir(self)

    def web(self) -> Any:
        return run_cli(["web", "--data-dir", self.dir], cwd=self.dir)

    @defer.inlineCallbacks
    def test_sixchat_web(self) -> Any:
        out, err, code = yield self.web()
        self.assertEqual((out, code), ("", 1))
        self.assertEqual(err, f"sixchat: error: no agent is running on {self.dir}\n")
        lock = DataDirLock(self.dir)  # as a running agent holds it
        lock.acquire()
        self.addCleanup(lock.release)
        out, err, code = yield self.web()
        self.assertEqual(code, 1)
        self.assertIn("serves no web UI: restart it with --web ENDPOINT", err)
        with open(os.path.join(self.dir, URL_FILE), "w") as f:
            f.write("http://127.0.0.1:1/?token=T\n")
        out, err, code = yield self.web()
        self.assertEqual((out, err, code), ("http://127.0.0.1:1/?token=T\n", "", 0))
        lock.release()
        out, err, code = yield self.web()
        self.assertEqual(code, 1)
        self.assertIn("is from an earlier run", err)

    @defer.inlineCallbacks
    def test_open_hands_the_link_to_the_browser(self) -> Any:
        lock = DataDirLock(self.dir)
        lock.acquire()
        self.addCleanup(lock.release)
        with open(os.path.join(self.dir, URL_FILE), "w") as f:
            f.write("http://127.0.0.1:1/?token=T\n")
        opened = os.path.join(self.dir, "opened")
        browser = os.path.join(self.dir, "browser")  # $BROWSER names one program
        with open(browser, "w") as f:
            f.write(f"#!{sys.executable}\nimport sys\nopen({opened!r}, 'w').write(sys.argv[1])\n")
        os.chmod(browser, 0o700)
        out, err, code = yield run_cli(
            ["web", "--open", "--data-dir", self.dir], cwd=self.dir, env={"BROWSER": browser}
        )
        self.assertEqual((out, code), ("http://127.0.0.1:1/?token=T\n", 0), err)
        with open(opened) as f:
            self.assertEqual(f.read(), "http://127.0.0.1:1/?token=T")

    @defer.inlineCallbacks
    def test_twistd_refuses_a_non_loopback_web_address(self) -> Any:
        ca = certs.make_ca()
        p12 = certs.write_identity_p12(self.dir, certs.make_identity(ALICE, ca), None, "a.p12")
        anchors = os.path.join(self.dir, "ca.pem")
        with open(anchors, "wb") as f:
            f.write(ca.anchor_pem)
        out, err, code = yield run_twistd(
            ["sixchat", "--cert", p12, "--trust", anchors, "--data-dir", self.dir,
             "--web", "tcp:8605"],
            self.dir,
        )  # fmt: skip
        self.assertNotEqual(code, 0)
        self.assertIn("--web 'tcp:8605': the web UI would listen on every address", out + err)
        self.assertNotIn("Traceback", out + err)

    def test_option_is_checked_before_anything_starts(self) -> None:
        from sixchat.agent.tap import Options

        options = Options()
        e = self.assertRaises(
            usage.UsageError, options.parseOptions, ["--web", "unix:/tmp/x", "--cert", "x"]
        )
        # the missing --trust is said first or the endpoint: either way one line
        self.assertNotIn("\n", str(e))


class AgentProcessTests(E2ECase):
    """C{twistd -n sixchat --web …} and C{sixchat web} as a user runs them (no browser)."""

    @defer.inlineCallbacks
    def test_link_cookie_api_and_cleanup(self) -> Any:
        alice = yield self.agent("alice", ALICE, "--web", LOCAL).start()
        yield alice.proc.wait(r"web UI on http://127\.0\.0\.1:\d+/ ")
        out, err, code = yield alice.cli("web")
        self.assertEqual(code, 0, err)
        url = out.strip()
        port = int(url.split(":")[2].split("/")[0])
        token = url.split("token=")[1]
        self.assertNotIn(token, alice.log)
        host = f"127.0.0.1:{port}"
        code, headers, _ = yield raw_http(port, request("GET", f"/?token={token}", host))
        self.assertEqual(code, 303)
        cookie = headers["set-cookie"].split(";")[0]
        code, _, body = yield raw_http(
            port, request("GET", "/api/status", host, headers={"Cookie": cookie})
        )
        self.assertEqual((code, json.loads(body)["identity"]), (200, ALICE))
        send = json.dumps({"to": BOB, "body": "from a script"}).encode()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        code, _, body = yield raw_http(
            port, request("POST", "/api/send", host, headers=headers, body=send)
        )
        self.assertEqual(code, 200, body)
        inbox = yield alice.inbox(BOB)
        self.assertEqual([m["body"] for m in inbox], ["from a script"])
        yield alice.stop()
        self.assertFalse(os.path.exists(os.path.join(alice.data_dir, URL_FILE)))
        out, err, code = yield alice.cli("web")
        self.assertEqual((code, err.strip()), (1, f"sixchat: error: no agent is running on "
                                                  f"{alice.data_dir}"))  # fmt: skip


class TLSTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_https_link_and_secure_cookie(self) -> Any:
        from twisted.internet import ssl

        folder = short_tempdir(self)
        key_pem, cert_pem, ca_pem = tls_files(folder)
        agent = WebAgent(task.Clock(), folder)
        endpoint = f"ssl:0:privateKey={key_pem}:certKey={cert_pem}:interface=127.0.0.1"
        web = WebService(reactor, agent, endpoint)
        web.startService()
        self.addCleanup(web.stopService)
        agent.ready.callback(None)
        port = web.port.getHost().port
        token = web.secrets.token
        with open(os.path.join(folder, URL_FILE)) as f:
            self.assertEqual(f.read(), f"https://127.0.0.1:{port}/?token={token}\n")
        options = ssl.optionsForClientTLS("127.0.0.1", ssl.Certificate.loadPEM(ca_pem))
        host = f"127.0.0.1:{port}"
        code, headers, _ = yield raw_http(
            port, request("GET", f"/?token={token}", host), tls=options
        )
        self.assertEqual(code, 303)
        self.assertTrue(headers["set-cookie"].endswith("; Secure"))
        cookie = headers["set-cookie"].split(";")[0]
        post = {"Cookie": cookie, "Content-Type": "application/json",
                "Origin": f"http://{host}", "X-Sixchat-CSRF": web.secrets.csrf}  # fmt: skip
        body = json.dumps({"to": BOB, "body": "x"}).encode()
        code, _, _ = yield raw_http(
            port, request("POST", "/api/send", host, headers=post, body=body), tls=options
        )
        self.assertEqual(code, 403)  # http:// is another origin than https://
        post["Origin"] = f"https://{host}"
        code, _, _ = yield raw_http(
            port, request("POST", "/api/send", host, headers=post, body=body), tls=options
        )
        self.assertEqual(code, 200)
