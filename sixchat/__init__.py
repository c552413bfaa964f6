"""
sixchat: the SixChat End2End Direct secure messaging protocol (TCP 4605) and the Identity
Registration Protocol registry (TCP 4604), on Twisted.

Layers, lowest first: the sans-IO codec (L{sixchat.record}, L{sixchat.xmlcodec},
L{sixchat.stanzas}, L{sixchat.keyschedule}, L{sixchat.groups}, L{sixchat.handshake},
L{sixchat.connection}); identity and trust (L{sixchat.identity}, L{sixchat.trust});
Twisted adapters (L{sixchat.protocol}); services and edges.
"""

__version__ = "0.1.0"
