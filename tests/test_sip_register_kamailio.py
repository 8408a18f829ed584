"""Registering with a real registrar: Kamailio (auth + registrar + usrloc) configured here,
with digest credentials it checks (nonce counts too), and a real ``voicebridge serve`` with
one or two accounts.

The registration is proved by routing: SIPp calls Kamailio for an account's address of
record, Kamailio looks the binding up and forwards the call to the bridge, and the call's
record names the account's dialplan (``keys`` for 2001, ``desk`` for 2002: without the
accounts both calls would go to the default ``echo``). Kamailio grants at most 10 s, so
the bridge refreshes every 5 s on the wire; after the bridge stops, the same call gets
404 (it unregistered). A wrong password is logged as such and retried after 5 s, then
10 s. Over TCP, a registrar that goes away and comes back is registered with again.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.bench.sip import ServeProcess, free_udp_port, run_sipp
from tests.support.interop import require_binary
from tests.support.kamailio import Kamailio, module_dir, running
from tests.support.waiting import until

DIALPLANS = Path(__file__).parent / "data" / "interop" / "dialplans"
PASSWORD = "correct-horse-7"
USER = "2001"
USER2 = "2002"

CONFIG = """#!KAMAILIO
debug=2
log_stderror=yes
children=2
tcp_children=2
auto_aliases=no
listen=udp:127.0.0.1:{port}
listen=tcp:127.0.0.1:{port}
mpath="{mpath}"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"
modparam("usrloc", "db_mode", 0)
modparam("registrar", "min_expires", {min_expires})
modparam("registrar", "max_expires", {max_expires})
modparam("registrar", "default_expires", 10)
modparam("registrar", "min_expires_mode", {min_mode})
modparam("auth", "algorithm", "{algorithm}")
modparam("auth", "nonce_count", 1)
modparam("auth", "nonce_expire", 120)

request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (is_method("OPTIONS") && $rU == $null) {{ sl_send_reply("200", "OK"); exit; }}
    if (is_method("REGISTER")) {{
        pv_www_authenticate("$td", "{password}", "0");
        $var(rc) = $rc;
        xlog("L_ALERT", "REG $ci $cs exp=$hdr(Expires) au=$au rc=$var(rc) at=$TV(Sn)\\n");
        if ($var(rc) < 0) {{
            www_challenge("$td", "1");
            exit;
        }}
        consume_credentials();
        if (!save("location")) {{ sl_reply_error(); }}
        exit;
    }}
    if (is_method("ACK") && t_check_trans()) {{ t_relay(); exit; }}
    if (!lookup("location")) {{
        xlog("L_ALERT", "NOBINDING $rm $rU\\n");
        if (!is_method("ACK")) {{ sl_send_reply("404", "Not Found"); }}
        exit;
    }}
    xlog("L_ALERT", "ROUTED $rm to $ru\\n");
    t_relay();
}}
"""


def config(port: int, password: str, algorithm: str = "MD5", *, min_expires: int = 1,
           max_expires: int = 10, min_mode: int = 0) -> str:
    """The registrar; ``min_mode`` 1: a too brief expires gets 423 (else it is raised)."""
    return CONFIG.format(port=port, mpath=module_dir(), password=password,
                         algorithm=algorithm, min_expires=min_expires,
                         max_expires=max_expires, min_mode=min_mode)


def account_toml(folder: Path, kport: int, transport: str = "udp",
                 second: bool = False) -> Path:
    """One account (2001, dialplan ``keys``); with ``second`` also 2002 (``desk``)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "voicebridge.toml"
    accounts = [(USER, "keys")] + ([(USER2, "desk")] if second else [])
    path.write_text("".join(f"""
[[sip.accounts]]
registrar = "sip:127.0.0.1:{kport}"
user = "{user}"
password_env = "TEST_REG_PASSWORD"
transport = "{transport}"
expires = 60
dialplan = "{plan}"
""" for user, plan in accounts))
    return path


def dialplans(folder: Path) -> Path:
    """The interop plans (``echo`` the default, ``keys`` for called "keys") and ``desk``,
    which no called number reaches: only an account naming it."""
    folder.mkdir(parents=True, exist_ok=True)
    for plan in DIALPLANS.glob("*.toml"):
        shutil.copy(plan, folder / plan.name)
    text = (DIALPLANS / "keys.toml").read_text().replace('called = ["keys"]',
                                                         'called = ["nobody-dials-this"]')
    (folder / "desk.toml").write_text(text)
    return folder


def serve(folder: Path, kport: int, password: str, transport: str = "udp",
          second: bool = False) -> ServeProcess:
    return ServeProcess(folder, dialplans=dialplans(folder / "plans"), env={
        "VOICEBRIDGE_CONFIG": str(account_toml(folder, kport, transport, second)),
        "TEST_REG_PASSWORD": password})


def registers(k: Kamailio) -> list[tuple[str, int, str, str, int, float]]:
    """(Call-ID, CSeq, Expires, auth user, pv_www_authenticate's code: 1 = accepted, when
    Kamailio got it) of every REGISTER Kamailio saw, in order; a UDP retransmission of one
    (the same Call-ID and CSeq again, Timer E on a loaded machine) counts once."""
    seen: set[tuple[str, int]] = set()
    out = []
    for m in re.findall(r"REG (\S+) (\d+) exp=(\S*) au=(\S*) rc=(-?\d+) at=([\d.]+)",
                        k.log_tail(200_000)):
        if (m[0], int(m[1])) not in seen:
            seen.add((m[0], int(m[1])))
            out.append((m[0], int(m[1]), m[2], m[3], int(m[4]), float(m[5])))
    return out


async def call_aor(kport: int, workdir: Path, prefix: str, user: str = USER) -> int:
    """One SIPp call to an account's AOR through Kamailio; SIPp's exit code."""
    run = await run_sipp("uac", kport, workdir=workdir, args=["-s", user, "-d", "1500"],
                         call_id_prefix=prefix, limit_s=30)
    return run.returncode


@pytest.fixture
def kport() -> Iterator[int]:
    require_binary("sipp", "calls through the registrar")
    yield free_udp_port()


def label(user: str = USER) -> str:
    return f'account="{user}@127.0.0.1"'


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_registers_and_receives_a_call_routed_by_the_registrar(
        tmp_path: Path, kport: int, transport: str) -> None:
    with running(tmp_path / "k", config(kport, PASSWORD), ("127.0.0.1", kport)) as k, \
            serve(tmp_path / "b", kport, PASSWORD, transport, second=True) as bridge:
        for user in (USER, USER2):
            await until(lambda u=user: bridge.metric(
                "voicebridge_sip_registration_up", label(u)) == 1,
                20, poll_s=0.2, what=f"{user} registered\n{bridge.log_tail()}")
        assert PASSWORD not in bridge.log_path.read_text()
        by_call: dict[str, list[str]] = {}
        for call_id, _, _, auth, *_ in registers(k):
            by_call.setdefault(call_id, []).append(auth)
        assert len(by_call) == 2                             # one Call-ID per account
        assert all(auths[:2] == ["<null>", auths[1]] and auths[1] in (USER, USER2)
                   for auths in by_call.values())            # challenged, then credentials
        # Each AOR's call reaches the bridge through Kamailio's lookup, on its dialplan.
        for user, plan in ((USER, "keys"), (USER2, "desk")):
            code = await call_aor(kport, tmp_path, f"via-reg-{user}", user)
            assert code == 0, k.log_tail()
            record = await bridge.wait_record(f"via-reg-{user}-1@127.0.0.1", 20)
            assert record["dialplan"] == plan and record["called"] == user, record
        assert "ROUTED INVITE to sip:vb-" in k.log_tail(200_000)
        status, body = bridge.get("/sip/registrations", token=True)
        assert status == 200 and b'"state":"registered"' in body.replace(b" ", b"")
        status, page = bridge.get("/dashboard", token=True)
        assert status == 200 and b"Registrations" in page and b"2002@127.0.0.1" in page


async def test_refreshed_on_the_wire_and_unregistered_on_shutdown(tmp_path: Path, kport: int
                                                           ) -> None:
    with running(tmp_path / "k", config(kport, PASSWORD, "SHA-256"),
                 ("127.0.0.1", kport)) as k:
        bridge = serve(tmp_path / "b", kport, PASSWORD)
        with bridge:
            await until(lambda: bridge.metric("voicebridge_sip_registration_up", label()) == 1,
                  20, poll_s=0.2, what=f"registered\n{bridge.log_tail()}")
            # Kamailio grants 10 s: refreshes come every 5 s, before the binding runs out.
            await until(lambda: bridge.metric("voicebridge_sip_registrations_total",
                                              label() + ',result="registered"') >= 4,
                        40, poll_s=0.2, what=f"three refreshes\n{bridge.log_tail()}")
            seen = registers(k)
            assert len({c for c, *_ in seen}) == 1               # one Call-ID throughout
            assert [s for _, s, *_ in seen] == sorted({s for _, s, *_ in seen})
            # Challenged once; every refresh reused the nonce with the next nonce count
            # (Kamailio checks it: nonce_count) and was accepted without a new challenge.
            rcs = [r[4] for r in seen]
            assert rcs[0] != 1 and all(rc == 1 for rc in rcs[1:]), rcs
            # On the wire: each refresh about half the 10 s granted after the last one,
            # never sooner, and well before the binding ran out.
            accepted = [r[5] for r in seen[1:]]
            gaps = [b - a for a, b in zip(accepted, accepted[1:], strict=False)]
            assert len(gaps) >= 3 and all(4.9 <= gap < 9.0 for gap in gaps), gaps
            assert bridge.metric("voicebridge_sip_registration_up", label()) == 1
        # Stopped: the last REGISTER asked for expires=0, and the AOR no longer routes.
        assert registers(k)[-1][2] == "0", registers(k)[-3:]
        code = (await call_aor(kport, tmp_path, "after-stop"))
        assert code != 0
        assert "NOBINDING INVITE 2001" in k.log_tail(200_000)


async def test_wrong_password_is_reported_and_retried_with_backoff(tmp_path: Path, kport: int
                                                            ) -> None:
    with running(tmp_path / "k", config(kport, PASSWORD), ("127.0.0.1", kport)), \
            serve(tmp_path / "b", kport, "not-the-password") as bridge:
        failed = label() + ',result="auth_failed"'
        times: list[float] = []

        def count() -> bool:
            n = bridge.metric("voicebridge_sip_registrations_total", failed)
            while len(times) < n:
                times.append(time.monotonic())
            return len(times) >= 3

        await until(count, 40, poll_s=0.05, what=f"three failures\n{bridge.log_tail()}")
        log_text = bridge.log_path.read_text()
        assert (f"401 after credentials: wrong user name or password for account {USER} "
                f"at sip:127.0.0.1:{kport}") in log_text
        assert "next try in" in log_text and "not-the-password" not in log_text
        assert bridge.metric("voicebridge_sip_registration_up", label()) == 0
        # Back-off 5 s then 10 s, less up to 20 % jitter.
        first, second = times[1] - times[0], times[2] - times[1]
        assert 4.0 - 0.2 <= first <= 5.0 + 3, times
        assert 8.0 - 0.2 <= second <= 10.0 + 3, times


async def test_registers_again_after_the_registrar_was_lost(tmp_path: Path, kport: int
                                                           ) -> None:
    """Over TCP: the registrar goes away (its connection closes, connects are refused),
    the refresh fails and is retried with back-off; once a registrar answers on that
    address again the bridge registers anew and calls route to it again."""
    first = Kamailio(tmp_path / "k1", config(kport, PASSWORD))
    first.start(("127.0.0.1", kport))
    try:
        with serve(tmp_path / "b", kport, PASSWORD, "tcp") as bridge:
            await until(lambda: bridge.metric("voicebridge_sip_registration_up", label()) == 1,
                        20, poll_s=0.2, what=f"registered\n{bridge.log_tail()}")
            first.stop()
            timeouts = label() + ',result="timeout"'
            await until(lambda: bridge.metric("voicebridge_sip_registrations_total",
                                              timeouts) >= 1,
                        30, poll_s=0.2, what=f"the refresh failing\n{bridge.log_tail()}")
            assert "cannot connect over TCP" in bridge.log_path.read_text()
            with running(tmp_path / "k2", config(kport, PASSWORD), ("127.0.0.1", kport)):
                registered = label() + ',result="registered"'
                before = bridge.metric("voicebridge_sip_registrations_total", registered)
                await until(lambda: bridge.metric("voicebridge_sip_registrations_total",
                                                  registered) > before,
                            40, poll_s=0.2, what=f"registered again\n{bridge.log_tail()}")
                assert await call_aor(kport, tmp_path, "after-loss") == 0
                record = await bridge.wait_record("after-loss-1@127.0.0.1", 20)
                assert record["dialplan"] == "keys"
    finally:
        first.stop()


async def test_interval_too_brief_is_asked_again_with_min_expires(tmp_path: Path, kport: int
                                                                 ) -> None:
    kamailio = config(kport, PASSWORD, min_expires=120, max_expires=3600, min_mode=1)
    with running(tmp_path / "k", kamailio, ("127.0.0.1", kport)) as k, \
            serve(tmp_path / "b", kport, PASSWORD) as bridge:
        await until(lambda: bridge.metric("voicebridge_sip_registration_up", label()) == 1,
                    20, poll_s=0.2, what=f"registered\n{bridge.log_tail()}")
        asked = [r[2] for r in registers(k)]
        assert asked[0] == "60" and asked[-1] == "120", asked    # 423, then Min-Expires
        assert bridge.metric("voicebridge_sip_registrations_total",
                             label() + ',result="interval_too_brief"') == 1
        assert bridge.metric("voicebridge_sip_registrations_total",
                             label() + ',result="auth_failed"') == 0
        (line,) = json.loads(bridge.get("/sip/registrations", token=True)[1])["registrations"]
        assert 100 <= line["expires_in_s"] <= 120, line
