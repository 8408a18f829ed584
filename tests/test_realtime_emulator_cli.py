"""``voicebridge emulator`` as a program: prints its URL, serves, stops on SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from bridge.realtime.emulator import cli
from tests.support.emulator_client import RawClient


async def test_cli_serves_and_stops() -> None:
    env = {**os.environ, "EMU_TEST_KEY": "secret-cli-key"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "emulator", "--port", "0",
        "--api-key-env", "EMU_TEST_KEY", "--session-max-s", "60",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode()
        assert line.startswith("Realtime emulator listening on ws://127.0.0.1:")
        url = line.split()[-1]
        client = await RawClient.open(url, additional_headers={"api-key": "secret-cli-key"})
        created = await client.read_until("session.created")
        assert created["session"]["type"] == "realtime"
        await client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert b"secret-cli-key" not in err


def test_cli_missing_key_variable_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMU_ABSENT_KEY", raising=False)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--port", "0", "--api-key-env", "EMU_ABSENT_KEY"])
    assert cli.run(args) == 2


def test_cli_bad_script_fails(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[[rule]]\non_turn = 1\n")
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.run(parser.parse_args(["--port", "0", "--script", str(bad)])) == 2
