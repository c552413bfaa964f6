"""
L{sixchat.web.security}: the web UI's rules, one by one, on C{twisted.web}'s test requests
(no socket): Host (DNS rebinding), credentials (token visit, cookie, bearer), Origin and CSRF
on state-changing requests, the bind rule, and a property test of the Host parser.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest
from twisted.web.test.requesthelper import DummyRequest

from sixchat.web.security import (
    CONTENT_SECURITY_POLICY,
    CSRF_HEADER,
    Denied,
    Guard,
    Secrets,
    check_bind,
    is_loopback,
)

PORT = 8605
HOST = f"127.0.0.1:{PORT}".encode()


class Request(DummyRequest):
    """A test request with cookies (DummyRequest has none)."""

    def __init__(
        self,
        method: bytes = b"GET",
        host: bytes | None = HOST,
        headers: dict[bytes, bytes] | None = None,
        cookies: dict[bytes, bytes] | None = None,
        args: dict[bytes, list[bytes]] | None = None,
    ) -> None:
        super().__init__([b""])
        self.method = method
        if host is not None:
            self.requestHeaders.setRawHeaders(b"host", [host])
        for name, value in (headers or {}).items():
            self.requestHeaders.setRawHeaders(name, [value])
        self.received_cookies = cookies or {}
        self.args = args or {}

    def getCookie(self, name: bytes) -> bytes | None:
        return self.received_cookies.get(name)


class GuardTests(unittest.TestCase):
    def setUp(self) -> None:
        self.secrets = Secrets()
        self.guard = Guard(self.secrets, "127.0.0.1", PORT, tls=False)
        self.cookie = {b"sixchat-8605": self.secrets.session.encode()}

    def denied(self, request: Any, **kw: Any) -> Denied:
        return self.assertRaises(Denied, self.guard.check, request, **kw)

    def test_secrets_are_random_and_long(self) -> None:
        other = Secrets()
        self.assertNotEqual(self.secrets.token, other.token)
        self.assertEqual(len({self.secrets.token, self.secrets.session, self.secrets.csrf}), 3)
        self.assertGreaterEqual(len(self.secrets.token), 43)  # 256 bits

    # Host --------------------------------------------------------------------------------

    def test_own_address_and_localhost_pass(self) -> None:
        for host in (b"127.0.0.1:8605", b"localhost:8605", b"LOCALHOST:8605", b"[::1]:8605"):
            self.assertEqual(self.guard.check(Request(host=host, cookies=self.cookie)), "cookie")

    def test_foreign_host_is_421(self) -> None:
        for host in (
            b"evil.example:8605",  # DNS rebinding: the attacker's name, our address
            b"localhost.evil.example:8605",
            b"127.0.0.1:8606",  # another port
            b"127.0.0.1",  # port 80 implied
            b"192.0.2.7:8605",  # another machine's literal
            b"",
            b"[::1:8605",
            b"127.0.0.1:86a5",
            b"::1:8605",
        ):
            self.assertEqual(self.denied(Request(host=host, cookies=self.cookie)).code, 421, host)
        self.assertEqual(self.denied(Request(host=None, cookies=self.cookie)).code, 421)

    def test_host_is_checked_before_credentials(self) -> None:
        self.assertEqual(self.denied(Request(host=b"evil.example:8605")).code, 421)

    def test_wildcard_bind_accepts_literals_not_names(self) -> None:
        guard = Guard(self.secrets, "0.0.0.0", PORT, tls=True)  # noqa: S104
        request = Request(host=b"192.0.2.7:8605", cookies=self.cookie)
        self.assertEqual(guard.check(request), "cookie")
        self.assertRaises(Denied, guard.check, Request(host=b"evil.example:8605"))
        self.assertFalse(guard.host_allowed(b"192.0.2.7:443"))  # port still checked
        tls_default = Guard(self.secrets, "0.0.0.0", 443, tls=True)  # noqa: S104
        self.assertTrue(tls_default.host_allowed(b"192.0.2.7"))

    @given(st.binary(max_size=40))
    def test_host_parser_never_fails(self, value: bytes) -> None:
        allowed = self.guard.host_allowed(value)
        if allowed:
            text = value.decode("latin-1").strip().lower()
            self.assertTrue(text.endswith(":8605"), value)

    # credentials ---------------------------------------------------------------------------

    def test_no_credentials_401_wrong_ones_403(self) -> None:
        self.assertEqual(self.denied(Request()).code, 401)
        wrong_cookie = {b"sixchat-8605": b"guess"}
        self.assertEqual(self.denied(Request(cookies=wrong_cookie)).code, 403)
        for auth in (b"Bearer wrong", b"Basic " + self.secrets.token.encode(), b"Bearer"):
            request = Request(headers={b"authorization": auth})
            self.assertEqual(self.denied(request).code, 403, auth)

    def test_another_ports_cookie_is_not_ours(self) -> None:
        cookie = {b"sixchat-8606": self.secrets.session.encode()}
        self.assertEqual(self.denied(Request(cookies=cookie)).code, 401)

    def test_the_token_is_not_a_session_cookie(self) -> None:
        cookie = {b"sixchat-8605": self.secrets.token.encode()}
        self.assertEqual(self.denied(Request(cookies=cookie)).code, 403)

    def test_bearer(self) -> None:
        auth = {b"authorization": b"Bearer " + self.secrets.token.encode()}
        self.assertEqual(self.guard.check(Request(headers=auth)), "bearer")
        self.assertEqual(self.guard.check(Request(b"POST", headers=auth)), "bearer")

    def test_token_visit_sets_the_cookie_and_redirects(self) -> None:
        request = Request(args={b"token": [self.secrets.token.encode()]})
        self.assertTrue(self.guard.token_visit(request))
        self.assertEqual(request.responseCode, 303)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"location"), [b"/"])
        (cookie,) = request.responseHeaders.getRawHeaders(b"set-cookie")
        self.assertEqual(
            cookie,
            b"sixchat-8605=" + self.secrets.session.encode() + b"; HttpOnly; SameSite=Strict"
            b"; Path=/",
        )
        tls = Guard(self.secrets, "127.0.0.1", PORT, tls=True)
        request = Request(args={b"token": [self.secrets.token.encode()]})
        tls.token_visit(request)
        (cookie,) = request.responseHeaders.getRawHeaders(b"set-cookie")
        self.assertTrue(cookie.endswith(b"; Secure"))

    def test_token_visit_refusals(self) -> None:
        self.assertFalse(self.guard.token_visit(Request()))
        wrong = Request(args={b"token": [b"x" * 43]})
        self.assertEqual(self.assertRaises(Denied, self.guard.token_visit, wrong).code, 403)
        post = Request(b"POST", args={b"token": [self.secrets.token.encode()]})
        self.assertEqual(self.assertRaises(Denied, self.guard.token_visit, post).code, 403)
        foreign = Request(host=b"evil.example:8605", args={b"token": [self.secrets.token.encode()]})
        self.assertEqual(self.assertRaises(Denied, self.guard.token_visit, foreign).code, 421)
        self.assertIsNone(foreign.responseHeaders.getRawHeaders(b"set-cookie"))

    # Origin and CSRF -----------------------------------------------------------------------

    def post(self, **headers: bytes) -> Request:
        return Request(
            b"POST",
            headers={k.replace("_", "-").encode(): v for k, v in headers.items()},
            cookies=self.cookie,
        )

    def test_same_origin_post_with_csrf_passes(self) -> None:
        request = self.post(
            origin=b"http://127.0.0.1:8605", x_sixchat_csrf=self.secrets.csrf.encode()
        )
        self.assertEqual(self.guard.check(request), "cookie")
        self.assertEqual(CSRF_HEADER, b"x-sixchat-csrf")

    def test_cookie_post_refusals(self) -> None:
        csrf = self.secrets.csrf.encode()
        cases = [
            self.post(origin=b"http://evil.example", x_sixchat_csrf=csrf),
            self.post(origin=b"http://127.0.0.1:8606", x_sixchat_csrf=csrf),
            self.post(origin=b"https://127.0.0.1:8605", x_sixchat_csrf=csrf),
            self.post(origin=b"null", x_sixchat_csrf=csrf),
            self.post(x_sixchat_csrf=csrf),  # no Origin
            self.post(origin=b"http://127.0.0.1:8605"),  # no CSRF token
            self.post(origin=b"http://127.0.0.1:8605", x_sixchat_csrf=b"guess"),
        ]
        for request in cases:
            self.assertEqual(self.denied(request).code, 403)

    def test_bearer_post_may_omit_origin_not_send_a_foreign_one(self) -> None:
        auth = b"Bearer " + self.secrets.token.encode()
        self.assertEqual(
            self.guard.check(Request(b"POST", headers={b"authorization": auth})), "bearer"
        )
        foreign = Request(
            b"POST", headers={b"authorization": auth, b"origin": b"http://evil.example"}
        )
        self.assertEqual(self.denied(foreign).code, 403)

    def test_a_body_is_state_changing_whatever_the_method(self) -> None:
        self.assertEqual(self.denied(Request(cookies=self.cookie), changes_state=True).code, 403)

    # the bind rule and the headers -----------------------------------------------------------

    def test_bind_rule(self) -> None:
        for host in ("127.0.0.1", "::1", "127.3.4.5", "localhost"):
            check_bind(host, tls=False)
            self.assertTrue(is_loopback(host))
        for host in ("0.0.0.0", "::", "192.0.2.7", "2001:db8::1"):  # noqa: S104
            e = self.assertRaises(ValueError, check_bind, host, False)
            self.assertIn("not loopback: use TLS", str(e))
            check_bind(host, tls=True)

    def test_csp_allows_nothing_foreign_or_inline(self) -> None:
        directives = dict(d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";"))
        self.assertEqual(directives["default-src"], "'none'")
        self.assertEqual(directives["script-src"], "'self'")
        self.assertEqual(directives["frame-ancestors"], "'none'")
        self.assertNotIn("unsafe", CONTENT_SECURITY_POLICY)
