"""The playground's web layer: a small Starlette app, server-sent events, one hand-written page.

    GET  /                      the page (static/index.html; its script and style are served
                                from static/ too: nothing comes from the network)
    GET  /api/models            the loaded checkpoints, the limits and the defaults
    POST /api/generate          JSON request -> text/event-stream of start/token/done events
    POST /api/attention         {model, ids} -> attention weights of every layer and head
    GET  /api/viz/{model}       the names of the encoding's pictures (drawn once by viz)
    GET  /api/viz/{model}/{png} one of those pictures
    GET  /api/stats             generations started/finished/cancelled/active, tokens

Errors are JSON {"error": one sentence} with a 4xx status; the page shows the sentence.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import MiniGPTError
from .engine import REQUEST_SETTINGS, Busy, Engine, UnknownModel

STATIC = Path(__file__).with_name("static")
MAX_BODY = 256 * 1024  # bytes of JSON a request may send
FLUSH_S = 0.01  # seconds between two writes of a stream's tokens


def error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def read_json(request: Request) -> Any:
    body = b""
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                raise MiniGPTError(f"the request is larger than {MAX_BODY // 1024} KiB.")
    except ClientDisconnect:
        raise MiniGPTError("the browser closed the request.") from None
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise MiniGPTError("the request body is not valid JSON.") from None


class Outbox:
    """Events from a generation thread to its response, with one loop wake-up per burst
    (the loop takes everything that arrived while it was busy in one go)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.ready = loop, asyncio.Event()
        self.items: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.armed = False  # a wake-up is on its way

    def put(self, event: dict[str, Any]) -> None:  # from the generation thread
        with self.lock:
            self.items.append(event)
            if self.armed:
                return
            self.armed = True
        try:
            self.loop.call_soon_threadsafe(self.ready.set)
        except RuntimeError:  # the loop has closed: the server is shutting down
            pass

    async def get_all(self) -> list[dict[str, Any]]:
        await self.ready.wait()
        with self.lock:
            items, self.items, self.armed = self.items, [], False
            self.ready.clear()
        return items


def sse(event: dict[str, Any]) -> str:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"


def models_payload(engine: Engine) -> dict[str, Any]:
    """The loaded models, the request limits and the page's default knobs."""
    lim = engine.limits
    return {"models": [e.info() for e in engine.entries.values()],
            "limits": {"max_prompt_chars": lim.max_prompt_chars,
                       "max_new_tokens": lim.max_new_tokens, "max_jobs": lim.max_jobs},
            "defaults": {**{k: getattr(engine.settings, k) for k in REQUEST_SETTINGS},
                         "max_new_tokens": min(engine.settings.max_new_tokens,
                                               lim.max_new_tokens)}}


def event_response(outbox: Outbox, job: Any) -> StreamingResponse:
    """A job's events as server-sent events; the job is cancelled when the stream ends,
    finished or abandoned by the browser (stop button, closed tab)."""

    async def events():
        try:
            while True:
                batch = await outbox.get_all()  # whatever arrived: one write
                if not batch:
                    continue
                yield "".join(sse(ev) for ev in batch)
                if any(ev["type"] in ("done", "error") for ev in batch):
                    return
                if batch[-1]["type"] == "token":
                    # at most one write per FLUSH_S: a fast model's tokens go out in
                    # batches, leaving the CPU to the model (a page repaints at 60 Hz)
                    await asyncio.sleep(FLUSH_S)
        finally:
            job.cancel()

    # no-cache, not no-store: Chromium fails a fully read no-store fetch stream with
    # ERR_ABORTED (playwright issue 42742)
    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# --- the routes: each asks the app's engine (build_app puts it in app.state) -------------

def _engine(request: Request) -> Engine:
    return request.app.state.engine


async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


async def models(request: Request) -> Response:
    return JSONResponse(models_payload(_engine(request)))


async def generate(request: Request) -> Response:
    engine = _engine(request)
    try:
        req = engine.parse_request(await read_json(request))
    except UnknownModel as e:
        return error(str(e), 404)
    except MiniGPTError as e:
        return error(str(e))
    outbox = Outbox(asyncio.get_running_loop())
    try:
        # in a worker thread: tokenizing a long prompt may take a while
        job = await asyncio.to_thread(engine.start, req, outbox.put)
    except Busy as e:
        return error(str(e), 503)
    except MiniGPTError as e:
        return error(str(e))
    return event_response(outbox, job)


async def attention(request: Request) -> Response:
    try:
        body = await read_json(request)
        return JSONResponse(await asyncio.to_thread(_engine(request).attention, body))
    except MiniGPTError as e:
        return error(str(e))


async def _pictures(request: Request) -> tuple[Path, list[str], str]:
    """The model's `viz` pictures (drawn once, in a worker thread): (dir, names, note)."""
    return await asyncio.to_thread(_engine(request).viz, request.path_params["model"])


async def viz_list(request: Request) -> Response:
    try:
        _, names, note = await _pictures(request)
    except MiniGPTError as e:
        return error(str(e), 404)
    return JSONResponse({"images": names, "note": note})


async def viz_file(request: Request) -> Response:
    try:
        out, names, _ = await _pictures(request)
    except MiniGPTError as e:
        return error(str(e), 404)
    name = request.path_params["png"]
    if name not in names:  # only pictures viz drew: no paths from the browser
        return error(f"no picture {name!r} for this model.", 404)
    return FileResponse(out / name, media_type="image/png")


async def stats(request: Request) -> Response:
    return JSONResponse(_engine(request).stats.as_dict())


def build_app(engine: Engine) -> Starlette:
    app = Starlette(routes=[
        Route("/", index),
        Route("/api/models", models),
        Route("/api/generate", generate, methods=["POST"]),
        Route("/api/attention", attention, methods=["POST"]),
        Route("/api/viz/{model}", viz_list),
        Route("/api/viz/{model}/{png}", viz_file),
        Route("/api/stats", stats),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ])
    app.state.engine = engine
    return app


class PlaygroundServer(uvicorn.Server):
    """uvicorn's server, but Ctrl-C first stops the generations so that their streams end."""

    def __init__(self, config: uvicorn.Config, engine: Engine) -> None:
        super().__init__(config)
        self.engine = engine
        self.stopped_by: int | None = None  # the signal that stopped the server, if any

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.stopped_by = self.stopped_by or sig
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: Any = None) -> None:
        self.engine.stop_all()
        await super().shutdown(sockets)
