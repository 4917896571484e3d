"""`smol serve`: a small text-generation web app (FastAPI) over any smollm model.

POST /generate takes JSON and returns the whole text, or streams tokens as server-sent events
when `stream` is true. Every request generates with its own KV cache (no shared state between
requests); at most `max_concurrent` generate at once, at most `max_queued` wait for a turn (more
get 503 with Retry-After). A client that disconnects stops its generation and frees its place at
once, in both modes. A body over 64 KB is refused however it is sent (Content-Length or chunked),
validation errors name the field without echoing the input, and a prompt that does not fit the
context with its max_new_tokens is a 422 that says the limit. GET / is the page; GET /info
describes the model.
"""

from __future__ import annotations

import asyncio
import html
import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from uvicorn.protocols.http.h11_impl import H11Protocol

from smollm.generation import stream
from smollm.tokenizer import decode_stream, stop_ids

MAX_BODY_BYTES = 64 * 1024
# What one request can buy: a 16 KB prompt of "é" is ~8k tokens, whose prefill held a slot for
# 28 s on a CPU. Prompt tokens and new tokens are both bounded (the reply that refuses says so).
MAX_PROMPT_TOKENS = 1024
MAX_NEW_TOKENS = 512
HEADER_TIMEOUT_S = 10.0  # a request's headers must arrive within this (slowloris)
PAGE = Path(__file__).with_name("static") / "index.html"


class GenerateRequest(BaseModel):
    """Bounds are enforced here: anything outside them is a 422 with a JSON body naming the field."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1, max_length=8000)
    max_new_tokens: int = Field(default=64, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(default=0.8, ge=0.0, le=2.0)
    top_k: int | None = Field(default=50, ge=1, le=1000)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    stream: bool = False


class Busy(Exception):
    """Every generation slot is taken and the waiting line is full."""


class Generations:
    """Runs requests' generations, token by token, each with its own cache and RNG; holds the
    slots (at most `max_concurrent` at once) and the bounded line of requests waiting for one."""

    def __init__(self, model, tokenizer, max_concurrent: int = 2, compile: bool = False,
                 max_queued: int = 16, max_prompt_tokens: int = MAX_PROMPT_TOKENS) -> None:  # fmt: skip
        self.model, self.tokenizer, self.compile = model, tokenizer, compile
        self.max_prompt_tokens = max_prompt_tokens
        self.device = next(model.parameters()).device
        self.slots = threading.BoundedSemaphore(max_concurrent)
        self.capacity = max_concurrent + max_queued  # generating + waiting
        self.admitted = 0
        self._count = threading.Lock()
        self.eos = stop_ids(tokenizer)

    def warm_up(self) -> None:
        """Capture (and compile) the decode step of the shortest bucket before the first request."""
        for _ in self.pieces(
            self.encode(GenerateRequest(prompt="Hello", max_new_tokens=2)), 2, 0.0
        ):
            pass

    def encode(self, req: GenerateRequest) -> torch.Tensor:
        """The prompt's ids; a prompt that does not fit the context with its new tokens is a 422."""
        ids = self.tokenizer(req.prompt, return_tensors="pt").input_ids
        limit = self.model.config.max_seq_len
        if ids.shape[1] + req.max_new_tokens > limit:
            raise PromptTooLong(
                f"prompt is {ids.shape[1]} tokens; with max_new_tokens={req.max_new_tokens} it "
                f"exceeds the model's context of {limit} tokens"
            )
        if ids.shape[1] > self.max_prompt_tokens:  # bounds the prefill one request can buy
            raise PromptTooLong(
                f"prompt is {ids.shape[1]} tokens; this server takes at most "
                f"{self.max_prompt_tokens} prompt tokens and {MAX_NEW_TOKENS} new tokens a request"
            )
        return ids

    def admit(self) -> None:
        """Take a place (generating or waiting); Busy when every place is taken. `leave` after."""
        with self._count:
            if self.admitted >= self.capacity:
                raise Busy
            self.admitted += 1

    def leave(self) -> None:
        with self._count:
            self.admitted -= 1

    async def take_slot(self, request: Request) -> bool:
        """Wait for a generation slot without blocking the server; False if the client left."""
        while not self.slots.acquire(blocking=False):
            if await request.is_disconnected():
                return False
            await asyncio.sleep(0.02)
        return True

    def pieces(self, ids: torch.Tensor, max_new_tokens: int, temperature: float, top_k=None,
               top_p=None, seed=None, cancel: threading.Event | None = None) -> Iterator[str]:  # fmt: skip
        """Text pieces as they are generated (held back while a UTF-8 character is incomplete)."""
        cancel = cancel or threading.Event()
        gen = torch.Generator(self.device).manual_seed(seed) if seed is not None else None
        tokens = stream(self.model, ids, max_new_tokens, temperature, top_k, top_p,
                        eos_token_id=self.eos, generator=gen, compile=self.compile)  # fmt: skip

        def until_stop() -> Iterator[int]:
            for t in tokens:
                if int(t[0]) in self.eos or cancel.is_set():
                    return
                yield int(t[0])

        yield from decode_stream(self.tokenizer, until_stop())

    def for_request(self, req: GenerateRequest, cancel: threading.Event) -> Iterator[str]:
        ids = self.encode(req)
        return self.pieces(ids, req.max_new_tokens, req.temperature, req.top_k, req.top_p,
                           req.seed, cancel)  # fmt: skip


class PromptTooLong(ValueError):
    """The prompt plus max_new_tokens exceeds the model's context."""


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is a 413, whether it announces its length
    or arrives chunked; the body is read (up to the limit) before the app sees it."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._too_large(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await self._too_large(scope, receive, send)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        return await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send) -> None:
        response = JSONResponse(
            {"detail": f"request body over {self.limit} bytes"}, status_code=413
        )
        await response(scope, receive, send)


def create_app(model, tokenizer, name: str, max_concurrent: int = 2, compile: bool = False,
               max_queued: int = 16, max_prompt_tokens: int = MAX_PROMPT_TOKENS) -> FastAPI:  # fmt: skip
    """The FastAPI app serving `model` (already on its device, in eval mode); on CUDA each
    generation decodes through a captured CUDA graph (`compile`: a compiled one)."""
    app = FastAPI(title="smollm", description=f"Text generation with {name}", version="1")
    gen = Generations(model, tokenizer, max_concurrent, compile, max_queued, max_prompt_tokens)
    app.state.generations = gen
    info = {
        "model": name,
        "parameters": model.num_parameters(),
        "context": model.config.max_seq_len,
        "max_prompt_tokens": max_prompt_tokens,
        "max_new_tokens": MAX_NEW_TOKENS,
    }
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default reply echoes each offending input back (a whole body, possibly):
        # only where and what, and a location only when it is one of the request's own fields
        # (an unknown key is the client's text: never sent back, never rendered)
        errors = [{"loc": _own_location(e.get("loc", ())), "msg": e.get("msg", ""),
                   "type": e.get("type", "")} for e in exc.errors()]  # fmt: skip
        return JSONResponse({"detail": errors}, status_code=422)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return (
            PAGE.read_text()
            .replace("{{MODEL}}", html.escape(name))  # a model's name is a path: text, not markup
            .replace("{{PARAMS}}", f"{info['parameters']:,}")
        )

    @app.get("/info")
    def model_info() -> dict:
        """The served model's name, parameter count and context length."""
        return info

    @app.post("/generate")
    async def generate(req: GenerateRequest, request: Request):
        """Continue `prompt`; with `stream`, server-sent events `{"text": piece}` then `event: done`."""
        cancel = threading.Event()
        try:
            pieces = gen.for_request(req, cancel)
        except PromptTooLong as e:
            return JSONResponse({"detail": [{"loc": ["body", "prompt"], "msg": str(e),
                                             "type": "prompt_too_long"}]}, status_code=422)  # fmt: skip
        try:
            gen.admit()
        except Busy:
            return JSONResponse({"detail": "every generation slot is busy and the waiting line is full"},
                                status_code=503, headers={"Retry-After": "5"})  # fmt: skip
        if req.stream:
            events = _events(gen, pieces, cancel, request)
            return StreamingResponse(
                events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        text = await _whole_text(gen, pieces, cancel, request)
        if text is None:
            return JSONResponse({"detail": "client gone"}, status_code=499)
        return {"text": text, "model": name}

    return app


def _own_location(loc: tuple) -> list:
    """A validation error's location, cut before the first name that is not a request field."""
    out: list = []
    for part in loc:
        if isinstance(part, str) and part != "body" and part not in GenerateRequest.model_fields:
            break
        out.append(part)
    return out


def server_config(app: FastAPI, host: str, port: int, header_timeout: float = HEADER_TIMEOUT_S,
                  **kwargs) -> uvicorn.Config:  # fmt: skip
    """uvicorn's settings for the app: h11 whose connections must send a request's headers
    within `header_timeout` seconds (uvicorn has no such deadline of its own; 50 connections
    that each sent half a header stayed open), idle keep-alive connections closed after 5 s."""
    protocol = type("H11HeaderDeadline", (HeaderDeadline,), {"header_timeout": header_timeout})
    return uvicorn.Config(app, host=host, port=port, http=protocol, timeout_keep_alive=5, **kwargs)


class HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers: armed when the
    connection opens and after each response, disarmed when a request's headers are complete."""

    header_timeout = HEADER_TIMEOUT_S

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._seen, self._deadline = None, None
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and self.cycle is not self._seen:  # a request's headers came
            self._seen = self.cycle
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request on this connection has the same deadline

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)


async def _whole_text(
    gen: Generations, pieces: Iterator[str], cancel: threading.Event, request: Request
) -> str | None:
    """The whole generation as one string; None if the client left before it had a slot. A client
    that leaves while it generates stops it at the next token."""
    try:
        if not await gen.take_slot(request):
            return None
        try:
            job = asyncio.ensure_future(run_in_threadpool(lambda: "".join(pieces)))
            while not job.done():
                await asyncio.wait({job}, timeout=0.1)
                if not job.done() and await request.is_disconnected():
                    cancel.set()
            return await job
        finally:
            cancel.set()
            gen.slots.release()
    finally:
        gen.leave()


async def _events(
    gen: Generations, pieces: Iterator[str], cancel: threading.Event, request: Request
) -> AsyncIterator[str]:
    """SSE frames from a blocking iterator; stops generating as soon as the client goes away."""
    sentinel = object()
    n = 0
    slot = False
    try:
        slot = await gen.take_slot(request)
        while slot:
            if await request.is_disconnected():
                return
            piece = await run_in_threadpool(next, pieces, sentinel)
            if piece is sentinel:
                yield f"event: done\ndata: {json.dumps({'pieces': n})}\n\n"
                return
            n += 1
            yield f"data: {json.dumps({'text': piece})}\n\n"
    finally:
        cancel.set()  # the generation loop stops at its next token, on disconnect too
        if slot:
            gen.slots.release()
        gen.leave()
