"""The served model: OpenAI-compatible API, web chat at `/`, labeling page at `/label` (FastAPI + uvicorn).

API: `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions` after the OpenAI REST
reference, with server-sent events in OpenAI's chunk format ending with `data: [DONE]`. Chat messages
go through `Tokenizer.render_prompt` (the chat template the SFT stage trains on). Generation runs on the
batching `Scheduler`; a streaming client that disconnects cancels its rows.

Bad input never gives a 500: JSON that does not parse (400), wrong fields or types (422), a body over
`max_body_bytes` (413), an unknown model (404), a prompt plus `max_tokens` beyond the context (400);
every error body is `{"error": {"message", "type", "param", "code"}}`. The labeling API needs the label
token in an `X-Label-Token` header (401 without, 403 when wrong) and refuses POSTs whose Origin/Referer
is another site (403); the pages render all model text with `textContent` under a strict CSP.

Deviations from OpenAI: no logprobs, tools or penalties; unknown request fields are ignored; `n` <= 8.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import itertools
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from picochat.engine import Engine
from picochat.serve.labels import LabelStore
from picochat.serve.scheduler import GenRequest, Piece, Scheduler, SchedulerError, Ticket
from picochat.serve.schemas import ChatCompletionRequest, CompletionRequest, LabelSubmission

log = logging.getLogger("picochat.serve")

STATIC_FILES = {  # the only files served (no paths from the request reach the filesystem)
    "index.html": "text/html; charset=utf-8",
    "label.html": "text/html; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "chat.js": "text/javascript; charset=utf-8",
    "label.js": "text/javascript; charset=utf-8",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
MAX_OPEN_LABEL_TASKS = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeOptions:
    model_name: str = "picochat"
    label_token: str = ""  # empty: the labeling API is closed
    db_path: Path | None = None  # SQLite label store; None: labeling disabled
    label_prompts: tuple[str, ...] = ()
    label_k: int = 4  # K answers per labeling task
    label_max_tokens: int = 64
    max_batch: int = 32
    max_body_bytes: int = 1_000_000
    default_max_tokens: int = 256
    api_key: str | None = None  # if set, /v1 needs "Authorization: Bearer KEY"


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code


def error_response(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None) -> JSONResponse:  # fmt: skip
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


class BodyLimit:
    """ASGI middleware: 413 for a request body over `max_bytes` (declared or actually sent)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            too_big = (
                f"request body of {declared.decode('latin-1')[:20]} bytes; the limit is {self.max_bytes}"
            )
            return await error_response(413, too_big, code="request_too_large")(scope, receive, send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise StarletteHTTPException(413, f"request body over the {self.max_bytes}-byte limit")
            return message

        await self.app(scope, limited, send)


def _static(name: str) -> bytes:
    return (resources.files("picochat.serve") / "static" / name).read_bytes()


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def merged(tickets: Sequence[Ticket]) -> AsyncIterator[tuple[int, Piece]]:
    """(ticket number, piece) from several tickets as they arrive; cancels unfinished ones on exit."""
    queue: asyncio.Queue[tuple[int, Piece | BaseException | None]] = asyncio.Queue()

    async def pump(k: int, ticket: Ticket) -> None:
        try:
            async for piece in ticket.pieces():
                queue.put_nowait((k, piece))
            queue.put_nowait((k, None))
        except SchedulerError as e:
            queue.put_nowait((k, e))

    tasks = [asyncio.create_task(pump(k, t)) for k, t in enumerate(tickets)]
    left = len(tickets)
    try:
        while left:
            k, item = await queue.get()
            if item is None:
                left -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield k, item
    finally:
        for task in tasks:
            task.cancel()
        if left:
            for t in tickets:
                t.cancel()


def create_app(engine: Engine, options: ServeOptions) -> FastAPI:
    """The FastAPI app; its lifespan starts and stops the scheduler's worker thread."""
    scheduler = Scheduler(engine, max_batch=options.max_batch)
    store = LabelStore(options.db_path) if options.db_path is not None else None
    static = {name: _static(name) for name in STATIC_FILES}
    open_tasks: collections.OrderedDict[str, tuple[str, list[str]]] = collections.OrderedDict()
    next_prompt = itertools.count()
    tok, block = engine.tok, engine.model.config.block_size

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        try:
            yield
        finally:
            scheduler.close()

    app = FastAPI(title="picochat", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scheduler = scheduler
    app.state.options = options
    app.add_middleware(BodyLimit, max_bytes=options.max_body_bytes)
    install_error_handlers(app)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    def check_api(request: Request, model: str | None) -> None:
        if options.api_key is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode("latin-1"), f"Bearer {options.api_key}".encode()):
                raise ApiError(401, "missing or wrong API key; send 'Authorization: Bearer KEY'",
                               kind="authentication_error", code="invalid_api_key")  # fmt: skip
        if model is not None and model != options.model_name:
            raise ApiError(404, f"model {model!r} is not served here; use {options.model_name!r} (GET /v1/models)",
                           param="model", code="model_not_found")  # fmt: skip

    def gen_request(prompt_ids: list[int], body: ChatCompletionRequest | CompletionRequest, max_tokens: int | None,
                    param: str) -> GenRequest:  # fmt: skip
        try:
            stop = body.stop_strings()
        except ValueError as e:
            raise ApiError(400, str(e), param="stop") from e
        room = block - len(prompt_ids)
        if max_tokens is None:
            max_tokens = min(options.default_max_tokens, room)
        request = GenRequest(
            prompt_ids=tuple(prompt_ids), max_tokens=max(max_tokens, 1), n=body.n, temperature=body.temperature,
            top_p=None if body.top_p >= 1.0 else body.top_p, stop=stop, seed=body.seed,
        )  # fmt: skip
        try:
            scheduler.check(request)
        except ValueError as e:
            raise ApiError(400, str(e), param=param, code="context_length_exceeded") from e
        return request

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict:
        check_api(request, None)
        return {"object": "list", "data": [model_card(options.model_name)]}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str, request: Request) -> dict:
        check_api(request, model_id)
        return model_card(options.model_name)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response | dict:
        check_api(request, body.model)
        try:
            prompt_ids = tok.render_prompt([m.model_dump() for m in body.messages])
        except ValueError as e:
            raise ApiError(400, str(e), param="messages") from e
        max_tokens = body.max_completion_tokens or body.max_tokens
        tickets = [scheduler.submit(gen_request(prompt_ids, body, max_tokens, "messages"))]
        head = response_head("chatcmpl", options.model_name)
        if body.stream:
            return sse_response(stream_chat(tickets, head, body.n, [len(prompt_ids)], include_usage(body)))
        texts, reasons, usage = await collect(tickets, body.n, [len(prompt_ids)])
        choices = [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": r, "logprobs": None}
            for i, (t, r) in enumerate(zip(texts, reasons, strict=True))
        ]
        return {**head, "object": "chat.completion", "choices": choices, "usage": usage}

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Response | dict:
        check_api(request, body.model)
        try:
            prompts = body.prompts()
        except ValueError as e:
            raise ApiError(400, str(e), param="prompt") from e
        ids = [tok.encode(p) or [tok.eot_id] for p in prompts]
        requests = [gen_request(p, body, body.max_tokens, "prompt") for p in ids]
        tickets = [scheduler.submit(r) for r in requests]
        head = response_head("cmpl", options.model_name)
        if body.stream:
            return sse_response(
                stream_text(tickets, head, body.n, [len(p) for p in ids], include_usage(body))
            )
        texts, reasons, usage = await collect(tickets, body.n, [len(p) for p in ids])
        choices = [
            {"index": i, "text": t, "finish_reason": r, "logprobs": None}
            for i, (t, r) in enumerate(zip(texts, reasons, strict=True))
        ]
        return {**head, "object": "text_completion", "choices": choices, "usage": usage}

    # -- pages -------------------------------------------------------------------------------------

    @app.get("/")
    async def index() -> Response:
        return Response(static["index.html"], media_type=STATIC_FILES["index.html"])

    @app.get("/label")
    async def label_page() -> Response:
        return Response(static["label.html"], media_type=STATIC_FILES["label.html"])

    @app.get("/static/{name}")
    async def static_file(name: str) -> Response:
        if name not in static:
            raise ApiError(404, "no such static file", code="not_found")
        return Response(static[name], media_type=STATIC_FILES[name])

    # -- labeling API ------------------------------------------------------------------------------

    def check_label_access(request: Request, *, write: bool) -> LabelStore:
        if store is None or not options.label_token:
            raise ApiError(404, "labeling is disabled on this server; start it with --db", code="not_found")
        given = request.headers.get("x-label-token")
        if not given:
            raise ApiError(401, "missing X-Label-Token header; open the /label#token=... link printed at start",
                           kind="authentication_error")  # fmt: skip
        if not hmac.compare_digest(given.encode("latin-1"), options.label_token.encode()):
            raise ApiError(403, "wrong label token", kind="permission_error")
        if write and not same_origin(request):
            raise ApiError(
                403, "cross-site request refused (Origin/Referer is not this server)", kind="permission_error"
            )
        return store

    @app.get("/api/label/task")
    async def label_task(request: Request) -> dict:
        check_label_access(request, write=False)
        if not options.label_prompts:
            raise ApiError(404, "no labeling prompts configured", code="not_found")
        prompt = options.label_prompts[next(next_prompt) % len(options.label_prompts)]
        ids = tok.render_prompt([{"role": "user", "content": prompt}])
        max_tokens = min(options.label_max_tokens, block - len(ids))
        request_ = GenRequest(prompt_ids=tuple(ids), max_tokens=max(max_tokens, 1), n=options.label_k)
        try:
            scheduler.check(request_)
        except ValueError as e:
            raise ApiError(400, f"labeling prompt too long for the model: {e}", param="prompt") from e
        texts, _, _ = await collect([scheduler.submit(request_)], options.label_k, [len(ids)])
        task_id = secrets.token_urlsafe(12)
        open_tasks[task_id] = (prompt, texts)
        while len(open_tasks) > MAX_OPEN_LABEL_TASKS:
            open_tasks.popitem(last=False)
        return {"task_id": task_id, "prompt": prompt, "completions": texts}

    @app.post("/api/label/submit")
    async def label_submit(body: LabelSubmission, request: Request) -> dict:
        labels = check_label_access(request, write=True)
        task = open_tasks.pop(body.task_id, None)
        if task is None:
            raise ApiError(404, "unknown or already labeled task_id; fetch a new task", param="task_id")
        prompt, texts = task
        try:
            row_id = await asyncio.to_thread(
                labels.add, prompt, texts, body.ranks, all_bad=body.all_bad, labeler=body.labeler
            )
        except ValueError as e:
            open_tasks[body.task_id] = task  # let the labeler fix the ranking and resubmit
            raise ApiError(400, str(e), param="ranks") from e
        return {"id": row_id, "count": await asyncio.to_thread(labels.count)}

    @app.get("/api/label/stats")
    async def label_stats(request: Request) -> dict:
        labels = check_label_access(request, write=False)
        return {"count": await asyncio.to_thread(labels.count)}

    return app


def response_head(prefix: str, model_name: str) -> dict:
    """The fields every completion response and chunk share: a fresh id, the time, the model."""
    return {"id": f"{prefix}-{secrets.token_hex(12)}", "created": int(time.time()), "model": model_name}


def include_usage(body: ChatCompletionRequest | CompletionRequest) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


def sse_response(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def model_card(name: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "picochat"}


def same_origin(request: Request) -> bool:
    """True unless an Origin (or, without one, a Referer) header names another host than this server."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if source is None:
        return True  # not a browser; the token header is still required
    return urlsplit(source).netloc == request.headers.get("host", "")


async def collect(
    tickets: Sequence[Ticket], n: int, prompt_lens: Sequence[int]
) -> tuple[list[str], list[str], dict]:
    """Whole answers (choice k*n+i for ticket k, answer i), finish reasons and usage."""
    texts = [""] * (len(tickets) * n)
    reasons = ["length"] * len(texts)
    tokens = [0] * len(texts)
    try:
        async for k, piece in merged(tickets):
            c = k * n + piece.index
            texts[c] += piece.text
            tokens[c] = piece.n_tokens
            if piece.finish_reason:
                reasons[c] = piece.finish_reason
    except SchedulerError as e:
        raise ApiError(500, str(e), kind="server_error") from e
    return texts, reasons, usage_of(prompt_lens, tokens)


def usage_of(prompt_lens: Sequence[int], tokens: Sequence[int]) -> dict:
    prompt = sum(prompt_lens)
    return {"prompt_tokens": prompt, "completion_tokens": sum(tokens), "total_tokens": prompt + sum(tokens)}


async def stream_chat(tickets: Sequence[Ticket], head: dict, n: int, prompt_lens: Sequence[int],
                      include_usage: bool) -> AsyncIterator[str]:  # fmt: skip
    head = {**head, "object": "chat.completion.chunk"}

    def chunk(i: int, delta: dict, finish: str | None) -> str:
        return sse(
            {**head, "choices": [{"index": i, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        )

    tokens = [0] * n
    for i in range(n):
        yield chunk(i, {"role": "assistant", "content": ""}, None)
    try:
        async for _, piece in merged(tickets):
            tokens[piece.index] = piece.n_tokens
            if piece.text:
                yield chunk(piece.index, {"content": piece.text}, None)
            if piece.finish_reason:
                yield chunk(piece.index, {}, piece.finish_reason)
    except SchedulerError as e:
        yield sse({"error": {"message": str(e), "type": "server_error", "param": None, "code": None}})
        return
    if include_usage:
        yield sse({**head, "choices": [], "usage": usage_of(prompt_lens, tokens)})
    yield sse("[DONE]")


async def stream_text(tickets: Sequence[Ticket], head: dict, n: int, prompt_lens: Sequence[int],
                      include_usage: bool) -> AsyncIterator[str]:  # fmt: skip
    head = {**head, "object": "text_completion"}
    tokens = [0] * (len(tickets) * n)
    try:
        async for k, piece in merged(tickets):
            c = k * n + piece.index
            tokens[c] = piece.n_tokens
            choice = {"index": c, "text": piece.text, "finish_reason": piece.finish_reason, "logprobs": None}
            yield sse({**head, "choices": [choice]})
    except SchedulerError as e:
        yield sse({"error": {"message": str(e), "type": "server_error", "param": None, "code": None}})
        return
    if include_usage:
        yield sse({**head, "choices": [], "usage": usage_of(prompt_lens, tokens)})
    yield sse("[DONE]")


def install_error_handlers(app: FastAPI) -> None:
    """OpenAI-style error bodies for every failure; 4xx for anything the client sent."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.kind, exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return error_response(400, "the request body is not valid JSON", code="invalid_json")
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problems)"
        return error_response(422, message, param=param, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
        detail = exc.detail if isinstance(exc.detail, str) else "bad request"
        if exc.status_code == 404:
            detail = f"no route {request.method} {request.url.path[:200]}"
        return error_response(exc.status_code, detail, code=kinds.get(exc.status_code))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error", kind="server_error")


class ServerThread:
    """Run an app with uvicorn on a background thread (tests, benchmarks, notebooks).

    `with ServerThread(app) as server:` binds 127.0.0.1 on a free port and sets `server.url`.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="picochat-uvicorn", daemon=True)
        self.host = host
        self.url = ""

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start (port in use?)")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def serve(
    ckpt: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    label_token: str | None = None,
    db: str | Path | None = "labels.db",
    max_batch: int = 32,
    label_prompts: Sequence[str] | None = None,
    model_name: str | None = None,
    device: str = "auto",
    api_key: str | None = None,
) -> None:
    """Load a checkpoint and serve it until interrupted; prints the chat, API and labeling URLs."""
    from picochat.checkpoint import load_checkpoint
    from picochat.data.tasks import make_tasks
    from picochat.train.loop import resolve_device

    model, tok = load_checkpoint(ckpt, device=resolve_device(device))
    prompts = (
        tuple(label_prompts) if label_prompts else tuple(t.prompt for t in make_tasks(256, "train", seed=0))
    )
    token = label_token or secrets.token_urlsafe(16)
    options = ServeOptions(
        model_name=model_name or f"picochat-{Path(ckpt).resolve().parent.name}",
        label_token=token, db_path=Path(db) if db else None, label_prompts=prompts, max_batch=max_batch,
        api_key=api_key,
    )  # fmt: skip
    app = create_app(Engine(model, tok), options)
    base = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    print(f"picochat serve: model {options.model_name} from {ckpt}", flush=True)
    print(f"  chat     {base}/")
    print(f"  API      {base}/v1  (OpenAI-compatible)")
    if options.db_path is not None:
        print(f"  labeling {base}/label#token={token}  (labels -> {options.db_path})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
