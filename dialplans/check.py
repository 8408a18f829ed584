"""``voicebridge check-dialplans``: validate the dialplan files and exit (1 on an error)."""

from __future__ import annotations

import argparse
import sys

from bridge.dialplans.loader import ENV_DIR, default_dialplans_dir, load_dialplans
from bridge.dialplans.plan import Dialplan
from bridge.dialplans.turns import describe_turns
from bridge.errors import DialplanError
from bridge.realtime.recovery import RecoveryPolicy


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir", dest="dir", default=None, metavar="PATH",
        help=f"folder of dialplan files (env {ENV_DIR}; default: the packaged examples)",
    )


def run(args: argparse.Namespace) -> int:
    folder = args.dir or default_dialplans_dir()
    try:
        plans = load_dialplans(folder)
    except DialplanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{len(plans)} dialplan(s) in {folder}, in matching order:")
    for plan in plans:
        print(f"\n{plan.name}  ({plan.file})")
        if plan.description:
            print(f"  {plan.description}")
        print(f"  match:    {plan.match.describe()}")
        print(f"  agent:    voice {plan.agent.voice}, audio {plan.agent.audio_format}, "
              f"greeting {'yes' if plan.agent.greeting else 'no'}")
        for tool in plan.tools:
            print(f"  tool:     {tool.name} ({tool.kind}, timeout {tool.timeout_s:g} s)")
        for name, uri in plan.targets.items():
            print(f"  target:   {name} -> {uri}")
        for digit, action in plan.dtmf.actions.items():
            what = action.target or action.text or ""
            print(f"  dtmf {digit}:   {action.kind} {what}".rstrip())
        if plan.turns is not None:
            print(f"  turns:    {describe_turns(plan.turns)}")
        fb = plan.fallback
        budget = (RecoveryPolicy.budget_s if fb.reconnect_budget_s is None
                  else fb.reconnect_budget_s)
        print(f"  fallback: {fb.announcement or fb.tones or 'no announcement'}, then "
              f"{fb.action}{' to ' + fb.target if fb.target else ''}; a lost upstream is "
              f"reconnected for {budget:g} s, on hold ({fb.hold or 'chime'})")
        if plan.summary.enabled:
            print(f"  summary:  {plan.summary.describe()}")
        vm = plan.voicemail
        if vm is not None:
            print(f"  voicemail: {vm.when}, up to {vm.max_s:g} s, ends on {vm.silence_s:g} s "
                  f"of silence or {vm.end_digit}; transcribed by {vm.model}"
                  f"{'; webhook ' + vm.webhook_url if vm.webhook_url else ''}")
        _keeping(plan)
    return 0


def _keeping(plan: Dialplan) -> None:
    """What the plan records and what it redacts."""
    rec, red = plan.recording, plan.redaction
    if rec.enabled:
        consent = " and ".join(c for c in (rec.consent and "a sound",
                                           rec.consent_text and "the agent's words") if c)
        print(f"  record:   stereo WAV kept {rec.retention_days} d, consent: "
              f"{consent or 'none'}")
    if red.active:
        rules = (["cards (Luhn)"] if red.cards else []) + [f"/{p}/" for p in red.patterns]
        print(f"  redact:   {', '.join(rules)} -> {red.mask}")
