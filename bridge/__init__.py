"""voicebridge: answer phone calls with a Realtime voice agent.

Packages:

- ``bridge.codecs``    audio core: G.711, streaming resampling, framing, levels
- ``bridge.dialplans`` routing of a call to an agent profile, and its tool registry
- ``bridge.realtime``  the upstream Realtime leg (client) and the local emulator
- ``bridge.sip``       SIP user agent server (sans-I/O core + asyncio transports)
- ``bridge.rtp``       RTP media endpoint (sans-I/O core + asyncio endpoint)
- ``bridge.call``      the call engine between a media leg and a Realtime session
- ``bridge.web``       HTTP app: softphone page, dashboard, health, metrics
- ``bridge.webrtc``    WebRTC media leg (aiortc)
- ``bridge.bench``     benchmark programs (``voicebridge bench ...``)
"""

__version__ = "0.1.0"
