# A sixchat user agent composed with two other Twisted services, run by twistd:
#
#   SIXCHAT_CERT=alice.p12 SIXCHAT_TRUST=alice-ca.pem SIXCHAT_DATA_DIR=alice-bot \
#       twistd -n --pidfile= -y docs/examples/agent.tac
#
# (a data directory of its own: one running agent per data directory)
#
# - the agent itself (UserAgentService): peers, message store, outbox, control socket, so
#   `sixchat status --data-dir alice-bot` and the other commands work as with `twistd sixchat`;
# - a small web status page (twisted.web) with the agent's status and the messages seen;
# - a TimerService that logs the outbox counts every SIXCHAT_OUTBOX_EVERY seconds;
# - and an IAgentEvents observer that counts events and, with SIXCHAT_ECHO=1, answers every
#   incoming message (an echo bot in a few lines).
#
# Environment (only the first two are required):
#   SIXCHAT_CERT          the identity, PKCS#12 (password: SIXCHAT_P12_PASSWORD) or PEM
#   SIXCHAT_TRUST         trust anchors (PEM bundle or directory)
#   SIXCHAT_DATA_DIR      data directory (default: ~/.local/share/sixchat/<identity>/)
#   SIXCHAT_LISTEN        peer endpoint (default tcp:0:interface=127.0.0.1, loopback as in the
#                         README; tcp6:4605 to be reachable from other machines)
#   SIXCHAT_REGISTRY      registry HOST[:PORT] (default: none, incoming sessions only)
#   SIXCHAT_REGISTRY_CA   the registry's CA certificate(s)
#   SIXCHAT_NODE          this device's node name at the registry (default: the host name)
#   SIXCHAT_STATUS        endpoint of the status page (default tcp:8605:interface=127.0.0.1)
#   SIXCHAT_OUTBOX_EVERY  seconds between outbox log lines (default 60)
#   SIXCHAT_ECHO          1: reply "echo: <text>" to every incoming message

import json
import os

from twisted.application import internet, service
from twisted.internet import endpoints, reactor
from twisted.logger import Logger
from twisted.web import resource, server
from zope.interface import implementer

from sixchat.agent.datadir import default_data_dir
from sixchat.agent.interfaces import IAgentEvents
from sixchat.agent.service import UserAgentService
from sixchat.handshake import PeerConfig
from sixchat.identity import load_identity, read_password
from sixchat.trust import TrustStore

log = Logger(namespace="agent.tac")
env = os.environ

# -- the agent ---------------------------------------------------------------------------------

identity = load_identity(env["SIXCHAT_CERT"], read_password(None))
config = PeerConfig([identity], TrustStore.from_paths(env["SIXCHAT_TRUST"]))
registry_anchors = None
if env.get("SIXCHAT_REGISTRY_CA"):
    from sixchat.irp.client import load_certificates

    registry_anchors = load_certificates(env["SIXCHAT_REGISTRY_CA"])

agent = UserAgentService(
    reactor,
    config,
    env.get("SIXCHAT_DATA_DIR") or default_data_dir(identity.names[0]),
    listen=env.get("SIXCHAT_LISTEN", "tcp:0:interface=127.0.0.1"),
    registry=env.get("SIXCHAT_REGISTRY") or None,
    registry_anchors=registry_anchors,
    node=env.get("SIXCHAT_NODE") or None,
)

# -- an observer: count events, optionally echo ------------------------------------------------


@implementer(IAgentEvents)
class Counter:
    def __init__(self, echo):
        self.counts = {}
        self.echo = echo

    def agentEvent(self, event):
        kind = event["type"]
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if kind == "message" and self.echo:
            # send() stores the reply and returns at once; the outbox delivers it.
            d = agent.send(event["peer"], "echo: " + event["body"], reply_to=event["id"])
            d.addErrback(lambda f: log.failure("could not queue the echo", f))


counter = Counter(echo=env.get("SIXCHAT_ECHO") == "1")
agent.addObserver(counter)

# -- a web status page -------------------------------------------------------------------------


class StatusPage(resource.Resource):
    """GET / -> {"status": agent.status(), "events": {type: count}} as JSON."""

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")

        def write(status):
            body = {"status": status, "events": counter.counts}
            request.write(json.dumps(body, indent=2, default=str).encode() + b"\n")
            request.finish()

        def failed(failure):
            request.setResponseCode(503)  # e.g. the agent is still opening its store
            request.write(json.dumps({"error": failure.getErrorMessage()}).encode() + b"\n")
            request.finish()

        agent.status().addCallbacks(write, failed)
        return server.NOT_DONE_YET


class StatusPageService(service.Service):
    """Listens on an endpoint string and logs the address it got (port 0 works)."""

    def __init__(self, description, site):
        self.description = description
        self.site = site
        self.port = None

    def startService(self):
        super().startService()
        d = endpoints.serverFromString(reactor, self.description).listen(self.site)

        def listening(port):
            self.port = port
            address = port.getHost()
            log.info("status page on http://{host}:{port}/", host=address.host, port=address.port)

        d.addCallbacks(listening, lambda f: log.failure("status page failed", f))

    def stopService(self):
        super().stopService()
        if self.port is not None:
            return self.port.stopListening()


site = server.Site(StatusPage())
site.noisy = False
status_page = StatusPageService(env.get("SIXCHAT_STATUS", "tcp:8605:interface=127.0.0.1"), site)

# -- a timer: log the outbox -------------------------------------------------------------------


def log_outbox():
    if not agent.store.is_open:  # the first tick comes before the store is open
        return

    def show(status):
        counts = status["outbox"]
        log.info(
            "outbox: {queued} queued, {sent} sent, {delivered} delivered to some devices",
            **counts,
        )

    return agent.status().addCallback(show)


outbox_timer = internet.TimerService(float(env.get("SIXCHAT_OUTBOX_EVERY", "60")), log_outbox)

# -- the application -----------------------------------------------------------------------------

application = service.Application("sixchat agent with a status page")
for svc in (agent, status_page, outbox_timer):
    svc.setServiceParent(application)
