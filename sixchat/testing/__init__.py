"""
Test doubles for code that embeds sixchat, in the style of C{treq.testing}: everything runs
in memory (on a C{task.Clock} where time matters), so an application's tests need neither a
network nor a registry. Sixchat's own tests use the same doubles, so they stay in step with
the code they stand in for.

  - L{ThrowawayCA}: a CA made in memory, with identities and peer configurations under it.
  - L{RecordingObserver}: an L{ISessionObserver<sixchat.session.ISessionObserver>} that keeps
    everything it sees and can hold receipts back.
  - L{PeerPair}: an initiator and a responder L{PeerProtocol<sixchat.protocol.PeerProtocol>}
    connected through C{twisted.test.iosim}, with L{PeerPair.flush} to move the bytes.
  - L{FakeAgent}: an L{IUserAgent<sixchat.agent.interfaces.IUserAgent>} without a network,
    steered by the recipient's name, for testing control clients and user interfaces;
    C{python -m sixchat.testing.agent DATA_DIR} serves one on a control socket.
  - L{MemoryDirectory}: an L{IDirectory<sixchat.agent.interfaces.IDirectory>} in memory, to
    run real L{UserAgentService<sixchat.agent.service.UserAgentService>}s without a registry.

Typical use::

    pair = PeerPair.throwaway()          # alice@example.com -> bob@example.com
    d = pair.initiator_session.sendMessage("hi")
    pair.flush()
    receipt = successResultOf(d)
    [message] = pair.responder_observer.messages
"""

from __future__ import annotations

from sixchat.testing.agent import ALICE, BOB, FakeAgent, sample_history
from sixchat.testing.directory import MemoryDirectory
from sixchat.testing.peers import PeerPair, RecordingObserver, ThrowawayCA

__all__ = [
    "ALICE",
    "BOB",
    "FakeAgent",
    "MemoryDirectory",
    "PeerPair",
    "RecordingObserver",
    "ThrowawayCA",
    "sample_history",
]
