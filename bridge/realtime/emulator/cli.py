"""``voicebridge emulator``: run the local Realtime emulator alone."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal

from bridge.errors import ConfigError
from bridge.realtime.emulator.server import Emulator, EmulatorConfig

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on "
                        "(default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 = any)")
    parser.add_argument("--script", default=None, help="TOML file of scripted rules")
    parser.add_argument("--api-key-env", default=None, metavar="NAME",
                        help="require the api-key (or Bearer token) held in environment "
                        "variable NAME")
    parser.add_argument("--session-max-s", type=float, default=1800.0,
                        help="session length before session_expired (default 1800)")
    parser.add_argument("--greeting-ms", type=int, default=1200,
                        help="length of the greeting tone (default 1200)")
    parser.add_argument("--open-delay-ms", type=int, default=0,
                        help="wait this long before session.created, as a cloud service's "
                        "session set-up does (default 0)")
    parser.add_argument("--pace", type=float, default=4.0,
                        help="send audio deltas this many times faster than real time "
                        "(0 = at once; default 4)")
    parser.add_argument("--chat-chunk-ms", type=int, default=60,
                        help="between two streamed Chat Completions chunks (default 60)")


def _config(args: argparse.Namespace) -> EmulatorConfig:
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise ConfigError(f"--api-key-env: environment variable {args.api_key_env} is "
                              "not set")
    return EmulatorConfig(host=args.host, port=args.port, api_key=api_key, script=args.script,
                          session_max_s=args.session_max_s, greeting_ms=args.greeting_ms,
                          pace=args.pace, open_delay_ms=args.open_delay_ms,
                          chat_chunk_ms=args.chat_chunk_ms)


async def _serve(config: EmulatorConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with Emulator(config) as emu:
        print(f"Realtime emulator listening on {emu.url}", flush=True)
        print(f"  GA:      {emu.url}/openai/v1/realtime?model=gpt-realtime", flush=True)
        print(f"  preview: {emu.url}/openai/realtime?api-version=2025-04-01-preview"
              "&deployment=gpt-realtime", flush=True)
        http = emu.url.replace("ws://", "http://", 1)
        print(f"  chat:    POST {http}/openai/v1/chat/completions (also /v1/chat/completions "
              "and /openai/deployments/NAME/chat/completions?api-version=V)", flush=True)
        await stop.wait()


def run(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
        asyncio.run(_serve(config))
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", args.host, args.port, exc.strerror)
        return 1
    return 0
