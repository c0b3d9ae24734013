"""`pyntk serve`: an OpenAI-compatible HTTP server whose every request runs with RoPE set up for
its own length (:class:`pyntk.dynamic.Dynamic`): unscaled within the training context, the chosen
method set up for the request's length bucket beyond it.

llama-cpp-python's own server (``llama_cpp.server``) cannot host that: it binds one ``Llama`` (one
context, its RoPE fixed when the model is loaded) to each model name a client asks for, and
switches by reloading the model. So this is a small Starlette app on uvicorn over the contexts
:class:`~pyntk.dynamic.Dynamic` keeps (the same ones `pyntk ppl` measures); chat prompts use the
GGUF's own template, rendered by llama-cpp-python's ``Jinja2ChatFormatter``.

Endpoints: POST /v1/completions and /v1/chat/completions (``"stream": true``: server-sent
events), GET /v1/models, GET /health. A request holds one context (a KV cache of its own) from
its first token to its last, so at most ``contexts`` requests run at once and the others wait their
turn. Generation runs in a worker thread and reaches the client through a queue; a client that
disconnects cancels its request, whose worker stops at the next token and frees the context.

Kept whole (just over 500 lines): the request schemas, the worker that streams a request's tokens
and the routes follow one request from its JSON to its last event; which context it gets and what
that costs in memory live in pyntk/dynamic.py.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
import os
import socket
import threading
import time
import uuid
from contextlib import closing
from typing import Any, Dict, List, Literal, Optional, Tuple, Union

from .errors import PyntkError
from .dynamic import Cancelled, Dynamic
from .writer import human_size

log = logging.getLogger("pyntk.serve")

try:
    import uvicorn
    from pydantic import BaseModel, ConfigDict, Field, ValidationError
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route
except ImportError as e:  # pragma: no cover - depends on the installation
    raise PyntkError(f"pyntk serve needs {e.name}: pip install 'pyntk[serve]'") from None


# --- requests -------------------------------------------------------------------------------------

class _Strict(BaseModel):
    # unknown fields and wrongly typed values are the client's mistake: 400, never guessed at
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Generation(_Strict):
    model: Optional[str] = None  # one model is served; any name is accepted
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: Optional[int] = None
    stop: Union[None, str, List[str]] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: int = Field(1, ge=1, le=1)
    user: Optional[str] = None  # the client's label for its user: accepted, unused


class CompletionRequest(_Generation):
    prompt: Union[str, List[str]]


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: Union[str, List[TextPart]]
    name: Optional[str] = None

    def as_dict(self) -> Dict[str, str]:
        """What chat templates expect: the content as one string."""
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": self.role, "content": content, **({"name": self.name} if self.name else {})}


class ChatRequest(_Generation):
    messages: List[Message] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)  # the newer name of max_tokens


COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


class ApiError(Exception):
    """An error the client caused or should see: an OpenAI-style JSON body with this status."""

    def __init__(self, status: int, message: str, *, param: Optional[str] = None,
                 code: Optional[str] = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.param, self.code, self.kind = status, param, code, kind

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": str(self), "type": self.kind, "param": self.param,
                                       "code": self.code}}, status_code=self.status)


async def _parse(request: Request, model: type) -> Any:
    body = await request.body()
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({e}); send a JSON object") from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(map(str, first["loc"]))
        if first["type"] == "extra_forbidden":
            known = ", ".join(model.model_fields)
            raise ApiError(400, f"unknown field {where!r}; {request.url.path} accepts: {known}",
                           param=where) from None
        raise ApiError(400, f"{where or 'body'}: {first['msg']}", param=where or None) from None


# --- generation -----------------------------------------------------------------------------------

class _Text:
    """Token bytes to text: whole UTF-8 characters only, cut at the first stop string, and text
    that may be the start of a stop string held back until it is known not to be one."""

    def __init__(self, stop: List[str]) -> None:
        self.stop = [s for s in stop if s]
        self.pending = ""
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, data: bytes) -> Tuple[str, bool]:
        """(text that may be sent now, whether a stop string ended the text)."""
        self.pending += self.decoder.decode(data)
        hits = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
        if hits:
            out, self.pending = self.pending[:min(hits)], ""
            return out, True
        keep = max((k for s in self.stop for k in range(1, len(s)) if self.pending.endswith(s[:k])),
                   default=0)
        out = self.pending[:len(self.pending) - keep]
        self.pending = self.pending[len(out):]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending + self.decoder.decode(b"", final=True), ""
        return out


class _Job:
    """One request's generation, run in a worker thread; its events reach the event loop through a
    queue: ("text", str), then ("end", finish_reason, completion_tokens) or ("error", message).
    A whole (not streamed) response gets its text in one event at the end."""

    def __init__(self, server: "Server", rid: int, prompt: List[int], max_tokens: int,
                 sampling: dict, stop: List[str], stream: bool) -> None:
        self.server, self.rid, self.prompt = server, rid, prompt
        self.max_tokens, self.sampling, self.stop = max_tokens, sampling, stop
        self.stream, self._held = stream, []
        self.cancel = threading.Event()
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.thread = threading.Thread(target=self._run, name=f"request-{rid}", daemon=True)

    def _put(self, *item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone: nobody is listening any more
            pass

    def _text(self, text: str, last: bool = False) -> None:
        """A streamed response gets its text as it comes; a whole one once, at the end, so that
        the event loop is not woken for every token."""
        self._held.append(text)
        if self.stream or last:
            if any(self._held):
                self._put("text", "".join(self._held))
            self._held.clear()

    def _stopped(self) -> bool:
        return self.cancel.is_set() or self.server.stopping.is_set()

    def _run(self) -> None:
        dyn, n, finish = self.server.dyn, 0, "cancelled"
        length = len(self.prompt) + self.max_tokens
        t0 = t1 = time.perf_counter()
        try:
            with dyn.acquire(length, give_up=self.cancel) as ctx:
                text = _Text(self.stop)
                tokens = dyn.tokens(ctx, self.prompt, self.max_tokens, stop=self._stopped, **self.sampling)
                hit = False  # a stop string ended the text (it is not sent)
                with closing(tokens):
                    for token in tokens:
                        n += 1
                        if n == 1:
                            t1 = time.perf_counter()  # the prompt is processed
                        piece, hit = text.add(dyn.piece(token))
                        self._text(piece)
                        if hit:
                            break
                finish = ("stop" if hit else "cancelled" if self._stopped() else
                          "length" if n == self.max_tokens else "stop")  # else an end token
                if finish != "cancelled":
                    self._text("" if hit else text.flush(), last=True)  # what was held back
        except Cancelled:
            finish = "cancelled"
        except Exception as e:  # a failure inside llama.cpp: the client gets one line, the log more
            log.exception("#%d failed", self.rid)
            self._put("error", f"generation failed: {e}")
            return
        finally:
            self.server._jobs.pop(self.rid, None)
        t2 = time.perf_counter()
        if finish == "cancelled":
            why = "server stopping" if self.server.stopping.is_set() else "client gone"
            log.info("#%d cancelled after %d tokens (%s); its context is free", self.rid, n, why)
        else:
            log.info("#%d done, finish %s: prompt %d tokens in %.2f s, then %d tokens in %.2f s "
                     "(%.1f tokens/s)", self.rid, finish, len(self.prompt), t1 - t0, n, t2 - t1,
                     (n - 1) / (t2 - t1) if n > 1 else 0.0)
        self._put("end", finish, n)

    async def events(self, request: Optional[Request] = None):
        """The job's events as they come; leaving early (a client gone) cancels the job.
        ``request``: also cancel when that client disconnects while nothing is sent to it."""
        try:
            while True:
                if request is None:
                    item = await self.queue.get()
                else:
                    try:
                        item = await asyncio.wait_for(self.queue.get(), 0.25)
                    except asyncio.TimeoutError:
                        if await request.is_disconnected():
                            return
                        continue
                yield item
                if item[0] != "text":
                    return
        finally:
            self.cancel.set()


class Server:
    """The app's state: the model's dynamic contexts, request numbers, the stop signal."""

    def __init__(self, dyn: Dynamic, name: str) -> None:
        self.dyn, self.name = dyn, name
        self.stopping = threading.Event()
        self.created = int(os.path.getmtime(dyn.model.path))
        self._ids = iter(range(1, 1 << 62))
        self._jobs: Dict[int, _Job] = {}

    def describe(self) -> Dict[str, Any]:
        dyn = self.dyn
        return {"model": self.name, "training_context": dyn.training_context,
                "max_context": dyn.max_context, "method": dyn.method, "dynamic": dyn.policy.describe(),
                "max_contexts": dyn.cached, "kv_bytes_max": dyn.cached * dyn.kv_bytes(dyn.max_context),
                "memory_bytes_max": dyn.cached * dyn.memory_bytes(dyn.max_context)}

    async def start(self, path: str, prompt: List[int], max_tokens: Optional[int], body) -> _Job:
        """Check the request's length against --max-context, log it, start its job."""
        dyn, p = self.dyn, len(prompt)
        if p == 0:
            raise ApiError(400, "the prompt is empty; send at least one token of text", param="prompt")
        if max_tokens is None:  # chat without a limit: up to the end of the prompt's bucket
            if p + 1 > dyn.max_context:
                raise ApiError(400, f"the prompt has {p} tokens, more than this server's --max-context "
                               f"{dyn.max_context} leaves room for; shorten it", param="messages",
                               code="context_length_exceeded")
            max_tokens = dyn.bucket_for(p + 1) - p
        if p + max_tokens > dyn.max_context:
            raise ApiError(400, f"this request needs {p + max_tokens} tokens ({p} in the prompt + "
                           f"max_tokens {max_tokens}), more than this server's --max-context "
                           f"{dyn.max_context}; shorten the prompt or lower max_tokens",
                           param="max_tokens", code="context_length_exceeded")
        rid = next(self._ids)
        n = dyn.bucket_for(p + max_tokens)
        log.info("#%d %s: %d tokens (%d prompt + %d to generate) -> bucket %d, rope %s", rid, path,
                 p + max_tokens, p, max_tokens, n, dyn.scaling_for(n).describe())
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        sampling = dict(temperature=body.temperature, top_p=body.top_p, seed=body.seed)
        job = _Job(self, rid, prompt, max_tokens, sampling, stop, body.stream)
        self._jobs[rid] = job
        job.thread.start()
        return job

    def close(self, timeout: float = 10.0) -> None:
        """Stop every job, wait for its worker, free the contexts."""
        self.stopping.set()
        jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel.set()
            job.thread.join(timeout)
        if not any(job.thread.is_alive() for job in jobs):
            self.dyn.close()  # a worker still decoding keeps its context: the process exit frees it


def _usage(prompt: int, completion: int) -> Dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


_STOPPING = ApiError(503, "the server is shutting down; send the request again once it is back",
                     kind="server_error")


async def _respond(server: Server, request: Request, job: _Job, body, chat: bool) -> Any:
    """The response to a started job, streamed (server-sent events) or whole."""
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    head = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": server.name}
    p = len(job.prompt)

    def choice(text: Optional[str], finish: Optional[str], first: bool = False) -> dict:
        if not chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        delta = {"role": "assistant", "content": ""} if first else {}
        if text:
            delta["content"] = text
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage

        async def stream():
            if chat:
                yield _sse({**head, "choices": [choice(None, None, first=True)]})
            async for kind, *data in job.events():
                if kind == "text":
                    yield _sse({**head, "choices": [choice(data[0], None)]})
                elif kind == "error" or data[0] == "cancelled":
                    error = _STOPPING if kind == "end" else ApiError(500, data[0], kind="server_error")
                    yield _sse({"error": {"message": str(error), "type": error.kind}})
                else:
                    yield _sse({**head, "choices": [choice(None, data[0])]})
                    if usage:
                        yield _sse({**head, "choices": [], "usage": _usage(p, data[1])})
                    yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    parts: List[str] = []
    async for kind, *data in job.events(request):
        if kind == "text":
            parts.append(data[0])
        elif kind == "error":
            raise ApiError(500, data[0], kind="server_error")
        elif data[0] == "cancelled":
            raise _STOPPING
        else:
            text, finish, n = "".join(parts), data[0], data[1]
            out = ({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                    "finish_reason": finish} if chat else choice(text, finish))
            return JSONResponse({**head, "object": "chat.completion" if chat else "text_completion",
                                 "choices": [out], "usage": _usage(p, n)})
    raise ApiError(499, "the client disconnected")  # nobody reads this


def create_app(server: Server) -> Starlette:
    dyn = server.dyn

    async def completions(request: Request):
        body = await _parse(request, CompletionRequest)
        if isinstance(body.prompt, list):
            if len(body.prompt) != 1:
                raise ApiError(400, "send one prompt per request (a list of several is not "
                               "supported)", param="prompt")
            body.prompt = body.prompt[0]
        prompt = await run_in_threadpool(dyn.tokenize, body.prompt, special=True)
        job = await server.start(request.url.path, prompt, body.max_tokens or COMPLETION_MAX_TOKENS, body)
        return await _respond(server, request, job, body, chat=False)

    async def chat(request: Request):
        body = await _parse(request, ChatRequest)
        messages = [m.as_dict() for m in body.messages]
        try:
            text = await run_in_threadpool(dyn.chat_prompt, messages)
        except (ValueError, PyntkError) as e:  # the template's own refusal (e.g. roles out of order)
            raise ApiError(400, f"the model's chat template refused these messages: {e}",
                           param="messages") from None
        prompt = await run_in_threadpool(dyn.tokenize, text, special=True)
        job = await server.start(request.url.path, prompt,
                                 body.max_completion_tokens or body.max_tokens, body)
        return await _respond(server, request, job, body, chat=True)

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [
            {"id": server.name, "object": "model", "created": server.created, "owned_by": "pyntk",
             "meta": server.describe()}]})

    async def health(request: Request):
        kept = dyn.kept()
        return JSONResponse({"status": "stopping" if server.stopping.is_set() else "ok",
                             **server.describe(), "busy": sum(lent for _, lent in kept),
                             "contexts": [{"bucket": n, "busy": lent} for n, lent in kept]})

    async def api_error(request: Request, exc: ApiError):
        return exc.response()

    async def http_error(request: Request, exc: HTTPException):
        return ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}").response()

    return Starlette(routes=[Route("/v1/completions", completions, methods=["POST"]),
                             Route("/v1/chat/completions", chat, methods=["POST"]),
                             Route("/v1/models", models, methods=["GET"]),
                             Route("/health", health, methods=["GET"])],
                     exception_handlers={ApiError: api_error, HTTPException: http_error})


# --- running it -----------------------------------------------------------------------------------

def available_memory() -> Optional[int]:
    """Bytes the kernel says can be allocated without swapping (MemAvailable), if it says."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(dyn: Dynamic) -> str:
    """Refuse a setup whose contexts (KV cache and compute buffers each, :meth:`Dynamic.memory`)
    could outgrow the memory available; describe it otherwise."""
    m = dyn.memory(dyn.max_context)
    need = dyn.cached * m.total
    each = (f"each: KV cache {human_size(m.kv)} at {m.kv // dyn.bucket_for(dyn.max_context)} bytes per token, "
            f"compute buffers {human_size(m.total - m.kv)}" + ("" if dyn.flash_attn else " without --flash-attn"))
    contexts = f"{dyn.cached} context{'s' * (dyn.cached > 1)}"
    avail = available_memory()
    if avail is not None and need > avail:
        fixes = [_longest_fitting(dyn, avail)]
        if dyn.cached > 1:
            fixes.append("fewer --contexts")
        if not dyn.flash_attn:
            fa = dyn.memory(dyn.max_context, flash_attn=True)
            fixes.append(f"--flash-attn (compute buffers {human_size(fa.total - fa.kv)} per context)")
        raise PyntkError(f"{contexts} of up to {dyn.max_context} tokens need{'s' * (dyn.cached == 1)} "
                         f"{human_size(need)} ({each}), but only {human_size(avail)} of memory is available; use "
                         + ", ".join(fixes[:-1]) + ", or " * (len(fixes) > 1) + fixes[-1])
    return (f"memory up to {contexts} x {human_size(m.total)} = {human_size(need)} ({each})"
            + (f", {human_size(avail)} available" if avail is not None else ""))


def _longest_fitting(dyn: Dynamic, avail: int) -> str:
    """The --max-context advice: the longest bucket whose contexts fit ``avail`` bytes."""
    lengths = sorted({dyn.training_context, *range(dyn.policy.bucket, dyn.max_context + 1, dyn.policy.bucket)})
    lengths = [n for n in lengths if n >= dyn.training_context]
    fits = lambda n: dyn.cached * dyn.memory_bytes(n) <= avail  # noqa: E731 - grows with n
    if not fits(lengths[0]):
        return f"a smaller model (not even the training context, {dyn.training_context} tokens, fits)"
    lo, hi = 0, len(lengths) - 1  # lengths[lo] fits, lengths[hi + 1:] do not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(lengths[mid]) else (lo, mid - 1)
    return f"--max-context {lengths[lo]} or less"


class _Uvicorn(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, server: Server) -> None:
        super().__init__(config)
        self.app_server = server

    def handle_exit(self, sig, frame) -> None:
        # running generations stop at their next token, so open streams end and shutdown is prompt
        self.app_server.stopping.set()
        super().handle_exit(sig, frame)


def serve(dyn: Dynamic, *, name: str, host: str, port: int) -> None:
    """Serve until Ctrl-C (SIGINT) or SIGTERM; then stop every generation and free the contexts."""
    memory = check_memory(dyn)
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as e:
        raise PyntkError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port or "
                         f"--host") from None
    server = Server(dyn, name)
    config = uvicorn.Config(create_app(server), log_level="warning", timeout_graceful_shutdown=5)
    log.info("serving %s on http://%s:%d: %s, up to %d tokens; %s", name, host,
             sock.getsockname()[1], dyn.policy.describe(), dyn.max_context, memory)
    try:
        _Uvicorn(config, server).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled
        pass
    finally:
        server.close()
        sock.close()
    log.info("stopped")
