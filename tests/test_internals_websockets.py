"""bridge.internals.websockets: the import-time check of websockets' low-level names, and
the hand-built client frames (RFC 6455 §5.2, §5.3) byte for byte."""

from __future__ import annotations

import struct
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, cast

import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side, State
from websockets.streams import StreamReader

from bridge.errors import BridgeError
from bridge.internals import IncompatibleLibrary
from bridge.internals import websockets as internals


def unmask_frame(data: bytes) -> tuple[int, int, bytes, bytes]:
    """(first byte, declared length, key, unmasked payload) of one masked client frame,
    parsed by hand from the RFC, not by the code under test."""
    first, second = data[0], data[1]
    assert second & 0x80, "client frames must be masked"
    length, at = second & 0x7F, 2
    if length == 126:
        (length,) = struct.unpack("!H", data[2:4])
        at = 4
    elif length == 127:
        (length,) = struct.unpack("!Q", data[2:10])
        at = 10
    key = data[at:at + 4]
    body = data[at + 4:]
    assert len(body) == length, "the frame holds exactly its declared length"
    return first, length, key, bytes(b ^ key[i % 4] for i, b in enumerate(body))


def test_the_installed_library_has_every_name() -> None:
    assert internals.missing_names(websockets) == []
    internals.check(websockets)          # does not raise


def test_an_empty_library_is_refused_naming_everything_missing() -> None:
    with pytest.raises(IncompatibleLibrary) as info:
        internals.check(types.SimpleNamespace(__version__="99.0"))
    message = str(info.value)
    assert "99.0" in message
    for path, names in internals.REQUIRED.items():
        for name in names:
            assert f"{path}.{name}" in message
    assert isinstance(info.value, BridgeError)


def test_a_library_missing_one_name_is_refused_naming_only_that_one() -> None:
    class OldProtocol:  # no send_text, writes assigned in __init__ as the real one does
        state = None
        extensions: list[object] = []
        expect_continuation_frame = False

        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def data_to_send(self) -> list[bytes]:
            return []

        def send_ping(self, data: bytes) -> None:
            pass

    fake = types.SimpleNamespace(
        asyncio=websockets.asyncio,
        protocol=types.SimpleNamespace(Protocol=OldProtocol, State=websockets.protocol.State),
        utils=websockets.utils)
    assert internals.missing_names(fake) == ["protocol.Protocol.send_text"]
    with pytest.raises(IncompatibleLibrary, match=r"protocol\.Protocol\.send_text$"):
        internals.check(fake)


def test_an_instance_attribute_no_longer_assigned_is_caught() -> None:
    # ``writes`` exists only once __init__ ran: it is found in the code that assigns it, and
    # a release whose __init__ stopped assigning it is refused.
    class Renamed:
        state = None
        extensions: list[object] = []
        expect_continuation_frame = False

        def __init__(self) -> None:
            self.pending: list[bytes] = []     # was ``writes``

        def send_text(self, data: bytes) -> None: ...

        def send_ping(self, data: bytes) -> None: ...

        def data_to_send(self) -> list[bytes]:
            return self.pending

    lib = types.SimpleNamespace(
        asyncio=websockets.asyncio, utils=websockets.utils,
        protocol=types.SimpleNamespace(Protocol=Renamed, State=websockets.protocol.State))
    assert internals.missing_names(lib) == ["protocol.Protocol.writes"]


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_fast_frames_are_rfc6455_client_text_frames(length: int) -> None:
    payload = bytes(range(256)) * (length // 256) + bytes(range(length % 256))
    key = b"\x12\x34\xab\xcd"
    frame = internals.text_frame(payload, key)
    first, declared, got_key, body = unmask_frame(frame)
    assert first == 0x81                      # FIN, opcode 1 (text), no RSV bits
    assert (declared, got_key, body) == (length, key, payload)
    # Byte-identical to websockets' own serializer with the same key.
    # The header is byte-identical to websockets' own serializer's (its key is random).
    expected = Frame(Opcode.TEXT, payload).serialize(mask=True, extensions=[])
    header = len(frame) - length - 4
    assert len(frame) == len(expected)
    assert frame[:header] == expected[:header]


def test_fast_frames_parse_back_through_websockets_reader() -> None:
    payload = b'{"type":"input_audio_buffer.append","audio":"AAAA"}'
    frame = internals.text_frame(payload, b"\x01\x02\x03\x04")
    reader = StreamReader()
    reader.feed_data(frame)
    parser = Frame.parse(reader.read_exact, mask=True)
    with pytest.raises(StopIteration) as done:
        next(parser)
    parsed = done.value.value
    assert (parsed.opcode, parsed.fin, parsed.data) == (Opcode.TEXT, True, payload)


def test_masking_keys_are_fresh_for_every_frame() -> None:
    masks = internals.Masks()
    keys = [masks.key() for _ in range(600)]      # crosses a 1 KiB refill
    assert all(len(k) == 4 for k in keys)
    assert len(set(keys)) > 590                    # 32 random bits: collisions are rare
    assert internals.apply_mask(b"\x00" * 8, b"\xff\x00\xff\x00") == b"\xff\x00\xff\x00" * 2


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False
        self.buffered = 0

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered


def writer_over(proto: Protocol) -> tuple[internals.FrameWriter, FakeTransport]:
    transport = FakeTransport()
    ws = cast(ClientConnection, types.SimpleNamespace(protocol=proto, transport=transport))
    return internals.FrameWriter(ws, internals.Masks()), transport


def parse_all(data: bytes) -> list[Frame]:
    """Every frame in ``data``, through websockets' own parser."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=True)
        with pytest.raises(StopIteration) as done:
            next(parser)
        frames.append(done.value.value)
    return frames


def test_writer_sends_pending_protocol_bytes_before_its_own_frame() -> None:
    proto = Protocol(Side.CLIENT, state=State.OPEN)
    writer, transport = writer_over(proto)
    writer.send_fast(b'{"a":1}')
    proto.send_ping(b"p")                      # websockets has a frame of its own pending
    writer.send_fast(b'{"b":2}')
    frames = parse_all(b"".join(transport.written))
    assert [(f.opcode, f.data) for f in frames] == [
        (Opcode.TEXT, b'{"a":1}'), (Opcode.PING, b"p"), (Opcode.TEXT, b'{"b":2}')]
    assert proto.writes == []


def test_writer_falls_back_to_websockets_framing_mid_message_or_with_extensions() -> None:
    proto = Protocol(Side.CLIENT, state=State.OPEN)
    writer, transport = writer_over(proto)
    proto.extensions = [cast(Any, object())]   # would need its encode(): must not hand-frame
    sent: list[bytes] = []
    proto.send_text = lambda data, fin=True: sent.append(bytes(data))  # type: ignore[method-assign]
    writer.send_fast(b"x")
    assert sent == [b"x"] and transport.written == []


def test_writer_state_backlog_and_closed_socket() -> None:
    proto = Protocol(Side.CLIENT, state=State.OPEN)
    writer, transport = writer_over(proto)
    transport.buffered = 1234
    assert writer.is_open() and writer.backlog() == 1234
    assert writer.send(b'{"c":3}')
    assert [f.data for f in parse_all(b"".join(transport.written))] == [b'{"c":3}']
    transport.closing = True
    assert writer.backlog() == 0
    proto.state = State.CLOSED
    assert not writer.is_open()
    assert not writer.send(b"late")


def test_send_audio_frames_checks_backlog_and_state_in_one_call() -> None:
    proto = Protocol(Side.CLIENT, state=State.OPEN)
    writer, transport = writer_over(proto)
    assert writer.send_audio(b'{"a":1}', 100) == internals.SENT
    transport.buffered = 101                       # the kernel is not taking bytes
    assert writer.send_audio(b'{"b":2}', 100) == internals.BACKLOGGED
    transport.buffered = 0
    proto.send_ping(b"p")                          # websockets' own frame goes first
    assert writer.send_audio(b'{"c":3}', 100) == internals.SENT
    frames = parse_all(b"".join(transport.written))
    assert [(f.opcode, f.data) for f in frames] == [
        (Opcode.TEXT, b'{"a":1}'), (Opcode.PING, b"p"), (Opcode.TEXT, b'{"c":3}')]
    keys = {w[2:6] for w in transport.written if w[0] == 0x81}
    assert len(keys) == 2                          # a fresh masking key per frame
    proto.state = State.CLOSED
    assert writer.send_audio(b'{"d":4}', 100) == internals.CLOSED
    assert len(parse_all(b"".join(transport.written))) == 3


def test_importing_the_module_with_an_incompatible_library_fails_at_once() -> None:
    # In a fresh interpreter: a websockets whose Protocol lost send_text.
    code = ("import websockets.protocol as p\n"
            "del p.Protocol.send_text\n"
            "import bridge.internals.websockets\n")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True,
                            text=True, cwd=Path(__file__).resolve().parent.parent,
                            timeout=60)
    assert result.returncode != 0
    assert "IncompatibleLibrary" in result.stderr
    assert "protocol.Protocol.send_text" in result.stderr
