"""
The IRP client (irp-1): L{IRPClientProtocol} (L{protocol}), a Deferred API over one TLS
connection to a registry; L{connectRegistry} (L{connect}), which finds the registry, opens the
connection and proves it usable before handing it over; and the errors a connection fails
with (L{errors}).

The names other code imports from C{sixchat.irp.client} stay importable from here.
"""

from sixchat.irp.client.connect import connectRegistry, load_certificates
from sixchat.irp.client.errors import (
    TLS_ALERT_NUMBERS,
    IRPConnectionError,
    IRPConnectionLost,
    IRPProtocolError,
    IRPTimeout,
    RegistryCertificateError,
    TLSAlertError,
    describe_tls_failure,
)
from sixchat.irp.client.protocol import (
    DEFAULT_KEEPALIVE,
    DEFAULT_TIMEOUT,
    IRPClientFactory,
    IRPClientProtocol,
)

__all__ = [
    "DEFAULT_KEEPALIVE",
    "DEFAULT_TIMEOUT",
    "TLS_ALERT_NUMBERS",
    "IRPClientFactory",
    "IRPClientProtocol",
    "IRPConnectionError",
    "IRPConnectionLost",
    "IRPProtocolError",
    "IRPTimeout",
    "RegistryCertificateError",
    "TLSAlertError",
    "connectRegistry",
    "describe_tls_failure",
    "load_certificates",
]
