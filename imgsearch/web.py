"""``imgsearch serve``: a local web UI over one index. Routes only; the work is ``Index``'s.

Starlette (the toolkit FastAPI is built on) and uvicorn: the UI needs a handful of JSON and
image routes, no request models or generated API docs, and nothing else is exposed. Only
files in the index are ever served, addressed by their integer id (anything else is 404);
a query upload is held in memory, size-limited, and decoded from a private temporary
folder, never from or into the photo folders.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from imgsearch import config
from imgsearch.api import Index
from imgsearch.errors import ImgsearchError
from imgsearch.files import BadImage, decode
from imgsearch.report import display_name
from imgsearch.results import Hit, Text
from imgsearch.thumbnails import cached_thumbnail

DEFAULT_K = 24  # a grid's worth
MAX_K = 200
# A multipart upload: what its body may hold beyond the photo (boundaries, part headers and
# small fields), and how many parts it may have at most.
FORM_OVERHEAD = 64 * 1024
FORM_FILES = 8
FORM_FIELDS = 32

# python-multipart logs a malformed form as a warning on stderr; the client's 400 answer
# already says what was wrong with it.
logging.getLogger("python_multipart").addHandler(logging.NullHandler())
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}


class Viewer:
    """The server's state: one index, used by one request at a time (``Index`` is not made
    for concurrent use), and what was worked out for the index as it last was."""

    def __init__(self, index: Index, upload_limit: int = config.UPLOAD_LIMIT):
        self.index = index
        self.upload_limit = upload_limit
        self.lock = threading.Lock()
        self.model_lock = threading.Lock()
        self.memo: dict[tuple, object] = {}
        folder = resources.files("imgsearch").joinpath("static")
        self.files = {n: folder.joinpath(n).read_bytes() for n in (*STATIC, "index.html")}

    @contextlib.contextmanager
    def using(self) -> Iterator[Index]:
        with self.lock:
            if self.index.refresh():  # re-indexed by another process meanwhile
                self.memo.clear()
            yield self.index

    def model_ready(self) -> None:
        """Load the model once, under a lock of its own: browsing goes on while it loads, and
        a search that needs it waits here, not inside the index lock."""
        with self.model_lock:
            self.index.query_model  # noqa: B018 - loads it

    def warm_up(self) -> None:
        """Load the model before the first upload or text query needs it."""
        with contextlib.suppress(Exception):  # a failure shows when a search needs the model
            self.model_ready()

    def card(self, index: Index, path: str, image_id: int | None = None) -> dict:
        if image_id is None:
            found = index.image_file(path)
            image_id = found.id if found is not None else None
        return {"id": image_id, "path": path, "name": display_name(index, path)}

    def hits(self, index: Index, hits: list[Hit]) -> list[dict]:
        return [
            {
                **self.card(index, h.path, h.id),
                "score": round(h.score, 4),
                "shared": h.shared,
                "taken": h.taken,
                "taken_from": h.taken_from,
                "camera": h.camera,
            }
            for h in hits
        ]


class LoopbackOnly:
    """Answer only requests addressed to a loopback name (the Host header), so that a web page
    cannot reach the photos by pointing a domain of its own at 127.0.0.1 (DNS rebinding)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                name = urlsplit(f"//{Headers(scope=scope).get('host', '')}").hostname
            except ValueError:  # not even a host name
                name = None
            if name not in ("localhost", "127.0.0.1", "::1"):
                response = PlainTextResponse("Invalid host header", status_code=400)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class OneLineErrors:
    """An unexpected error in a request: a 500 answer in JSON, and one line on the console.
    (Starlette's own error middleware hands every such error on to the server, which prints
    its full traceback, once per request.)"""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:  # noqa: BLE001 - the one place unexpected errors end
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            where = f"{scope.get('method', '')} {scope.get('path', '')}"
            print(f"imgsearch: error serving {where}: {reason}", file=sys.stderr, flush=True)
            if not started:
                await _error(500, f"internal error: {reason}")(scope, receive, send)


def create_app(
    index: Index, upload_limit: int = config.UPLOAD_LIMIT, loopback_only: bool = True
) -> Starlette:
    """The app over one open index; ``loopback_only`` while it listens on loopback."""
    viewer = Viewer(index, upload_limit)

    def home(request: Request) -> Response:
        return Response(viewer.files["index.html"], media_type="text/html")

    def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            raise HTTPException(404)
        return Response(viewer.files[name], media_type=STATIC[name])

    def status(request: Request) -> Response:
        with viewer.using() as ix:
            info = ix.status()
        return JSONResponse(
            {
                "root": info.root,
                "model": info.model,
                "images": info.images,
                "captions": info.caption_count,
                "upload_limit": viewer.upload_limit,
            }
        )

    def thumbnail(request: Request) -> Response:
        with viewer.using() as ix:
            found = ix.image_file(request.path_params["image_id"])
        if found is None:
            raise HTTPException(404)
        tag = f'"{found.hash}-{config.THUMBNAIL_SIZE}"'
        headers = {"ETag": tag, "Cache-Control": "no-cache"}  # revalidated, rarely re-sent
        if request.headers.get("if-none-match") == tag:
            return Response(status_code=304, headers=headers)
        data = cached_thumbnail(found, config.THUMBNAIL_SIZE)  # outside the lock: in parallel
        if data is None:
            raise HTTPException(404)
        return Response(data, media_type="image/jpeg", headers=headers)

    def image(request: Request) -> Response:
        with viewer.using() as ix:
            found = ix.image_file(request.path_params["image_id"])
        if found is None:
            raise HTTPException(404)
        return FileResponse(found.path, content_disposition_type="inline")

    def search_text(request: Request) -> Response:
        text = request.query_params.get("q", "")
        k = _k(request)
        viewer.model_ready()
        with viewer.using() as ix:
            hits = ix.query_text(text, k=k, explain=True, **_options(request))
            query = {"kind": "text", "text": text}
            return JSONResponse({"query": query, "hits": viewer.hits(ix, hits)})

    def similar(request: Request) -> Response:
        k = _k(request)
        with contextlib.suppress(Exception):  # needed only for a photo changed since indexing
            viewer.model_ready()
        with viewer.using() as ix:
            found = ix.image_file(request.path_params["image_id"])
            if found is None:
                raise HTTPException(404)
            options = _options(request)
            if _texts(request):
                viewer.model_ready()
            hits = ix.query(found.path, k=k, explain=True, **options)
            query = {
                "kind": "indexed",
                "text": "; ".join(t.text for t in _texts(request)) or None,
                **viewer.card(ix, str(found.path), found.id),
                "captions": [c.text for c in ix.captions(found.path)[:5]],
            }
            return JSONResponse({"query": query, "hits": viewer.hits(ix, hits)})

    async def search_image(request: Request) -> Response:
        """The photo as the raw body, or as a multipart/form-data upload's file field."""
        k = _k(request)
        form = _is_form(request.headers)
        # A form carries the photo with its boundaries and part headers: room for those.
        limit = viewer.upload_limit + (FORM_OVERHEAD if form else 0)
        body = bytearray()
        too_large = _content_length(request) > limit
        async for chunk in request.stream():
            if not too_large:
                body += chunk
                too_large = len(body) > limit
        # Read to the end even when refused, so the client gets the answer, not a reset.
        if not too_large and form:
            body = await form_file(request.headers, bytes(body))
            too_large = len(body) > viewer.upload_limit
        if too_large:
            megabytes = viewer.upload_limit / 2**20
            return _error(413, f"the image is larger than the upload limit of {megabytes:g} MB")
        if not body:
            raise ImgsearchError("the upload is empty: choose an image file")
        return await run_in_threadpool(search_upload, bytes(body), k, _options(request))

    def search_upload(data: bytes, k: int, options: dict) -> Response:
        with tempfile.TemporaryDirectory(prefix="imgsearch-upload-") as folder:
            path = Path(folder) / "upload"
            path.write_bytes(data)
            try:
                picture = decode(path, limits=viewer.index.limits).image
            except BadImage as exc:
                raise ImgsearchError(f"the upload cannot be used: {exc}") from None
        viewer.model_ready()
        with viewer.using() as ix:
            hits = ix.query(picture, k=k, explain=True, **options)
            captions = [c.text for c in ix.captions(picture)[:5]]
            text = "; ".join(t.text for _, t in options.get("positive", ())) or None
            query = {"kind": "image", "captions": captions, "text": text}
            return JSONResponse({"query": query, "hits": viewer.hits(ix, hits)})

    def clusters(request: Request) -> Response:
        with viewer.using() as ix:
            k = _int(request, "k", config.viewer_clusters(ix.store.count()), 1, 500)
            if ("clusters", k) not in viewer.memo:
                found = ix.clusters(k=k)
                viewer.memo[("clusters", k)] = [
                    {
                        "name": c.name,
                        "captions": c.captions,
                        "members": [viewer.card(ix, m) for m in c.members],
                    }
                    for c in found
                ]
            return JSONResponse({"k": k, "clusters": viewer.memo[("clusters", k)]})

    def duplicates(request: Request) -> Response:
        with viewer.using() as ix:
            if ("duplicates",) not in viewer.memo:
                viewer.memo[("duplicates",)] = [
                    {
                        "tier": g.tier,
                        "score": round(g.score, 4),
                        "threshold": round(g.threshold, 4),
                        "keep": viewer.card(ix, g.keep),
                        "keep_reason": g.keep_reason,
                        "others": [
                            {
                                **viewer.card(ix, o.path),
                                "tier": o.tier,
                                "score": round(o.score, 4),
                                "evidence": o.evidence,
                            }
                            for o in g.others
                        ],
                    }
                    for g in ix.duplicates()
                ]
            threshold = ix.duplicate_threshold()
            return JSONResponse({"threshold": threshold, "groups": viewer.memo[("duplicates",)]})

    async def user_error(request: Request, exc: Exception) -> Response:
        return _error(400, str(exc))

    async def not_found(request: Request, exc: HTTPException) -> Response:
        if request.url.path.startswith("/api/"):
            return _error(exc.status_code, exc.detail)
        return Response(exc.detail, status_code=exc.status_code, media_type="text/plain")

    app = Starlette(
        middleware=[
            *([Middleware(LoopbackOnly)] if loopback_only else []),
            Middleware(OneLineErrors),
        ],
        routes=[
            Route("/", home),
            Route("/static/{name}", static),
            Route("/api/status", status),
            Route("/api/search/text", search_text),
            Route("/api/search/image", search_image, methods=["POST"]),
            Route("/api/similar/{image_id:int}", similar),
            Route("/api/clusters", clusters),
            Route("/api/duplicates", duplicates),
            Route("/thumb/{image_id:int}", thumbnail),
            Route("/image/{image_id:int}", image),
        ],
        exception_handlers={
            ImgsearchError: user_error,
            HTTPException: not_found,
        },
    )
    app.state.viewer = viewer
    return app


def _is_form(headers: Headers) -> bool:
    return headers.get("content-type", "").lower().startswith("multipart/form-data")


def _content_length(request: Request) -> int:
    try:
        return int(request.headers.get("content-length") or 0)
    except ValueError:
        raise ImgsearchError("the Content-Length header is not a number") from None


async def form_file(headers: Headers, body: bytes) -> bytes:
    """The photo in a multipart/form-data body already read (and size-checked): the field
    named "file", else the first file field. Parsed in memory (python-multipart, through
    Starlette's parser), never spooled to disk."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def chunks() -> AsyncIterator[bytes]:
        yield body

    parser = MultiPartParser(headers, chunks(), max_files=FORM_FILES, max_fields=FORM_FIELDS)
    parser.spool_max_size = len(body) + 1  # the file stays in memory
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ImgsearchError(f"the upload is not a valid form: {exc.message}") from None
    try:
        files = [(n, v) for n, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise ImgsearchError("the form has no file: send the photo in a file field 'file'")
        chosen = next((v for n, v in files if n == "file"), files[0][1])
        return await chosen.read()
    finally:
        await form.close()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _int(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ImgsearchError(f"{name} must be a whole number, not {text!r}") from None
    if not low <= value <= high:
        raise ImgsearchError(f"{name} must be between {low} and {high}")
    return value


def _k(request: Request) -> int:
    return _int(request, "k", DEFAULT_K, 1, MAX_K)


def _texts(request: Request) -> list[Text]:
    """Texts to look for beside a photo (``q``; the text route reads its own ``q``)."""
    if request.url.path == "/api/search/text":
        return []
    return [Text(q) for q in request.query_params.getlist("q") if q.strip()]


def _options(request: Request) -> dict:
    """What every search route takes besides its query: texts to add (``q``, beside a
    photo), texts to rank down (``not``, repeatable), ``after``/``before`` dates, ``camera``,
    ``sort`` (score or date) and ``min_score``."""
    params = request.query_params
    options: dict = {
        "positive": [(1.0, t) for t in _texts(request)],
        "negative": [(1.0, Text(n)) for n in params.getlist("not") if n.strip()],
        "sort": params.get("sort") or "score",
    }
    for name in ("after", "before", "camera"):
        if params.get(name):
            options[name] = params[name]
    if params.get("min_score"):
        try:
            options["min_score"] = float(params["min_score"])
        except ValueError:
            raise ImgsearchError(
                f"min_score must be a number, not {params['min_score']!r}"
            ) from None
    return options


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound here so a taken port is one clear line, not a traceback."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ImgsearchError(f"cannot serve on host {host!r}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ImgsearchError(
            f"cannot serve on {host}:{port}: {exc.strerror}; choose another --port"
        ) from None
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        host = socket.gethostname()
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(
    db: str | Path | None,
    host: str = "127.0.0.1",
    port: int = config.SERVE_PORT,
    on_ready: Callable[[str, Index], None] | None = None,
) -> None:
    """Serve the index until interrupted (Ctrl-C or SIGTERM)."""
    import uvicorn

    with Index.open(db) as index:
        app = create_app(index, loopback_only=is_loopback(host))
        sock = listen(host, port)
        threading.Thread(target=app.state.viewer.warm_up, daemon=True).start()
        if on_ready is not None:
            on_ready(url_of(sock), index)
        server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        )
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # Ctrl-C: uvicorn has shut down cleanly, then passes it on
            pass
        finally:
            sock.close()
