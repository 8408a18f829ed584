"""Calls through a SIP proxy: SIPp scenarios that follow the Record-Route set.

A caller behind Kamailio (``deploy/kamailio/kamailio.cfg``) must send its in-dialog
requests (ACK, BYE, re-INVITE) with the Route set the 200 OK's Record-Route built and the
node's Contact as Request-URI (RFC 3261 §12.2.1.1), or the proxy cannot tell which node owns
the call. :class:`RoutedScenario` is :class:`~bridge.bench.sip.Scenario` doing that.
"""

from __future__ import annotations

from bridge.bench.sip import Scenario


class RoutedScenario(Scenario):
    """A :class:`Scenario` whose in-dialog requests use ``[next_url]`` and ``[routes]``."""

    def _headers(self, method: str, cseq: int, *, to_tag: bool) -> str:
        head = super()._headers(method, cseq, to_tag=to_tag)
        if not to_tag:
            return head
        first, rest = head.split("\n", 1)
        first = first.replace(f"sip:{self.service}@[remote_ip]:[remote_port]", "[next_url]")
        return f"{first}\n      [routes]\n{rest}"

    def _invite(self, direction: str, to_tag: bool, answer: str | None) -> None:
        super()._invite(direction, to_tag, answer)
        # Keep the 200's Record-Route (and Contact) for the requests that follow.
        self.steps[-1] = self.steps[-1].replace('<recv response="200" rtd="true"',
                                                '<recv response="200" rtd="true" rrs="true"')


__all__ = ["RoutedScenario"]
