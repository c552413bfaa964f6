"""
The agent's side of its registry (irp-1): authenticated connections for lookups, watches and
registration, short anonymous ones for CRLs, and the parts built on them — the directory of
peers and the registration keeper. Imported only when the agent has a registry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cryptography import x509
from twisted.internet import defer

from sixchat.agent.directory import RegistryDirectory
from sixchat.agent.interfaces import PresenceCallback
from sixchat.identity import Identity
from sixchat.irp.client import IRPClientProtocol, connectRegistry
from sixchat.irp.keeper import AutoContacts, RegistrationKeeper, tcp_probe

__all__ = ["RegistryLink"]


class RegistryLink:
    """
    How an agent reaches one registry: C{registry} is C{HOST[:PORT]} or C{"auto"} (found
    from C{identity}'s domain), its server certificate checked against C{anchors}.
    """

    def __init__(
        self,
        reactor: Any,
        registry: str,
        identity: Identity,
        anchors: Sequence[x509.Certificate] | None,
    ) -> None:
        self.reactor = reactor
        self.registry = registry
        self.identity = identity
        self.name = identity.names[0]
        self.anchors = list(anchors) if anchors else None

    @property
    def source(self) -> str:
        """The registry as log lines and status name it."""
        return "the registry" if self.registry == "auto" else f"registry {self.registry}"

    def connect(self) -> defer.Deferred[IRPClientProtocol]:
        """An authenticated connection (our certificate): lookups, watches, registration."""
        return connectRegistry(
            self.reactor,
            self.registry,
            self.name,
            anchors=self.anchors,
            client_identity=self.identity,
        )

    def fetchCRLs(self) -> defer.Deferred[list[x509.CertificateRevocationList]]:
        """irp-1 §4.5 over a short anonymous connection: it works even if we are revoked."""
        d = connectRegistry(self.reactor, self.registry, self.name, anchors=self.anchors)

        def fetch(client: IRPClientProtocol) -> defer.Deferred[list[Any]]:
            def close(result: Any) -> Any:
                client.close()
                return result

            return client.crl().addBoth(close)

        return d.addCallback(fetch)

    def directory(self, on_presence: PresenceCallback) -> RegistryDirectory:
        return RegistryDirectory(self.reactor, self.connect, on_presence, self.source)

    def keeper(
        self,
        node: str,
        listening: Callable[[], Any],
        advertise: Sequence[tuple[str, int | None]],
        expires: int,
    ) -> RegistrationKeeper:
        """Keeps C{node} registered with the contacts C{listening} and C{advertise} give."""
        return RegistrationKeeper(
            self.reactor,
            self.connect,
            node,
            AutoContacts(self.reactor, listening, advertise),
            expires=expires,
            registry_name=self.source,
            identity=self.name,
            probe=tcp_probe(self.reactor),
        )
