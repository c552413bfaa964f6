"""
The protocol's failures as exceptions, and the one table mapping them to the spec's tokens.

Fatal failures (spec §9.1 ``alert``) are L{AlertError} subclasses: whoever catches one at the
connection edge sends an ``alert`` with its C{reason} and closes. Stanza-level failures after
the handshake (spec §8.6 ``error``) are L{StanzaError}: the session continues.

The message text of an exception may be sent to the peer as the alert text, so it must never
contain secrets, key material or stack traces.
"""

from __future__ import annotations


class SixchatError(Exception):
    """Base of every error this package raises on purpose."""


class StartupError(SixchatError):
    """
    A service cannot start for a reason a person can fix (the port is taken, the data
    directory is in use, …). The message is one line, without the program name: the twistd
    plugins print it as C{PROGRAM: error: MESSAGE} and exit 1, without a traceback.
    """


class AlertError(SixchatError):
    """A fatal protocol failure; C{reason} is the spec's alert token."""

    reason = "internal_error"

    def __init__(self, text: str = "", extra: dict[str, str] | None = None) -> None:
        super().__init__(text)
        self.text = text
        #: Extra alert attributes, e.g. C{suites=} on C{no_common_suite} (§7.3).
        self.extra = extra or {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason}: {self.text!r})"


class ProtocolError(AlertError):
    reason = "protocol_error"


class RecordOverflow(AlertError):
    reason = "record_overflow"


class BadRecordMac(AlertError):
    reason = "bad_record_mac"


class UnsupportedVersion(AlertError):
    reason = "unsupported_version"


class NoCommonSuite(AlertError):
    reason = "no_common_suite"


class NoCommonGroup(AlertError):
    reason = "no_common_group"


class IllegalParameter(AlertError):
    reason = "illegal_parameter"


class BadCertificate(AlertError):
    reason = "bad_certificate"


class UnknownCA(AlertError):
    reason = "unknown_ca"


class CertificateExpired(AlertError):
    reason = "certificate_expired"


class CertificateRevoked(AlertError):
    reason = "certificate_revoked"


class IdentityMismatch(AlertError):
    reason = "identity_mismatch"


class AccessDenied(AlertError):
    reason = "access_denied"


class DecryptError(AlertError):
    reason = "decrypt_error"


class HandshakeTimeout(AlertError):
    reason = "handshake_timeout"


class InternalError(AlertError):
    reason = "internal_error"


#: Every alert reason of spec §9.1, mapped to its exception class.
ALERTS: dict[str, type[AlertError]] = {
    cls.reason: cls
    for cls in (
        ProtocolError,
        RecordOverflow,
        BadRecordMac,
        UnsupportedVersion,
        NoCommonSuite,
        NoCommonGroup,
        IllegalParameter,
        BadCertificate,
        UnknownCA,
        CertificateExpired,
        CertificateRevoked,
        IdentityMismatch,
        AccessDenied,
        DecryptError,
        HandshakeTimeout,
        InternalError,
    )
}


def alert_class(reason: str) -> type[AlertError]:
    """The class for a received reason token; unknown tokens read as C{protocol_error} (§9.1)."""
    return ALERTS.get(reason, ProtocolError)


class PeerAlert(SixchatError):
    """
    The peer sent us a fatal C{alert}. Not an L{AlertError}: we never answer an alert with one.
    """

    def __init__(self, reason: str, text: str = "") -> None:
        super().__init__(f"peer sent alert {reason}" + (f": {text}" if text else ""))
        self.reason = reason if reason in ALERTS else "protocol_error"
        self.text = text


#: Stanza-level error reasons (§8.6); an unknown one reads as C{bad_request}.
STANZA_ERROR_REASONS = ("too_large", "bad_request", "unsupported")


class StanzaError(SixchatError):
    """A non-fatal stanza failure, answered with C{<error ref=… reason=…/>} (§8.6)."""

    def __init__(self, reason: str, text: str = "", ref: str | None = None) -> None:
        super().__init__(text or reason)
        self.reason = reason if reason in STANZA_ERROR_REASONS else "bad_request"
        self.text = text
        self.ref = ref
