"""Every exception class the project defines sits under ``BridgeError`` and in the drawing."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil

import pytest

import bridge
from bridge import errors
from bridge.aio import cancel_all, cancel_and_wait


def _project_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(bridge.__path__, "bridge."):
        if info.name.startswith("bridge.bench") or info.name.endswith("__main__"):
            continue
        names.append(info.name)
    return names


def _defined_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in _project_modules():
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if (inspect.isclass(obj) and issubclass(obj, BaseException)
                    and obj.__module__ == module.__name__):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def test_every_exception_is_a_bridge_error() -> None:
    found = _defined_exceptions()
    assert len(found) >= 15          # the walk really found the project's classes
    stray = [n for n, cls in found.items() if not issubclass(cls, errors.BridgeError)]
    assert stray == []


def test_every_public_exception_is_in_the_drawing() -> None:
    drawing = errors.__doc__ or ""
    missing = [n for n, cls in _defined_exceptions().items()
               if not cls.__name__.startswith("_") and cls.__name__ not in drawing]
    assert missing == []


async def test_cancel_and_wait_absorbs_the_tasks_cancellation() -> None:
    task = asyncio.ensure_future(asyncio.sleep(10))
    await asyncio.sleep(0)
    assert await cancel_and_wait(task) is None
    assert task.cancelled()


async def test_cancel_and_wait_returns_the_tasks_failure() -> None:
    async def fail() -> None:
        raise RuntimeError("boom")
    task = asyncio.ensure_future(fail())
    await asyncio.sleep(0)
    exc = await cancel_and_wait(task)
    assert isinstance(exc, RuntimeError)


async def test_cancel_and_wait_does_not_swallow_the_callers_cancellation() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await release.wait()         # takes its time to stop
            raise

    inner = asyncio.ensure_future(stubborn())
    await asyncio.sleep(0)
    outer = asyncio.ensure_future(cancel_and_wait(inner))
    await asyncio.sleep(0.01)
    outer.cancel()                       # the clean-up itself is cancelled (a shutdown)
    with pytest.raises(asyncio.CancelledError):
        await outer
    release.set()
    await asyncio.wait([inner])
    assert inner.cancelled()


async def test_cancel_all_collects_failures() -> None:
    async def fail() -> None:
        raise ValueError("x")
    tasks = [asyncio.ensure_future(asyncio.sleep(10)), asyncio.ensure_future(fail())]
    await asyncio.sleep(0)
    errs = await cancel_all(tasks)
    assert [type(e) for e in errs] == [ValueError]
