"""
Entry point of every benchmark worker process: C{python -m sixchat.bench.worker SPEC}, where
SPEC is a JSON object whose C{role} names what to run (see L{ROLES}). Each worker runs its
own reactor and reports to the parent on stdout (L{sixchat.bench.common}).
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

#: role -> (module, coroutine function taking (reactor, spec))
ROLES = {
    "peer_server": ("sixchat.bench.peers", "peer_server"),
    "handshake_client": ("sixchat.bench.peers", "handshake_client"),
    "stream_client": ("sixchat.bench.streams", "stream_client"),
    "idle_client": ("sixchat.bench.peers", "idle_client"),
    "agent": ("sixchat.bench.agents", "agent"),
    "agent_idle_client": ("sixchat.bench.agents", "idle_client"),
    "registry_server": ("sixchat.bench.registry", "registry_server"),
    "registry_client": ("sixchat.bench.registry", "registry_client"),
    "latency_farm": ("sixchat.bench.latency", "latency_farm"),
    "latency_sender": ("sixchat.bench.latency", "latency_sender"),
    "visibility_client": ("sixchat.bench.latency", "visibility_client"),
    "scaling": ("sixchat.bench.scaling", "scaling"),
    "file_agent": ("sixchat.bench.files", "file_agent"),
    "tls_file_server": ("sixchat.bench.files", "tls_file_server"),
    "tls_file_client": ("sixchat.bench.files", "tls_file_client"),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    spec: dict[str, Any] = json.loads(argv[0])
    module_name, function_name = ROLES[spec["role"]]
    function = getattr(importlib.import_module(module_name), function_name)

    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    from sixchat.bench.common import run_main

    run_main(reactor, lambda: function(reactor, spec), float(spec.get("deadline", 600)))


if __name__ == "__main__":
    main()
