"""Two sans-I/O RTP sessions, sender and receiver, over a simulated network."""

from __future__ import annotations

import heapq
import random

import pytest

from bridge.rtp.packet import RtpPacket, pack_header, parse
from bridge.rtp.session import RtpSession

A = ("192.0.2.10", 40000)      # the caller's media address
B = ("192.0.2.20", 20000)      # ours
SIL = b"\xff" * 160


def frame(i: int) -> bytes:
    # distinct, recognisable payloads; 0xFF never occurs so silence is unambiguous
    return bytes([(i * 7 + k) % 255 for k in range(160)])


def run_network(n: int, *, seed: int, loss: float, dup: float, jitter_s: float,
                base_delay: float = 0.03) -> tuple[list[tuple[float, bytes]], RtpSession,
                                                    dict[str, object]]:
    """Send ``n`` frames every 20 ms through a lossy, jittery, duplicating network.

    The receiver runs on a virtual clock: events are packet arrivals and the receiver's
    own timer (its gap deadline), processed in time order exactly as the endpoint does.
    Returns the payloads delivered with their delivery times.
    """
    rng = random.Random(seed)
    tx = RtpSession(payload_type=0, remote=B, rng=random.Random(seed + 1))
    rx = RtpSession(payload_type=0, remote=A, rng=random.Random(seed + 2))
    events: list[tuple[float, int, bytes]] = []
    arrivals = {"total": 0, "indices": set(), "never": set(), "sent_at": {}}
    order = 0
    for i in range(n):
        t = i * 0.02
        [pkt] = tx.send_audio(frame(i), t)
        arrivals["sent_at"][i] = t  # type: ignore[index]
        copies = 0 if (rng.random() < loss and 2 <= i < n - 3) else 1
        if copies and rng.random() < dup:
            copies = 2
        if not copies:
            arrivals["never"].add(i)  # type: ignore[attr-defined]
        for _ in range(copies):
            # the very first packet arrives first: the stream starts where it says
            at = t + base_delay + (rng.random() * jitter_s if i else 0.0)
            order += 1
            heapq.heappush(events, (at, order, pkt))
            arrivals["total"] += 1  # type: ignore[operator]
            arrivals["indices"].add(i)  # type: ignore[attr-defined]
    out: list[tuple[float, bytes]] = []
    while events:
        now, _, pkt = heapq.heappop(events)
        if pkt:
            assert rx.receive(pkt, A, now) is None
        while (p := rx.pop_audio(now)) is not None:
            out.append((now, p))
        deadline = rx.get_timer()
        if deadline is not None:
            order += 1
            heapq.heappush(events, (deadline, order, b""))    # the endpoint's timer
    return out, rx, arrivals


def test_clean_network_delivers_every_frame_in_order_with_no_added_delay() -> None:
    out, rx, _ = run_network(200, seed=1, loss=0.0, dup=0.0, jitter_s=0.0)
    assert [p for _, p in out] == [frame(i) for i in range(200)]
    assert [t for t, _ in out] == pytest.approx([i * 0.02 + 0.03 for i in range(200)])
    st = rx.stats
    assert (st.received, st.lost, st.late, st.duplicates) == (200, 0, 0, 0)


def test_reordering_within_the_window_is_repaired_without_loss() -> None:
    # jitter up to 35 ms on 20 ms spacing: plenty of reordering, nothing later than 40 ms
    out, rx, _ = run_network(500, seed=2, loss=0.0, dup=0.0, jitter_s=0.035)
    assert [p for _, p in out] == [frame(i) for i in range(500)]
    st = rx.stats
    assert st.reordered > 10
    assert (st.lost, st.late) == (0, 0)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_loss_reorder_duplication_and_jitter(seed: int) -> None:
    n = 1000
    out, rx, arr = run_network(n, seed=seed, loss=0.05, dup=0.05, jitter_s=0.08)
    payloads = [p for _, p in out]
    st = rx.stats
    # one output frame per sent packet, in sequence order
    assert len(payloads) == n
    for i, p in enumerate(payloads):
        assert p in (frame(i), SIL), i
    silent = {i for i, p in enumerate(payloads) if p == SIL}
    # every packet the network lost is concealed, and the concealment count is exact
    assert arr["never"] <= silent
    assert st.lost == len(silent)
    assert st.lost >= len(arr["never"]) > 20  # type: ignore[arg-type]
    # every arrival is accounted for exactly once
    assert st.received == arr["total"]
    assert (n - len(silent)) + st.late + st.duplicates == arr["total"]
    assert st.duplicates > 20 and st.late > 0 and st.reordered > 0
    # nothing is held longer than the (adaptive) wait, whose ceiling is 60 ms
    sent_at = arr["sent_at"]
    for i, (t, p) in enumerate(out):
        if p != SIL:
            assert t - sent_at[i] <= 0.03 + 0.08 + 0.06 + 1e-9  # type: ignore[index]


def test_latching_drops_other_sources_before_and_after() -> None:
    rx = RtpSession(payload_type=0, remote=A, rng=random.Random(9))
    pkt = pack_header(False, 0, 1, 160, 0x1111) + SIL
    assert rx.destination == A
    rx.receive(pkt, ("198.51.100.66", 40000), 0.0)       # another host, before latching
    assert rx.latched is None and rx.stats.dropped == {"source": 1}
    rx.receive(pack_header(False, 99, 1, 160, 0x1111) + SIL, (A[0], 40002), 0.0)
    assert rx.latched is None                             # wrong PT never latches
    rx.receive(pkt, (A[0], 40002), 0.01)                  # SDP host, NAT-rewritten port
    assert rx.latched == (A[0], 40002) and rx.destination == (A[0], 40002)
    rx.receive(pack_header(False, 0, 2, 320, 0x1111) + SIL, A, 0.02)   # same host, other port
    rx.receive(pack_header(False, 0, 2, 320, 0x2222) + SIL, ("203.0.113.5", 1), 0.02)
    assert rx.stats.dropped == {"source": 3, "payload_type": 1}
    assert rx.pop_audio(0.02) == SIL and rx.pop_audio(0.02) is None
    assert rx.stats.received == 1
    # a re-INVITE with a new address re-opens latching
    rx.configure(remote=("192.0.2.99", 5000), payload_type=0)
    assert rx.latched is None and rx.destination == ("192.0.2.99", 5000)


def test_latch_any_latches_on_any_host_then_locks() -> None:
    rx = RtpSession(payload_type=0, remote=("10.1.1.1", 4000), latch_any=True)
    rx.receive(pack_header(False, 0, 1, 0, 5) + SIL, ("198.51.100.7", 3333), 0.0)
    assert rx.latched == ("198.51.100.7", 3333)
    rx.receive(pack_header(False, 0, 2, 160, 5) + SIL, ("10.1.1.1", 4000), 0.02)
    assert rx.stats.dropped == {"source": 1}


def test_signalling_host_may_latch_when_the_sdp_address_is_not_the_source() -> None:
    """A caller behind NAT (SDP: its private address) or a softphone whose SDP names
    another interface: its media comes from where its SIP came from, and latches; any
    third host is still refused before and after."""
    rx = RtpSession(payload_type=0, remote=("10.1.1.1", 4000), peer_host="198.51.100.7")
    rx.receive(pack_header(False, 0, 1, 0, 5) + SIL, ("203.0.113.66", 3333), 0.0)
    assert rx.latched is None and rx.stats.dropped == {"source": 1}
    rx.receive(pack_header(False, 0, 1, 0, 5) + SIL, ("198.51.100.7", 40000), 0.0)
    assert rx.latched == ("198.51.100.7", 40000) == rx.destination
    rx.receive(pack_header(False, 0, 2, 160, 6) + SIL, ("10.1.1.1", 4000), 0.02)
    assert rx.stats.dropped == {"source": 2} and rx.stats.received == 1


def test_malformed_rtcp_cn_and_wrong_payload_type_are_counted() -> None:
    rx = RtpSession(payload_type=8, codec="pcma", dtmf_payload_type=101, remote=A)
    rx.receive(b"\x80\x08\x00", A, 0)                               # short
    rx.receive(bytes([0x40]) + bytes(171), A, 0)                    # version 1
    rx.receive(bytes([0x81, 201, 0, 1]) + bytes(4), A, 0)           # RTCP RR
    rx.receive(pack_header(False, 0, 1, 0, 7) + SIL, A, 0)          # PCMU, not negotiated
    rx.receive(pack_header(False, 8, 1, 0, 7) + b"\xd5" * 160, A, 0)
    rx.receive(pack_header(False, 13, 2, 160, 7) + b"\x40", A, 0.02)  # comfort noise
    rx.receive(pack_header(False, 8, 3, 320, 7) + b"\xd5" * 160, A, 0.04)
    rx.receive(pack_header(False, 101, 4, 480, 7) + b"\x01", A, 0.06)  # broken event
    st = rx.stats
    assert st.dropped == {"short": 1, "version": 1, "payload_type": 1, "dtmf": 1}
    assert st.rtcp == 1 and st.received == 4 and st.lost == 0


def test_ssrc_change_resynchronises() -> None:
    rx = RtpSession(payload_type=0, remote=A)
    rx.receive(pack_header(False, 0, 100, 0, 1) + frame(1), A, 0)
    rx.receive(pack_header(True, 0, 40000, 9, 2) + frame(2), A, 0.02)   # new source
    rx.receive(pack_header(False, 0, 40001, 169, 2) + frame(3), A, 0.04)
    assert [rx.pop_audio(0.04) for _ in range(4)] == [frame(1), frame(2), frame(3), None]
    assert rx.stats.resyncs == 1 and rx.stats.lost == 0 and rx.stats.remote_ssrc == 2


def test_send_header_fields_random_start_and_wrap_around() -> None:
    tx = RtpSession(payload_type=8, codec="pcma", remote=A, rng=random.Random(5))
    other = RtpSession(payload_type=8, codec="pcma", remote=A, rng=random.Random(6))
    assert tx.ssrc != other.ssrc
    tx._seq, tx.timeline.next_ts = 0xFFFE, 0xFFFFFF00     # force both counters near the wrap
    pkts = [parse(tx.send_audio(b"\xd5" * 160, i * 0.02)[0]) for i in range(4)]
    assert [p.sequence for p in pkts] == [0xFFFF, 0, 1, 2]
    assert [p.timestamp for p in pkts] == [0xFFFFFF00, 0xFFFFFFA0, 0x40, 0xE0]
    assert [p.marker for p in pkts] == [True, False, False, False]
    assert {p.ssrc for p in pkts} == {tx.ssrc} and {p.payload_type for p in pkts} == {8}


def test_hold_resume_and_pause_start_new_talkspurts_on_real_time() -> None:
    tx = RtpSession(payload_type=0, remote=A, rng=random.Random(1))
    first = parse(tx.send_audio(SIL, 0.0)[0])
    assert first.marker
    assert not parse(tx.send_audio(SIL, 0.02)[0]).marker
    tx.set_sending(False)
    assert tx.send_audio(SIL, 0.04) == [] and tx.stats.sent == 2
    tx.set_sending(True)
    resumed = parse(tx.send_audio(SIL, 1.02)[0])
    assert resumed.marker
    assert (resumed.timestamp - first.timestamp) % 2**32 == 8160   # 1.02 s at 8 kHz
    assert not parse(tx.send_audio(SIL, 1.04)[0]).marker
    paused = parse(tx.send_audio(SIL, 1.5)[0])                    # 460 ms pause
    assert paused.marker and (paused.timestamp - resumed.timestamp) % 2**32 == 3840


def test_ptime_30_regroups_20ms_frames() -> None:
    tx = RtpSession(payload_type=0, remote=A, ptime_ms=30, rng=random.Random(2))
    out = []
    for i in range(6):
        out += tx.send_audio(frame(i), i * 0.02)
    pkts = [RtpPacket.parse(p) for p in out]
    assert [len(p.payload) for p in pkts] == [240] * 4
    assert b"".join(p.payload for p in pkts) == b"".join(frame(i) for i in range(6))
    assert [(p.timestamp - pkts[0].timestamp) % 2**32 for p in pkts] == [0, 240, 480, 720]


def test_unsupported_ptime_is_refused() -> None:
    with pytest.raises(ValueError):
        RtpSession(payload_type=0, ptime_ms=25)


def test_unspecified_address_means_do_not_send_and_keeps_the_latch() -> None:
    s = RtpSession(payload_type=0, remote=A)
    s.receive(pack_header(False, 0, 1, 0, 5) + SIL, A, 0.0)
    s.configure(remote=("0.0.0.0", 0), payload_type=0)       # old-style hold
    assert s.destination is None and s.latched == A
    s.configure(remote=A, payload_type=0)                    # resumed, same address
    assert s.destination == A and s.latched == A
