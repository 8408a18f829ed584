"""The upstream Realtime leg: client for Azure OpenAI / OpenAI, and the local emulator.

Modules of the client: ``events`` (the internal event vocabulary every dialect maps to),
``dialects`` (sans-I/O wire mapping, GA and preview), ``profile`` (agent profile ->
``session.update``), ``config`` (targets and credentials from the environment and the
``[realtime]`` section), ``auth`` (handshake headers, Entra ID tokens), ``history`` (the
conversation text for re-seeding a new session), ``responses`` (sans-I/O response
bookkeeping: which responses are active, their items, what was heard), ``connection``
(opening one session: handshake, ``session.update``, re-seed), ``client`` (the asyncio
adapter: ``RealtimeClient``, with reconnect and rotation). Every use of websockets'
private names is in ``bridge.internals.websockets``. The emulator lives in
``bridge.realtime.emulator``.
"""
