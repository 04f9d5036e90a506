"""An OpenAI-compatible HTTP endpoint for a ChatModel, on 127.0.0.1 only.

    tutorforge serve outputs/python-tutor-smollm2 --port 8000
    curl http://127.0.0.1:8000/v1/chat/completions -d '{"messages": [{"role": "user", "content": "Hi"}]}'

POST /v1/chat/completions (JSON, or server-sent `chat.completion.chunk` events ending `data: [DONE]`
with "stream": true) and GET /v1/models, as OpenAI's API answers them; errors in OpenAI's shape
({"error": {"message", "type", "param", "code"}}): 400 for a bad field or a prompt longer than the
context, 503 when the queue is full.

llama.cpp's model is not thread-safe, so one worker thread owns it and answers requests one at a
time, in order, from a bounded queue; connection threads (ThreadingHTTPServer) only read, validate
and write. A client that goes away (its socket reads as closed, or a write fails) stops its
generation at the next token, or its turn in the queue. Every socket read or write has a timeout,
and a whole request must arrive within a deadline, so a slow client cannot hold a thread.
"""
from __future__ import annotations

import json
import logging
import queue
import select
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal, TypeAlias

from tutorforge.chat import ChatModel, Outcome, PromptTooLong

log = logging.getLogger(__name__)

QUEUE_SIZE = 32  # requests waiting for the model; more get 503
IO_TIMEOUT = 30.0  # seconds for any one socket read or write
READ_DEADLINE = 60.0  # seconds for a client to send its whole request
MAX_BODY = 4 << 20  # bytes
MAX_MESSAGES = 512  # per request (the prompt is rendered once per message to find each content)
ROLES = ("system", "user", "assistant")


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.code, self.kind = status, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


# what the worker puts on a Job's events: start (the prompt's ids), pieces, then end or error
Event: TypeAlias = (tuple[Literal["start"], list[int]] | tuple[Literal["piece"], str]
                    | tuple[Literal["end"], Outcome] | tuple[Literal["error"], ApiError])


@dataclass(frozen=True)
class Request:
    messages: list[dict]
    max_tokens: int = 512
    temperature: float = 0.0
    stream: bool = False


def parse_request(body: bytes) -> Request:
    """A chat completion request, its fields checked (other OpenAI fields are accepted and unused)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object: {\"messages\": [{\"role\", \"content\"}], ...}")
    messages = data.get("messages")
    if not isinstance(messages, list) or not 0 < len(messages) <= MAX_MESSAGES:
        raise ApiError(400, f"messages must be a list of 1 to {MAX_MESSAGES} {{role, content}}",
                       param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(400, f"messages[{i}]: role must be one of {', '.join(ROLES)}",
                           param=f"messages[{i}].role")
        if not isinstance(m.get("content"), str):
            raise ApiError(400, f"messages[{i}]: content must be a string (content parts are not supported)",
                           param=f"messages[{i}].content")

    def option(name: str, default, ok: Callable[[object], bool], what: str):
        value = data.get(name)
        if value is None:  # absent or null: the default, as OpenAI's API reads it
            return default
        if isinstance(value, bool) is not isinstance(default, bool) or not ok(value):
            raise ApiError(400, f"{name} must be {what}, not {json.dumps(value)}", param=name)
        return value

    if data.get("max_tokens") is None and data.get("max_completion_tokens") is not None:
        data["max_tokens"] = data["max_completion_tokens"]
    max_tokens = option("max_tokens", Request.max_tokens, lambda v: isinstance(v, int) and v > 0,
                        "a positive integer")
    temperature = option("temperature", Request.temperature,
                         lambda v: isinstance(v, (int, float)) and 0 <= v <= 2, "a number from 0 to 2")
    stream = option("stream", False, lambda v: isinstance(v, bool), "true or false")
    return Request([{"role": m["role"], "content": m["content"]} for m in messages], max_tokens,
                   float(temperature), stream)


@dataclass
class Job:
    """One request's generation; the worker puts ("start", ids), ("piece", text), then ("end",
    Outcome) or ("error", ApiError) on `events`."""
    request: Request
    events: queue.Queue[Event] = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)


class Worker(threading.Thread):
    """The one thread that runs the model: jobs in order, from a bounded queue."""

    def __init__(self, model: ChatModel, queue_size: int = QUEUE_SIZE):
        super().__init__(name="tutorforge-model", daemon=True)
        self.model, self.jobs = model, queue.Queue(maxsize=queue_size)

    def submit(self, job: Job) -> None:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise ApiError(503, f"the server is busy ({self.jobs.maxsize} requests waiting); retry shortly",
                           kind="server_error") from None

    def stop(self) -> None:
        self.jobs.put(None)

    def run(self) -> None:
        while (job := self.jobs.get()) is not None:
            if job.cancelled.is_set():
                continue  # its client went away while it waited
            try:
                self.answer(job)
            except Exception as exc:  # noqa: BLE001 (one failed request must not stop the server)
                log.exception("serve: generation failed")
                job.events.put(("error", ApiError(500, f"generation failed: {exc}", kind="server_error")))

    def answer(self, job: Job) -> None:
        model, request = self.model, job.request
        ids = model.prompt_ids(model.messages_for(request.messages, None))
        outcome = Outcome(len(ids))
        try:
            pieces = model.pieces(ids, outcome, max_tokens=request.max_tokens, temperature=request.temperature,
                                  cancelled=job.cancelled.is_set)
            first = next(pieces, None)
        except PromptTooLong as exc:
            job.events.put(("error", ApiError(400, str(exc), param="messages", code="context_length_exceeded")))
            return
        job.events.put(("start", ids))
        if first is not None:
            job.events.put(("piece", first))
            for piece in pieces:
                job.events.put(("piece", piece))
        if job.cancelled.is_set():
            log.info("serve: client went away; generation stopped after %d tokens", outcome.completion_tokens)
        job.events.put(("end", outcome))


def client_gone(sock: socket.socket) -> bool:
    """True when the peer has closed the connection: readable now, and a peek reads nothing.
    (poll, not select: any file descriptor number; a socket timeout would make recv wait.)"""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    if not poller.poll(0):
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class Handler(BaseHTTPRequestHandler):
    server: ChatServer

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.io_timeout)  # as StreamRequestHandler.timeout would
        # the whole request must arrive by the deadline; past it the socket is shut (reads return b"")
        self.deadline = threading.Timer(self.server.read_deadline, self._cut_off)
        self.deadline.daemon = True
        self.deadline.start()

    def _cut_off(self) -> None:
        log.info("serve: %s sent no whole request in %g s; connection closed", self.client_address[0],
                 self.server.read_deadline)
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def finish(self) -> None:
        self.deadline.cancel()
        super().finish()

    def _send(self, code: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, error: ApiError) -> None:
        self._send(error.status, error.body(), {"Retry-After": "1"} if error.status == 503 else None)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.deadline.cancel()
        if self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": self.server.model.name, "object": "model",
                                                         "created": 0, "owned_by": "tutorforge"}]})
        else:
            self._error(ApiError(404, f"no route {self.path}; try POST /v1/chat/completions"))

    def do_POST(self) -> None:  # noqa: N802
        job = None
        try:
            try:
                request = self._read_request()
                job = Job(request)
                self.server.worker.submit(job)
            except ApiError as error:
                return self._error(error)
            (self._stream if request.stream else self._complete)(job)
        except OSError:  # the client went away, or timed out, while we read or wrote
            if job is not None:
                job.cancelled.set()
            self.close_connection = True

    def _read_request(self) -> Request:
        if self.path.rstrip("/") != "/v1/chat/completions":
            raise ApiError(404, f"no route {self.path}; try POST /v1/chat/completions")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise ApiError(411, "a Content-Length header is required") from None
        if not 0 <= length <= MAX_BODY:
            raise ApiError(413, f"the body is {length} bytes; at most {MAX_BODY}")
        body = self.rfile.read(length)
        if len(body) < length:
            raise ApiError(400, f"the body ended after {len(body)} of {length} bytes")
        self.deadline.cancel()
        return parse_request(body)

    def _events(self, job: Job) -> Iterator[Event]:
        """The job's events as they come; when the client goes away, the job is cancelled and
        the events end."""
        while True:
            try:
                event = job.events.get(timeout=0.1)
            except queue.Empty:
                event = None
            if client_gone(self.connection):
                job.cancelled.set()
                self.close_connection = True
                return
            if event is not None:
                yield event
                if event[0] in ("end", "error"):
                    return

    def _complete(self, job: Job) -> None:
        text, outcome = [], None
        for event in self._events(job):
            match event:
                case ("error", error):
                    return self._error(error)
                case ("piece", piece):
                    text.append(piece)
                case ("end", ended):
                    outcome = ended
        if outcome is None:
            return
        self._send(200, {**self._envelope("chat.completion"), "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "".join(text)},
             "finish_reason": outcome.finish_reason}], "usage": _usage(outcome)})

    def _stream(self, job: Job) -> None:
        envelope = self._envelope("chat.completion.chunk")

        def chunk(delta: dict, finish: str | None = None) -> bytes:
            body = {**envelope, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return b"data: " + json.dumps(body).encode() + b"\n\n"

        started = False
        for event in self._events(job):
            match event:
                case ("error", error) if started:  # after the headers: an error event ends the stream
                    self.wfile.write(b"data: " + json.dumps(error.body()).encode() + b"\n\n")
                case ("error", error):
                    return self._error(error)
                case ("start", _):
                    started = True
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Cache-Control", "no-cache")
                    self.end_headers()  # no Content-Length: the events end when the connection closes
                    self.close_connection = True
                    self.wfile.write(chunk({"role": "assistant", "content": ""}))
                case ("piece", piece):
                    self.wfile.write(chunk({"content": piece}))
                case ("end", outcome) if outcome.finish_reason:
                    self.wfile.write(chunk({}, outcome.finish_reason) + b"data: [DONE]\n\n")

    def _envelope(self, kind: str) -> dict:
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
                "model": self.server.model.name}

    def log_message(self, fmt: str, *args) -> None:
        log.info("serve: %s", fmt % args)


def _usage(outcome: Outcome) -> dict:
    return {"prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens,
            "total_tokens": outcome.prompt_tokens + outcome.completion_tokens}


class ChatServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with the model's worker thread and the timeouts."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog: many clients may connect at once

    def __init__(self, model: ChatModel, port: int, *, queue_size: int, io_timeout: float,
                 read_deadline: float):
        super().__init__(("127.0.0.1", port), Handler)
        self.model, self.io_timeout, self.read_deadline = model, io_timeout, read_deadline
        self.worker = Worker(model, queue_size)
        self.worker.start()

    def handle_error(self, request, client_address) -> None:
        """One line for a connection a client broke; a traceback only for our own failures."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            log.info("serve: %s: %s", client_address[0], error)
        else:
            log.exception("serve: a request from %s failed", client_address[0])

    def server_close(self) -> None:
        super().server_close()
        self.worker.stop()


def build_server(model: ChatModel, *, port: int = 8000, queue_size: int = QUEUE_SIZE,
                 io_timeout: float = IO_TIMEOUT, read_deadline: float = READ_DEADLINE) -> ChatServer:
    """The server, bound and its worker started; run it with serve_forever()."""
    return ChatServer(model, port, queue_size=queue_size, io_timeout=io_timeout, read_deadline=read_deadline)


def serve(model: ChatModel, *, port: int = 8000, ready: Callable[[int], None] | None = None) -> None:
    """Serve `model` on 127.0.0.1:`port` (0: any free port) until interrupted; `ready` gets the port."""
    server = build_server(model, port=port)
    log.info("serving %s on http://127.0.0.1:%d/v1 (OpenAI-compatible); Ctrl-C stops", model.name,
             server.server_address[1])
    if ready:
        ready(server.server_address[1])
    try:
        server.serve_forever()
    finally:
        server.server_close()
