"""
Why a registry connection failed, as exceptions (L{IRPConnectionError} and its kinds), and
L{describe_tls_failure}, which names a TLS refusal by its RFC 8446 alert.

With TLS 1.3 a refused client certificate shows only when we read (the server's alert
arrives after our handshake finished, irp-1 §7.1). OpenSSL reports it as an C{SSL.Error}
whose text names the alert (C{'tlsv1 alert unknown ca'}, C{'tls alert certificate
expired'}, …); L{describe_tls_failure} turns that into L{TLSAlertError} with the alert's name
and number.
"""

from __future__ import annotations

import re

from OpenSSL import SSL
from twisted.internet import error
from twisted.python.failure import Failure

from sixchat.errors import SixchatError

__all__ = [
    "TLS_ALERT_NUMBERS",
    "IRPConnectionError",
    "IRPConnectionLost",
    "IRPProtocolError",
    "IRPTimeout",
    "RegistryCertificateError",
    "TLSAlertError",
    "describe_tls_failure",
]

#: RFC 8446 §6 alert numbers by name, for reporting (the IRP ones are irp-1 §7.1).
TLS_ALERT_NUMBERS = {
    "close_notify": 0,
    "unexpected_message": 10,
    "bad_record_mac": 20,
    "record_overflow": 22,
    "handshake_failure": 40,
    "bad_certificate": 42,
    "unsupported_certificate": 43,
    "certificate_revoked": 44,
    "certificate_expired": 45,
    "certificate_unknown": 46,
    "illegal_parameter": 47,
    "unknown_ca": 48,
    "access_denied": 49,
    "decode_error": 50,
    "decrypt_error": 51,
    "protocol_version": 70,
    "insufficient_security": 71,
    "internal_error": 80,
    "inappropriate_fallback": 86,
    "user_canceled": 90,
    "missing_extension": 109,
    "unsupported_extension": 110,
    "unrecognized_name": 112,
    "bad_certificate_status_response": 113,
    "unknown_psk_identity": 115,
    "certificate_required": 116,
    "no_application_protocol": 120,
}

# OpenSSL spells received alerts "sslv3 alert bad certificate", "tlsv1 alert unknown ca",
# "tls alert certificate expired" (3.x/4.x), "tlsv13 alert certificate required".
_OPENSSL_ALERT = re.compile(r"\b(?:sslv3|tlsv1\d*|tls) alert ([a-z0-9 _]+)")


class IRPConnectionError(SixchatError):
    """The connection to the registry failed or ended; pending requests fail with this."""


class IRPConnectionLost(IRPConnectionError):
    """The connection closed before the answer arrived (or a request was made after it)."""


class IRPTimeout(IRPConnectionError):
    """A request was not answered in time; the connection is dropped as dead."""


class IRPProtocolError(IRPConnectionError):
    """The registry sent something irp-1 does not allow; the connection is closed."""


class TLSAlertError(IRPConnectionError):
    """
    The registry ended TLS with an alert, typically refusing our client certificate
    (irp-1 §7.1). C{alert} is the RFC 8446 name (C{unknown_ca}, …), C{number} its code.
    """

    def __init__(self, alert: str, number: int | None, detail: str = "") -> None:
        self.alert = alert
        self.number = number
        code = f" ({number})" if number is not None else ""
        refused = alert in {
            "bad_certificate", "unsupported_certificate", "certificate_revoked",
            "certificate_expired", "certificate_unknown", "unknown_ca", "certificate_required",
        }  # fmt: skip
        what = "the registry refused our client certificate" if refused else "TLS failed"
        super().__init__(f"{what}: TLS alert {alert}{code}" + (f" ({detail})" if detail else ""))


class RegistryCertificateError(IRPConnectionError):
    """We could not verify the registry's server certificate (trust or name)."""


def describe_tls_failure(reason: Failure | BaseException) -> IRPConnectionError:
    """
    The L{IRPConnectionError} for why a registry connection ended: a received TLS alert
    becomes L{TLSAlertError}, a server certificate we refused L{RegistryCertificateError},
    anything else L{IRPConnectionLost} with the transport's message.
    """
    value = reason.value if isinstance(reason, Failure) else reason
    if isinstance(value, IRPConnectionError):
        return value
    if isinstance(value, SSL.Error):
        texts = _ssl_error_texts(value)
        for text in texts:
            match = _OPENSSL_ALERT.search(text.lower())
            if match:
                name = match.group(1).strip().replace(" ", "_")
                return TLSAlertError(name, TLS_ALERT_NUMBERS.get(name))
        if any("certificate verify failed" in t for t in texts):
            return RegistryCertificateError(
                "the registry's certificate does not chain to the trusted anchors "
                "(give its CA with --registry-ca)"
            )
        return IRPConnectionLost("TLS failed: " + ("; ".join(texts) or "unknown error"))
    if type(value).__name__ == "VerificationError" and "service_identity" in type(value).__module__:
        return RegistryCertificateError(
            f"the registry's certificate is not valid for the name we connected to: {value}"
        )
    if isinstance(value, error.ConnectionDone):
        return IRPConnectionLost("the registry closed the connection")
    text = str(value) or type(value).__name__
    return IRPConnectionLost(f"connection to the registry lost: {text}")


def _ssl_error_texts(e: SSL.Error) -> list[str]:
    texts = []
    for arg in e.args:
        if isinstance(arg, list):
            for item in arg:
                if isinstance(item, tuple) and item:
                    texts.append(str(item[-1]))
                else:
                    texts.append(str(item))
        else:
            texts.append(str(arg))
    return texts

