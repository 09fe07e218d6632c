"""The web chat page (gpt/chat/static/index.html) used in a real, headless Chromium.

The page is served by the real server on a tiny model rigged to write "a" forever (see
_tiny_chat.rig), so a reply is as long as the page's "max tokens" field asks and its text is
known in advance. Chromium is driven through the DevTools protocol (_cdp.py): typing, Enter and
mouse clicks are real input events, and the chat requests are read from its network events.
"""
import json
import time

import _cdp
import _tiny_chat as tiny
import pytest

from gpt.chat.engine import ChatEngine, EngineBusy
from gpt.chat.server import start_background

CHROMIUM = _cdp.find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium), "
                             "so the web page cannot be tested in a browser")

NEVER_ENDS = 100_000      # max tokens for a reply only Stop or New chat can end

# The assistant bubble being written: [still pending?, its reply text]. The reply is the
# bubble's first child, a text node; the stats line comes after it once the reply is done.
LAST_REPLY = """(() => {
  const bubbles = document.querySelectorAll('.msg.assistant');
  const b = bubbles[bubbles.length - 1];
  return b ? [b.classList.contains('pending'), b.firstChild ? b.firstChild.textContent : '']
           : null;
})()"""


@pytest.fixture(scope="module")
def engine():
    tok = tiny.tokenizer()
    return ChatEngine(tiny.rig(tiny.model(tok), tok.encode("a")[0]), tok, name="tiny")


@pytest.fixture(scope="module")
def server(engine):
    server, thread = start_background(engine, port=0, max_tokens_limit=2 * NEVER_ENDS)
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def browser(server):
    browser = _cdp.Browser(CHROMIUM)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def tab(browser):
    return browser.new_page()


@pytest.fixture
def page(tab, server):
    """The chat page freshly loaded, its model named in the header, the message box focused."""
    page = tab
    page.navigate(server.url + "/")
    assert page.wait_for("document.getElementById('model').textContent !== 'connecting…'"
                         " && document.getElementById('model').textContent") \
        == "tiny · base template · context 48"
    page.click("#input")
    return page


def send(page, text: str, max_tokens: int) -> None:
    """Type a message and press Enter, as a user does."""
    page.evaluate(f"document.getElementById('max_tokens').value = '{max_tokens}'")
    page.type(text)
    page.press_enter()


def wait_for_reply(page, timeout: float = 15.0) -> str:
    """The text of the last reply once it is no longer pending."""
    return page.wait_for(f"(() => {{ const r = {LAST_REPLY}; "
                         f"return r !== null && !r[0] && r[1]; }})()", timeout)


def wait_until_writing(page, length: int) -> None:
    """Wait until the pending reply has more than `length` characters."""
    page.wait_for(f"(() => {{ const r = {LAST_REPLY}; "
                  f"return r !== null && r[0] && r[1].length > {length}; }})()")


def chat_requests(browser) -> list[dict]:
    """The bodies of the page's POST /v1/chat/completions requests so far, in order."""
    return [json.loads(event["params"]["request"]["postData"]) for event in browser.events
            if event.get("method") == "Network.requestWillBeSent"
            and event["params"]["request"]["url"].endswith("/v1/chat/completions")]


def wait_until_free(engine, timeout: float = 5.0) -> None:
    """Wait until no generation holds the model: with no waiting allowed, turn() refuses
    while one runs."""
    engine.max_waiting, waiting = 0, engine.max_waiting
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                with engine.turn():
                    return
            except EngineBusy:
                assert time.monotonic() < deadline, f"the model is still busy after {timeout} s"
                time.sleep(0.02)
    finally:
        engine.max_waiting = waiting


def messages(page) -> list[list[str]]:
    """[class, text] of every message bubble on the page."""
    return page.evaluate("[...document.querySelectorAll('#log .msg')]"
                         ".map(m => [m.className, m.textContent])")


def test_a_reply_streams_into_the_page(page, browser):
    length = 1500
    before = len(chat_requests(browser))
    send(page, "Hello there", length)
    # Polled from here while the server writes: the page must show the reply growing.
    partial_lengths = set()
    deadline = time.monotonic() + 20
    while (state := page.evaluate(LAST_REPLY)) is None or state[0]:
        if state is not None and 0 < len(state[1]) < length:     # the whole text may come
            assert state[1] == "a" * len(state[1])                # a moment before the end
            partial_lengths.add(len(state[1]))
        assert time.monotonic() < deadline, f"no finished reply after 20 s: {state}"
        time.sleep(0.01)
    assert len(partial_lengths) >= 2, f"the reply did not stream in: {sorted(partial_lengths)}"
    assert state[1] == "a" * length
    assert messages(page)[0] == ["msg user", "Hello there"]
    bubble_class, bubble_text = messages(page)[1]
    assert bubble_class == "msg assistant"
    assert bubble_text.startswith("a" * length + f"{length} tokens · ")
    assert bubble_text.endswith("tokens/s · stopped at max tokens")
    assert page.evaluate("document.getElementById('send').textContent") == "Send"
    [request] = chat_requests(browser)[before:]
    assert request["messages"] == [{"role": "user", "content": "Hello there"}]
    assert request["stream"] is True and request["max_tokens"] == length


def test_stop_ends_a_long_reply_and_frees_the_model(page, browser, engine):
    send(page, "Tell me everything", NEVER_ENDS)
    wait_until_writing(page, 50)
    assert page.evaluate("document.getElementById('send').textContent") == "Stop"
    page.click("#send")
    stopped = page.wait_for(f"(() => {{ const r = {LAST_REPLY}; return r !== null && !r[0] "
                            f"&& r[1].endsWith(' [stopped]') && r[1]; }})()")
    reply = stopped[:-len(" [stopped]")]
    assert len(reply) > 50 and reply == "a" * len(reply)
    assert page.evaluate("document.getElementById('send').textContent") == "Send"
    # The server noticed the closed connection: the model is free, and stays unused.
    wait_until_free(engine)
    tokens = engine.tokens_generated
    time.sleep(0.3)
    assert engine.tokens_generated == tokens
    assert page.evaluate(LAST_REPLY) == [False, stopped]
    # The next message is answered (not refused as busy), and the conversation sent with it
    # keeps the reply that was cut short.
    before = len(chat_requests(browser))
    send(page, "Go on", 5)
    assert wait_for_reply(page) == "aaaaa"
    [request] = chat_requests(browser)[before:]
    assert request["messages"] == [{"role": "user", "content": "Tell me everything"},
                                   {"role": "assistant", "content": reply},
                                   {"role": "user", "content": "Go on"}]


def test_new_chat_clears_the_conversation(page, browser, engine):
    send(page, "First", 5)
    assert wait_for_reply(page) == "aaaaa"
    send(page, "Second", NEVER_ENDS)
    wait_until_writing(page, 20)
    page.click("#reset")                                   # in the middle of a reply
    assert page.wait_for("document.querySelectorAll('#log .msg').length === 0")
    assert page.evaluate("document.getElementById('log').textContent") == "New conversation."
    wait_until_free(engine)
    assert page.evaluate("document.getElementById('send').textContent") == "Send"
    # Neither the finished exchange nor the reply cut short is sent with the next message.
    page.click("#input")
    before = len(chat_requests(browser))
    send(page, "Third", 3)
    assert wait_for_reply(page) == "aaa"
    [request] = chat_requests(browser)[before:]
    assert request["messages"] == [{"role": "user", "content": "Third"}]
    assert [m[0] for m in messages(page)] == ["msg user", "msg assistant"]
