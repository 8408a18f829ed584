"""Every use of a third-party library's private internals, one module per library, each
checked at import against the installed library (``missing_names`` here, the names in
each module's ``REQUIRED``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from bridge.errors import BridgeError


class IncompatibleLibrary(BridgeError):
    """An installed library lacks a private name the bridge relies on (the message names
    each one): the bridge refuses to start rather than fail in the middle of a call."""


def _resolve(library: object, path: str) -> object | None:
    obj: object | None = library
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _assigned(cls: type, methods: Iterable[str]) -> set[str]:
    """Names the ``methods`` of ``cls`` and of its bases refer to: an instance attribute
    set there exists on every instance without being on the class."""
    names: set[str] = set()
    for klass in cls.__mro__:
        for method in methods:
            code = getattr(vars(klass).get(method), "__code__", None)
            if code is not None:
                names.update(code.co_names)
    return names


def missing_names(library: object, required: Mapping[str, Iterable[str]], *,
                  assigning: Iterable[str] = ("__init__",)) -> list[str]:
    """``path.name`` for every required name ``library`` lacks. ``required`` maps a dotted
    path below ``library`` to the names that object must have (as an attribute, or, for a
    class, assigned by one of its ``assigning`` methods)."""
    methods = tuple(assigning)
    missing: list[str] = []
    for path, names in required.items():
        obj = _resolve(library, path)
        if obj is None:
            missing += [f"{path}.{name}" for name in names]
            continue
        assigned = _assigned(obj, methods) if isinstance(obj, type) else set()
        missing += [f"{path}.{name}" for name in names
                    if not hasattr(obj, name) and name not in assigned]
    return missing


__all__ = ["IncompatibleLibrary", "missing_names"]
