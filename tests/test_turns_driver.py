"""The turn driver (bridge.call.turns) on a virtual media clock against a scripted
Realtime session: exact times for the end of a turn, the transcript wait and the early
barge-in, independent of the machine's load."""

from __future__ import annotations

from pathlib import Path

from bridge import metrics
from bridge.call.turns import RESUME
from bridge.codecs import g711
from bridge.dialplans.loader import PACKAGED_DIR, load_dialplans
from bridge.dialplans.plan import Dialplan
from bridge.realtime import events as ev
from tests.support.audio import speech
from tests.support.call_rig import Rig

PLAN = """
tools = ["hang_up"]

[match]
default = true

[agent]
instructions = "rig plan"
audio_format = "{fmt}"

[agent.turn_detection]
{td}

[agent.transcription]
model = "whisper-1"

[turns]
{turns}
"""


def plan(tmp: Path, td: str, turns: str, *, fmt: str = "pcm16", hooks: str = "") -> Dialplan:
    folder = tmp / f"p{len(list(tmp.glob('p*')))}"
    folder.mkdir()
    (folder / "p.toml").write_text(PLAN.format(td=td, turns=turns, fmt=fmt))
    if hooks:
        (folder / "hooks.py").write_text(hooks)
    return load_dialplans(folder).default


def at(rig: Rig, kind: str) -> list[int]:
    """Indexes in the session's log of requests of ``kind``."""
    return [i for i, entry in enumerate(rig.session.log) if entry[0] == kind]


async def ticks_until(rig: Rig, kind: str, limit: int) -> int:
    """Tick until the session got a ``kind`` request; the ticks it took."""
    for n in range(1, limit + 1):
        await rig.tick()
        if rig.session.sent(kind):
            return n
    raise AssertionError(f"no {kind} in {limit} ticks: {rig.session.kinds()}")


async def test_manual_turn_is_committed_end_silence_after_the_speech(tmp_path: Path) -> None:
    rig = Rig(plan(tmp_path, 'type = "none"', "end_silence_ms = 600"))
    await rig.start()
    await rig.tick(5)
    rig.leg.play(speech(1000))
    ticks = await ticks_until(rig, "commit_input", 200)
    # 50 frames of speech, then 30 of silence (600 ms); a frame or two of the buzz's tail
    assert 80 <= ticks <= 84, ticks
    assert not rig.session.sent("create_response")      # the server has not committed yet
    await rig.emit(ev.InputCommitted("u1"))
    await rig.tick(80)                                   # no transcript within 1.5 s
    assert rig.session.sent("create_response") == [("create_response", None)]
    rig.leg.far_end_hangup()
    await rig.finish()


async def test_the_hook_decides_as_soon_as_the_transcript_is_in(tmp_path: Path) -> None:
    td = 'type = "server_vad"\ncreate_response = false'
    rig = Rig(plan(tmp_path, td, 'hook = "instructions"\ninstructions = "Be brief."\n'
                                  "transcript_wait_ms = 1000"))
    await rig.start()
    await rig.emit(ev.InputCommitted("u1"))
    await rig.tick(10)
    assert not rig.session.sent("create_response")      # waiting for the transcript
    await rig.emit(ev.UserTranscript("u1", "hello"))
    await rig.tick()
    assert rig.session.sent("create_response") == [("create_response", "rig plan\n\nBe brief.")]
    # a turn whose transcript never comes is decided when the wait runs out
    await rig.emit(ev.InputCommitted("u2"))
    await rig.tick(49)
    assert len(rig.session.sent("create_response")) == 1
    await rig.tick(2)
    assert len(rig.session.sent("create_response")) == 2
    assert rig.call.turns is not None and rig.call.turns.turns == 2
    rig.leg.far_end_hangup()
    await rig.finish()


async def barge(tmp_path: Path, early: bool) -> tuple[Rig, int]:
    turns = f"early_barge_in = {str(early).lower()}\nmin_speech_ms = 100"
    rig = Rig(plan(tmp_path, 'type = "server_vad"', turns))
    await rig.start()
    await rig.reply("r1", "a1", 3000)
    await rig.tick(10)
    assert rig.call.playout.playing
    rig.leg.play(speech(1000))
    for n in range(1, 30):
        await rig.tick()
        if not rig.call.playout.playing:
            return rig, n
    return rig, -1


async def test_early_barge_in_stops_the_agent_before_the_server_hears_the_caller(
        tmp_path: Path) -> None:
    rig, ticks = await barge(tmp_path, early=True)
    # 100 ms of speech decides it (5 frames), the next tick plays no agent audio
    assert 5 <= ticks <= 7, ticks
    assert rig.session.sent("truncate") and rig.session.sent("cancel_response")
    assert rig.call.record.barge_ins and rig.call.turns is not None
    assert rig.call.turns.local_barge_ins
    # the server never confirms (no speech_started): a noise cut the agent off, and
    # 1.5 s later it is asked to go on rather than leave the caller in silence
    await rig.done("r1", "cancelled")
    await rig.tick(70)
    assert not rig.session.sent("create_response")
    await rig.tick(10)
    [(_, instructions)] = rig.session.sent("create_response")
    assert instructions == f"rig plan\n\n{RESUME}"
    rig.leg.far_end_hangup()
    await rig.finish()

    rig, ticks = await barge(tmp_path, early=True)
    await rig.speak_over()                          # confirmed: the server's turn follows
    await rig.done("r1", "cancelled")
    await rig.tick(100)
    assert ticks > 0 and not rig.session.sent("create_response")
    rig.leg.far_end_hangup()
    await rig.finish()

    rig, ticks = await barge(tmp_path, early=False)
    assert ticks == -1 and not rig.session.sent("truncate")     # waits for the server
    await rig.speak_over()
    assert not rig.call.playout.playing and rig.session.sent("truncate")
    rig.leg.far_end_hangup()
    await rig.finish()


async def test_a_caller_talking_without_server_vad_is_not_silent(tmp_path: Path) -> None:
    """Under type "none" no speech_started stops the caller-silence limit: the bridge's
    VAD does, and re-arms it at the end of the turn."""
    rig = Rig(plan(tmp_path, 'type = "none"',
                   "end_silence_ms = 400\n\n[limits]\ncaller_silence_s = 1.0"))
    await rig.start()
    rig.leg.play(speech(2500))
    await rig.tick(120)                     # 2.4 s: longer than the limit, all speech
    assert not rig.call.ended
    await rig.tick(5 + 20 + 50 + 10)        # the end of the turn, then 1 s of silence
    assert rig.call.ended and rig.call.record.end_reason == "caller_silence"
    await rig.finish()


async def test_g711_passthrough_frames_are_decoded_for_the_detector(tmp_path: Path) -> None:
    rig = Rig(plan(tmp_path, 'type = "none"', "end_silence_ms = 400", fmt="g711"))
    await rig.start()
    assert rig.leg.carry == "pcmu"                       # the frames stay encoded
    rig.leg.play(g711.encode("pcmu", speech(800)))
    ticks = await ticks_until(rig, "commit_input", 120)
    assert 60 <= ticks <= 64, ticks                      # 40 frames of speech + 20 silent
    rig.leg.far_end_hangup()
    await rig.finish()


async def test_a_failing_hook_still_answers_the_caller(tmp_path: Path) -> None:
    hooks = "async def broken(turn):\n    raise RuntimeError('bug')\n"
    rig = Rig(plan(tmp_path, 'type = "server_vad"\ncreate_response = false',
                   'hook = "hooks:broken"\ntranscript_wait_ms = 0', hooks=hooks))
    failed = metrics.TURNS_DECIDED.labels(hook="python", outcome="failed")
    before = failed._value.get()
    await rig.start()
    await rig.emit(ev.InputCommitted("u1"))
    await rig.tick(2)
    assert rig.session.sent("create_response") == [("create_response", None)]
    assert failed._value.get() == before + 1
    rig.leg.far_end_hangup()
    await rig.finish()


async def test_the_shipped_gatekeeper_hook(tmp_path: Path) -> None:
    """gatekeeper_hooks:screen on real transcripts: an empty one keeps the agent silent,
    a card number adds the caution, an ordinary later turn gets a plain answer."""
    rig = Rig(load_dialplans(PACKAGED_DIR, env={})["gatekeeper"])
    await rig.start()
    for item, words in (("u1", ""), ("u2", "my card number is 4111"), ("u3", "hello")):
        await rig.emit(ev.InputCommitted(item), ev.UserTranscript(item, words))
        await rig.tick()
    replies = [entry[1] for entry in rig.session.sent("create_response")]
    assert len(replies) == 2, replies                    # the empty turn got no reply
    assert replies[0].endswith("go on.") and "card number" in replies[0]
    assert replies[1] is None                            # turn 3: a plain answer
    rig.leg.far_end_hangup()
    await rig.finish()


async def test_hold_drops_the_turn_in_progress(tmp_path: Path) -> None:
    """The caller's audio is cleared at hold: the speech before it must not end in a
    commit of a buffer that no longer holds it."""
    rig = Rig(plan(tmp_path, 'type = "none"', "end_silence_ms = 400"))
    await rig.start()
    rig.leg.play(speech(600))
    await rig.tick(35)                                   # in speech
    assert rig.call.turns is not None and rig.call.turns.detector is not None
    assert rig.call.turns.detector.in_speech
    rig.leg.set_hold(True)
    await rig.tick(60)
    assert rig.session.sent("clear_input") and not rig.session.sent("commit_input")
    rig.leg.far_end_hangup()
    await rig.finish()
