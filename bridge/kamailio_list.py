"""``voicebridge kamailio-list``: Kamailio's dispatcher list from the list of bridge nodes.

The shipped Kamailio configuration (``deploy/kamailio/kamailio.cfg``) reads its nodes from
a dispatcher list file; this command writes that file from ``--nodes`` or the
``VOICEBRIDGE_NODES`` environment variable, so the node list is configuration, not a hand
edit. A node is ``host:port`` or ``id=host:port``, nodes are separated by commas or
whitespace; the id (default ``node1``, ``node2``...) becomes the destination's ``duid``,
which the call-load algorithm needs, and should match the node's ``[cluster] node_id``.

    VOICEBRIDGE_NODES="a=10.0.0.11:5060,b=10.0.0.12:5060" \\
        voicebridge kamailio-list --out /etc/kamailio/dispatcher.list
    kamcmd dispatcher.reload

The file is replaced atomically (written beside it, then renamed), so a reload never
reads half of it.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from bridge.errors import ConfigError

#: The dispatcher set the shipped configuration sends INVITEs to.
SET_ID = 1
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}$")


@dataclass(frozen=True)
class Node:
    node_id: str
    host: str
    port: int

    def line(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{SET_ID} sip:{host}:{self.port} 0 0 duid={self.node_id};node={self.node_id}"


def parse_nodes(spec: str) -> tuple[Node, ...]:
    """``"a=10.0.0.1:5060, 10.0.0.2:5062"`` -> the nodes (ids made up where not given)."""
    nodes: list[Node] = []
    for n, item in enumerate(re.split(r"[,\s]+", spec.strip()), start=1):
        if not item:
            continue
        node_id, _, address = item.rpartition("=")
        node_id = node_id or f"node{n}"
        host, sep, port_text = address.rpartition(":")
        host = host.strip("[]")
        if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError(f"node {item!r}: expected host:port or id=host:port")
        if not _ID.match(node_id):
            raise ConfigError(f"node {item!r}: the id may hold letters, digits, _ . -")
        if not _valid_host(host):
            raise ConfigError(f"node {item!r}: not a host name or address")
        nodes.append(Node(node_id, host, int(port_text)))
    if not nodes:
        raise ConfigError("no nodes (set VOICEBRIDGE_NODES or --nodes)")
    ids = [node.node_id for node in nodes]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"node ids must be unique: {ids}")
    return tuple(nodes)


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOST.match(host))


def render(nodes: tuple[Node, ...]) -> str:
    head = ("# Written by `voicebridge kamailio-list`: set id, URI, flags, priority, attrs.\n"
            "# duid is the node's id (the call-load algorithm needs it).\n")
    return head + "".join(node.line() + "\n" for node in nodes)


def write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", default=None,
                        help="nodes, [id=]host:port separated by commas (default: "
                             "$VOICEBRIDGE_NODES)")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="write the list here (default: print it)")


def run(args: argparse.Namespace) -> int:
    spec = args.nodes if args.nodes is not None else os.environ.get("VOICEBRIDGE_NODES", "")
    try:
        text = render(parse_nodes(spec))
    except ConfigError as exc:
        print(f"voicebridge: {exc}", file=sys.stderr)
        return 2
    if args.out is None:
        sys.stdout.write(text)
    else:
        write(Path(args.out), text)
    return 0


__all__ = ["Node", "add_arguments", "parse_nodes", "render", "run"]
