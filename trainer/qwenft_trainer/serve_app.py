"""The OpenAI-compatible HTTP app: routes, admission control, errors and metrics.

The model loads in a background thread after the server starts listening, so Kubernetes
probes get answers at once (``/healthz`` alive, ``/readyz`` 503 until loaded). Each
completion runs in a worker thread; at most ``max_concurrency`` generate at once, up to
``max_queue`` more wait, and anything beyond that gets 429 straight away rather than
piling up. Errors use OpenAI's ``{"error": {...}}`` body so clients raise the right
exception types.

It is over 300 lines because the OpenAI routes share the admission control, the error
mapping and the streaming that make them one API.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from qwenft_trainer import serve_schemas as schemas
from qwenft_trainer.batching import Batcher
from qwenft_trainer.generation import Engine, SamplingParams
from qwenft_trainer.serve_metrics import ServeMetrics
from qwenft_trainer.stops import StopFilter

CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class ServerLimits:
    max_concurrency: int = 2
    max_queue: int = 16
    max_batch_size: int = 8
    default_max_tokens: int = 256


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        model: str = "unknown",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.model = param, code, model


class ServerState:
    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self.engine: Engine | None = None
        self.load_error: str | None = None
        self.in_flight = 0
        self.metrics = ServeMetrics()
        self.executor = ThreadPoolExecutor(limits.max_concurrency, thread_name_prefix="generate")
        self.semaphore = asyncio.Semaphore(limits.max_concurrency)
        self.batcher = Batcher(self.executor, self.semaphore, limits.max_batch_size)

    def require_engine(self) -> Engine:
        if self.engine is None:
            detail = f": {self.load_error}" if self.load_error else ""
            raise APIError(
                503,
                f"the model is not loaded yet{detail}",
                type="service_unavailable",
                code="model_not_ready",
            )
        return self.engine

    def admit(self, model: str) -> None:
        if self.in_flight >= self.limits.max_concurrency + self.limits.max_queue:
            raise APIError(
                429,
                f"server is saturated: {self.in_flight} requests in flight (max_concurrency "
                f"{self.limits.max_concurrency} + max_queue {self.limits.max_queue}); retry later",
                type="rate_limit_exceeded",
                code="rate_limit_exceeded",
                model=model,
            )
        self.in_flight += 1
        self.metrics.in_flight.inc()

    def release(self) -> None:
        self.in_flight -= 1
        self.metrics.in_flight.dec()


def _sse(payload: Any) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def create_app(loader: Callable[[], Engine], limits: ServerLimits | None = None) -> FastAPI:
    """The app; ``loader`` builds the engine in a background thread once the app starts."""
    state = ServerState(limits or ServerLimits())

    def load() -> None:
        started = time.monotonic()
        try:
            engine = loader()
        except Exception as err:  # surfaced by /readyz and /healthz, and in the log
            state.load_error = f"{type(err).__name__}: {err}"
            print(f"[serve] loading the model failed: {state.load_error}", file=sys.stderr)
            raise
        state.engine = engine
        print(
            f"[serve] ready in {time.monotonic() - started:.1f}s: serving "
            f"{', '.join(engine.model_names)} (context {engine.context_length} tokens)",
            file=sys.stderr,
            flush=True,
        )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=load, name="model-loader", daemon=True).start()
        yield
        state.batcher.close()
        state.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="qwenft inference server", lifespan=lifespan)
    app.state.server = state

    async def timer(request: Request, call_next: Any) -> Any:
        request.state.started = time.perf_counter()
        return await call_next(request)

    def elapsed(request: Request) -> float:
        return time.perf_counter() - float(getattr(request.state, "started", time.perf_counter()))

    async def api_error(request: Request, err: APIError) -> JSONResponse:
        if request.url.path == CHAT_PATH:
            state.metrics.observe(model=err.model, status=err.status, seconds=elapsed(request))
        body = schemas.error_body(err.message, type=err.type, param=err.param, code=err.code)
        return JSONResponse(body, status_code=err.status)

    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        # Of the errors a union field reports (one per branch), the deepest names the cause.
        first = max(err.errors(), key=lambda error: len(error.get("loc", ())))
        loc = [str(part) for part in first.get("loc", ()) if not _is_branch(part)]
        param = ".".join(loc) or None
        if first.get("type") == "json_invalid":
            message = "request body is not valid JSON"
        elif param is None:
            message = "request body must be a JSON object with 'model' and 'messages'"
        else:
            message = f"{param}: {first.get('msg')}"
        return await api_error(request, APIError(400, message, param=param))

    async def unparsable(request: Request, err: HTTPException) -> Response:
        """FastAPI's 400 for a body ``json.loads`` raised on, with the reason in OpenAI's form."""
        if err.status_code != 400 or err.__cause__ is None:
            return await http_exception_handler(request, err)
        return await api_error(request, APIError(400, _unparsable_body(err.__cause__)))

    async def healthz() -> JSONResponse:
        if state.load_error:
            return JSONResponse({"status": "failed", "error": state.load_error}, status_code=500)
        return JSONResponse({"status": "ok"})

    async def readyz() -> JSONResponse:
        state.require_engine()
        return JSONResponse({"status": "ready"})

    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def models() -> JSONResponse:
        engine = state.require_engine()
        created = schemas.now()
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "qwenft"}
            for name in engine.model_names
        ]
        return JSONResponse({"object": "list", "data": data})

    async def chat(
        body: schemas.ChatCompletionRequest, request: Request
    ) -> JSONResponse | StreamingResponse:
        engine = state.require_engine()
        if body.model not in engine.model_names:
            raise APIError(
                404,
                f"model '{body.model}' not found; this server serves "
                f"{', '.join(engine.model_names)}",
                param="model",
                code="model_not_found",
            )
        prompt_ids = engine.encode([m.as_template_message() for m in body.messages])
        params = _sampling(body, len(prompt_ids), engine, state.limits)
        state.admit(body.model)
        if body.stream:
            stream = _stream(state, engine, body, prompt_ids, params, request, elapsed)
            return StreamingResponse(stream, media_type="text/event-stream")
        try:
            done = await state.batcher.submit(engine, body.model, prompt_ids, params)
        finally:
            state.release()
        state.metrics.observe(
            model=body.model,
            status=200,
            seconds=elapsed(request),
            prompt=done.prompt_tokens,
            generated=done.completion_tokens,
        )
        return JSONResponse(
            {
                "id": schemas.completion_id(),
                "object": "chat.completion",
                "created": schemas.now(),
                "model": body.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": done.text},
                        "logprobs": None,
                        "finish_reason": done.finish_reason,
                    }
                ],
                "usage": schemas.usage(done.prompt_tokens, done.completion_tokens),
            }
        )

    app.middleware("http")(timer)
    app.exception_handler(APIError)(api_error)
    app.exception_handler(RequestValidationError)(invalid)
    app.exception_handler(HTTPException)(unparsable)
    app.get("/healthz")(healthz)
    app.get("/readyz")(readyz)
    app.get("/metrics")(metrics)
    app.get("/v1/models")(models)
    app.post(CHAT_PATH, response_model=None)(chat)
    return app


# pydantic names the branch of a union that failed, e.g. ``str`` or ``list[TextPart]``.
_UNION_BRANCH = re.compile(r"^(str|int|float|bool|none)$|\[")


def _is_branch(part: object) -> bool:
    """A ``loc`` part that isn't a field: the body itself, or a union branch's type name."""
    return part == "body" or (isinstance(part, str) and _UNION_BRANCH.search(part) is not None)


def _unparsable_body(cause: BaseException) -> str:
    """Why a request body that isn't a syntax error still couldn't be parsed as JSON."""
    if isinstance(cause, RecursionError):
        return "request body is nested too deeply to parse"
    if isinstance(cause, UnicodeDecodeError):
        byte = cause.object[cause.start : cause.start + 1].hex().upper()
        return f"request body is not UTF-8 text (byte 0x{byte} at offset {cause.start})"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return f"request body has a number longer than {sys.get_int_max_str_digits()} digits"
    return f"request body is not valid JSON ({type(cause).__name__})"


def _sampling(
    body: schemas.ChatCompletionRequest, prompt_len: int, engine: Engine, limits: ServerLimits
) -> SamplingParams:
    """Sampling settings for a request, or a 400 when the prompt doesn't fit the context."""
    context = engine.context_length
    if prompt_len >= context:
        raise APIError(
            400,
            f"the prompt is {prompt_len} tokens, but the model's context is {context} "
            "tokens; shorten the messages",
            param="messages",
            code="context_length_exceeded",
            model=body.model,
        )
    room = context - prompt_len
    requested = body.requested_max_tokens()
    if requested is not None and requested > room:
        raise APIError(
            400,
            f"max_tokens {requested} + prompt {prompt_len} tokens exceed the model's "
            f"context of {context} tokens; lower max_tokens to at most {room}",
            param="max_tokens",
            code="context_length_exceeded",
            model=body.model,
        )
    return SamplingParams(
        max_tokens=requested or min(limits.default_max_tokens, room),
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stop_sequences(),
        seed=body.seed,
        ignore_eos=body.ignore_eos,
    )


async def _stream(
    state: ServerState,
    engine: Engine,
    body: schemas.ChatCompletionRequest,
    prompt_ids: list[int],
    params: SamplingParams,
    request: Request,
    elapsed: Callable[[Request], float],
) -> AsyncGenerator[str, None]:
    from qwenft_trainer.streaming import token_streamer

    cid, created, model = schemas.completion_id(), schemas.now(), body.model
    cancelled = threading.Event()
    status, done = 200, None
    try:
        async with state.semaphore:
            streamer = token_streamer(engine.tokenizer)
            job = partial(
                engine.generate, model, prompt_ids, params, streamer=streamer, cancelled=cancelled
            )
            future = asyncio.get_running_loop().run_in_executor(state.executor, job)
            yield _sse(schemas.chunk(cid, model, created, {"role": "assistant", "content": ""}))
            stops = StopFilter(params.stop)
            async for text in streamer:
                if piece := stops.feed(text):
                    yield _sse(schemas.chunk(cid, model, created, {"content": piece}))
                if stops.stopped:
                    break
            if piece := stops.flush():
                yield _sse(schemas.chunk(cid, model, created, {"content": piece}))
            done = await future
            yield _sse(schemas.chunk(cid, model, created, {}, done.finish_reason))
            if body.stream_options and body.stream_options.include_usage:
                usage = schemas.usage(done.prompt_tokens, done.completion_tokens)
                yield _sse(
                    {**schemas.chunk(cid, model, created, {}), "choices": [], "usage": usage}
                )
            yield "data: [DONE]\n\n"
    except Exception as err:
        status = 500
        yield _sse(schemas.error_body(f"generation failed: {err}", type="server_error"))
        yield "data: [DONE]\n\n"
    finally:
        cancelled.set()
        state.release()
        state.metrics.observe(
            model=model,
            status=status,
            seconds=elapsed(request),
            prompt=done.prompt_tokens if done else 0,
            generated=done.completion_tokens if done else 0,
        )
