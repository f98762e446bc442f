"""`minigpt serve`: a local playground to watch models generate (see docs/serve.md).

`engine` holds the models and the generation threads (no web framework); `app` is the
Starlette app that serves the page and streams tokens as server-sent events. Both need the
optional extra `minigpt[serve]` (starlette, uvicorn); importing this package does not.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from pathlib import Path

from ..errors import MiniGPTError


def serve(ckpts: list[str | Path], *, host: str = "127.0.0.1", port: int = 8000,
          which: str = "last", limits=None, settings=None,
          log: Callable[[str], None] = print) -> None:
    """Load `ckpts` and serve the playground until interrupted (Ctrl-C); `settings` (a
    SamplingSettings) holds the weights to sample with and what a request leaves out."""
    try:
        import uvicorn

        from .app import PlaygroundServer, build_app
    except ModuleNotFoundError as e:
        raise MiniGPTError(f"minigpt serve needs the serve extra ({e.name} is missing); install "
                           "it with pip install 'minigpt[serve]'.") from None
    from .engine import Engine, load_entries

    sock = bind(host, port)  # before loading: a busy port is refused at once
    engine = None
    try:
        engine = Engine(load_entries(ckpts, which=which), limits, settings)
        addr = sock.getsockname()
        shown = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
        names = ", ".join(f"{e.name} ({e.pos})" for e in engine.entries.values())
        log(f"minigpt serve: http://{shown}:{addr[1]}/ serving {names}; Ctrl-C to stop.")
        config = uvicorn.Config(build_app(engine), log_level="warning", access_log=False,
                                timeout_graceful_shutdown=5, lifespan="off")
        server = PlaygroundServer(config, engine)
        server.run(sockets=[sock])
        if server.stopped_by == signal.SIGINT:  # uvicorn does not always re-raise Ctrl-C
            raise KeyboardInterrupt
    finally:
        sock.close()
        if engine is not None:
            engine.close()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or one clear sentence about why there is none."""
    if not 0 <= port <= 65535:
        raise MiniGPTError(f"--port must be between 0 and 65535, got {port}.")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise MiniGPTError(f"--host {host} is not an address of this machine.") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        why = "is in use" if e.errno == 98 else f"cannot be used ({e.strerror})"
        raise MiniGPTError(f"port {port} on {host} {why}; pass another --port (0 picks a free "
                           "one).") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
