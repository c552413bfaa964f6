"""twistd plugins of sixchat; modules load lazily so C{twistd --help} stays cheap."""

from twisted.application.service import ServiceMaker

sixchat = ServiceMaker(
    "sixchat",
    "sixchat.agent.tap",
    "SixChat End2End Direct user agent (TCP 4605)",
    "sixchat",
)

sixchat_irp = ServiceMaker(
    "sixchat-irp",
    "sixchat.irp.tap",
    "SixChat Identity Registration Protocol registry and CA (TCP 4604)",
    "sixchat-irp",
)
