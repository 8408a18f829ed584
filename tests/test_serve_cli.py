"""``voicebridge serve`` as a process: banner, HTTP up, clean exit on SIGTERM, config errors."""

from __future__ import annotations

import http.cookiejar
import os
import re
import signal
import subprocess
import sys
import urllib.error
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


def read_banner(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    banner = []
    for line in proc.stdout:
        banner.append(line)
        if line.startswith("  settings:"):
            break
    return "".join(banner)


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    return out, err


def test_without_a_token_the_banner_shows_a_login_url_that_works(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "--log-level", "DEBUG", "serve", "--no-sip",
         "--http-port", "0"],
        cwd=tmp_path, env=env_for(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        banner = read_banner(proc)
        login = re.search(r"dashboard:\s+(http://\S+/login\?token=([\w-]+))\s*$", banner,
                          re.MULTILINE)
        assert login, banner
        url, token = login.groups()
        assert len(token) >= 32
        base = url.split("/login")[0]
        # without the token: 401
        try:
            urllib.request.urlopen(f"{base}/calls", timeout=5)
            raise AssertionError("the call data answered without the token")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
        # the one-click URL logs in (cookie) and lands on the dashboard
        opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        with opener.open(url, timeout=10) as response:
            assert response.status == 200 and response.url.endswith("/dashboard")
            assert "voicebridge dashboard" in response.read().decode()
        with opener.open(f"{base}/calls", timeout=10) as response:
            assert response.status == 200
        out, err = stop(proc)
        assert token not in err and token not in out     # logs (stderr) never carry it
        assert "DEBUG" in err or "INFO" in err           # the log was on, and checked
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_configured_token_is_never_printed(tmp_path: Path) -> None:
    token = "configured-token-0123456789abcdef"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "--log-level", "DEBUG", "serve", "--no-sip",
         "--http-port", "0"],
        cwd=tmp_path, env=env_for(tmp_path, VOICEBRIDGE_HTTP_TOKEN=token),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = read_banner(proc)
        assert "/dashboard" in banner and "login?token" not in banner
        base = re.search(r"metrics:\s+(http://\S+)/metrics", banner)
        assert base, banner
        request = urllib.request.Request(f"{base.group(1)}/calls",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        out, err = stop(proc)
        assert token not in banner + out + err
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
