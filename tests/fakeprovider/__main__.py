"""``python -m tests.fakeprovider --port 9100 [--host 127.0.0.1] [knobs...]``

Prints one line ``FAKEPROVIDER_READY http://HOST:PORT`` on stdout once it listens
(``--port 0`` picks a free port), then serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from .server import make_server


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.fakeprovider", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9100, help="0 = any free port")
    p.add_argument("--ttft-ms", type=float, default=0.0, help="time to first token, ms")
    p.add_argument("--tokens-per-s", type=float, default=0.0, help="token rate; 0 = as fast as possible")
    p.add_argument("--tokens", type=int, default=16, help="reply length in tokens")
    p.add_argument("--mode", choices=("tokens", "echo"), default="tokens")
    p.add_argument("--text", default=None, help="fixed reply text (overrides --mode)")
    p.add_argument("--api-key", default=None, help="accept only this credential (default: any)")
    p.add_argument("--record-limit", type=int, default=10000, help="recorded requests kept; 0 = none")
    p.add_argument("--no-record-bodies", action="store_true", help="record requests without their bodies")
    p.add_argument("--log-level", default="warning")
    a = p.parse_args(argv)
    try:  # 1,000+ concurrent streams need as many descriptors
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
    except (ImportError, ValueError, OSError):  # pragma: no cover
        pass
    # uvicorn re-raises the signal it caught once it has shut down: make that a clean exit
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    server, sock, _ = make_server(
        a.host,
        a.port,
        log_level=a.log_level,
        ttft_ms=a.ttft_ms,
        tokens_per_s=a.tokens_per_s,
        tokens=a.tokens,
        mode=a.mode,
        text=a.text,
        api_key=a.api_key,
        record_limit=a.record_limit,
        record_bodies=not a.no_record_bodies,
    )
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host

    async def run() -> None:
        serve = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started and not serve.done():
            await asyncio.sleep(0.01)
        if server.started:
            print(f"FAKEPROVIDER_READY http://{shown}:{port}", flush=True)
        await serve

    try:
        if server.config.loop == "uvloop":
            import uvloop

            uvloop.run(run())
        else:
            asyncio.run(run())
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
