"""
The registry as a Twisted service (L{IRPServerService}): store, hub and TLS listener started
and stopped in the right order; and L{make_store}, which opens the store a C{--db} value names.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from sixchat.identity import Identity
from sixchat.irp.server.authority import Authority
from sixchat.irp.server.config import DEFAULT_LISTEN, RegistryConfig
from sixchat.irp.server.gcpolicy import CollectorPolicy
from sixchat.irp.server.protocol import IRPServerFactory
from sixchat.irp.server.tls import GuardedTLSFactory, ServerTLS
from sixchat.irp.store.interfaces import IRegistryStore
from sixchat.listener import EndpointService
from sixchat.trust import PeerCertificate

__all__ = ["IRPServerService", "make_store"]


class IRPServerService(EndpointService):
    """
    The registry as a Twisted service: opens the store, listens on C{listen} (an endpoint
    string) inside TLS 1.3 with L{ServerTLS}, runs the factory's timers, and closes the store
    when stopped. The port is bound in C{privilegedStartService} so that "address in use"
    is one line on standard error before twistd daemonises.

    @param credentials: the registry's TLS server certificate and key.
    @param collector: the process's garbage-collection policy
        (L{sixchat.irp.server.gcpolicy.CollectorPolicy}), started and stopped with the registry and
        told to freeze once the registry is ready; None (default) leaves the collector
        alone. It is process-wide, so C{twistd sixchat-irp} passes one and library users
        decide for themselves.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        store: IRegistryStore,
        authority: Authority,
        credentials: Identity,
        listen: str = DEFAULT_LISTEN,
        config: RegistryConfig | None = None,
        collector: CollectorPolicy | None = None,
    ) -> None:
        self.store = store
        self.authority = authority
        self.collector = collector
        self.factory = IRPServerFactory(store, authority, reactor, config)
        self.tls = ServerTLS(credentials, authority.trust, now=self.factory.now)
        self.factory.peer_for = self._peer_for
        self.tls_factory = GuardedTLSFactory(self.tls, self.factory)
        super().__init__(reactor, listen, self.tls_factory)
        self._opened: defer.Deferred[Any] | None = None

    def _peer_for(self, transport: Any) -> PeerCertificate | None:
        handle = getattr(transport, "getHandle", None)
        return self.tls.peer(handle()) if handle is not None else None

    program = "sixchat-irp"
    what = "registry"

    def startService(self) -> None:
        if self.collector is not None:
            self.collector.startService()
        super().startService()
        self._opened = defer.ensureDeferred(self._open())

    async def _open(self) -> None:
        try:
            await self.store.open()
            await self.factory.start()
        except Exception as e:
            text = str(e) or type(e).__name__
            if self.on_fatal is not None:  # twistd sixchat-irp: stderr, exit status 1
                self.on_fatal(text)
                return
            self.log.critical("sixchat-irp: error: {text}", text=text)
            if self.reactor.running:
                self.reactor.stop()
            return
        if self.collector is not None:
            self.collector.freeze()  # start-up is over: modules, CA, trust store, CRL
        port = self.port
        host: Any = port.getHost() if port is not None else None
        self.log.info(
            "IRP registry for {ca} listening on {host} port {port} (lookup policy {policy})",
            ca=self.authority.ca_cert.subject.rfc4514_string(),
            host=getattr(host, "host", host),
            port=getattr(host, "port", ""),
            policy=self.factory.config.lookup_policy,
        )

    def stopService(self) -> defer.Deferred[None]:
        service.Service.stopService(self)
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        await self.stopListening()
        await self.factory.stop()
        for protocol in list(self.factory.connections):
            protocol.close()
        if self._opened is not None:
            await self._opened
        await self.store.close()
        if self.collector is not None and self.collector.running:
            self.collector.stopService()


def make_store(db: str, reactor: Any, *, lookup_cache: int = 20_000) -> IRegistryStore:
    """
    The store a C{--db} value names: a C{postgresql://} (or C{postgres://}) DSN opens the
    shared PostgreSQL store, anything else is a SQLite file; either with a lookup cache of
    C{lookup_cache} identities (0: none; C{--lookup-cache}).
    """
    if db.startswith(("postgresql://", "postgres://")):
        from sixchat.irp.store.postgres import PostgresStore

        store: IRegistryStore = PostgresStore(db, reactor, cache_size=lookup_cache)
        return store
    from sixchat.irp.store.sqlite import SQLiteStore

    return SQLiteStore(db, reactor, cache_size=lookup_cache)
