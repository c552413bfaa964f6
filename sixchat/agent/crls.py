"""
Keeping the agent's CRLs current (E2E §4, §11.8; irp-1 §4.5): L{CRLUpdater} fetches the
registry's CRLs at start-up and then periodically, feeds them to the agent's L{TrustStore},
keeps them in C{<data-dir>/crls/} so revocation survives a restart while the registry is
unreachable, and tells the agent which newly learnt CRLs it must apply to open sessions.

Why these choices:

  - B{Only CRLs signed by a CA we trust are taken.} L{TrustStore.add_crl} can check only a
    CRL that names one of our anchors; one from an intermediate it holds as a candidate until
    a validation path proves or disproves it. So every CRL is checked here first: its
    signature must verify with the key of an anchor, or of a CA certificate on our own
    certificate's path to an anchor (the registry issues with one CA, the one that issued
    us: irp-1 §4.5 returns its CRL, an intermediate's when it is one). Anything else is
    refused, logged as an error, neither used nor stored in the data directory.
    L{TrustStore.add_crl} still decides which of two good CRLs is newer (CRL number, then
    thisUpdate): an older one never replaces a newer.
  - B{Timing} (on the injected clock): a fetch at start-up, then every C{refresh} seconds
    (default one hour), or sooner when a held registry CRL's C{nextUpdate} comes first
    (never sooner than L{MIN_DELAY}). A failed fetch is retried with the registration
    keeper's backoff ("equal jitter" between C{RETRY_MIN} and C{min(RETRY_MAX, refresh)}),
    and at once when the registration keeper gets through to the registry again.
  - B{An anonymous connection} per fetch (C{crl} is anonymous, irp-1 §4.5): it works even
    when the registry refuses our own certificate because it was revoked — which is
    exactly when we need the CRL that says so. One short TLS connection an hour is cheap.
  - B{Files}: one DER file per issuer (name and key identifier), named by a hash of both,
    written to a temporary file, fsynced and renamed over the old one (then the directory
    fsynced), in a thread; writes are serialised so an older CRL never lands after a newer.
    Files are re-verified when loaded, like anything from the registry.
  - B{No CRL rule of its own.} Which CA issued a CRL, its number and key identifier, and
    whether it revokes a certificate on a path (§11.8) are L{sixchat.trust.crl}'s, the very
    rules the trust store validates with.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import tempfile
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import defer, threads
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from sixchat.stanzas import format_timestamp
from sixchat.trust import TrustStore
from sixchat.trust.crl import (
    authority_key_id,
    crl_number,
    crl_signed_by,
    name_text,
    revoked_on_path,
)

__all__ = [
    "DEFAULT_REFRESH",
    "MIN_DELAY",
    "RETRY_MAX",
    "RETRY_MIN",
    "CRLUpdater",
]

log = Logger()

#: Seconds between two fetches when nothing calls for one sooner.
DEFAULT_REFRESH = 3600.0
#: A CRL's nextUpdate brings the next fetch forward, but never closer than this.
MIN_DELAY = 60.0
#: Backoff after failed fetches: from RETRY_MIN up to min(RETRY_MAX, refresh), with jitter.
RETRY_MIN = 10.0
RETRY_MAX = 600.0

CRL = x509.CertificateRevocationList
_Key = tuple[bytes, bytes | None]


def _key(crl: CRL) -> _Key:
    """What L{TrustStore} holds one CRL per: the issuer name and authority key identifier."""
    return crl.issuer.public_bytes(), authority_key_id(crl)


def _der(crl: CRL) -> bytes:
    return crl.public_bytes(serialization.Encoding.DER)


def _iso(when: datetime | None) -> str | None:
    return None if when is None else format_timestamp(when)


def _write_atomically(directory: str, name: str, data: bytes) -> None:
    """C{directory/name} holds either its old content or C{data}, never a mix (thread)."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".der", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def file_name(crl: CRL) -> str:
    """The file one issuer's CRL is kept in: a hash of its issuer name and key identifier."""
    issuer, key_id = _key(crl)
    digest = hashlib.sha256(issuer + b"\0" + (key_id or b"")).hexdigest()
    return f"{digest[:32]}.der"


class CRLUpdater:
    """
    Fetches, checks, applies and keeps the registry's CRLs for one agent (see the module
    docstring for the rules and the timing).

    @param reactor: runs the file writes in its thread pool.
    @param clock: schedules fetches and gives the time (C{task.Clock} in tests).
    @param trust: the agent's trust store; accepted CRLs are added to it.
    @param directory: where CRLs are kept (created mode 0700 on first write).
    @param fetch: fires with the registry's CRLs; C{None} when there is nothing to fetch
        from (then only the kept CRLs are loaded).
    @param own_chain: our certificate chain (DER, leaf first): its CA certificates may sign
        CRLs, and our own revocation is detected on it.
    @param on_new: called with the CRLs newly taken (not merely fetched again), after they
        are in the trust store: the agent closes sessions they revoke.
    @param refresh: seconds between fetches; 0 disables fetching.
    @param source: names where CRLs come from, for logs and status.

    @ivar own_revoked: C{None}, or why our own certificate is revoked (one line).
    """

    def __init__(
        self,
        reactor: Any,
        clock: Any,
        trust: TrustStore,
        directory: str,
        fetch: Callable[[], defer.Deferred[list[CRL]]] | None,
        *,
        own_chain: Sequence[bytes] = (),
        on_new: Callable[[list[CRL]], None] | None = None,
        refresh: float = DEFAULT_REFRESH,
        rand: Callable[[], float] = random.random,
        source: str = "the registry",
    ) -> None:
        if refresh < 0:
            raise ValueError("the CRL refresh interval must be 0 (off) or positive")
        self.reactor = reactor
        self.clock = clock
        self.trust = trust
        self.directory = directory
        self.fetch = fetch if refresh > 0 else None
        self.own_chain = list(own_chain)
        self.on_new = on_new
        self.refresh = float(refresh)
        self.rand = rand
        self.source = source
        self.failures = 0
        self.last_fetch: float | None = None
        self.last_attempt: float | None = None
        self.last_error: str | None = None
        self.own_revoked: str | None = None
        #: When a CRL was last newly taken (clock seconds); sessions that finish their
        #: handshake soon after are checked again (their chain was validated before it).
        self.changed_at: float | None = None
        self._registry_keys: set[_Key] = set()
        self._timer: IDelayedCall | None = None
        self._fetching: defer.Deferred[Any] | None = None
        self._network: defer.Deferred[Any] | None = None
        self._writes = defer.DeferredLock()
        self._running = False

    # time -------------------------------------------------------------------------------------

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), UTC)

    @property
    def enabled(self) -> bool:
        return self.fetch is not None

    def next_fetch(self) -> float | None:
        """When the next fetch is scheduled (clock seconds), if one is."""
        if self._timer is not None and self._timer.active():
            return float(self._timer.getTime())
        return None

    # trusted issuers --------------------------------------------------------------------------

    def _own_path(self, now: datetime) -> list[x509.Certificate]:
        """
        Our chain as verified against the anchors alone (revocation aside: a revoked leaf
        still shows which CAs are ours), or just our leaf when it does not validate.
        """
        if not self.own_chain:
            return []
        try:
            return list(TrustStore(self.trust.anchors).validate(self.own_chain, now).chain)
        except Exception as e:
            log.debug("our own chain does not validate ({e}): only anchors sign CRLs", e=e)
            return [x509.load_der_x509_certificate(self.own_chain[0])]

    # taking CRLs ------------------------------------------------------------------------------

    def _held(self) -> dict[_Key, bytes]:
        return {_key(crl): _der(crl) for crl in self.trust.crls}

    def _take(
        self, crls: Iterable[CRL], origin: str, check_own: bool = True
    ) -> tuple[list[CRL], list[CRL]]:
        """Check and add C{crls}; returns (newly taken, trusted ones among C{crls})."""
        now = self.now()
        own_path = self._own_path(now)
        issuers = [*self.trust.anchors, *own_path[1:]]  # anchors, and the CAs on our path
        held = self._held()
        new: list[CRL] = []
        trusted: list[CRL] = []
        for crl in crls:
            if not any(crl_signed_by(crl, issuer) for issuer in issuers):
                log.error(
                    "REFUSED a CRL from {origin} naming {issuer} (number {number}): it is not "
                    "signed by a CA we trust; it is not used",
                    origin=origin,
                    issuer=name_text(crl.issuer),
                    number=crl_number(crl),
                )
                continue
            trusted.append(crl)
            key, der = _key(crl), _der(crl)
            if held.get(key) == der:
                continue  # the one we hold
            if not self.trust.add_crl(crl):
                log.info(
                    "kept the newer CRL of {issuer} we hold; the one from {origin} "
                    "(number {number}) is older",
                    issuer=name_text(crl.issuer),
                    origin=origin,
                    number=crl_number(crl),
                )
                continue
            held[key] = der
            new.append(crl)
            log.info(
                "CRL of {issuer} number {number} from {origin}: {count} revoked, next update "
                "{next}",
                issuer=name_text(crl.issuer),
                number=crl_number(crl),
                origin=origin,
                count=len(crl),
                next=_iso(crl.next_update_utc) or "not given",
            )
        if new:
            self.changed_at = self.clock.seconds()
            if check_own:
                self._checkOwn(new, own_path)
        return new, trusted

    def _checkOwn(self, crls: list[CRL], path: list[x509.Certificate]) -> None:
        hit = revoked_on_path(path, crls) if len(path) > 1 else None
        if hit is None:
            return
        depth, crl = hit
        what = "OUR OWN CERTIFICATE" if depth == 0 else f"a CA certificate of ours (depth {depth})"
        self.own_revoked = (
            f"{'our certificate' if depth == 0 else f'CA certificate at depth {depth}'} "
            f"serial {path[depth].serial_number:x} is revoked by CRL number "
            f"{crl_number(crl)} of {name_text(crl.issuer)}"
        )
        log.critical(
            "{what} (serial {serial:x}, {subject}) IS REVOKED by the CRL of {issuer} "
            "(number {number}): peers holding this CRL refuse our sessions and the registry "
            "refuses our connections. If this was not you, your key may be compromised; "
            "get a new certificate (sixchat enroll with a new invitation).",
            what=what,
            serial=path[depth].serial_number,
            subject=name_text(path[depth].subject),
            issuer=name_text(crl.issuer),
            number=crl_number(crl),
        )

    # the kept files ---------------------------------------------------------------------------

    def load(self) -> int:
        """
        Take the CRLs kept in L{directory} (blocking, a few small files: at start-up).
        Returns how many were taken. Damaged or untrusted files are logged and skipped.
        """
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return 0
        except OSError as e:
            log.error("cannot list the kept CRLs in {dir}: {why}", dir=self.directory,
                      why=e.strerror)  # fmt: skip
            return 0
        crls = []
        for name in names:
            if name.startswith(".") or not name.endswith(".der"):
                continue
            path = os.path.join(self.directory, name)
            try:
                with open(path, "rb") as f:
                    crls.append(x509.load_der_x509_crl(f.read()))
            except (OSError, ValueError) as e:
                log.warn("skipping the kept CRL {path}: {why}", path=path, why=e)
        new, _ = self._take(crls, self.directory, check_own=False)
        # Once at start-up, with every CRL held (--crl files too): are we revoked?
        self._checkOwn(self.trust.crls, self._own_path(self.now()))
        if new and self.on_new is not None:
            self.on_new(new)
        return len(new)

    def _save(self, crls: list[CRL]) -> defer.Deferred[None]:
        files = [(file_name(crl), _der(crl)) for crl in crls]

        def write() -> None:
            for name, data in files:
                _write_atomically(self.directory, name, data)

        def in_thread() -> defer.Deferred[None]:
            pool = self.reactor.getThreadPool()
            return threads.deferToThreadPool(self.reactor, pool, write)

        def failed(f: Failure) -> None:
            log.error("cannot keep the CRLs in {dir}: {why}; they are used but will not "
                      "survive a restart", dir=self.directory,
                      why=f.getErrorMessage())  # fmt: skip

        return self._writes.run(in_thread).addErrback(failed)

    # the loop ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Fetch now, then on schedule (if fetching is enabled)."""
        self._running = True
        if self.enabled:
            self.fetchNow()

    def stop(self) -> defer.Deferred[None]:
        """Stop fetching; fires once no file write is in progress."""
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._network is not None:
            self._network.cancel()  # a fetch on the wire; a write in progress is waited for
        return self.idle()

    def idle(self) -> defer.Deferred[None]:
        """Fires once the file writes started so far are done."""
        return self._writes.run(lambda: None)

    def _schedule(self, delay: float) -> None:
        if not self._running or not self.enabled:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.clock.callLater(delay, self._due)

    def _due(self) -> None:
        self._timer = None
        self.fetchNow()

    def registryReachable(self) -> None:
        """The registry answers again (the keeper registered): retry a failed fetch now."""
        if self.failures and self._fetching is None:
            self._schedule(0)

    def fetchNow(self) -> defer.Deferred[list[CRL]]:
        """
        Fetch, check and take the registry's CRLs now; fires with those newly taken once
        they are in the trust store, applied to sessions and on disk. Never fails: a failed
        fetch is logged and retried after the backoff. A call during a fetch waits for it.
        """
        if self.fetch is None:
            return defer.succeed([])
        if self._fetching is not None:
            waiter: defer.Deferred[list[CRL]] = defer.Deferred()

            def share(result: Any) -> Any:
                waiter.callback(result if isinstance(result, list) else [])
                return result

            self._fetching.addBoth(share)
            return waiter
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.last_attempt = self.clock.seconds()
        d = self._fetching = self._network = defer.maybeDeferred(self.fetch)

        def received(result: Any) -> Any:
            # From here on a new fetch may start; the file writes stay in order (a lock).
            self._fetching = self._network = None
            return result

        d.addBoth(received)
        d.addCallback(self._fetched)
        d.addErrback(self._failed)
        return d

    def _fetched(self, crls: list[CRL]) -> defer.Deferred[list[CRL]]:
        self.last_fetch = self.clock.seconds()
        self.failures = 0
        new, trusted = self._take(crls, self.source)
        self._registry_keys.update(_key(crl) for crl in trusted)
        if not crls:
            self.last_error = f"{self.source} sent no CRL"
            log.warn("{source} sent no CRL", source=self.source)
        elif len(trusted) < len(crls):
            self.last_error = (
                f"refused {len(crls) - len(trusted)} CRL(s) not signed by a CA we trust"
            )
        else:
            self.last_error = None
        if new and self.on_new is not None:
            try:
                self.on_new(new)
            except Exception:
                log.failure("applying new CRLs to open sessions failed")
        self._schedule(self._nextDelay())
        if not new:
            return defer.succeed(new)
        return self._save(new).addCallback(lambda _: new)

    def _failed(self, failure: Failure) -> list[CRL]:
        if failure.check(defer.CancelledError) and not self._running:
            return []
        self.failures += 1
        self.last_error = failure.getErrorMessage() or str(failure.type.__name__)  # type: ignore[union-attr]
        delay = self.backoff(self.failures)
        log.warn(
            "cannot fetch the CRLs from {source}: {why}; retrying in {delay:.0f} s",
            source=self.source,
            why=self.last_error,
            delay=delay,
        )
        self._schedule(delay)
        return []

    def backoff(self, failures: int) -> float:
        """The wait after C{failures} consecutive failed fetches (≥ 1)."""
        cap = max(RETRY_MIN, min(RETRY_MAX, self.refresh))
        base = min(cap, 2 * RETRY_MIN * 2 ** min(failures - 1, 64))
        return base / 2 + self.rand() * base / 2

    def _nextDelay(self) -> float:
        delay = self.refresh
        now = self.now()
        for crl in self.trust.crls:
            if _key(crl) not in self._registry_keys or crl.next_update_utc is None:
                continue
            until = (crl.next_update_utc - now).total_seconds()
            if until > 0:
                delay = min(delay, max(until, MIN_DELAY))
        return delay

    # status -----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        def at(seconds: float | None) -> str | None:
            return None if seconds is None else _iso(datetime.fromtimestamp(seconds, UTC))

        now = self.now()
        held = []
        for crl in self.trust.crls:
            next_update = crl.next_update_utc
            held.append(
                {
                    "issuer": name_text(crl.issuer),
                    "number": crl_number(crl),
                    "this_update": _iso(crl.last_update_utc),
                    "next_update": _iso(next_update),
                    "revoked": len(crl),
                    "stale": next_update is not None and next_update < now,
                }
            )
        return {
            "fetch": self.source if self.enabled else None,
            "refresh": self.refresh if self.enabled else 0,
            "last_fetch": at(self.last_fetch),
            "last_attempt": at(self.last_attempt),
            "last_error": self.last_error,
            "next_fetch": at(self.next_fetch()),
            "own_certificate_revoked": self.own_revoked,
            "crls": held,
        }
