"""The HTTP server of `nlptl serve`: a FastAPI app around one loaded classifier, with dynamic batching.

Routes:
- POST /predict  {"texts": [...]} (and "text_pairs": [...] for a pair model) -> {"results": [...]}, one
  result per text in order, each as `nlptl predict --json` writes it (nlptl/inference.py);
- GET /health    200 {"status": "ok"} once the model is loaded, 503 while it loads or the server drains;
- GET /info      the model, its labels and task shape, lineage, max length, backend and device (absolute
  paths cut to their last part, unless --info-paths);
- HEAD /health, HEAD /info: the status of GET, for load balancers.

Dynamic batching (`Batcher`): requests wait in a queue; the first one of a batch waits at most
--max-wait-ms for others, until --max-batch-size texts are gathered; the batch runs in one thread
beside the event loop (so requests keep arriving while the model runs, and form the next batch),
sorted by length in passes of at most --max-batch-tokens tokens (on a CPU, padding 30 short texts
to the length of two long ones made a batch of 32 slower than 32 single texts: docs/serving.md),
under torch.inference_mode(); each caller gets its own results back.

Every bad request is a 4xx with {"error": "one line"}; an unexpected failure is a 500 with a short
message (the traceback goes to the server's log, with NLPTL_DEBUG=1), and the server keeps serving.

Stopping (SIGTERM, Ctrl-C): no new connections; /health says 503 "stopping"; the requests in flight are
answered for up to --drain-seconds, then those still waiting get a 503 saying so (`watch_stop_signals`).
Only this module and stages/serve.py import fastapi.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

# At module level: FastAPI reads the routes' annotations (Request) from this module's globals.
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

log = logging.getLogger("nlptl")
SETTINGS_ENV = "NLPTL_SERVE_SETTINGS"  # how the settings reach worker processes (--workers > 1)
INTERNAL = "internal error while classifying; the server logged it"
DRAIN_SECONDS = 30.0  # ServeConfig's default: how long a stopping server answers the requests in flight


class BadRequest(Exception):
    """A request the server refuses: its status (400, 413, 422...) and one line saying why."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class _Item:
    texts: list[str]
    pairs: list[str] | None
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)


class Batcher:
    """Gathers the texts of concurrent requests into batches for one classifier (see the module's doc)."""

    def __init__(self, classifier, max_batch_size: int, max_wait_ms: float, max_batch_tokens: int | None = None):
        self.classifier, self.max_batch_size, self.max_wait = classifier, max_batch_size, max_wait_ms / 1000
        self.max_tokens = max_batch_tokens
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        # One thread runs the model: torch (or onnxruntime) uses every core for one batch already.
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="nlptl-model")
        self.carry: _Item | None = None  # a request that did not fit into the last batch: it opens the next
        self.task: asyncio.Task | None = None
        self.batches = 0
        self.pending: set[asyncio.Future] = set()  # the futures of the requests not answered yet

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    async def submit(self, texts: list[str], pairs: list[str] | None) -> list[dict]:
        item = _Item(texts, pairs, asyncio.get_running_loop().create_future())
        self.pending.add(item.future)
        try:
            await self.queue.put(item)
            return await item.future
        finally:
            self.pending.discard(item.future)

    def cut_off(self, error: Exception) -> int:
        """Fail every request not answered yet with `error` (the end of a drain); how many there were.
        A batch already in the model finishes in its thread, and its results are dropped."""
        waiting = [f for f in self.pending if not f.done()]
        for f in waiting:
            f.set_exception(error)
        return len(waiting)

    async def _gather(self) -> list[_Item]:
        first = self.carry or await self.queue.get()
        self.carry = None
        items, n = [first], len(first.texts)
        deadline = time.perf_counter() + self.max_wait
        while n < self.max_batch_size:
            try:
                item = self.queue.get_nowait()  # already waiting: no need to wait for it
            except asyncio.QueueEmpty:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                item = await self._get(left)
                if item is None:
                    break
            if n + len(item.texts) > self.max_batch_size:
                self.carry = item
                break
            items.append(item)
            n += len(item.texts)
        return items

    async def _get(self, timeout: float) -> _Item | None:
        """The next request within `timeout` seconds, or None. (Not asyncio.wait_for(queue.get()): on
        Python < 3.12 it can drop an item that arrives just as the timeout cancels the get.)"""
        getter = asyncio.ensure_future(self.queue.get())
        done, _ = await asyncio.wait({getter}, timeout=timeout)
        if done:
            return getter.result()
        getter.cancel()
        try:
            return await getter  # it completed before the cancel took effect
        except asyncio.CancelledError:
            return None

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._gather()
            items = [i for i in items if not i.future.done()]  # callers that went away
            if not items:
                continue
            texts = [t for i in items for t in i.texts]
            pairs = [p for i in items for p in i.pairs] if items[0].pairs is not None else None
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, self._run, texts, pairs)
            except Exception as e:  # noqa: BLE001 - the callers get a 500; the server keeps serving
                log.error("batch of %d texts failed: %s: %s", len(texts), type(e).__name__,
                          str(e).splitlines()[0] if str(e) else "")
                if os.environ.get("NLPTL_DEBUG", "") not in ("", "0"):
                    log.exception("traceback")
                if len(items) == 1:
                    if not items[0].future.done():
                        items[0].future.set_exception(e)
                    continue
                # One caller's request must not fail the others gathered with it: each runs again alone.
                for i in items:
                    try:
                        alone = await loop.run_in_executor(self.executor, self._run, i.texts, i.pairs)
                    except Exception as err:  # noqa: BLE001
                        if not i.future.done():
                            i.future.set_exception(err)
                    else:
                        if not i.future.done():
                            i.future.set_result(alone)
                continue
            self.batches += 1
            done = time.perf_counter()
            at = 0
            for i in items:
                if not i.future.done():
                    i.future.set_result(results[at : at + len(i.texts)])
                at += len(i.texts)
            waited = max(start - i.arrived for i in items)
            log.info("batch %d: %d texts from %d requests in %.1f ms (longest wait %.1f ms)", self.batches,
                     len(texts), len(items), 1000 * (done - start), 1000 * waited,
                     extra={"fields": {"event": "batch", "batch": self.batches, "texts": len(texts),
                                       "requests": len(items), "model_ms": round(1000 * (done - start), 2),
                                       "max_wait_ms": round(1000 * waited, 2),
                                       "truncated": sum(1 for r in results if r.get("truncated"))}})

    def _run(self, texts: list[str], pairs: list[str] | None) -> list[dict]:
        return self.classifier(texts, pairs, batch_size=self.max_batch_size, max_tokens=self.max_tokens)


def parse_request(body: bytes, pairs_model: bool, max_texts: int) -> tuple[list[str], list[str] | None]:
    """The texts (and pairs) of a /predict body, or BadRequest with one line saying what is wrong."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"the body is not valid JSON ({e.msg if hasattr(e, 'msg') else 'not UTF-8'}); "
                         'send {"texts": ["..."]}') from None
    except RecursionError:  # "[[[[..." deeper than the decoder's recursion limit: well under --max-request-bytes
        raise BadRequest('the body is JSON nested too deeply; send {"texts": ["..."]}') from None
    if not isinstance(data, dict):
        raise BadRequest('the body must be a JSON object: {"texts": ["..."]}')
    unknown = sorted(set(data) - {"texts", "text_pairs"})
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}; "
                         "the fields are \"texts\" and (for a pair model) \"text_pairs\"")
    if "texts" not in data:
        raise BadRequest('missing field "texts": a list of strings')
    texts = _strings(data["texts"], "texts", max_texts)
    pairs = None
    if "text_pairs" in data:
        if not pairs_model:
            raise BadRequest('this model takes single texts: leave out "text_pairs"')
        pairs = _strings(data["text_pairs"], "text_pairs", max_texts)
        if len(pairs) != len(texts):
            raise BadRequest(f'"text_pairs" has {len(pairs)} entries and "texts" {len(texts)}; give one pair per text')
    elif pairs_model:
        raise BadRequest('this model was trained on text pairs: send "text_pairs" too, one per text')
    return texts, pairs


def _strings(value, name: str, max_texts: int) -> list[str]:
    if not isinstance(value, list):
        raise BadRequest(f'"{name}" must be a list of strings (got {type(value).__name__})')
    if not value:
        raise BadRequest(f'"{name}" is empty; send at least one text')
    if len(value) > max_texts:
        raise BadRequest(f'{len(value)} texts in one request; the limit is {max_texts} (--max-texts)', 413)
    for i, v in enumerate(value):
        if not isinstance(v, str):
            got = "null" if v is None else type(v).__name__
            raise BadRequest(f'"{name}"[{i}] is not a string (got {got})')
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:  # valid JSON ("\ud800") that no tokenizer takes
            raise BadRequest(f'"{name}"[{i}] is not valid Unicode text '
                             '(it holds a lone surrogate such as \\ud800)') from None
    return value


async def read_body(request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes `limit` bytes: a declared length is checked
    before reading, a chunked body while it streams in."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"the request is {declared} bytes; the limit is {limit} (--max-request-bytes)", 413)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadRequest(f"the request is over {limit} bytes (--max-request-bytes)", 413)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGone(size) from None
    return b"".join(chunks)


class Draining(Exception):
    """The server is stopping (SIGTERM, Ctrl-C) and --drain-seconds are over: this request was cut off."""


def stopping(drain_seconds: float, cut: bool) -> JSONResponse:
    """The answer to a request the stopping server does not classify: 503, to send again elsewhere."""
    why = (f"it was not answered within --drain-seconds {drain_seconds:g}" if cut
           else "it takes no new requests")
    return JSONResponse({"error": f"the server is stopping (SIGTERM) and {why}; send the request again, to "
                                  "another instance or once it is back"}, status_code=503,
                        headers={"Retry-After": "1", "Connection": "close"})


def watch_stop_signals(state: dict, drain_seconds: float) -> None:
    """On SIGTERM or SIGINT, uvicorn (whose handler still runs first) stops accepting and waits for the
    requests in flight; here /health turns 503 "stopping", and once `drain_seconds` are over the requests
    still waiting are answered 503 (`stopping`), so uvicorn's own timeout, a little later, finds none left
    to cancel (it would answer them with a bare 500 and log a traceback)."""
    if threading.current_thread() is not threading.main_thread():
        return  # signals reach only the main thread: an app run in another thread (tests) is stopped directly
    loop = asyncio.get_running_loop()

    def cut_off() -> None:
        n = state["batcher"].cut_off(Draining())
        if n:
            log.warning("--drain-seconds %g over: %d request(s) not answered in time got 503", drain_seconds, n)

    def begin(signum: int) -> None:
        if state.get("draining"):
            return
        state["draining"], state["ready"] = True, False
        log.info("stopping (%s): answering the requests in flight, for up to %g s (--drain-seconds)",
                 signal.Signals(signum).name, drain_seconds)
        loop.call_later(drain_seconds, cut_off)

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum, frame, previous=previous) -> None:
            if callable(previous):
                previous(signum, frame)
            loop.call_soon_threadsafe(begin, signum)

        signal.signal(sig, handler)


class ClientGone(Exception):
    """The client closed the connection before its request body was complete: nobody to answer."""

    def __init__(self, received: int):
        super().__init__(f"a client closed the connection after {received} bytes of its request body; "
                         "nothing to answer")


def error_handlers(app) -> None:
    """Every failure answered as {"error": "one line"} (a client gone: nobody to answer, one log line)."""

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, e: BadRequest):
        return JSONResponse({"error": str(e)}, status_code=e.status)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, e: ClientGone):
        # An ordinary event (a client timed out or was stopped), not a server fault: one line, no traceback.
        log.info("%s", e)
        return Response(status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):  # 404, 405: the same {"error": ...} shape
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        return JSONResponse({"error": "invalid request"}, status_code=422)

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception):  # anything else (Starlette then re-raises it to uvicorn's log)
        log.error("internal error on %s: %s", request.url.path, type(e).__name__)
        return JSONResponse({"error": INTERNAL}, status_code=500)


def build_app(settings: dict, classifier=None):
    """The FastAPI app. `settings`: the resolved ServeConfig as a dict; `classifier`: one already loaded
    (by `nlptl serve` with one worker), else it is loaded when the app starts (each worker process)."""
    state: dict = {"classifier": classifier, "batcher": None, "ready": False}

    @asynccontextmanager
    async def lifespan(app):
        if state["classifier"] is None:
            state["classifier"] = await asyncio.to_thread(load, settings)
        state["batcher"] = Batcher(state["classifier"], settings["max_batch_size"], settings["max_wait_ms"],
                                   settings.get("max_batch_tokens"))
        state["batcher"].start()
        watch_stop_signals(state, settings.get("drain_seconds", DRAIN_SECONDS))
        state["ready"] = True
        yield
        # uvicorn calls this after the in-flight requests are answered (SIGTERM / SIGINT: drain, then exit).
        state["ready"] = False
        await state["batcher"].stop()

    app = FastAPI(title="nlptl classifier", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    error_handlers(app)

    # HEAD too, wherever GET is answered: load balancers and uptime checks probe with HEAD.
    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health():
        if not state["ready"]:
            return JSONResponse({"status": "loading" if state["classifier"] is None else "stopping"}, status_code=503)
        return {"status": "ok"}

    @app.api_route("/info", methods=["GET", "HEAD"])
    async def info():
        if state["classifier"] is None:
            raise BadRequest("the model is still loading", 503)
        shown = state["classifier"].info()
        if not settings.get("info_paths"):
            shown = without_paths(shown)
        return shown | {k: settings[k] for k in ("max_batch_size", "max_wait_ms", "max_texts", "max_request_bytes")}

    @app.post("/predict")
    async def predict(request: Request):
        return await answer(request, state, settings)

    return app


async def answer(request, state: dict, settings: dict):
    """POST /predict: the results of the request's texts, or the one-line error of a request refused."""
    drain = settings.get("drain_seconds", DRAIN_SECONDS)
    if state.get("draining"):
        return stopping(drain, cut=False)
    if not state["ready"]:
        raise BadRequest("the model is still loading; retry when GET /health says ok", 503)
    try:
        body = await read_body(request, settings["max_request_bytes"])
        texts, pairs = parse_request(body, state["classifier"].pairs, settings["max_texts"])
        return {"results": await state["batcher"].submit(texts, pairs)}
    except Draining:
        return stopping(drain, cut=True)
    except asyncio.CancelledError:
        if not state.get("draining"):
            raise
        # uvicorn's timeout after the drain (a body still arriving): answered, not a bare 500.
        return stopping(drain, cut=True)
    except (BadRequest, ClientGone):
        raise
    except Exception:  # noqa: BLE001 - the batcher logged it; answered here, so uvicorn logs no traceback
        return JSONResponse({"error": INTERNAL}, status_code=500)


def without_paths(value):
    """`value` (GET /info's answer) with every absolute path cut to its last part: a model or a data file
    keeps its name, and a client learns nothing of the server's file layout (--info-paths keeps them)."""
    if isinstance(value, dict):
        return {k: without_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_paths(v) for v in value]
    if isinstance(value, str):  # a path alone, or inside a sentence ("... /data/base records no pooling")
        return ABSOLUTE_PATH.sub(lambda m: os.path.basename(m[0].rstrip("/")) or m[0], value)
    return value


# An absolute path (or ~/...): from a / or ~ that does not continue a word, a URL or a relative path.
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])[/~][^\s\"'<>|;,()]+")


def load(settings: dict):
    """The classifier the settings name, with the thread count they ask for; a worker of several (its
    slot claimed in `worker_slots`) on its share of the GPUs (runtime.worker_device), one alone on the
    default device."""
    from nlptl import runtime
    from nlptl.inference import load_classifier

    if settings.get("threads"):
        import torch

        torch.set_num_threads(settings["threads"])
    runtime.quiet_libraries()
    slots = settings.get("worker_slots")
    device = runtime.worker_device(claim_worker_slot(slots)) if slots else None
    return load_classifier(settings["model"], settings["backend"], settings["max_length"], "MODEL",
                           int8=settings.get("int8", False), device=device,
                           raw_scores=settings.get("raw_scores", False), abstain_below=settings.get("abstain_below"))


_SLOT_LOCKS: list[int] = []  # open for the life of the process: the lock is the claim


def claim_worker_slot(directory: str) -> int:
    """This worker's number among the server's: the lowest slot no live worker holds. uvicorn tells a
    worker no number, so each takes an exclusive lock on slot-I in the server's directory and keeps it
    while it lives; the worker uvicorn starts in place of a dead one gets the slot it freed."""
    import fcntl

    index = 0
    while True:
        fd = os.open(os.path.join(directory, f"slot-{index}.lock"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live worker holds it
            os.close(fd)
            index += 1
            continue
        _SLOT_LOCKS.append(fd)
        return index


def app_from_env():
    """The app of one worker process (uvicorn's factory with --workers > 1): settings from the environment."""
    from nlptl import console

    settings = json.loads(os.environ[SETTINGS_ENV])
    console.configure(quiet=settings.get("quiet", False))
    if settings.get("json_logs"):
        console.json_logs()
    return build_app(settings)
