"""The upstream Realtime leg: client for Azure OpenAI / OpenAI, and the local emulator.

Modules of the client: ``events`` (the internal event vocabulary every dialect maps to),
``dialects`` (sans-I/O wire mapping, GA and preview), ``profile`` (agent profile ->
``session.update``), ``config`` (targets and credentials from the environment and the
``[realtime]`` section), ``auth`` (handshake headers, Entra ID tokens), ``history`` (the
conversation text for re-seeding a new session), ``client`` (the asyncio adapter:
``RealtimeClient``). The emulator lives in ``bridge.realtime.emulator``.
"""
