"""This process's node id (``[cluster] node_id``) in its logs and metrics.

Several bridges behind one SIP proxy (``deploy/kamailio/``) write to one log collector and
one Prometheus: each line and each series must say which node it came from. With a node
id configured, :func:`identify` puts ``[node <id>]`` in front of every log message (a
filter on the root handlers, so libraries' lines carry it too) and a ``node`` label on
every series of ``/metrics`` (:func:`bridge.metrics.label_node`). Without one nothing
changes: a single bridge's logs and metrics look as they always did.
"""

from __future__ import annotations

import logging

from bridge import __version__, metrics


class _NodeFilter(logging.Filter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.prefix = f"[node {node}] "

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "_node_tagged", False):
            record.msg = self.prefix + str(record.msg)
            record._node_tagged = True
        return True


def identify(node_id: str) -> None:
    """Tag this process's logs and metrics with ``node_id`` (nothing when empty)."""
    if not node_id:
        return
    metrics.label_node(node_id, __version__)
    root = logging.getLogger()
    node_filter = _NodeFilter(node_id)
    for handler in root.handlers:
        handler.addFilter(node_filter)


__all__ = ["identify"]
