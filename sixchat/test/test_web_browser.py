"""
The web UI in a real browser (issue 13 item 4): headless Chromium (L{sixchat.test.browser})
on two real agents (C{twistd -n sixchat … --web tcp:0:interface=127.0.0.1}) and a registry,
all real processes on 127.0.0.1, the links taken from C{sixchat web}.

  - alice types in her page, bob's page shows it live (no reload) and alice's tick turns to
    delivered; a hostile body shows as text (no element made of it, no script run);
  - no token, a wrong token, a foreign C{Host}, a cross-origin POST (a real form on another
    origin, submitted by the browser with the session cookie) are refused;
  - a file sent from alice's page (with its progress bar) arrives at bob with the right
    SHA-256, and bob's page offers it for download (the download's bytes are checked too);
  - a key change shows the blocking banner, accepted with the keyboard only.

With C{SIXCHAT_WEB_SCREENSHOTS=DIR} the tests also save the main views as PNG files there
(docs/web.md shows those of C{docs/}).
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

from twisted.internet import defer, endpoints, reactor
from twisted.web import resource, server, static

from sixchat.test.browser import Browser, skip_reason
from sixchat.test.processes import eventually
from sixchat.test.test_agent_e2e import ALICE, BOB, DELIVERY_TIMEOUT, AgentProcess, E2ECase
from sixchat.test.web_support import raw_http, request

WEB = ("--web", "tcp:0:interface=127.0.0.1")
#: Bound for what the browser must show (seconds); generous for a loaded 2-core machine.
SHOWN = 60.0
HOSTILE = '<img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script>'


class WebUICase(E2ECase):
    timeout = 420

    def setUp(self) -> None:
        reason = skip_reason()
        if reason:
            raise self.skipTest(reason)
        super().setUp()
        self.shots = os.environ.get("SIXCHAT_WEB_SCREENSHOTS")

    @defer.inlineCallbacks
    def link(self, agent: AgentProcess) -> Any:
        """The agent's link, as `sixchat web` prints it (after the agent logged it)."""
        yield agent.proc.wait(r"web UI on http://127\.0\.0\.1:\d+/")
        out, err, code = yield agent.cli("web")
        self.assertEqual(code, 0, err)
        url = out.strip()
        self.assertRegex(url, r"^http://127\.0\.0\.1:\d+/\?token=[A-Za-z0-9_-]{43}$")
        mode = os.stat(os.path.join(agent.data_dir, "web-url")).st_mode & 0o777
        self.assertEqual(mode, 0o600)
        token = url.split("token=")[1]
        self.assertNotIn(token, agent.log)  # the secret is never logged
        return url

    @defer.inlineCallbacks
    def open_page(self, agent: AgentProcess, **size: int) -> Any:
        url = yield self.link(agent)
        browser = yield Browser.start(self, **size)
        yield browser.get(url)
        base = url.split("?")[0]
        here = yield browser.call(lambda d: d.current_url)
        self.assertEqual(here, base)  # redirected: the token left the address bar
        cookies = yield browser.call(lambda d: d.get_cookies())
        (cookie,) = cookies
        self.assertEqual((cookie["httpOnly"], cookie["sameSite"]), (True, "Strict"))
        yield browser.eventually("return document.getElementById('live').textContent == 'live'",
                                 SHOWN, "the page's event stream")  # fmt: skip
        return browser, base, url

    def shot(self, browser: Browser, name: str) -> Any:
        if not self.shots:
            return defer.succeed(None)
        os.makedirs(self.shots, exist_ok=True)
        return browser.screenshot(os.path.join(self.shots, name))

    @defer.inlineCallbacks
    def pair(self) -> Any:
        yield self.startRegistry()
        alice = self.agent("alice", ALICE, *WEB)
        bob = self.agent("bob", BOB, *WEB)
        yield defer.gatherResults([alice.start(), bob.start()])
        return alice, bob

    @defer.inlineCallbacks
    def open_chat(self, browser: Browser, peer: str) -> Any:
        yield browser.type("#new-peer", peer + "\n")
        yield browser.eventually(
            "return document.getElementById('peer-title').textContent == arguments[0]",
            SHOWN, "the conversation to open", peer,
        )  # fmt: skip

    @defer.inlineCallbacks
    def say(self, browser: Browser, text: str) -> Any:
        yield browser.type("#composer-text", text)
        yield browser.keys("\n")  # Enter sends


MESSAGES_JS = """
return Array.from(document.querySelectorAll('#messages li.msg')).map(li => ({
  dir: li.classList.contains('out') ? 'out' : 'in',
  body: li.querySelector('.body').textContent,
  tick: li.querySelector('.tick') ? li.querySelector('.tick').dataset.state : null,
  children: li.querySelector('.body').children.length,
}));
"""


class LiveConversationTests(WebUICase):
    @defer.inlineCallbacks
    def test_typed_message_appears_live_and_turns_delivered(self) -> Any:
        alice, bob = yield self.pair()
        (alice_page, _, _), (bob_page, _, _) = yield defer.gatherResults(
            [self.open_page(alice), self.open_page(bob)]
        )
        yield self.open_chat(alice_page, BOB)
        yield self.say(alice_page, "hello bob")

        # bob's page, opened before the message existed, shows it without a reload
        def at_bob() -> Any:
            return bob_page.script(MESSAGES_JS).addCallback(
                lambda ms: [m for m in ms if m["body"] == "hello bob" and m["dir"] == "in"]
            )

        yield eventually(at_bob, SHOWN, "bob's page to show alice's message live")
        conversations = yield bob_page.script(
            "return Array.from(document.querySelectorAll('#conversations .conv-peer'))"
            ".map(e => e.textContent)"
        )
        self.assertEqual(conversations, [ALICE])

        # alice's tick turns to delivered
        def delivered() -> Any:
            return alice_page.script(MESSAGES_JS).addCallback(
                lambda ms: [m for m in ms if m["body"] == "hello bob" and m["tick"] == "delivered"]
            )

        yield eventually(delivered, SHOWN, "alice's tick to turn delivered")

        # bob answers; a hostile body is shown as text at alice's
        yield bob_page.eventually(
            "return document.getElementById('peer-title').textContent == arguments[0]",
            SHOWN, "bob's page to open the conversation", ALICE,
        )  # fmt: skip
        # typing: alice types (without sending), bob's page says so
        yield alice_page.type("#composer-text", "still typ")
        yield bob_page.eventually(
            "return document.getElementById('typing').textContent == arguments[0]",
            SHOWN, "bob's page to show alice typing", f"{ALICE} is typing\u2026",
        )  # fmt: skip
        yield alice_page.script("document.getElementById('composer-text').value = ''")
        yield self.say(bob_page, HOSTILE)

        def hostile_shown() -> Any:
            return alice_page.script(MESSAGES_JS).addCallback(
                lambda ms: [m for m in ms if m["body"] == HOSTILE and m["dir"] == "in"]
            )

        (shown,) = yield eventually(hostile_shown, SHOWN, "the hostile body at alice's")
        self.assertEqual(shown["children"], 0)  # text, no element
        images = yield alice_page.script("return document.querySelectorAll('img').length")
        title = yield alice_page.script("return document.title")
        self.assertEqual((images, title), (0, f"SixChat \u2014 {ALICE}"))
        errors = yield alice_page.console_errors()
        self.assertEqual([e for e in errors if "Content Security Policy" in e["message"]], [])

        # unread counts: alice looks at another conversation while bob writes twice
        yield self.open_chat(alice_page, "carol@example.com")
        for text in ("unread one", "unread two"):
            out, err, code = yield bob.cli("send", ALICE, text, "--wait", "30")
            self.assertEqual(code, 0, out + err)
        unread = (
            "return Array.from(document.querySelectorAll('#conversations button'))"
            ".map(b => [b.dataset.peer, (b.querySelector('.unread') || {}).textContent || ''])"
        )
        yield eventually(
            lambda: alice_page.script(unread).addCallback(lambda rows: [BOB, "2"] in rows),
            SHOWN, "alice's list to count 2 unread from bob",
        )  # fmt: skip
        yield alice_page.click(f"#conversations button[data-peer='{BOB}']")
        yield eventually(
            lambda: alice_page.script(unread).addCallback(lambda rows: [BOB, ""] in rows),
            SHOWN, "the unread count to go once read",
        )  # fmt: skip
        messages = yield alice_page.script(MESSAGES_JS)
        self.assertEqual([m["body"] for m in messages[-2:]], ["unread one", "unread two"])

        # bob's status page
        yield bob_page.get(bob_page.driver.current_url.split("#")[0] + "#status")
        yield bob_page.eventually(
            "return document.querySelector('#status dd') !== null", SHOWN, "bob's status page"
        )
        status_text = yield bob_page.script("return document.getElementById('status').textContent")
        self.assertIn(BOB, status_text)
        self.assertIn("Certificate expires", status_text)
        self.assertIn("registered", status_text)
        yield self.shot(bob_page, "web-status.png")
        yield self.shot(alice_page, "web-chat.png")
        yield alice_page.get(alice_page.driver.current_url.split("#")[0] + "#contacts")
        yield alice_page.eventually(
            "return document.querySelectorAll('#contacts-body tr').length == 1",
            SHOWN, "alice's contacts",
        )  # fmt: skip
        row = yield alice_page.script(
            "return document.querySelector('#contacts-body tr').innerText"
        )
        self.assertIn(BOB, row)
        self.assertRegex(row, r"([0-9a-f]{4} ){15}[0-9a-f]{4}")  # bob's key fingerprint
        yield self.shot(alice_page, "web-contacts.png")
        # phone-sized: nothing wider than the window
        yield alice_page.resize(390, 844)
        yield alice_page.get(alice_page.driver.current_url.split("#")[0] + "#chats")
        yield alice_page.eventually(
            "return document.querySelectorAll('#messages li.msg').length >= 2", SHOWN, "phone"
        )
        overflow = yield alice_page.script(
            "return document.documentElement.scrollWidth <= window.innerWidth"
        )
        self.assertTrue(overflow, "the page is wider than a phone's window")
        yield self.shot(alice_page, "web-phone.png")


class RefusalTests(WebUICase):
    @defer.inlineCallbacks
    def test_no_token_foreign_host_and_cross_origin_post_refused(self) -> Any:
        alice = yield self.agent("alice", ALICE, *WEB).start()
        url = yield self.link(alice)
        port = int(re.search(r":(\d+)/", url).group(1))  # type: ignore[union-attr]
        token = url.split("token=")[1]
        host = f"127.0.0.1:{port}"
        send = b'{"to": "bob@example.com", "body": "forged"}'
        json_type = {"Content-Type": "application/json"}

        # no token, a wrong one, a wrong bearer
        code, _, _ = yield raw_http(port, request("GET", "/", host))
        self.assertEqual(code, 401)
        code, _, _ = yield raw_http(port, request("GET", "/api/conversations", host))
        self.assertEqual(code, 401)
        code, _, _ = yield raw_http(port, request("GET", "/?token=" + "x" * 43, host))
        self.assertEqual(code, 403)
        code, _, _ = yield raw_http(
            port, request("GET", "/api/status", host, headers={"Authorization": "Bearer nope"})
        )
        self.assertEqual(code, 403)
        # a foreign Host (DNS rebinding), even with the right token
        for foreign in (f"evil.example:{port}", f"localhost.evil.example:{port}", "127.0.0.1:1"):
            code, _, _ = yield raw_http(port, request("GET", f"/?token={token}", foreign))
            self.assertEqual(code, 421, foreign)
        bearer = {"Authorization": f"Bearer {token}"}
        code, _, _ = yield raw_http(
            port, request("GET", "/api/status", "evil.example", headers=bearer)
        )
        self.assertEqual(code, 421)
        # the right token: a cookie and a redirect
        code, headers, _ = yield raw_http(
            port, request("GET", f"/?token={token}", f"localhost:{port}")
        )
        self.assertEqual((code, headers["location"]), (303, "/"))
        cookie = headers["set-cookie"].split(";")[0]
        self.assertIn("HttpOnly", headers["set-cookie"])
        self.assertIn("SameSite=Strict", headers["set-cookie"])
        with_cookie = {"Cookie": cookie, **json_type}
        # a POST with the cookie from another origin, or with none, or without the CSRF token
        for extra in ({"Origin": "http://evil.example"}, {}, {"Origin": f"http://{host}"}):
            code, _, body = yield raw_http(
                port,
                request("POST", "/api/send", host, headers={**with_cookie, **extra}, body=send),
            )
            self.assertEqual(code, 403, (extra, body))
        # a script with the bearer token may send (no recipient registry here: queued)
        code, _, body = yield raw_http(
            port, request("POST", "/api/send", host, headers={**bearer, **json_type}, body=send)
        )
        self.assertEqual(code, 200, body)
        code, _, body = yield raw_http(
            port, request("POST", "/api/send", host,
                          headers={**bearer, **json_type, "Origin": "http://evil.example"},
                          body=b'{"to": "bob@example.com", "body": "forged too"}'),
        )  # fmt: skip
        self.assertEqual(code, 403, body)

        # a real cross-origin form post in the browser, with alice's session cookie
        browser = yield Browser.start(self)
        yield browser.get(url)  # the browser now holds the session cookie
        attacker = yield self.attacker_site(port)
        yield browser.get(f"http://127.0.0.1:{attacker}/")
        yield browser.eventually(
            "return document.body && document.body.textContent.length > 0", SHOWN, "the post"
        )
        answer = yield browser.script("return document.body.textContent")
        self.assertIn("cross-origin request refused", answer)
        history = yield alice.cli_json("inbox", "--peer", BOB)
        bodies = sorted(m["body"] for m in history)
        self.assertEqual(bodies, ["forged"])  # the bearer one only

        # a restart makes the old link and the old session cookie worthless
        yield alice.stop()
        yield alice.start()
        new_url = yield self.link(alice)
        self.assertNotEqual(new_url.split("token=")[1], token)
        new_base = new_url.split("?")[0]
        new_port = int(re.search(r":(\d+)/", new_base).group(1))  # type: ignore[union-attr]
        new_host = f"127.0.0.1:{new_port}"
        code, _, _ = yield raw_http(new_port, request("GET", f"/?token={token}", new_host))
        self.assertEqual(code, 403)  # the old token
        yield browser.get(new_base)  # the new address with an old cookie, if any
        text = yield browser.script("return document.body.textContent")
        self.assertRegex(text, r"no credentials|stale or wrong session")
        yield browser.get(new_url)
        yield browser.eventually(
            "return document.getElementById('live').textContent == 'live'", SHOWN, "new link"
        )

    @defer.inlineCallbacks
    def attacker_site(self, target: int) -> Any:
        """A page on another origin (another port) whose form posts to alice's API."""
        page = (
            "<!doctype html><form id=f method=post enctype=text/plain "
            f'action="http://127.0.0.1:{target}/api/send">'
            '<input name=\'{"to":"bob@example.com","body":"csrf","x":"\' value=\'"}\'></form>'
            "<script>document.getElementById('f').submit()</script>"
        ).encode()
        root = resource.Resource()
        root.putChild(b"", static.Data(page, "text/html"))
        port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            server.Site(root)
        )
        self.addCleanup(port.stopListening)
        return port.getHost().port


class FileTests(WebUICase):
    @defer.inlineCallbacks
    def test_file_sent_from_the_page_arrives_intact(self) -> Any:
        alice, bob = yield self.pair()
        (alice_page, _, _), (bob_page, bob_base, bob_url) = yield defer.gatherResults(
            [self.open_page(alice), self.open_page(bob)]
        )
        data = os.urandom(3 * 1024 * 1024 + 17)
        source = os.path.join(self.base, "holiday photo.bin")
        with open(source, "wb") as f:
            f.write(data)
        digest = hashlib.sha256(data).hexdigest()
        yield self.open_chat(alice_page, BOB)
        yield alice_page.type("#file-input", source)
        yield alice_page.click("#file-send")
        yield alice_page.eventually(
            "return document.getElementById('file-status').textContent.endsWith('queued')",
            SHOWN, "the upload",
        )  # fmt: skip
        progress = yield alice_page.script("return document.getElementById('file-progress').value")
        self.assertEqual(progress, 100)

        def received() -> Any:
            return bob.cli_json("files").addCallback(
                lambda ts: [t for t in ts if t["direction"] == "in" and t["state"] == "received"]
            )

        (transfer,) = yield eventually(received, DELIVERY_TIMEOUT, "bob to receive the file")
        self.assertEqual((transfer["name"], transfer["sha256"]), ("holiday photo.bin", digest))
        with open(transfer["path"], "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), digest)
        # bob's page offers it, and the download is the file
        yield bob_page.eventually(
            "return document.querySelectorAll('#conversations button').length > 0",
            SHOWN, "bob's conversation list",
        )  # fmt: skip
        yield bob_page.click("#conversations button")
        link = yield bob_page.eventually(
            "const a = document.querySelector('#files a[download]'); return a && a.href",
            SHOWN, "bob's download link",
        )  # fmt: skip
        self.assertEqual(link, f"{bob_base}api/files/{transfer['id']}")
        port = int(re.search(r":(\d+)/", bob_base).group(1))  # type: ignore[union-attr]
        token = bob_url.split("token=")[1]
        code, headers, body = yield raw_http(
            port,
            request("GET", f"/api/files/{transfer['id']}", f"127.0.0.1:{port}",
                    headers={"Authorization": f"Bearer {token}"}),
        )  # fmt: skip
        self.assertEqual(code, 200)
        self.assertEqual(hashlib.sha256(body).hexdigest(), digest)
        self.assertEqual(headers["content-type"], "application/octet-stream")
        self.assertTrue(headers["content-disposition"].startswith("attachment;"))

        # alice's side shows the transfer delivered
        yield alice_page.eventually(
            "return Array.from(document.querySelectorAll('#files li'))"
            ".some(li => li.dataset.state == 'delivered')",
            SHOWN, "alice's transfer delivered",
        )  # fmt: skip
        # the upload is not kept once delivered
        uploads = os.path.join(alice.data_dir, "web-uploads")
        yield eventually(lambda: os.listdir(uploads) == [], SHOWN, "alice's upload removed")
        yield self.shot(bob_page, "web-files.png")


class KeyChangeBannerTests(WebUICase):
    @defer.inlineCallbacks
    def test_key_change_banner_blocks_until_accepted_by_keyboard(self) -> Any:
        yield self.startRegistry()
        alice = yield self.agent("alice", ALICE, "--pin-policy", "refuse", *WEB).start()
        bob = yield self.agent("bob", BOB).start()
        out, err, code = yield alice.cli("send", BOB, "before", "--wait", "30")
        self.assertEqual(code, 0, out + err)
        yield bob.stop()
        bob.cert = self.issue(BOB, "bob-new.p12")
        yield bob.start()
        result = yield alice.cli_json("send", BOB, "after", "--wait", "3", codes=(3,))
        self.assertEqual(result["message"]["state"], "queued")

        def pending() -> Any:
            return alice.cli_json("contacts").addCallback(
                lambda cs: [c for c in cs if c["identity"] == BOB and c["pending_keys"]]
            )

        (contact,) = yield eventually(pending, DELIVERY_TIMEOUT, "the key change pending")
        (new_key,) = contact["pending_keys"]
        page, _, _ = yield self.open_page(alice)
        yield page.eventually(
            "return !document.getElementById('keychange').hidden", SHOWN, "the banner"
        )
        text = yield page.script("return document.getElementById('keychange').innerText")
        self.assertIn(BOB, text)
        grouped = " ".join(re.findall(".{4}", new_key))
        self.assertIn(grouped, text)
        # blocking: the rest of the page is inert, the focus is on "accept"
        inert = yield page.script("return document.getElementById('main').inert")
        focused = yield page.script("return document.activeElement.id")
        self.assertEqual((inert, focused), (True, "keychange-accept"))
        yield self.shot(page, "web-key-change.png")
        # refuse first (Tab to "Refuse", Enter): the banner goes, the conversation says why
        # messages are held, the key stays unpinned; a reload asks again
        yield page.keys("\t\n")
        yield page.eventually(
            "return document.getElementById('keychange').hidden", SHOWN, "the banner to go"
        )
        yield page.eventually(
            "return !document.getElementById('key-note').hidden", SHOWN, "the held-key notice"
        )
        contacts = yield alice.cli_json("contacts")
        self.assertEqual([c["pending_keys"] for c in contacts if c["identity"] == BOB], [[new_key]])
        yield page.call(lambda d: d.refresh())
        yield page.eventually(
            "return !document.getElementById('keychange').hidden", SHOWN, "the banner again"
        )
        focused = yield page.script("return document.activeElement.id")
        self.assertEqual(focused, "keychange-accept")
        yield page.keys("\n")  # Enter on the focused "Accept the new key"
        yield page.eventually(
            "return document.getElementById('keychange').hidden", SHOWN, "the banner to go"
        )
        contacts = yield alice.cli_json("contacts")
        (after,) = [c for c in contacts if c["identity"] == BOB]
        self.assertIn(new_key, after["keys"])
        self.assertFalse(after["key_change_pending"])
        # the held message goes out, and its tick says so
        yield eventually(
            lambda: page.script(MESSAGES_JS).addCallback(
                lambda ms: [m for m in ms if m["body"] == "after" and m["tick"] == "delivered"]
            ),
            DELIVERY_TIMEOUT, "the held message delivered after accepting",
        )  # fmt: skip
