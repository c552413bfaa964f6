"""
The Identity Registration Protocol (irp-1, TCP 4604): the registry that lets user agents find
each other by identity, and its PKI (enrolment, renewal, revocation, CRL).

L{sixchat.irp.messages} is the sans-IO codec; the server, client, stores and TLS set-up are
Twisted adapters around it.
"""
