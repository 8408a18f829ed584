"""``voicebridge check-dialplans`` as an operator runs it: a subprocess, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).parent / "data" / "dialplans"
ROOT = Path(__file__).resolve().parent.parent


def check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "VOICEBRIDGE_DIALPLANS"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", "check-dialplans", *args],
        capture_output=True, text=True, cwd=ROOT, env=full_env, timeout=60, check=False,
    )


def test_packaged_plans_are_valid() -> None:
    proc = check()
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "5 dialplan(s)" in out
    assert "turns:    hook gatekeeper_hooks:screen (python); VAD aggressiveness 2" in out
    assert out.index("front-desk") < out.index("\necho")     # the default comes last
    assert out.index("unhurried") < out.index("\necho")
    assert "called unhurried | 3000 (priority 0)" in out
    assert "called frontdesk | 2000 | +15550100 (priority 10)" in out
    assert "tool:     order_status (webhook, timeout 4 s)" in out
    assert "tool:     opening_hours (python, timeout 2 s)" in out
    assert "dtmf 0:   transfer operator" in out
    assert "fallback: unavailable-transfer, then transfer to operator" in out
    assert "voicemail: always, up to 120 s, ends on 4 s of silence or #" in out


def test_good_folder_from_env() -> None:
    proc = check(env={"VOICEBRIDGE_DIALPLANS": str(DATA / "good")})
    assert proc.returncode == 0, proc.stderr
    assert "6 dialplan(s)" in proc.stdout


def test_broken_folder_fails_with_file_line_field() -> None:
    folder = DATA / "with-broken"
    proc = check("--dir", str(folder))
    assert proc.returncode == 1
    assert f"error: {folder / 'unknown_voice.toml'}:10: agent.voice: unknown voice" in proc.stderr
    proc = check("--dir", str(DATA / "two-defaults"))
    assert proc.returncode == 1
    assert "b.toml:2: match.default" in proc.stderr


def test_serve_refuses_to_start_on_a_broken_dialplan(tmp_path: Path) -> None:
    """The same error stops ``voicebridge serve`` at start-up, before it answers a call."""
    folder = DATA / "with-broken"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VOICEBRIDGE_", "AZURE_OPENAI_", "OPENAI_"))}
    env.update(VOICEBRIDGE_DIALPLANS=str(folder),
               VOICEBRIDGE_RECORDS_PATH=str(tmp_path / "calls.db"))
    proc = subprocess.run([sys.executable, "-m", "bridge.cli", "serve"], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=60, check=False)
    assert proc.returncode != 0
    assert f"{folder / 'unknown_voice.toml'}:10: agent.voice: unknown voice" in proc.stderr
    assert "voicebridge is running" not in proc.stdout     # no banner: nothing started


def test_recording_and_redaction_are_shown_and_checked(tmp_path: Path) -> None:
    (tmp_path / "pay.toml").write_text(
        '[match]\ndefault = true\n[recording]\nconsent = "440:200"\nretention_days = 7\n'
        '[redaction]\npatterns = ["re-[0-9]{6}"]\n')
    proc = check("--dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "record:   stereo WAV kept 7 d, consent: a sound" in proc.stdout
    assert "redact:   cards (Luhn), /re-[0-9]{6}/ -> [redacted]" in proc.stdout
    (tmp_path / "pay.toml").write_text(
        '[match]\ndefault = true\n[redaction]\npatterns = ["(unclosed"]\n')
    proc = check("--dir", str(tmp_path))
    assert proc.returncode == 1
    assert f"error: {tmp_path / 'pay.toml'}:4: redaction.patterns" in proc.stderr
