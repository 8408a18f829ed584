"""SDP (RFC 4566) parse/serialize and the audio offer/answer of RFC 3264.

Theory of operation
-------------------
:func:`parse_sdp` turns a body into a frozen :class:`SessionDescription`; every failure is
an :class:`~bridge.errors.SdpError` (answered ``488 Not Acceptable Here``). Unknown lines
and attributes are kept, so a description serializes back as it came.

Offer/answer is about one thing here: a plain RTP/AVP audio stream carrying G.711
(PCMU or PCMA) or G.722 and, if offered, RFC 4733 ``telephone-event``. G.722 is static
payload type 9, ``G722/8000``: its RTP clock is 8000 Hz although its audio is 16 kHz
(RFC 3551 §4.5.2).

* :func:`answer_offer` picks the first audio stream we can use, and in it the codec our
  ``codecs`` list (``[sip] codecs``) ranks first among those offered; the two G.711 laws
  rank together, at the place of the first of them, and between them the *caller's*
  order decides (RFC 3264 §6.1: the answerer SHOULD respect the offerer's ordering; the
  laws are of equal quality, wideband is not). Every other stream is refused with port 0
  in the same position (RFC 3264 §6: the answer MUST contain as many m-lines as the
  offer). Nothing usable -> SdpError.
* :func:`make_offer` writes our offer for an INVITE that came without one (the offer goes
  in our 200, the answer comes back in the ACK) and :func:`accept_answer` reads that answer.
* Directions: the answer mirrors the offer (sendonly -> recvonly, recvonly -> sendonly,
  inactive -> inactive), and ``c=0.0.0.0`` (the RFC 2543 way to hold) counts as the far
  end not wanting media. :attr:`NegotiatedMedia.may_send` says whether we may send.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from bridge.errors import SdpError
from bridge.sip.sdes import SdesKeys

#: Static payload types of RFC 3551 for the codecs we carry.
STATIC_PT = {0: "pcmu", 8: "pcma", 9: "g722"}
CODEC_NAMES = {"pcmu": "PCMU", "pcma": "PCMA", "g722": "G722"}
#: The audio rate of each codec's PCM (a call's leg rate; G.722's RTP clock is 8000).
AUDIO_RATE = {"pcmu": 8000, "pcma": 8000, "g722": 16000}
#: Codecs of equal quality, ranked together (the caller's order decides between them).
G711_LAWS = ("pcmu", "pcma")
DEFAULT_DTMF_PT = 101
ALLOWED_PTIME = (10, 20, 30, 40, 50, 60)
#: Transport protocols of an audio stream: plain RTP, and SRTP with SDES keys (which
#: only :mod:`bridge.sip.srtp_policy` asks for, since it must add the keys).
PLAIN_RTP = ("RTP/AVP", "RTP/AVPF")
SRTP = ("RTP/SAVP",)
MAX_SDP_BYTES = 64 * 1024


class Direction(enum.Enum):
    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    @property
    def reverse(self) -> Direction:
        return _REVERSE[self]

    @property
    def sends(self) -> bool:
        return self in (Direction.SENDRECV, Direction.SENDONLY)

    @property
    def receives(self) -> bool:
        return self in (Direction.SENDRECV, Direction.RECVONLY)


_REVERSE = {
    Direction.SENDRECV: Direction.SENDRECV, Direction.SENDONLY: Direction.RECVONLY,
    Direction.RECVONLY: Direction.SENDONLY, Direction.INACTIVE: Direction.INACTIVE,
}
_DIRECTIONS = {d.value: d for d in Direction}

Attribute = tuple[str, "str | None"]


@dataclass(frozen=True)
class Origin:
    username: str
    session_id: str
    session_version: int
    nettype: str
    addrtype: str
    address: str

    def __str__(self) -> str:
        return (f"{self.username} {self.session_id} {self.session_version} {self.nettype} "
                f"{self.addrtype} {self.address}")


@dataclass(frozen=True)
class Connection:
    nettype: str
    addrtype: str
    address: str   # without any /ttl/count suffix

    @property
    def is_hold(self) -> bool:
        return self.address in ("0.0.0.0", "::")

    def __str__(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}"


def _attr(attributes: tuple[Attribute, ...], name: str) -> list[str | None]:
    return [v for k, v in attributes if k == name]


@dataclass(frozen=True)
class MediaDescription:
    media: str
    port: int
    proto: str
    formats: tuple[str, ...]
    connection: Connection | None = None
    attributes: tuple[Attribute, ...] = ()
    other: tuple[tuple[str, str], ...] = ()    # i=, b=, k= lines, kept in order
    port_count: int | None = None

    def attr(self, name: str) -> list[str | None]:
        return _attr(self.attributes, name)

    def rtpmap(self) -> dict[str, tuple[str, int]]:
        """Payload type -> (encoding name lowercased, clock rate)."""
        out: dict[str, tuple[str, int]] = {}
        for value in self.attr("rtpmap"):
            if not value:
                continue
            pt, _, desc = value.partition(" ")
            parts = desc.strip().split("/")
            if len(parts) >= 2 and parts[1].isdigit():
                out[pt] = (parts[0].lower(), int(parts[1]))
        return out

    def fmtp(self, pt: str) -> str | None:
        for value in self.attr("fmtp"):
            if value and value.split(" ", 1)[0] == pt:
                return value.split(" ", 1)[1] if " " in value else ""
        return None

    def direction(self, session: tuple[Attribute, ...] = ()) -> Direction:
        for name, _value in self.attributes:
            if name in _DIRECTIONS:
                return _DIRECTIONS[name]
        for name, _value in session:
            if name in _DIRECTIONS:
                return _DIRECTIONS[name]
        return Direction.SENDRECV

    def ptime(self) -> int | None:
        for value in self.attr("ptime"):
            if value and value.strip().isdigit():
                return int(value.strip())
        return None


@dataclass(frozen=True)
class SessionDescription:
    origin: Origin
    session_name: str = "-"
    connection: Connection | None = None
    timing: tuple[str, ...] = ("0 0",)
    attributes: tuple[Attribute, ...] = ()
    media: tuple[MediaDescription, ...] = ()
    other: tuple[tuple[str, str], ...] = ()   # i=, u=, e=, p=, b=, z=, k=, r= lines
    version: int = 0

    def serialize(self) -> bytes:
        lines = [f"v={self.version}", f"o={self.origin}", f"s={self.session_name}"]
        lines += [f"{k}={v}" for k, v in self.other if k in "iuep"]
        if self.connection is not None:
            lines.append(f"c={self.connection}")
        lines += [f"{k}={v}" for k, v in self.other if k == "b"]
        lines += [f"t={t}" for t in self.timing]
        lines += [f"{k}={v}" for k, v in self.other if k in "rzk"]
        lines += [_format_attr(a) for a in self.attributes]
        for m in self.media:
            port = f"{m.port}/{m.port_count}" if m.port_count else str(m.port)
            lines.append(f"m={m.media} {port} {m.proto} {' '.join(m.formats)}".rstrip())
            lines += [f"{k}={v}" for k, v in m.other if k == "i"]
            if m.connection is not None:
                lines.append(f"c={m.connection}")
            lines += [f"{k}={v}" for k, v in m.other if k != "i"]
            lines += [_format_attr(a) for a in m.attributes]
        return ("\r\n".join(lines) + "\r\n").encode()


def _format_attr(attr: Attribute) -> str:
    name, value = attr
    return f"a={name}" if value is None else f"a={name}:{value}"


def _parse_connection(value: str) -> Connection:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpError("bad c= line")
    return Connection(parts[0], parts[1], parts[2].split("/", 1)[0])


def _parse_origin(value: str) -> Origin:
    parts = value.split()
    if len(parts) != 6 or not parts[2].isdigit() or len(parts[2]) > 20:
        raise SdpError("bad o= line")
    return Origin(parts[0], parts[1], int(parts[2]), parts[3], parts[4], parts[5])


def _parse_media(value: str) -> MediaDescription:
    parts = value.split()
    if len(parts) < 3:
        raise SdpError("bad m= line")
    port_text, _, count_text = parts[1].partition("/")
    if not port_text.isdigit() or int(port_text) > 65535 or (
            count_text and not count_text.isdigit()):
        raise SdpError("bad m= port")
    return MediaDescription(parts[0], int(port_text), parts[2], tuple(parts[3:]),
                            port_count=int(count_text) if count_text else None)


def parse_sdp(data: bytes | str) -> SessionDescription:
    """Parse a session description (RFC 4566 §5). Raises SdpError only."""
    if isinstance(data, bytes):
        if len(data) > MAX_SDP_BYTES:
            raise SdpError("SDP too large")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SdpError("SDP is not UTF-8") from None
    else:
        text = data
    lines = [line for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
    if not lines or lines[0].strip() != "v=0":
        raise SdpError("SDP must start with v=0")
    origin: Origin | None = None
    session_name = "-"
    connection: Connection | None = None
    timing: list[str] = []
    attributes: list[Attribute] = []
    other: list[tuple[str, str]] = []
    media: list[MediaDescription] = []
    for line in lines[1:]:
        if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
            raise SdpError("bad SDP line")
        kind, value = line[0], line[2:].strip()
        if kind == "m":
            media.append(_parse_media(value))
        elif media:
            current = media[-1]
            if kind == "c":
                media[-1] = replace(current, connection=_parse_connection(value))
            elif kind == "a":
                media[-1] = replace(current, attributes=(*current.attributes,
                                                         _parse_attr(value)))
            else:
                media[-1] = replace(current, other=(*current.other, (kind, value)))
        elif kind == "o":
            origin = _parse_origin(value)
        elif kind == "s":
            session_name = value or " "
        elif kind == "c":
            connection = _parse_connection(value)
        elif kind == "t":
            timing.append(value)
        elif kind == "a":
            attributes.append(_parse_attr(value))
        else:
            other.append((kind, value))
    if origin is None:
        raise SdpError("SDP without o= line")
    return SessionDescription(origin, session_name, connection, tuple(timing) or ("0 0",),
                              tuple(attributes), tuple(media), tuple(other))


def _parse_attr(value: str) -> Attribute:
    name, colon, rest = value.partition(":")
    if not name:
        raise SdpError("bad a= line")
    return (name, rest if colon else None)


# ------------------------------------------------------------------------- offer/answer

@dataclass(frozen=True)
class NegotiatedMedia:
    """What the RTP endpoint needs after offer/answer."""

    remote_address: str
    remote_port: int
    codec: str                      # "pcmu" / "pcma" / "g722"
    payload_type: int
    dtmf_payload_type: int | None
    ptime_ms: int
    remote_direction: Direction     # as the far end declared it
    local_direction: Direction      # what we declared
    #: The SDES keys of an SRTP stream (RTP/SAVP); None for plain RTP.
    srtp: SdesKeys | None = None

    @property
    def may_send(self) -> bool:
        """False while the far end is holding the call (sendonly/inactive/c=0.0.0.0)."""
        return self.local_direction.sends

    @property
    def on_hold(self) -> bool:
        return not self.may_send


def _usable_audio(m: MediaDescription, protos: tuple[str, ...] = PLAIN_RTP) -> bool:
    # Plain RTP unless SRTP is asked for; WebRTC (UDP/TLS/RTP/SAVPF, ICE, DTLS) is not
    # something an RTP endpoint can answer.
    return m.media == "audio" and m.port != 0 and m.proto.upper() in protos


def _codec_of(m: MediaDescription, pt: str) -> str | None:
    rtpmap = m.rtpmap()
    if pt in rtpmap:
        name, rate = rtpmap[pt]
        if rate == 8000 and name in CODEC_NAMES:      # G722/8000 too (RFC 3551)
            return name
        return None
    if pt.isdigit() and int(pt) in STATIC_PT:
        return STATIC_PT[int(pt)]
    return None


def _dtmf_pt(m: MediaDescription) -> str | None:
    for pt, (name, rate) in m.rtpmap().items():
        if name == "telephone-event" and rate == 8000 and pt in m.formats:
            return pt
    return None


def _rank(codec: str, codecs: tuple[str, ...]) -> int:
    """Our preference for ``codec`` (lower is better); the G.711 laws rank together."""
    if codec in G711_LAWS:
        return min(codecs.index(c) for c in G711_LAWS if c in codecs)
    return codecs.index(codec)


def _pick_codec(m: MediaDescription, codecs: tuple[str, ...]) -> tuple[str, str] | None:
    """(payload type, codec) of the offered codec we rank first; ties: the caller's order."""
    best: tuple[int, str, str] | None = None
    for pt in m.formats:
        codec = _codec_of(m, pt)
        if codec is not None and codec in codecs:
            rank = _rank(codec, codecs)
            if best is None or rank < best[0]:
                best = (rank, pt, codec)
    return None if best is None else (best[1], best[2])


def renegotiation_codecs(current: NegotiatedMedia | None, codecs: tuple[str, ...],
                         ) -> tuple[str, ...]:
    """The codecs a re-INVITE's answer may choose: the call's own first, then ours at its
    audio rate only (the call's resamplers were built for that rate; a re-offer without
    one of them is refused with 488 and the call goes on as it was)."""
    if current is None:
        return codecs
    rate = AUDIO_RATE[current.codec]
    return (current.codec, *(c for c in codecs
                             if c != current.codec and AUDIO_RATE[c] == rate))


def _choose_ptime(offered: int | None) -> int:
    if offered in ALLOWED_PTIME:
        return offered
    return 20


def answer_offer(offer: SessionDescription, *, address: str, port: int,
                 codecs: tuple[str, ...] = ("pcmu", "pcma"), session_id: str = "0",
                 session_version: int = 0, username: str = "voicebridge",
                 hold: bool = False, protos: tuple[str, ...] = PLAIN_RTP,
                 ) -> tuple[SessionDescription, NegotiatedMedia]:
    """Answer ``offer`` with one audio stream on ``address:port``; raise SdpError if none fits.

    ``hold`` lets us answer a re-INVITE while keeping our own side on hold (unused today).
    ``protos``: the stream transports we may pick (an SRTP answer also needs its keys).
    """
    chosen: tuple[int, str, str] | None = None   # (index, pt, codec)
    for index, m in enumerate(offer.media):
        if _usable_audio(m, protos):
            picked = _pick_codec(m, codecs)
            if picked is not None:
                chosen = (index, *picked)
                break
    if chosen is None:
        raise SdpError(f"no common audio codec (PCMU/PCMA/G722 over {' or '.join(protos)})")
    index, pt, codec = chosen
    offered = offer.media[index]
    conn = offered.connection or offer.connection
    if conn is None:
        raise SdpError("no connection address for the audio stream")
    remote_dir = offered.direction(offer.attributes)
    if conn.is_hold and remote_dir.receives:
        # RFC 3264 §8.4: c=0.0.0.0 is the old way of saying "do not send to me".
        remote_dir = Direction.SENDONLY if remote_dir.sends else Direction.INACTIVE
    local_dir = remote_dir.reverse
    if hold:
        local_dir = Direction.RECVONLY if local_dir.receives else Direction.INACTIVE
    dtmf = _dtmf_pt(offered)
    ptime = _choose_ptime(offered.ptime())
    formats = (pt,) if dtmf is None else (pt, dtmf)
    attrs: list[Attribute] = [("rtpmap", f"{pt} {CODEC_NAMES[codec]}/8000")]
    if dtmf is not None:
        attrs.append(("rtpmap", f"{dtmf} telephone-event/8000"))
        attrs.append(("fmtp", f"{dtmf} {offered.fmtp(dtmf) or '0-16'}"))
    attrs.append(("ptime", str(ptime)))
    attrs.append((local_dir.value, None))
    media: list[MediaDescription] = []
    for i, m in enumerate(offer.media):
        if i == index:
            media.append(MediaDescription("audio", port, offered.proto, formats,
                                          attributes=tuple(attrs)))
        else:
            # RFC 3264 §6: a refused stream keeps its place with port zero.
            media.append(MediaDescription(m.media, 0, m.proto, m.formats[:1] or ("0",)))
    addrtype = "IP6" if ":" in address else "IP4"
    answer = SessionDescription(
        Origin(username, session_id, session_version, "IN", addrtype, address),
        "voicebridge", Connection("IN", addrtype, address), ("0 0",), (), tuple(media))
    negotiated = NegotiatedMedia(conn.address, offered.port, codec, int(pt),
                                 int(dtmf) if dtmf is not None else None, ptime,
                                 remote_dir, local_dir)
    return answer, negotiated


def make_offer(*, address: str, port: int, codecs: tuple[str, ...] = ("pcmu", "pcma"),
               dtmf_payload_type: int = DEFAULT_DTMF_PT, ptime_ms: int = 20,
               session_id: str = "0", session_version: int = 0,
               username: str = "voicebridge",
               direction: Direction = Direction.SENDRECV) -> SessionDescription:
    """Our offer (for an INVITE without SDP: offer in the 200, answer in the ACK)."""
    formats = [str(pt) for codec in codecs for pt, name in STATIC_PT.items() if name == codec]
    attrs: list[Attribute] = [("rtpmap", f"{pt} {CODEC_NAMES[STATIC_PT[int(pt)]]}/8000")
                              for pt in formats]
    formats.append(str(dtmf_payload_type))
    attrs.append(("rtpmap", f"{dtmf_payload_type} telephone-event/8000"))
    attrs.append(("fmtp", f"{dtmf_payload_type} 0-16"))
    attrs.append(("ptime", str(ptime_ms)))
    attrs.append((direction.value, None))
    addrtype = "IP6" if ":" in address else "IP4"
    return SessionDescription(
        Origin(username, session_id, session_version, "IN", addrtype, address),
        "voicebridge", Connection("IN", addrtype, address), ("0 0",), (),
        (MediaDescription("audio", port, "RTP/AVP", tuple(formats), attributes=tuple(attrs)),))


def accept_answer(offer: SessionDescription, answer: SessionDescription,
                  ) -> NegotiatedMedia:
    """Read the far end's answer to our offer (RFC 3264 §7)."""
    if len(answer.media) != len(offer.media):
        raise SdpError("answer does not match the offer's m-lines")
    for ours, m in zip(offer.media, answer.media, strict=True):
        if ours.media != "audio" or not _usable_audio(m):
            continue
        for pt in m.formats:
            codec = _codec_of(m, pt)
            if codec is not None and pt in ours.formats:
                conn = m.connection or answer.connection
                if conn is None:
                    raise SdpError("no connection address in the answer")
                remote_dir = m.direction(answer.attributes)
                if conn.is_hold and remote_dir.receives:
                    remote_dir = Direction.SENDONLY if remote_dir.sends else Direction.INACTIVE
                local_dir = ours.direction(offer.attributes)
                if not remote_dir.receives:
                    local_dir = (Direction.RECVONLY if local_dir.receives
                                 else Direction.INACTIVE)
                dtmf = _dtmf_pt(m)
                return NegotiatedMedia(conn.address, m.port, codec, int(pt),
                                       int(dtmf) if dtmf is not None else None,
                                       _choose_ptime(m.ptime() or ours.ptime()),
                                       remote_dir, local_dir)
    raise SdpError("the answer accepts none of our audio codecs")


def with_version(sdp: SessionDescription, version: int) -> SessionDescription:
    """Same description, new o= version (RFC 3264 §8: bump it on every change)."""
    return replace(sdp, origin=replace(sdp.origin, session_version=version))
