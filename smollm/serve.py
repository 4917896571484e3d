"""`smol serve`: a small text-generation web app (FastAPI) over any smollm model.

POST /generate takes JSON and returns the whole text, or streams tokens as server-sent events
when `stream` is true. Every request generates with its own KV cache (no shared state between
requests); at most `max_concurrent` generate at once, the rest wait their turn. A client that
disconnects stops its generation. GET / is the page; GET /info describes the model.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from smollm.generation import stream
from smollm.tokenizer import decode_stream, stop_ids

MAX_BODY_BYTES = 64 * 1024
PAGE = Path(__file__).with_name("static") / "index.html"


class GenerateRequest(BaseModel):
    """Bounds are enforced here: anything outside them is a 422 with a JSON body naming the field."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1, max_length=8000)
    max_new_tokens: int = Field(default=64, ge=1, le=512)
    temperature: float = Field(default=0.8, ge=0.0, le=2.0)
    top_k: int | None = Field(default=50, ge=1, le=1000)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    stream: bool = False


class Generator:
    """Runs one request's generation; token by token, each with its own cache and RNG."""

    def __init__(self, model, tokenizer, max_concurrent: int = 2, compile: bool = False) -> None:  # noqa: ANN001
        self.model, self.tokenizer, self.compile = model, tokenizer, compile
        self.device = next(model.parameters()).device
        self.slots = threading.BoundedSemaphore(max_concurrent)
        self.eos = stop_ids(tokenizer)

    def warm_up(self) -> None:
        """Capture (and compile) the decode step of the shortest bucket before the first request."""
        for _ in self.pieces(GenerateRequest(prompt="Hello", max_new_tokens=2, temperature=0.0)):
            pass

    def pieces(self, req: GenerateRequest, cancel: threading.Event | None = None) -> Iterator[str]:
        """Text pieces as they are generated (held back while a UTF-8 character is incomplete)."""
        ids = self.tokenizer(req.prompt, return_tensors="pt").input_ids[
            :, -(self.model.config.max_seq_len - req.max_new_tokens) :
        ]
        gen = torch.Generator(self.device).manual_seed(req.seed) if req.seed is not None else None
        with self.slots:  # a queue: at most max_concurrent generations run at once
            tokens = stream(
                self.model,
                ids,
                req.max_new_tokens,
                req.temperature,
                req.top_k,
                req.top_p,
                eos_token_id=self.eos,
                generator=gen,
                compile=self.compile,
            )

            def until_stop() -> Iterator[int]:
                for t in tokens:
                    if int(t[0]) in self.eos or (cancel is not None and cancel.is_set()):
                        return
                    yield int(t[0])

            yield from decode_stream(self.tokenizer, until_stop())


def create_app(
    model, tokenizer, name: str, max_concurrent: int = 2, compile: bool = False
) -> FastAPI:  # noqa: ANN001
    """The FastAPI app serving `model` (already on its device, in eval mode); on CUDA each
    generation decodes through a captured CUDA graph (`compile`: a compiled one)."""
    app = FastAPI(title="smollm", description=f"Text generation with {name}", version="1")
    gen = Generator(model, tokenizer, max_concurrent, compile)
    app.state.generator = gen
    info = {
        "model": name,
        "parameters": model.num_parameters(),
        "context": model.config.max_seq_len,
    }

    @app.middleware("http")
    async def limit_body(request: Request, call_next):  # noqa: ANN001, ANN202
        size = request.headers.get("content-length")
        if size is not None and int(size) > MAX_BODY_BYTES:
            return JSONResponse(
                {"detail": f"request body over {MAX_BODY_BYTES} bytes"}, status_code=413
            )
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return (
            PAGE.read_text()
            .replace("{{MODEL}}", name)
            .replace("{{PARAMS}}", f"{info['parameters']:,}")
        )

    @app.get("/info")
    def model_info() -> dict:
        """The served model's name, parameter count and context length."""
        return info

    @app.post("/generate")
    async def generate(req: GenerateRequest, request: Request):  # noqa: ANN202
        """Continue `prompt`; with `stream`, server-sent events `{"text": piece}` then `event: done`."""
        if not req.stream:
            text = await run_in_threadpool(lambda: "".join(gen.pieces(req)))
            return {"text": text, "model": name}
        cancel = threading.Event()
        events = _events(gen.pieces(req, cancel), cancel, request)
        return StreamingResponse(
            events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    return app


async def _events(
    pieces: Iterator[str], cancel: threading.Event, request: Request
) -> AsyncIterator[str]:
    """SSE frames from a blocking iterator; stops generating as soon as the client goes away."""
    sentinel = object()
    n = 0
    try:
        while True:
            if await request.is_disconnected():
                return
            piece = await run_in_threadpool(next, pieces, sentinel)
            if piece is sentinel:
                break
            n += 1
            yield f"data: {json.dumps({'text': piece})}\n\n"
        yield f"event: done\ndata: {json.dumps({'pieces': n})}\n\n"
    finally:
        cancel.set()  # the generation loop stops at its next token, on disconnect too
