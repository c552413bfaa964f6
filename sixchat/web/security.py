"""
The web UI's security rules, written once (docs/web.md, "Security"; docs/security.md): a
local web server is an attack surface, treated like Jupyter's.

  - L{Secrets}: a random token per agent start (in the link of C{<data-dir>/web-url}), the
    session value its first visit puts in an HttpOnly, SameSite=Strict cookie, and the CSRF
    token the page sends back on every state-changing request;
  - L{Guard.check}: every request, in this order: the C{Host} header must name the bound
    address, a loopback literal or C{localhost} (DNS rebinding: a name an attacker controls
    never passes) → 421; then a credential: the session cookie or C{Authorization: Bearer
    TOKEN} → otherwise 401 (none) or 403 (a wrong one); then, for a state-changing method,
    a same-origin C{Origin} and the CSRF token (cookie sessions; a bearer token is no
    ambient credential, so a script may omit C{Origin}, but a foreign one is still refused)
    → 403;
  - L{check_bind}: a non-loopback address is refused unless the endpoint is TLS (the token
    is always on);
  - L{SECURITY_HEADERS}: a strict Content-Security-Policy (scripts, styles, images and
    connections from the agent only, no inline script, no framing) and friends, on every
    response.

No Twisted import beyond the request's interface: the rules are plain functions of the
request's method, headers and cookies, unit-tested with C{twisted.web.test.requesthelper}.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CSRF_HEADER",
    "SAFE_METHODS",
    "SECURITY_HEADERS",
    "Denied",
    "Guard",
    "Secrets",
    "check_bind",
    "is_loopback",
]

#: Methods that change nothing; every other one needs the CSRF checks.
SAFE_METHODS = frozenset({b"GET", b"HEAD"})

#: The header the page puts the CSRF token in (a custom header: a cross-site form cannot
#: send one, and a cross-site script cannot without a CORS preflight, which is never allowed).
CSRF_HEADER = b"x-sixchat-csrf"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

#: Sent with every response, errors included.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
)


class Denied(Exception):
    """A request the guard refuses: an HTTP status and one line for the body."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Secrets:
    """The per-start secrets: never logged, never stored but in C{web-url} (mode 600)."""

    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    session: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))


def _equal(a: str | bytes | None, b: str) -> bool:
    if a is None:
        return False
    if isinstance(a, str):
        a = a.encode("utf-8", "replace")
    return hmac.compare_digest(a, b.encode())


def is_loopback(host: str) -> bool:
    """Whether C{host} (an address; C{localhost} counts) only ever reaches this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def check_bind(host: str, tls: bool) -> None:
    """
    C{--web}'s bind rule: a loopback address, or TLS (the token is always on).

    @raise ValueError: with the one line to show.
    """
    if is_loopback(host) or tls:
        return
    where = "every address" if _is_unspecified(host) else host
    raise ValueError(
        f"the web UI would listen on {where}, which is not loopback: use TLS "
        "(ssl:PORT:privateKey=KEY.pem:certKey=CERT.pem:interface=ADDR) or bind "
        "interface=127.0.0.1"
    )


def _split_host(value: str) -> tuple[str, int | None] | None:
    """C{Host} header text as (host, port or None); None when malformed."""
    value = value.strip().lower()
    if not value:
        return None
    if value.startswith("["):
        inner, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        host, port_text = inner, rest[1:] if rest else ""
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    elif ":" in value:
        return None  # an IPv6 literal must be bracketed in a Host header
    else:
        host, port_text = value, ""
    if not host:
        return None
    if port_text:
        if not port_text.isdigit() or len(port_text) > 5:
            return None
        return host, int(port_text)
    return host, None


class Guard:
    """
    The checks of every request, for a server bound to C{host}:C{port} (C{tls}: HTTPS).
    C{check} returns how the request was authenticated or raises L{Denied}.
    """

    def __init__(self, secrets_: Secrets, host: str, port: int, tls: bool) -> None:
        self.secrets = secrets_
        self.host = host.lower().split("%", 1)[0]
        self.port = port
        self.tls = tls
        self.scheme = "https" if tls else "http"

    @property
    def cookie_name(self) -> bytes:
        """Cookies are not separated by port: two agents on one machine must not share one."""
        return f"sixchat-{self.port}".encode()

    # the rules -------------------------------------------------------------------------

    def host_allowed(self, value: bytes | None) -> bool:
        """C{Host}: the bound address, C{localhost} or a loopback literal, with our port."""
        if value is None:
            return False
        parsed = _split_host(value.decode("latin-1"))
        if parsed is None:
            return False
        host, port = parsed
        default = 443 if self.tls else 80
        if (port if port is not None else default) != self.port:
            return False
        if host == "localhost" or host == self.host:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False  # any other name: possibly an attacker's, rebound to us
        # Bound to every address: any of this machine's literals is fine (a literal cannot
        # be rebound); otherwise only loopback ones besides the bound address.
        return address.is_loopback or _is_unspecified(self.host)

    def origin(self, request: Any) -> str:
        """Our own origin as the request names it (its Host was checked first)."""
        host = request.getHeader(b"host") or b""
        return f"{self.scheme}://{host.decode('latin-1').strip().lower()}"

    def credential(self, request: Any) -> str:
        """C{"cookie"} or C{"bearer"}; L{Denied} 401 without one, 403 with a wrong one."""
        auth = request.getHeader(b"authorization")
        if auth is not None:
            scheme, _, value = auth.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not _equal(value.strip(), self.secrets.token):
                raise Denied(403, "wrong bearer token")
            return "bearer"
        cookie = request.getCookie(self.cookie_name)
        if cookie is not None:
            if not _equal(cookie, self.secrets.session):
                raise Denied(403, "stale or wrong session: open the link `sixchat web` prints")
            return "cookie"
        raise Denied(401, "no credentials: open the link `sixchat web` prints")

    def check_state_change(self, request: Any, how: str) -> None:
        """Origin and CSRF for a method that changes something."""
        origin = request.getHeader(b"origin")
        if origin is not None and origin.decode("latin-1").lower() != self.origin(request):
            raise Denied(403, "cross-origin request refused")
        if how == "bearer":
            return  # not an ambient credential: a foreign page cannot send it
        if origin is None:
            raise Denied(403, "a state-changing request needs an Origin header")
        if not _equal(request.getHeader(CSRF_HEADER), self.secrets.csrf):
            raise Denied(403, "missing or wrong CSRF token")

    def check(self, request: Any, changes_state: bool | None = None) -> str:
        """
        Every rule, in order; the credential kind, or L{Denied}. C{changes_state}: whether
        the Origin and CSRF checks apply (default: unless the method is GET or HEAD).
        """
        if not self.host_allowed(request.getHeader(b"host")):
            raise Denied(421, "this server answers only to its own address or localhost")
        how = self.credential(request)
        if changes_state is None:
            changes_state = request.method not in SAFE_METHODS
        if changes_state:
            self.check_state_change(request, how)
        return how

    # the token's first visit -------------------------------------------------------------

    def token_visit(self, request: Any) -> bool:
        """
        C{GET /?token=…}: with the right token, set the session cookie and redirect to C{/}
        (True: answered); a wrong token is L{Denied} 403; no token: False.
        """
        given = request.args.get(b"token")
        if not given:
            return False
        if not self.host_allowed(request.getHeader(b"host")):
            raise Denied(421, "this server answers only to its own address or localhost")
        if request.method not in SAFE_METHODS or not _equal(given[0], self.secrets.token):
            raise Denied(403, "wrong token: open the link `sixchat web` prints")
        attributes = [b"HttpOnly", b"SameSite=Strict", b"Path=/"]
        if self.tls:
            attributes.append(b"Secure")
        value = self.cookie_name + b"=" + self.secrets.session.encode()
        request.setHeader(b"set-cookie", b"; ".join([value, *attributes]))
        request.setResponseCode(303)
        request.setHeader(b"location", b"/")
        return True
