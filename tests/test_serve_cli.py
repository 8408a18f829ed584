"""``voicebridge serve`` as a process: banner, HTTP up, clean exit on SIGTERM, config errors."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VOICEBRIDGE_", "AZURE_OPENAI_", "OPENAI_"))}
    env.update(VOICEBRIDGE_RECORDS_PATH=str(tmp_path / "calls.db"), **extra)
    return env


def test_serve_prints_how_to_call_it_and_stops_cleanly(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "serve", "--no-sip", "--http-port", "0"],
        cwd=tmp_path, env=env_for(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        assert proc.stdout is not None
        banner = []
        for line in proc.stdout:
            banner.append(line)
            if line.startswith("  settings:"):
                break
        text = "".join(banner)
        url = re.search(r"softphone page:\s+(http://\S+)/", text)
        assert url, text
        assert "built-in emulator" in text and "Realtime target:   emulator ws://127.0.0.1:" in text
        assert "SIP:               off" in text
        with urllib.request.urlopen(f"{url.group(1)}/healthz", timeout=5) as response:
            assert response.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_settings_exit_with_the_place_named(tmp_path: Path) -> None:
    config = tmp_path / "voicebridge.toml"
    config.write_text("[http]\nport = \"eighty\"\n")
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "serve", "--config", str(config)],
        cwd=tmp_path, env=env_for(tmp_path), capture_output=True, text=True, timeout=60,
        check=False)
    assert result.returncode == 2
    assert f"{config}:2: [http] port: expected an integer" in result.stderr
