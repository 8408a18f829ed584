"""The registration core on a virtual clock: a registrar played by the test, which checks
digest credentials with the server side of bridge.sip.digest, and ``now`` passed by hand."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from bridge.bench.sip import ServeProcess
from bridge.errors import ConfigError
from bridge.sip.digest import parse_credentials, verify
from bridge.sip.lines import Account
from bridge.sip.message import Headers, Request, Response
from bridge.sip.register import (
    BACKOFF_MAX_S,
    REFRESH_MARGIN_S,
    Registration,
    RegState,
    backoff_delay,
    refresh_delay,
)
from bridge.sip.registrations import read_lines

PASSWORD = "s3cret-pw"


class Ids:
    def __init__(self) -> None:
        self._n = itertools.count(1)

    def token(self) -> str:
        return f"t{next(self._n):04d}"


def make(expires: int = 600, rand: float = 0.0) -> Registration:
    account = Account(registrar="sip:pbx.example.net", user="2001", password_env="PW",
                      expires=expires, dialplan="desk")
    return Registration(account, password=PASSWORD, local=("192.0.2.10", 5070),
                        transport="udp", ids=Ids(), rand=lambda: rand)


def answer(request: Request, status: int, reason: str = "",
           extra: tuple[tuple[str, str], ...] = ()) -> Response:
    items = [("Via", request.headers.get("Via") or ""), ("From", request.headers.get("From") or ""),
             ("To", (request.headers.get("To") or "") + ";tag=reg"),
             ("Call-ID", request.call_id), ("CSeq", str(request.cseq)), *extra]
    return Response(status, reason or "Whatever", Headers(tuple(items)))


def challenge(nonce: str, stale: bool = False, algorithm: str = "MD5") -> tuple[str, str]:
    value = f'Digest realm="pbx", nonce="{nonce}", qop="auth", algorithm={algorithm}'
    return ("WWW-Authenticate", value + (", stale=true" if stale else ""))


def state_of(reg: Registration) -> RegState:
    return reg.state


def one(reg: Registration) -> Request:
    requests = reg.take_requests()
    assert len(requests) == 1, requests
    return requests[0]


def register_ok(reg: Registration, now: float, granted: int | None = None) -> Request:
    """Drive one attempt through a challenge to 200; returns the request with credentials."""
    first = one(reg)
    if first.headers.get("Authorization") is None:
        reg.on_response(answer(first, 401, extra=(challenge(f"n{now}"),)), now)
        first = one(reg)
    creds = parse_credentials(first.headers.get("Authorization") or "")
    assert verify(creds, method="REGISTER", password=PASSWORD)
    contact = (first.headers.get("Contact") or "").split(";expires=")[0]
    expires = granted if granted is not None else int(first.headers.get("Expires") or 0)
    reg.on_response(answer(first, 200, "OK", (("Contact", f"{contact};expires={expires}"),)),
                    now)
    return first


def test_first_register_is_challenged_and_answered_with_valid_digest() -> None:
    reg = make()
    reg.start(0.0)
    first = one(reg)
    assert first.method == "REGISTER" and str(first.uri) == "sip:pbx.example.net"
    assert first.headers.get("To") == "<sip:2001@pbx.example.net>"
    assert first.headers.get("Expires") == "600"
    assert f"sip:{reg.contact_user}@192.0.2.10:5070" in (first.headers.get("Contact") or "")
    reg.on_response(answer(first, 401, extra=(challenge("abc"),)), 0.1)
    second = one(reg)
    assert second.call_id == first.call_id and second.cseq.seq == first.cseq.seq + 1
    creds = parse_credentials(second.headers.get("Authorization") or "")
    assert creds.username == "2001" and creds.nc == "00000001" and creds.qop == "auth"
    assert verify(creds, method="REGISTER", password=PASSWORD)
    assert PASSWORD not in second.serialize().decode()
    reg.on_response(answer(second, 200, "OK", (("Expires", "600"),)), 0.2)
    assert reg.state is RegState.REGISTERED and reg.granted == 600
    assert [r.kind for r in reg.take_results()] == ["registered"]


def test_sha256_is_preferred_when_both_are_offered() -> None:
    reg = make()
    reg.start(0.0)
    first = one(reg)
    reg.on_response(answer(first, 401, extra=(challenge("m", algorithm="MD5"),
                                              challenge("s", algorithm="SHA-256"))), 0.0)
    creds = parse_credentials(one(reg).headers.get("Authorization") or "")
    assert creds.algorithm == "SHA-256" and creds.nonce == "s"


def test_refresh_at_half_the_granted_lifetime_with_the_same_call_id() -> None:
    reg = make(expires=600)
    reg.start(0.0)
    first = register_ok(reg, 0.0, granted=120)        # the registrar grants less
    assert reg.refresh_at == pytest.approx(60.0) and reg.bound_until == pytest.approx(120.0)
    reg.handle_timer(59.9)
    assert reg.take_requests() == []
    reg.handle_timer(60.0)
    refresh = one(reg)
    assert reg.state is RegState.REGISTERING
    assert refresh.call_id == first.call_id and refresh.cseq.seq == first.cseq.seq + 1
    creds = parse_credentials(refresh.headers.get("Authorization") or "")
    assert creds.nc == "00000002"                      # the same nonce, counted on
    reg.on_response(answer(refresh, 200, "OK", (("Expires", "120"),)), 60.5)
    assert reg.refresh_at == pytest.approx(120.5)


def test_refresh_never_later_than_the_margin_before_expiry() -> None:
    assert refresh_delay(3600) == 1800
    assert refresh_delay(8) == pytest.approx(8 - REFRESH_MARGIN_S)
    assert all(refresh_delay(g) <= max(g - REFRESH_MARGIN_S, g / 2) for g in range(2, 500))


def test_stale_nonce_on_refresh_is_answered_without_a_failure() -> None:
    reg = make()
    reg.start(0.0)
    register_ok(reg, 0.0, granted=100)
    reg.handle_timer(50.0)
    refresh = one(reg)
    reg.on_response(answer(refresh, 401, extra=(challenge("fresh", stale=True),)), 50.1)
    again = one(reg)
    creds = parse_credentials(again.headers.get("Authorization") or "")
    assert creds.nonce == "fresh" and creds.nc == "00000001"
    reg.on_response(answer(again, 200, "OK", (("Expires", "100"),)), 50.2)
    assert reg.state is RegState.REGISTERED and reg.failures == 0


def test_wrong_password_is_a_failure_with_backoff_doubling_to_the_cap() -> None:
    reg = make(rand=0.0)
    reg.start(0.0)
    now = 0.0
    waits = []
    for attempt in range(9):
        request = one(reg)
        if request.headers.get("Authorization") is None or attempt > 0:
            reg.on_response(answer(request, 401, extra=(challenge(f"n{attempt}"),)), now)
            request = one(reg)
        # the registrar refuses the credentials: a new challenge for them
        reg.on_response(answer(request, 401, extra=(challenge(f"x{attempt}"),)), now)
        assert reg.state is RegState.WAITING
        results = reg.take_results()
        assert results[-1].kind == "auth_failed"
        assert "wrong user name or password for account 2001" in results[-1].detail
        assert reg.retry_at is not None
        waits.append(reg.retry_at - now)
        now = reg.retry_at
        reg.handle_timer(now)
    assert waits == [5, 10, 20, 40, 80, 160, 300, 300, 300]
    assert waits[-1] == BACKOFF_MAX_S


def test_backoff_has_jitter_and_success_resets_it() -> None:
    assert backoff_delay(1, 0.99) < backoff_delay(1, 0.0) == 5.0
    assert backoff_delay(1, 0.99) >= 4.0
    reg = make()
    reg.start(0.0)
    reg.on_response(answer(one(reg), 503, "Service Unavailable"), 0.0)
    reg.handle_timer(reg.retry_at or 0)
    reg.on_response(answer(one(reg), 503, "Service Unavailable"), 7.5)
    assert reg.failures == 2 and reg.retry_at == pytest.approx(7.5 + 10)
    reg.handle_timer(17.5)
    register_ok(reg, 17.5)
    assert reg.failures == 0 and reg.last_error == ""


def test_retry_after_of_a_503_is_respected() -> None:
    reg = make()
    reg.start(0.0)
    reg.on_response(answer(one(reg), 503, "Busy", (("Retry-After", "60"),)), 0.0)
    assert reg.retry_at == pytest.approx(60.0)


def test_timeout_and_403_are_failures() -> None:
    reg = make()
    reg.start(0.0)
    request = one(reg)
    reg.on_timeout(request.cseq.seq, 32.0)
    assert reg.state is RegState.WAITING and reg.retry_at == pytest.approx(37.0)
    assert reg.take_results()[-1].kind == "timeout"
    reg.handle_timer(37.0)
    reg.on_response(answer(one(reg), 403, "Forbidden"), 37.1)
    assert reg.take_results()[-1].kind == "rejected" and "403 Forbidden" in reg.last_error


def test_423_asks_again_with_min_expires() -> None:
    reg = make(expires=60)
    reg.start(0.0)
    request = one(reg)
    reg.on_response(answer(request, 423, "Interval Too Brief", (("Min-Expires", "900"),)), 0.0)
    again = one(reg)
    assert again.headers.get("Expires") == "900" and ";expires=900" in (
        again.headers.get("Contact") or "")
    assert reg.state is RegState.REGISTERING and reg.failures == 0


def test_stale_responses_are_ignored() -> None:
    reg = make()
    reg.start(0.0)
    first = one(reg)
    reg.on_response(answer(first, 401, extra=(challenge("a"),)), 0.0)
    one(reg)
    reg.on_response(answer(first, 200, "OK"), 0.1)   # an answer to the older CSeq
    assert reg.state is RegState.REGISTERING


def test_stop_unregisters_with_expires_zero() -> None:
    reg = make()
    reg.start(0.0)
    register_ok(reg, 0.0)
    reg.stop(10.0)
    bye = one(reg)
    assert state_of(reg) is RegState.UNREGISTERING
    assert bye.headers.get("Expires") == "0" and ";expires=0" in (bye.headers.get("Contact") or "")
    assert bye.headers.get("Authorization") is not None
    reg.on_response(answer(bye, 200, "OK"), 10.1)
    assert state_of(reg) is RegState.STOPPED and reg.get_timer() is None
    assert reg.take_results()[-1].kind == "unregistered"


def test_stop_before_any_binding_sends_nothing() -> None:
    reg = make()
    reg.start(0.0)
    reg.on_timeout(one(reg).cseq.seq, 32.0)
    reg.stop(33.0)
    assert reg.take_requests() == [] and reg.state is RegState.STOPPED


def test_binding_that_runs_out_is_reported() -> None:
    reg = make()
    reg.start(0.0)
    register_ok(reg, 0.0, granted=60)
    reg.handle_timer(30.0)
    reg.on_timeout(one(reg).cseq.seq, 30.0)
    assert reg.is_bound(59.0)
    reg.handle_timer(60.0)
    assert not reg.is_bound(60.0)
    assert "expired" in [r.kind for r in reg.take_results()]


def test_a_missing_password_variable_is_a_start_up_error_naming_it() -> None:
    account = Account(registrar="sip:pbx.example.net", user="2001", password_env="NO_SUCH_PW")
    with pytest.raises(ConfigError, match=r"2001: the environment variable NO_SUCH_PW "
                                          r"\(password_env\) is not set"):
        read_lines((account,), {})
    (line,) = read_lines((account,), {"NO_SUCH_PW": "pw"})
    assert line.password == "pw" and line.transport == "udp" and line.port == 5060


@pytest.mark.parametrize(("registrar", "transport", "port"), [
    ("sip:pbx.example.net", "tls", 5061), ("sips:pbx.example.net", "udp", 5061),
    ("sips:pbx.example.net:5071", "udp", 5071), ("sip:pbx.example.net", "tcp", 5060)])
def test_a_sips_registrar_or_tls_transport_registers_over_tls(registrar: str, transport: str,
                                                              port: int) -> None:
    account = Account(registrar=registrar, user="2001", password_env="PW",
                      transport=transport)
    (line,) = read_lines((account,), {"PW": "x"})
    assert line.transport == ("tcp" if transport == "tcp" else "tls") and line.port == port


def test_serve_does_not_start_without_the_password_variable(tmp_path: Path) -> None:
    config = tmp_path / "voicebridge.toml"
    config.write_text('[[sip.accounts]]\nregistrar = "sip:127.0.0.1:9"\nuser = "2001"\n'
                      'password_env = "UNSET_REGISTRATION_PW"\n')
    bridge = ServeProcess(tmp_path, env={"VOICEBRIDGE_CONFIG": str(config)})
    with pytest.raises(RuntimeError) as failed:
        bridge.start(limit=60)
    bridge.stop()
    assert "UNSET_REGISTRATION_PW" in str(failed.value)
