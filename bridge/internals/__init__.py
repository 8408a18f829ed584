"""Every use of a third-party library's private internals, one module per library, each checked at import."""  # noqa: E501

from __future__ import annotations

from bridge.errors import BridgeError


class IncompatibleLibrary(BridgeError):
    """An installed library lacks a private name the bridge relies on (the message names
    each one): the bridge refuses to start rather than fail in the middle of a call."""


__all__ = ["IncompatibleLibrary"]
