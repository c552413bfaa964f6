"""
twistd plugins of sixchat; modules load lazily so C{twistd --help} stays cheap. Their
option and start-up errors are one line each (L{sixchat.twistd}).
"""

from typing import Any

from twisted.application.service import IService, ServiceMaker
from twisted.python.reflect import namedAny


class _OneLineErrors(ServiceMaker):
    """A L{ServiceMaker} whose service reports start-up failures in one line."""

    def makeService(self, options: Any) -> IService:
        from twisted.internet import reactor

        from sixchat.twistd import guarded

        return guarded(namedAny(self.module).makeService, self.tapname, options, reactor)


sixchat = _OneLineErrors(
    "sixchat",
    "sixchat.agent.tap",
    "SixChat End2End Direct user agent (TCP 4605)",
    "sixchat",
)

sixchat_irp = _OneLineErrors(
    "sixchat-irp",
    "sixchat.irp.tap",
    "SixChat Identity Registration Protocol registry and CA (TCP 4604)",
    "sixchat-irp",
)
