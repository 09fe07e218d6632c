"""A local chat server that speaks the OpenAI API, plus a one-page web chat. Standard library only.

    GET  /                      the web chat (gpt/chat/static/index.html)
    GET  /v1/models             the one model this server holds
    POST /v1/completions        continue a prompt            {"prompt": "Once upon a time"}
    POST /v1/chat/completions   reply to a conversation      {"messages": [{"role": "user", ...}]}

Both POST routes take "stream": true and then answer with server-sent events: one
`data: {json}` line per piece of text, as soon as it is generated, and `data: [DONE]` at the end.
Existing OpenAI clients work unchanged when pointed at http://127.0.0.1:8000/v1.

Sampling settings a request leaves out (temperature, top_p, top_k) are the checkpoint's own,
from its generation_config.json (`ChatEngine.sampling_defaults`), else OpenAI's defaults.

Reasoning models (Qwen3) write their thinking first, between <think> and </think>. Two request
fields, as vLLM and SGLang take them:
- "chat_template_kwargs": {"enable_thinking": false} switches the thinking off for this request
  (the prompt closes an empty <think> block, and the model answers at once);
- "separate_reasoning": true returns the thinking apart from the answer, as `reasoning_content`
  beside `content` in the message, and in the stream's deltas (`ReasoningSplitter`); the content
  is then the answer alone. Without it the reply is the text as written, <think> block and all,
  unless the server was started with `separate_reasoning=True`, which makes that the default.

How requests share one model: each connection gets a thread (ThreadingHTTPServer), but only one
generation runs at a time (`ChatEngine.turn()`); the others wait their turn, and beyond a queue
limit are told 429. Bad input never reaches the model: every field is checked first and answered
with a JSON error and a 4xx status. While generating, the handler polls its socket; a client that
has gone away stops its generation at the next token.
"""
from __future__ import annotations

import errno
import json
import secrets
import select
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from gpt.chat.engine import ChatEngine, EngineBusy, Generation, PromptTooLong
from gpt.chat.templates import ChatError, TemplateOptions, check_messages, split_thinking
from gpt.core.generate import MAX_NEW_TOKENS, SamplingParams
from gpt.errors import GPTError

MAX_BODY_BYTES = 1 << 20          # 1 MiB: far more than any prompt that fits a context
MAX_TOKENS_LIMIT = MAX_NEW_TOKENS  # per request; generation past the context re-prefills
MAX_STOP_STRINGS = 4              # as OpenAI
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


class ApiError(Exception):
    """An error answered as OpenAI does: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = \
            status, message, param, code, type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


# ----------------------------------------------------------------------------------------------
# Request fields: each checked, with a message that names the field


def _field_error(name: str, expected: str, value: Any) -> ApiError:
    return ApiError(400, f"'{name}' must be {expected}; got {json.dumps(value)[:80]}", name,
                    "invalid_type" if not isinstance(value, (int, float)) else "invalid_value")


def _number(body: dict, name: str, default: float | None, low: float, high: float,
            low_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return default
    # bool is an int in Python, but `true` is not a temperature
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _field_error(name, "a number", value)
    if not (low < value if low_open else low <= value) or value > high:
        bracket = "(" if low_open else "["
        raise _field_error(name, f"in {bracket}{low}, {high}]", value)
    return float(value)


def _integer(body: dict, name: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _field_error(name, "an integer", value)
    if not low <= value <= high:
        raise _field_error(name, f"an integer in [{low}, {high}]", value)
    return value


def _boolean(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _field_error(name, "true or false", value)
    return value


def _stop_strings(body: dict) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if (not isinstance(value, list) or len(value) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) for s in value)):
        raise _field_error("stop", f"a string or a list of up to {MAX_STOP_STRINGS} strings",
                           value)
    return tuple(s for s in value if s)


# What "chat_template_kwargs" may hold: the settings of gpt.chat.templates.TemplateOptions.
TEMPLATE_KWARGS = ("enable_thinking",)


def _template_options(body: dict, defaults: TemplateOptions) -> TemplateOptions:
    """The server's template options with the request's "chat_template_kwargs" applied."""
    kwargs = body.get("chat_template_kwargs")
    if kwargs is None:
        return defaults
    if not isinstance(kwargs, dict):
        raise _field_error("chat_template_kwargs", "an object", kwargs)
    unknown = sorted(set(kwargs) - set(TEMPLATE_KWARGS))
    if unknown:
        raise ApiError(400, f"'chat_template_kwargs' has {', '.join(map(repr, unknown))}, which "
                            f"the templates here do not take; known: "
                            f"{', '.join(TEMPLATE_KWARGS)}", "chat_template_kwargs",
                       "invalid_value")
    thinking = kwargs.get("enable_thinking")
    if thinking is None:
        return defaults
    if not isinstance(thinking, bool):
        raise _field_error("chat_template_kwargs.enable_thinking", "true or false", thinking)
    return replace(defaults, enable_thinking=thinking)


@dataclass
class Job:
    """A checked request, ready for the model."""
    kind: str                          # "chat" or "completion"
    prompt_ids: list[int]
    params: SamplingParams
    stop_strings: tuple[str, ...]
    stream: bool
    include_usage: bool
    echo: str = ""                     # completions with "echo": the prompt text comes first
    separate_reasoning: bool = False   # chat: <think>...</think> as reasoning_content


class ReasoningSplitter:
    """Takes a reply apart as it streams: the reasoning of a leading <think>...</think> block,
    and the answer after it. `feed(piece)` and, at the end, `finish()` return what can be
    given out so far, as ("reasoning" | "content", text) pairs.

    The pieces of each kind add up to what `split_thinking` makes of the whole text: the
    reasoning without the newlines around it, the answer without those that start it; a reply
    that does not open with <think> is all answer, as written. So text is held back while it
    might still change that: the start of a reply that could become "<think>", the end of
    the reasoning that could become "</think>", newlines that may turn out to be the last
    ones before it.
    """
    OPEN, CLOSE = "<think>", "</think>"

    def __init__(self) -> None:
        self._state = "start"          # start -> reasoning -> answer, or start -> plain
        self._held = ""                # text received but not given out yet
        self._reasoning_given = False  # leading newlines of the reasoning are dropped until then
        self._answer_given = False     # likewise for the answer after </think>

    def feed(self, piece: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        text = self._held + piece
        self._held = ""
        if self._state == "start":
            stripped = text.lstrip()
            if stripped.startswith(self.OPEN):
                self._state, text = "reasoning", stripped[len(self.OPEN):]
            elif not stripped or self.OPEN.startswith(stripped):
                self._held = text                 # may still become <think>
                return out
            else:
                self._state = "plain"
        if self._state == "reasoning":
            closing = text.find(self.CLOSE)
            if closing < 0:
                # Hold a tail that may be the start of </think>, and the newlines before it.
                keep = next((n for n in range(len(self.CLOSE) - 1, 0, -1)
                             if text.endswith(self.CLOSE[:n])), 0)
                safe, tail = text[:len(text) - keep], text[len(text) - keep:]
                given = safe.rstrip("\n")
                self._held = safe[len(given):] + tail
                self._give_reasoning(given, out)
                return out
            self._give_reasoning(text[:closing].rstrip("\n"), out)
            self._state, text = "answer", text[closing + len(self.CLOSE):]
        if self._state == "answer" and not self._answer_given:
            text = text.lstrip("\n")
            self._answer_given = bool(text)
        if text:
            out.append(("content", text))
        return out

    def finish(self) -> list[tuple[str, str]]:
        """What was held back, once the reply is over."""
        out: list[tuple[str, str]] = []
        held, self._held = self._held, ""
        if self._state == "reasoning":           # never closed: all of it was reasoning
            self._give_reasoning(held.rstrip("\n"), out)
        elif held:
            out.append(("content", held))         # "<thi", or blank: not a <think> block
        return out

    def _give_reasoning(self, text: str, out: list[tuple[str, str]]) -> None:
        if not self._reasoning_given:
            text = text.lstrip("\n")
        if text:
            self._reasoning_given = True
            out.append(("reasoning", text))


# ----------------------------------------------------------------------------------------------
# The server


class ServerStartError(GPTError):
    """The server cannot listen where it was asked to (the port is taken, the address is not
    this machine's, or the port needs privileges)."""


class ChatServer(ThreadingHTTPServer):
    """The HTTP server: holds the engine and the limits. `serve_forever()` to run it.

    port=0 picks a free port (see `server_address`), which is what the tests use.
    """
    daemon_threads = True              # a stuck client never keeps the process alive
    # The kernel's queue of connections not yet accepted. Python's default of 5 makes a burst
    # of clients overflow it, and the kernel then resets them before they get any answer;
    # with room for a burst every client is accepted and gets a reply or a 429.
    request_queue_size = 1024

    def __init__(self, engine: ChatEngine, host: str = "127.0.0.1", port: int = 8000,
                 max_body_bytes: int = MAX_BODY_BYTES, max_tokens_limit: int = MAX_TOKENS_LIMIT,
                 default_max_tokens: int = 256, log: bool = False,
                 separate_reasoning: bool = False):
        self.engine = engine
        # A reasoning model's chat replies: thinking as reasoning_content, unless a request
        # says otherwise with "separate_reasoning".
        self.separate_reasoning = separate_reasoning
        self.max_body_bytes = max_body_bytes
        self.max_tokens_limit = max_tokens_limit
        self.default_max_tokens = min(default_max_tokens, max_tokens_limit)
        self.log = log
        # Bound to loopback, only requests that name a loopback host are answered: a web page
        # on another site that points a DNS name at 127.0.0.1 ("DNS rebinding") is refused.
        self.check_host = host in LOOPBACK_NAMES
        try:
            super().__init__((host, port), ChatRequestHandler)
        except OSError as error:
            reason = ("is already in use (is another server running? pass --port N)"
                      if error.errno == errno.EADDRINUSE else f"cannot be used: {error.strerror}")
            raise ServerStartError(f"{host}:{port} {reason}") from None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class ChatRequestHandler(BaseHTTPRequestHandler):
    """One connection. HTTP/1.1 keep-alive; streamed replies use chunked transfer encoding.

    An HTTP/1.0 client knows no chunked encoding: its stream is written as it comes and the
    connection closed at the end, which is how HTTP/1.0 marks the end of a body."""
    protocol_version = "HTTP/1.1"
    server_version = "DeepUnderstanding/0.1"
    timeout = 120                      # seconds a silent client may hold a connection open
    server: ChatServer
    _chunked = True                    # how the current stream is framed (see _stream)

    # -- routing -------------------------------------------------------------------------------

    def do_GET(self) -> None:
        route = urlsplit(self.path).path
        if not self._host_allowed():
            self._refuse_host()
        elif route in ("/", "/index.html"):
            self._send(200, _index_html(), "text/html; charset=utf-8")
        elif route == "/v1/models":
            self._send_json(200, {"object": "list", "data": [self._model_card()]})
        elif route == f"/v1/models/{self.server.engine.name}":
            self._send_json(200, self._model_card())
        elif route == "/health":
            self._send_json(200, {"status": "ok"})
        else:
            self._not_found(route)

    def do_POST(self) -> None:
        route = urlsplit(self.path).path
        parse = {"/v1/chat/completions": self._parse_chat,
                 "/v1/completions": self._parse_completion}.get(route)
        try:
            if not self._host_allowed():
                self._drop_body()
                raise self._host_error()
            if parse is None:
                self._drop_body()
                raise self._unknown_route(route)
            content_type = self.headers.get("Content-Type")
            if content_type is not None and self.headers.get_content_type() != "application/json":
                # Also what keeps other web sites out: a browser sends a cross-site POST without
                # asking first only for form and plain-text bodies.
                self._drop_body()
                raise ApiError(415, f"the body must be JSON, sent with Content-Type: "
                                    f"application/json (got {content_type})",
                               code="unsupported_media_type")
            job = parse(self._read_json())
            self._run(job)
        except ApiError as error:
            self._send_json(error.status, error.body())
        except Exception as error:             # a bug: say so, keep serving
            traceback.print_exc()
            self.close_connection = True
            self._send_json(500, ApiError(500, f"internal error: {error}",
                                          type="server_error").body())

    def _drop_body(self) -> None:
        try:
            self._discard(int(self.headers.get("Content-Length", 0)))
        except ValueError:
            self.close_connection = True

    def _method_not_allowed(self) -> None:
        self._drop_body()
        self._send_json(405, ApiError(405, f"method {self.command} is not supported here; use "
                                           f"GET or POST").body(), {"Allow": "GET, POST"})

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _method_not_allowed

    def _host_allowed(self) -> bool:
        host = self.headers.get("Host")
        if not self.server.check_host or host is None:
            return True
        name = host.rsplit("]", 1)[0].lstrip("[") if host.startswith("[") else \
            host.rsplit(":", 1)[0]
        return name.lower() in LOOPBACK_NAMES

    def _host_error(self) -> ApiError:
        return ApiError(403, f"this server answers requests to 127.0.0.1 or localhost only, not "
                             f"to {self.headers.get('Host')!r}", code="forbidden_host")

    def _refuse_host(self) -> None:
        self._send_json(403, self._host_error().body())

    def _unknown_route(self, route: str) -> ApiError:
        return ApiError(404, f"no route {self.command} {route}; this server has GET /, "
                             f"GET /v1/models, POST /v1/completions, POST /v1/chat/completions",
                        code="not_found")

    def _not_found(self, route: str) -> None:
        self._send_json(404, self._unknown_route(route).body())

    def _model_card(self) -> dict[str, Any]:
        engine = self.server.engine
        return {"id": engine.name, "object": "model", "created": engine.created,
                "owned_by": "deep-understanding", "context_length": engine.context_length,
                "chat_template": engine.template.name, "reasoning": engine.template.thinking}

    # -- reading requests ----------------------------------------------------------------------

    def _read_json(self) -> dict:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise ApiError(411, "chunked request bodies are not supported; send Content-Length")
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            raise ApiError(411, "a POST needs a Content-Length header and a JSON body")
        try:
            length = int(length)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise ApiError(400, f"bad Content-Length {self.headers['Content-Length']!r}") from None
        if length > self.server.max_body_bytes:
            self._discard(length)
            raise ApiError(413, f"request body of {length} bytes is over the limit of "
                                f"{self.server.max_body_bytes} bytes", code="body_too_large")
        raw = self.rfile.read(length)
        if len(raw) < length:
            self.close_connection = True
            raise ApiError(400, "the request body ended early (shorter than Content-Length)")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ApiError(400, f"the body is not valid JSON: {error}",
                           code="invalid_json") from None
        except RecursionError:                 # json's parser recurses once per nesting level
            raise ApiError(400, "the body's JSON is nested too deeply",
                           code="invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        return body

    def _discard(self, length: int) -> None:
        """Read and drop a body we refuse. Closing with unread data would make the kernel reset
        the connection, and the client might never see our 413; past a bound, close anyway."""
        if length > 16 * self.server.max_body_bytes:
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                self.close_connection = True
                return
            length -= len(chunk)

    def _common(self, body: dict, default_max_tokens: int) -> tuple[SamplingParams, dict]:
        """The sampling fields both routes share, checked. Those left out are the checkpoint's
        recommendation (generation_config.json), else OpenAI's defaults."""
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise _field_error("model", "a string", model)
        _integer(body, "n", 1, 1, 1)          # one choice per request
        for name in ("frequency_penalty", "presence_penalty"):
            if _number(body, name, 0.0, -2.0, 2.0) != 0.0:
                raise ApiError(400, f"'{name}' is not supported; use 'repetition_penalty' "
                                    f"(> 1 discourages repeats)", name, "unsupported")
        if body.get("logprobs") not in (None, False, 0):
            raise ApiError(400, "'logprobs' is not supported", "logprobs", "unsupported")
        limit = self.server.max_tokens_limit
        max_tokens = _integer(body, "max_completion_tokens", None, 1, limit)
        max_tokens = _integer(body, "max_tokens", max_tokens or default_max_tokens, 1, limit)
        checkpoint = self.server.engine.sampling_defaults
        top_p = _number(body, "top_p", checkpoint.get("top_p", 1.0), 0.0, 1.0, low_open=True)
        seed = _integer(body, "seed", None, -(1 << 63), (1 << 63) - 1)
        params = SamplingParams(
            max_new_tokens=max_tokens,
            temperature=_number(body, "temperature", checkpoint.get("temperature", 1.0),
                                0.0, 2.0),
            # not OpenAI's, but common; a checkpoint's top_k of 0 means none, as in transformers
            top_k=_integer(body, "top_k", int(checkpoint.get("top_k", 0)) or None, 1, 1 << 30),
            top_p=None if top_p == 1.0 else top_p,
            repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.0, 10.0,
                                       low_open=True),
            # OpenAI's seeds are signed 64-bit; NumPy wants a non-negative one: same bits.
            seed=seed & ((1 << 64) - 1) if seed is not None else None,
        )
        stream = _boolean(body, "stream")
        options = body.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise _field_error("stream_options", "an object", options)
        include_usage = _boolean(options or {}, "include_usage")
        return params, {"stream": stream, "include_usage": include_usage}

    def _parse_chat(self, body: dict) -> Job:
        engine = self.server.engine
        params, flags = self._common(body, self.server.default_max_tokens)
        stops = _stop_strings(body)
        if "messages" not in body:
            raise ApiError(400, "'messages' is required: a list of {\"role\", \"content\"}",
                           "messages", "missing_field")
        options = _template_options(body, engine.options)
        separate = _boolean(body, "separate_reasoning", self.server.separate_reasoning)
        try:
            messages = check_messages(body["messages"])
            ids, _ = engine.chat_prompt(messages, params.max_new_tokens, options)
        except ChatError as error:
            raise _chat_error(error, "messages") from None
        return Job("chat", ids, params, stops + engine.template.stop_strings,
                   flags["stream"], flags["include_usage"],
                   separate_reasoning=separate and engine.template.thinking)

    def _parse_completion(self, body: dict) -> Job:
        engine = self.server.engine
        params, flags = self._common(body, 16)     # OpenAI's default for completions
        stops = _stop_strings(body)
        echo = _boolean(body, "echo")
        if "prompt" not in body:
            raise ApiError(400, "'prompt' is required: a string (or a list of token ids)",
                           "prompt", "missing_field")
        prompt = body["prompt"]
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]                  # a batch of one
        try:
            if isinstance(prompt, str):
                ids = engine.prompt_ids(prompt)
                text = prompt
            elif (isinstance(prompt, list) and prompt
                  and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)):
                vocab = engine.model.config.vocab_size
                if not all(0 <= t < vocab for t in prompt):
                    raise ApiError(400, f"'prompt' token ids must be in 0..{vocab - 1}",
                                   "prompt", "invalid_value")
                ids = list(prompt)
                text = engine.tokenizer.decode(ids)
            else:
                raise ApiError(400, "'prompt' must be a string or a non-empty list of token "
                                    "ids (one prompt per request)", "prompt", "invalid_type")
            engine.check_prompt_length(ids)
        except ChatError as error:
            raise _chat_error(error, "prompt") from None
        return Job("completion", ids, params, stops, flags["stream"], flags["include_usage"],
                   echo=text if echo else "")

    # -- generating ----------------------------------------------------------------------------

    def _run(self, job: Job) -> None:
        try:
            with self.server.engine.turn():
                self._generate(job)
        except EngineBusy as error:
            raise ApiError(429, str(error), code="busy", type="rate_limit_error") from None

    def _generate(self, job: Job) -> None:
        generation = self.server.engine.generate(job.prompt_ids, job.params, job.stop_strings,
                                                 should_stop=self._client_gone)
        if job.stream:
            self._stream(job, generation)
            return
        text = generation.read()
        if generation.finish_reason == "cancelled":
            self.close_connection = True       # nobody is listening
            return
        self._send_json(200, self._whole_response(job, generation, job.echo + text))

    def _client_gone(self) -> bool:
        """Has the client closed its end? A readable socket with nothing to read means EOF.
        Polled before each token, so a closed browser tab stops its generation at once."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if readable and not self.connection.recv(1, socket.MSG_PEEK):
                return True
        except (OSError, ValueError):
            return True
        return False

    def _whole_response(self, job: Job, generation: Generation, text: str) -> dict[str, Any]:
        usage = _usage(generation)
        if job.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if job.separate_reasoning:
                reasoning, message["content"], _ = split_thinking(text)
                message["reasoning_content"] = reasoning or None
            return {"id": _new_id("chatcmpl"), "object": "chat.completion",
                    "created": int(time.time()), "model": self.server.engine.name,
                    "choices": [{"index": 0, "message": message,
                                 "logprobs": None, "finish_reason": generation.finish_reason}],
                    "usage": usage}
        return {"id": _new_id("cmpl"), "object": "text_completion", "created": int(time.time()),
                "model": self.server.engine.name,
                "choices": [{"index": 0, "text": text, "logprobs": None,
                             "finish_reason": generation.finish_reason}],
                "usage": usage}

    def _stream(self, job: Job, generation: Generation) -> None:
        chat = job.kind == "chat"
        ident, created = _new_id("chatcmpl" if chat else "cmpl"), int(time.time())
        base = {"id": ident, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": created, "model": self.server.engine.name}

        def chunk(text: str | None, finish: str | None, role: bool = False,
                  kind: str = "content") -> dict[str, Any]:
            if chat:
                delta: dict[str, Any] = {"role": "assistant"} if role else {}
                if text is not None:
                    delta["reasoning_content" if kind == "reasoning" else "content"] = text
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text or "", "logprobs": None,
                          "finish_reason": finish}
            return {**base, "choices": [choice]}

        self._chunked = self.request_version != "HTTP/1.0"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        if self._chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        try:
            if chat:
                self._event(chunk("", None, role=True))
            if job.echo:
                self._event(chunk(job.echo, None))
            splitter = ReasoningSplitter() if job.separate_reasoning else None
            for piece in generation:
                for kind, text in splitter.feed(piece) if splitter else [("content", piece)]:
                    self._event(chunk(text, None, kind=kind))
            if generation.finish_reason == "cancelled":
                raise ConnectionResetError("client went away")
            for kind, text in splitter.finish() if splitter else []:
                self._event(chunk(text, None, kind=kind))
            self._event(chunk(None, generation.finish_reason))
            if job.include_usage:
                self._event({**base, "choices": [], "usage": _usage(generation)})
            self._write_chunk(b"data: [DONE]\n\n")
            self._write_chunk(b"")              # the chunked body's end
        except OSError:                         # the client left (reset, broken pipe, timeout)
            generation.close()                  # stop generating for nobody
            self.close_connection = True
        except Exception as error:              # a bug, after the 200 went out: say so in-band
            traceback.print_exc()
            generation.close()
            self.close_connection = True
            try:
                self._event(ApiError(500, f"internal error: {error}", type="server_error").body())
                self._write_chunk(b"data: [DONE]\n\n")
                self._write_chunk(b"")
            except OSError:
                pass

    def _event(self, payload: dict[str, Any]) -> None:
        self._write_chunk(b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n")

    def _write_chunk(self, data: bytes) -> None:
        """One piece of a streamed body: a chunk of the chunked encoding, or (HTTP/1.0) the
        bytes themselves, the empty end-of-body chunk then being nothing to write."""
        if self._chunked:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        elif data:
            self.wfile.write(data)
        self.wfile.flush()

    # -- writing responses ---------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True

    def _send_json(self, status: int, payload: dict[str, Any],
                   headers: dict[str, str] | None = None) -> None:
        if status == 429:
            headers = {**(headers or {}), "Retry-After": "1"}
        self._send(status, json.dumps(payload, ensure_ascii=False).encode(),
                   "application/json", headers)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.log:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")


def _chat_error(error: ChatError, param: str) -> ApiError:
    code = "context_length_exceeded" if isinstance(error, PromptTooLong) else "invalid_value"
    return ApiError(400, str(error), param, code)


def _usage(generation: Generation) -> dict[str, int]:
    return {"prompt_tokens": generation.prompt_tokens,
            "completion_tokens": generation.completion_tokens,
            "total_tokens": generation.prompt_tokens + generation.completion_tokens}


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


_INDEX: bytes | None = None


def _index_html() -> bytes:
    global _INDEX
    if _INDEX is None:
        _INDEX = resources.files("gpt.chat").joinpath("static/index.html").read_bytes()
    return _INDEX


# ----------------------------------------------------------------------------------------------


def serve(engine: ChatEngine, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> None:
    """Run the server until Ctrl-C, printing where to find it. `options` go to ChatServer
    (default_max_tokens, log, separate_reasoning, the limits)."""
    server = ChatServer(engine, host, port, **options)
    print(f"serving {engine.name} ({engine.template.name} template, context "
          f"{engine.context_length}) at {server.url}/  (OpenAI API at {server.url}/v1; "
          f"Ctrl-C stops)", file=sys.stderr, flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {host}: anyone who can reach this machine can use the "
              f"model (there is no authentication)", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def start_background(engine: ChatEngine, host: str = "127.0.0.1", port: int = 0,
                     **options: Any) -> tuple[ChatServer, threading.Thread]:
    """Start a server in a daemon thread (tests, notebooks); stop with `server.shutdown()`
    then `server.server_close()`."""
    server = ChatServer(engine, host, port, **options)
    # A short poll interval: shutdown() waits up to one interval for the loop to notice.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="chat-server", daemon=True)
    thread.start()
    return server, thread
