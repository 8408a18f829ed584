"""bridge.internals.aiortc: the private aiortc/aioice names the WebRTC leg relies on."""

from __future__ import annotations

import types

import pytest

from bridge.errors import BridgeError
from bridge.internals import IncompatibleLibrary
from bridge.internals import aiortc as internals


def test_the_installed_libraries_have_every_name() -> None:
    assert internals.missing_names(internals.LIBRARY) == []
    internals.check(internals.LIBRARY)                  # does not raise


def _fake_library() -> types.SimpleNamespace:
    """Classes that have every required name (as class attributes)."""
    return types.SimpleNamespace(**{
        class_name: type(class_name, (), dict.fromkeys(names))
        for class_name, names in internals.REQUIRED.items()})


def test_a_complete_fake_library_passes() -> None:
    internals.check(_fake_library())


def test_names_assigned_in_init_count_as_present() -> None:
    class RTCRtpSender:
        def __init__(self) -> None:
            self._ssrc = 1
            self._RTCRtpSender__ntp_timestamp = 0
            self._RTCRtpSender__rtp_timestamp = 0
            self._RTCRtpSender__octet_count = 0
            self._RTCRtpSender__packet_count = 0

    library = _fake_library()
    library.RTCRtpSender = RTCRtpSender
    internals.check(library)


def test_missing_names_are_all_named() -> None:
    library = _fake_library()
    library.RTCRtpReceiver = type("RTCRtpReceiver", (), {"_enabled": None})
    library.RTCDtlsTransport = type("RTCDtlsTransport", (), {"_state": None,
                                                             "_tx_srtp": None})
    del library.Connection
    with pytest.raises(IncompatibleLibrary) as caught:
        internals.check(library)
    message = str(caught.value)
    for name in ("RTCRtpReceiver._handle_rtp_packet", "RTCRtpReceiver._RTCRtpReceiver__codecs",
                 "RTCRtpReceiver._RTCRtpReceiver__remote_streams",
                 "RTCDtlsTransport._rtp_header_extensions_map", "Connection._nominated"):
        assert name in message
    assert "RTCRtpReceiver._enabled" not in message
    assert "RTCDtlsTransport._state" not in message
    assert isinstance(caught.value, BridgeError)


def test_a_renamed_sender_counter_is_caught() -> None:
    class RTCRtpSender:
        def __init__(self) -> None:
            self._ssrc = 1
            self._RTCRtpSender__ntp_time = 0          # renamed upstream
            self._RTCRtpSender__rtp_timestamp = 0
            self._RTCRtpSender__octet_count = 0
            self._RTCRtpSender__packet_count = 0

    library = _fake_library()
    library.RTCRtpSender = RTCRtpSender
    assert internals.missing_names(library) == ["RTCRtpSender._RTCRtpSender__ntp_timestamp"]
