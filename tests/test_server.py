"""The OpenAI-style HTTP server, driven over real HTTP (urllib, http.client, raw sockets)."""
import http.client
import json
import random
import socket
import threading
import urllib.error
import urllib.request

import _tiny_chat as tiny
import pytest
from test_chat_templates_hf import QWEN3_CHAIN, rigged_model

from gpt.chat.engine import ChatEngine
from gpt.chat.server import ChatServer, ReasoningSplitter, ServerStartError, start_background
from gpt.chat.templates import TemplateOptions, split_thinking

HELLO = [{"role": "user", "content": "hello"}]


def serve(engine, **options):
    server, thread = start_background(engine, port=0, **options)
    return server, thread


@pytest.fixture(scope="module")
def server():
    tok = tiny.tokenizer()
    server, thread = serve(ChatEngine(tiny.model(tok), tok, name="tiny"), max_tokens_limit=64,
                           max_body_bytes=4096)
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def request(server, path, body=None, method=None, raw: bytes | None = None, headers=None):
    """(status, parsed JSON or text) of one request; errors are returned, not raised."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(server.url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            status, content_type, text = (response.status, response.headers["Content-Type"],
                                          response.read().decode())
    except urllib.error.HTTPError as error:
        status, content_type, text = error.code, error.headers["Content-Type"], \
            error.read().decode()
    return status, json.loads(text) if content_type == "application/json" else text


def events(text):
    """The JSON payloads of an SSE body, checking it ends with [DONE]."""
    blocks = [b for b in text.split("\n\n") if b]
    assert all(b.startswith("data: ") for b in blocks)
    assert blocks[-1] == "data: [DONE]"
    return [json.loads(b[len("data: "):]) for b in blocks[:-1]]


# -- the happy paths ------------------------------------------------------------------------------


def test_models_and_web_page(server):
    status, body = request(server, "/v1/models")
    assert status == 200 and body["object"] == "list"
    assert body["data"][0]["id"] == "tiny" and body["data"][0]["object"] == "model"
    status, page = request(server, "/")
    assert status == 200 and "<title>Deep Understanding chat</title>" in page
    assert "/v1/chat/completions" in page and "https://" not in page   # no CDN


def test_chat_completion(server):
    status, body = request(server, "/v1/chat/completions",
                           {"model": "tiny", "messages": HELLO, "max_tokens": 8,
                            "temperature": 0})
    assert status == 200
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "tiny" and isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 8, "total_tokens": 14}
    assert len(choice["message"]["content"]) == 8             # one character per token


def test_streamed_chat_equals_the_whole_reply(server):
    settings = {"messages": HELLO, "max_tokens": 8, "temperature": 0}
    _, whole = request(server, "/v1/chat/completions", settings)
    status, text = request(server, "/v1/chat/completions",
                           {**settings, "stream": True, "stream_options": {"include_usage": True}})
    assert status == 200
    chunks = events(text)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert content == whole["choices"][0]["message"]["content"]
    finals = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finals[-1] == "length" and set(finals[:-1]) == {None}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_completions_whole_streamed_echo_and_token_ids(server):
    settings = {"prompt": "Once upon", "max_tokens": 6, "temperature": 0}
    status, body = request(server, "/v1/completions", settings)
    assert status == 200 and body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    text = body["choices"][0]["text"]
    assert len(text) == 6 and body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}

    _, streamed = request(server, "/v1/completions", {**settings, "stream": True})
    chunks = events(streamed)
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == text
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"

    _, echoed = request(server, "/v1/completions", {**settings, "echo": True})
    assert echoed["choices"][0]["text"] == "Once upon" + text
    ids = tiny.tokenizer().encode("Once upon")
    _, by_ids = request(server, "/v1/completions", {**settings, "prompt": ids})
    assert by_ids["choices"][0]["text"] == text


def test_stop_strings_seed_and_temperature(server):
    settings = {"prompt": "abc", "max_tokens": 12, "temperature": 0}
    _, body = request(server, "/v1/completions", settings)
    text = body["choices"][0]["text"]
    stop = text[4:6]
    _, stopped = request(server, "/v1/completions", {**settings, "stop": [stop, "\x00"]})
    assert stopped["choices"][0]["text"] == text[:text.index(stop)]
    assert stopped["choices"][0]["finish_reason"] == "stop"
    _, streamed = request(server, "/v1/completions", {**settings, "stop": stop, "stream": True})
    assert "".join(c["choices"][0]["text"] for c in events(streamed)) == text[:text.index(stop)]

    sampled = {"prompt": "abc", "max_tokens": 12, "temperature": 1.5, "top_p": 0.9}
    first = request(server, "/v1/completions", {**sampled, "seed": 5})[1]
    again = request(server, "/v1/completions", {**sampled, "seed": 5})[1]
    other = request(server, "/v1/completions", {**sampled, "seed": 6})[1]
    assert first["choices"][0]["text"] == again["choices"][0]["text"]
    assert first["choices"][0]["text"] != other["choices"][0]["text"]


def test_keep_alive_serves_several_requests_on_one_connection(server):
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    for _ in range(3):
        # Seeded: unseeded sampling may pick the end token first, a reply of 0 tokens.
        connection.request("POST", "/v1/completions",
                           json.dumps({"prompt": "a", "max_tokens": 2, "seed": 1}),
                           {"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200 and json.loads(response.read())["usage"]["completion_tokens"]
    connection.close()


# -- bad input: a JSON error with the right status, and the server keeps serving --------------------


@pytest.mark.parametrize("path, body, status, param", [
    ("/v1/chat/completions", {}, 400, "messages"),
    ("/v1/chat/completions", {"messages": "hello"}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages"),
    ("/v1/chat/completions", {"messages": HELLO, "temperature": "hot"}, 400, "temperature"),
    ("/v1/chat/completions", {"messages": HELLO, "temperature": 3}, 400, "temperature"),
    ("/v1/chat/completions", {"messages": HELLO, "top_p": 0}, 400, "top_p"),
    ("/v1/chat/completions", {"messages": HELLO, "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/chat/completions", {"messages": HELLO, "max_tokens": 65}, 400, "max_tokens"),
    ("/v1/chat/completions", {"messages": HELLO, "max_tokens": 2.5}, 400, "max_tokens"),
    ("/v1/chat/completions", {"messages": HELLO, "stream": "yes"}, 400, "stream"),
    ("/v1/chat/completions", {"messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("/v1/chat/completions", {"messages": HELLO, "seed": "one"}, 400, "seed"),
    ("/v1/chat/completions", {"messages": HELLO, "n": 2}, 400, "n"),
    ("/v1/chat/completions", {"messages": HELLO, "model": 7}, 400, "model"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * 60}]}, 400,
     "messages"),
    ("/v1/completions", {}, 400, "prompt"),
    ("/v1/completions", {"prompt": 42}, 400, "prompt"),
    ("/v1/completions", {"prompt": [1, 2, 10 ** 6]}, 400, "prompt"),
    ("/v1/completions", {"prompt": ["one", "two"]}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x" * 49}, 400, "prompt"),
    ("/v1/completions", {"prompt": "café"}, 400, "prompt"),
])
def test_bad_fields(server, path, body, status, param):
    got, error = request(server, path, body)
    assert got == status, error
    assert error["error"]["param"] == param and error["error"]["type"] == "invalid_request_error"
    assert param in error["error"]["message"] or "prompt" in error["error"]["message"] \
        or "tokens" in error["error"]["message"]


def test_prompt_longer_than_the_context(server):
    status, error = request(server, "/v1/completions", {"prompt": "x" * 49})
    assert status == 400 and error["error"]["code"] == "context_length_exceeded"
    assert "48 tokens" in error["error"]["message"]


@pytest.mark.parametrize("raw, match", [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
])
def test_malformed_bodies(server, raw, match):
    status, error = request(server, "/v1/chat/completions", raw=raw)
    assert status == 400 and match in error["error"]["message"]


def test_routes_methods_and_sizes(server):
    assert request(server, "/v1/nowhere")[0] == 404
    status, error = request(server, "/v1/embeddings", {"input": "x"})
    assert status == 404 and "POST /v1/embeddings" in error["error"]["message"]
    assert request(server, "/v1/models", {}, method="PUT")[0] == 405
    status, error = request(server, "/v1/completions", raw=b'{"prompt": "' + b"x" * 5000 + b'"}')
    assert status == 413 and "4096 bytes" in error["error"]["message"]

    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    connection.putrequest("POST", "/v1/completions")      # no Content-Length, no body
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 411 and "Content-Length" in json.loads(response.read())[
        "error"]["message"]
    connection.close()
    assert request(server, "/v1/models")[0] == 200         # still serving


def test_only_json_from_a_loopback_host(server):
    status, error = request(server, "/v1/completions", raw=b'{"prompt": "a"}',
                            headers={"Content-Type": "text/plain"})
    assert status == 415 and "application/json" in error["error"]["message"]
    for path, body in (("/v1/models", None), ("/v1/completions", {"prompt": "a"})):
        status, error = request(server, path, body, headers={"Host": "evil.example:8000"})
        assert status == 403 and "evil.example" in error["error"]["message"]
    assert request(server, "/v1/models", headers={"Host": "localhost:1"})[0] == 200
    assert request(server, "/v1/models", headers={"Host": "[::1]:1"})[0] == 200


def test_a_full_queue_answers_429(server):
    engine = server.engine
    engine.max_waiting = 0
    try:
        with engine.turn():                                  # someone else is generating
            status, error = request(server, "/v1/completions", {"prompt": "a", "max_tokens": 1})
    finally:
        engine.max_waiting = 8
    assert status == 429 and error["error"]["code"] == "busy"
    assert request(server, "/v1/completions", {"prompt": "a", "max_tokens": 1})[0] == 200


def test_a_client_that_disconnects_stops_its_generation():
    tok = tiny.tokenizer()
    # Rigged never to emit <|endoftext|>: only the disconnect can end this generation early.
    engine = ChatEngine(tiny.rig(tiny.model(tok), tok.encode("a")[0]), tok)
    limit = 200_000
    server, thread = serve(engine, max_tokens_limit=limit)
    try:
        body = json.dumps({"prompt": "x", "max_tokens": limit, "stream": True}).encode()
        client = socket.create_connection(server.server_address[:2], timeout=30)
        client.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       b"Content-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        received = b""
        while b"data: " not in received:
            piece = client.recv(4096)
            assert piece, received
            received += piece
        assert received.startswith(b"HTTP/1.1 200")
        client.close()
        # The next request waits for the model; by then the first generation has ended.
        status, body = request(server, "/v1/completions", {"prompt": "x", "max_tokens": 3})
        assert status == 200 and body["choices"][0]["text"] == "aaa"
        first_request_tokens = engine.tokens_generated - 3
        assert 1 <= first_request_tokens < limit // 10
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- reliability under bursts and odd clients -----------------------------------------------------


def test_a_burst_of_50_streaming_clients_all_get_an_answer():
    """Every client of a burst gets a 200 (a streamed reply) or a 429 with Retry-After: none
    is reset by an overflowing listen queue."""
    tok = tiny.tokenizer()
    server, thread = serve(ChatEngine(tiny.model(tok), tok, name="tiny"), max_tokens_limit=64)
    n_clients, statuses, barrier = 50, [], threading.Barrier(50)
    body = json.dumps({"messages": HELLO, "max_tokens": 8, "stream": True})

    def client():
        barrier.wait()
        connection = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
        try:
            connection.request("POST", "/v1/chat/completions", body,
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            text = response.read().decode()
            if response.status == 200:
                events(text)                           # a complete stream, ending with [DONE]
            elif response.status == 429:
                assert response.headers["Retry-After"]
            statuses.append(response.status)
        except OSError as error:                       # a reset: what must not happen
            statuses.append(type(error).__name__)
        finally:
            connection.close()

    threads = [threading.Thread(target=client) for _ in range(n_clients)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert len(statuses) == n_clients
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) >= 1


def test_deeply_nested_json_is_a_400(server):
    depth = 2000                                       # past Python's recursion limit
    status, error = request(server, "/v1/chat/completions", raw=b"[" * depth + b"]" * depth)
    assert status == 400 and "nested too deeply" in error["error"]["message"]
    assert request(server, "/v1/models")[0] == 200     # and the server is fine


def test_an_http_1_0_client_gets_a_plain_stream_and_a_closed_connection(server):
    body = json.dumps({"messages": HELLO, "max_tokens": 4, "stream": True}).encode()
    client = socket.create_connection(server.server_address[:2], timeout=30)
    client.sendall(b"POST /v1/chat/completions HTTP/1.0\r\nHost: 127.0.0.1\r\n"
                   b"Content-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    received = b""
    while piece := client.recv(65536):                 # ends when the server closes
        received += piece
    client.close()
    head, _, payload = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()
    assert events(payload.decode())[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_a_port_in_use_is_one_clear_error(server):
    host, port = server.server_address[:2]
    with pytest.raises(ServerStartError, match=f"{port} is already in use"):
        ChatServer(server.engine, host, port)


# -- a reasoning model (Qwen3): thinking on or off, and its reasoning apart --------------------------
#
# The rigged tiny Qwen3 of tests/test_chat_templates_hf.py, with the real tokenizer: greedy, it
# replies "<think>" "Hmm" "</think>" "Paris" <|im_end|> to a prompt that ends "assistant\n", and
# "Paris" <|im_end|> to one that ends with the closed empty <think> block ("\n\n").


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    directory = rigged_model(tmp_path_factory.mktemp("qwen3"), "hf-qwen3-tiny", "qwen3", 151936,
                             QWEN3_CHAIN)
    return ChatEngine.from_checkpoint(directory)


@pytest.fixture
def qwen3_server(qwen3):
    started = []

    def start(**options):
        server, thread = serve(qwen3, **options)
        started.append((server, thread))
        return server
    yield start
    for server, thread in started:
        server.shutdown()
        server.server_close()
        thread.join(5)


QUESTION = {"messages": [{"role": "user", "content": "Capital of France?"}], "max_tokens": 12,
            "temperature": 0}


def reply(body):
    return body["choices"][0]["message"]


def streamed(server, body):
    """(reasoning, content) of a streamed chat reply, each the join of its deltas."""
    status, text = request(server, "/v1/chat/completions", {**body, "stream": True})
    assert status == 200
    deltas = [e["choices"][0]["delta"] for e in events(text) if e["choices"]]
    return ("".join(d.get("reasoning_content", "") for d in deltas),
            "".join(d.get("content") or "" for d in deltas))


def test_thinking_is_switched_off_per_request(qwen3_server, qwen3):
    server = qwen3_server()
    status, body = request(server, "/v1/chat/completions", QUESTION)
    assert status == 200 and reply(body)["content"] == "<think>Hmm</think>Paris"
    assert "reasoning_content" not in reply(body)
    off = {**QUESTION, "chat_template_kwargs": {"enable_thinking": False}}
    status, body = request(server, "/v1/chat/completions", off)
    assert status == 200 and reply(body)["content"] == "Paris"
    # The prompt is the template's with thinking off: it closes an empty <think> block.
    closed = qwen3.template_ids(QUESTION["messages"], TemplateOptions(enable_thinking=False))
    assert body["usage"]["prompt_tokens"] == len(closed) == \
        len(qwen3.template_ids(QUESTION["messages"])) + 4          # <think> \n\n </think> \n\n
    assert streamed(server, off) == ("", "Paris")
    # {"enable_thinking": true}, or no kwargs at all: the server's own setting (on).
    on = {**QUESTION, "chat_template_kwargs": {"enable_thinking": True}}
    assert reply(request(server, "/v1/chat/completions", on)[1])["content"] == \
        "<think>Hmm</think>Paris"


def test_the_reasoning_comes_apart_from_the_answer(qwen3_server):
    server = qwen3_server()
    asked = {**QUESTION, "separate_reasoning": True}
    status, body = request(server, "/v1/chat/completions", asked)
    assert status == 200 and body["choices"][0]["finish_reason"] == "stop"
    assert reply(body) == {"role": "assistant", "content": "Paris", "reasoning_content": "Hmm"}
    assert streamed(server, asked) == ("Hmm", "Paris")
    # Thinking off: nothing to take apart.
    quick = {**asked, "chat_template_kwargs": {"enable_thinking": False}}
    assert reply(request(server, "/v1/chat/completions", quick)[1]) == {
        "role": "assistant", "content": "Paris", "reasoning_content": None}
    # A server started with separate_reasoning=True does it unless a request says otherwise.
    separating = qwen3_server(separate_reasoning=True)
    assert reply(request(separating, "/v1/chat/completions", QUESTION)[1])["reasoning_content"] \
        == "Hmm"
    assert streamed(separating, QUESTION) == ("Hmm", "Paris")
    inline = {**QUESTION, "separate_reasoning": False}
    assert reply(request(separating, "/v1/chat/completions", inline)[1]) == {
        "role": "assistant", "content": "<think>Hmm</think>Paris"}


def test_a_model_that_does_not_reason_keeps_its_text(server):
    # The tiny character model's template has no thinking: "separate_reasoning" changes nothing.
    body = {"messages": HELLO, "max_tokens": 8, "temperature": 0}
    plain = reply(request(server, "/v1/chat/completions", body)[1])
    assert reply(request(server, "/v1/chat/completions",
                         {**body, "separate_reasoning": True})[1]) == plain


@pytest.mark.parametrize("kwargs, match", [
    ("off", "'chat_template_kwargs' must be an object"),
    ({"enable_thinking": "no"}, "'chat_template_kwargs.enable_thinking' must be true or false"),
    ({"thinking_budget": 10}, "'thinking_budget', which the templates here do not take; "
                              "known: enable_thinking"),
])
def test_bad_template_kwargs_are_a_400(qwen3_server, kwargs, match):
    status, body = request(qwen3_server(), "/v1/chat/completions",
                           {**QUESTION, "chat_template_kwargs": kwargs})
    assert status == 400 and match in body["error"]["message"]
    assert body["error"]["param"].startswith("chat_template_kwargs")
    status, body = request(qwen3_server(), "/v1/chat/completions",
                           {**QUESTION, "separate_reasoning": "yes"})
    assert status == 400 and body["error"]["param"] == "separate_reasoning"


def test_unset_sampling_settings_are_the_checkpoints(qwen3_server, qwen3, monkeypatch):
    # generation_config.json of Qwen3: temperature 0.6, top_k 20, top_p 0.95.
    seen = []
    generate = qwen3.generate

    def recording(prompt_ids, params, *args, **kwargs):
        seen.append(params)
        return generate(prompt_ids, params, *args, **kwargs)
    monkeypatch.setattr(qwen3, "generate", recording)
    server = qwen3_server()
    body = {"messages": QUESTION["messages"], "max_tokens": 4}
    assert request(server, "/v1/chat/completions", body)[0] == 200
    assert request(server, "/v1/completions", {"prompt": "Paris", "max_tokens": 2})[0] == 200
    given = {**body, "temperature": 1.0, "top_p": 1.0, "top_k": 5}
    assert request(server, "/v1/chat/completions", given)[0] == 200
    chosen = [(p.temperature, p.top_k, p.top_p) for p in seen]
    assert chosen == [(0.6, 20, 0.95), (0.6, 20, 0.95), (1.0, 5, None)]


def test_the_splitter_gives_what_split_thinking_gives_in_any_pieces():
    texts = ["<think>\nHmm.\n</think>\n\nParis.", "  <think>a</think>b", "<think>\n\n</think>\n\nx",
             "<think>\nstill\n\n", "<think>a\n</thi", "Plain answer", "\n\nPlain", "<thi",
             "<b>bold</b>", "", "\n", "<think></think>", "<think>x</think>\n\n\n", "< think>",
             "<think>a</think>b</think>c", "<think>\n1\n\n2\n</think>\n\n3\n\n4\n"]
    rng = random.Random(0)
    for text in texts:
        reasoning, answer, _ = split_thinking(text)
        for _ in range(30):
            cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 6)))) \
                if len(text) > 1 else []
            pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
            splitter, got = ReasoningSplitter(), {"reasoning": "", "content": ""}
            for piece in pieces:
                for kind, part in splitter.feed(piece):
                    assert part
                    got[kind] += part
            for kind, part in splitter.finish():
                got[kind] += part
            assert (got["reasoning"], got["content"]) == (reasoning or "", answer), pieces
