"""
The user agent: what runs behind C{twistd sixchat} on top of the peer protocol.

L{sixchat.agent.store} keeps its durable state (messages both ways, the per-node outbox,
contacts, pins) in one SQLite file in the data directory, with a Deferred API that never
blocks the reactor. The delivery logic (sessions, outbox retries, registry), the local
control interface and the C{sixchat} command line are built on that API.
"""
