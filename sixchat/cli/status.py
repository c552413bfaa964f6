"""
C{sixchat status}: what the agent says of itself (identity, listening address, registry,
sessions, outbox, revocation), one line per fact for people, the agent's dict with C{--json}.
"""

from __future__ import annotations

import argparse
from typing import Any

from sixchat.cli.client import (
    CALL_TIMEOUT,
    timed,
    with_agent,
)
from sixchat.cli.terminal import (
    clean,
    local_time,
    out,
    peer_key,
    print_json,
)

__all__ = ["format_devices", "format_status", "run_devices", "run_status"]


def _scalar(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_scalar(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_scalar(v)}" for k, v in value.items()) or "-"
    return clean("-" if value is None else value, oneline=True)


def format_status(status: dict[str, Any]) -> list[str]:
    """The human form of L{IUserAgent.status}; unknown keys are shown too, generically."""
    lines = []
    shown = {
        "identity",
        "node",
        "listening",
        "registry",
        "advertised",
        "sessions",
        "outbox",
        "revocation",
        "devices",
    }
    lines.append(f"identity:    {_scalar(status.get('identity'))}")
    if "node" in status:
        lines.append(f"node:        {_scalar(status.get('node'))}")
    lines.append(f"listening:   {_scalar(status.get('listening'))}")
    registry = status.get("registry")
    if isinstance(registry, dict):
        extra = {k: v for k, v in registry.items() if k not in ("state", "registry", "expires")}
        text = f"{_scalar(registry.get('state'))}"
        if registry.get("registry"):
            text += f" with {_scalar(registry['registry'])}"
        expires = registry.get("expires")
        if isinstance(expires, int | float) and not isinstance(expires, bool):
            # the agent reports the expiry the registry granted, in seconds (refreshed at 2/3)
            text += f" for {int(expires)} s at a time"
        elif expires:
            text += f", expires {local_time(expires)}"
        if extra:
            text += f" ({_scalar(extra)})"
        lines.append(f"registry:    {text}")
    elif registry is not None:
        lines.append(f"registry:    {_scalar(registry)}")
    lines.append(f"advertised:  {_scalar(status.get('advertised') or [])}")
    sessions = [s for s in status.get("sessions") or [] if isinstance(s, dict)]
    # One line per peer: a peer we dialled that also dialled us has two sessions (ours and
    # theirs), which is one connection as far as the user is concerned.
    by_peer: dict[str, list[dict[str, Any]]] = {}
    for s in sessions:
        by_peer.setdefault(peer_key(s.get("peer")), []).append(s)
    lines.append(f"sessions:    {len(by_peer)}")
    for group in by_peer.values():
        first = next((s for s in group if s.get("node")), group[0])
        since = f", since {local_time(first['since'])}" if first.get("since") else ""
        node = f"  node {_scalar(first.get('node'))}" if first.get("node") else ""
        directions = sorted({str(s.get("direction") or "") for s in group} - {""})
        how = f"  ({len(group)} sessions: {' and '.join(directions)})" if len(group) > 1 else ""
        lines.append(
            f"  {_scalar(first.get('peer'))}{node}  "
            f"{_scalar(first.get('suite'))}  {_scalar(first.get('group'))}{since}{how}"
        )
    outbox = status.get("outbox")
    if isinstance(outbox, dict):
        lines.append("outbox:      " + _format_outbox(outbox))
    elif outbox is not None:
        lines.append(f"outbox:      {_scalar(outbox)}")
    revocation = status.get("revocation")
    if isinstance(revocation, dict):
        lines += _format_revocation(revocation)
    elif revocation is not None:
        lines.append(f"revocation:  {_scalar(revocation)}")
    devices = status.get("devices")
    if isinstance(devices, dict):
        lines += format_devices(devices)
    for key in sorted(set(status) - shown):
        lines.append(f"{key + ':':<13}{_scalar(status[key])}")
    return lines


def format_devices(devices: dict[str, Any]) -> list[str]:
    """This identity's other nodes and how far sync with each has come (C{sixchat devices})."""
    nodes = [n for n in devices.get("own_nodes") or [] if isinstance(n, dict)]
    if not devices.get("sync"):
        return ["own nodes:   not synced (this agent runs without own-device sync)"]
    lines = [f"own nodes:   {len(nodes)} besides this one ({_scalar(devices.get('node'))})"]
    for node in nodes:
        if node.get("linked"):
            how = "linked"
            if node.get("sync") == "pulling":
                how += ", syncing"
            elif node.get("sync") == "unsupported":
                how += ", but it does not sync (older sixchat)"
        elif node.get("registered"):
            how = "registered, not linked yet"
        else:
            how = "offline"
        text = f"  {_scalar(node.get('node'))}  {how}"
        if node.get("last_sync"):
            text += f"; last merged {local_time(node['last_sync'])}"
            text += f", {_scalar(node.get('items_merged'))} changes in all"
        if isinstance(node.get("their_top"), int) and isinstance(node.get("pulled_to"), int):
            behind = node["their_top"] - node["pulled_to"]
            text += "; up to date" if behind <= 0 else f"; {behind} of its changes to go"
        lines.append(text)
    return lines


def run_devices(args: argparse.Namespace) -> int:
    async def body(reactor: Any, client: Any) -> int:
        status = await timed(reactor, client.status(), CALL_TIMEOUT)
        devices = status.get("devices") or {"sync": False, "own_nodes": []}
        if args.json:
            print_json(devices)
        else:
            for line in format_devices(devices):
                out(line)
        return 0

    return with_agent(args, body)


#: The outbox states, as the status names them, in words.
_OUTBOX_WORDS = {
    "queued": "queued",
    "sent": "sent, awaiting the receipt",
    "delivered": "delivered to some devices, not yet all",
}


def _format_outbox(outbox: dict[str, Any]) -> str:
    """Messages still owed, by state; "empty" when none (delivered ones have left it)."""
    parts = [
        f"{_scalar(v)} {_OUTBOX_WORDS.get(k, k)}" for k, v in outbox.items() if v not in (0, None)
    ]
    return ", ".join(parts) if parts else "empty (every message delivered)"


def _format_revocation(revocation: dict[str, Any]) -> list[str]:
    """The C{revocation} part of the status: where CRLs come from, and each CRL held."""
    lines = []
    if revocation.get("own_certificate_revoked"):
        lines.append(f"REVOKED:     {_scalar(revocation['own_certificate_revoked'])}")
    source = revocation.get("fetch")
    if source:
        refresh = revocation.get("refresh")
        every = f"{refresh:g}" if isinstance(refresh, int | float) else _scalar(refresh)
        text = f"CRLs fetched from {_scalar(source)} every {every} s"
        if revocation.get("last_fetch"):
            text += f"; last {local_time(revocation['last_fetch'])}"
        if revocation.get("next_fetch"):
            text += f"; next {local_time(revocation['next_fetch'])}"
    else:
        text = "CRLs not fetched"
    lines.append(f"revocation:  {text}")
    if revocation.get("last_error"):
        lines.append(f"  last error: {_scalar(revocation['last_error'])}")
    crls = revocation.get("crls") or []
    if isinstance(crls, list):
        if not crls:
            lines.append("  no CRL held: revocation is not checked")
        for crl in crls:
            if not isinstance(crl, dict):
                continue
            stale = "  STALE" if crl.get("stale") else ""
            lines.append(
                f"  {_scalar(crl.get('issuer'))}  number {_scalar(crl.get('number'))}  "
                f"{_scalar(crl.get('revoked'))} revoked  updated "
                f"{local_time(crl.get('this_update'))}, next {local_time(crl.get('next_update'))}"
                f"{stale}"
            )
    return lines


def run_status(args: argparse.Namespace) -> int:
    async def body(reactor: Any, client: Any) -> int:
        status = await timed(reactor, client.status(), CALL_TIMEOUT)
        if args.json:
            print_json(status)
        else:
            for line in format_status(status):
                out(line)
        return 0

    return with_agent(args, body)
