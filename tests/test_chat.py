"""gpt.chat.engine: templates, the checkpoint's template marker, history trimming, replies and turns."""
import json
import threading

import _tiny_chat as tiny
import pytest

from gpt.chat.engine import ChatEngine, ChatSession, EngineBusy, PromptTooLong
from gpt.chat.templates import (ALPACA_PREAMBLE, TEMPLATE_KEY, ChatError, chat_template_for,
                                check_messages, format_alpaca, get_template, set_chat_template)
from gpt.core.generate import SamplingParams
from gpt.io.checkpoint import CheckpointError, save_checkpoint, save_pretrained

GREEDY = SamplingParams(max_new_tokens=8, temperature=0)


@pytest.fixture()
def engine():
    tok = tiny.tokenizer()
    return ChatEngine(tiny.model(tok), tok, "base", name="tiny")


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# -- templates -----------------------------------------------------------------------------------


def test_alpaca_layout_is_the_books():
    assert format_alpaca("Rewrite the sentence.", "The cake was eaten.") == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nRewrite the sentence.\n\n"
        "### Input:\nThe cake was eaten.\n\n### Response:\n")
    assert format_alpaca("Name a colour.") == (
        f"{ALPACA_PREAMBLE}\n\n### Instruction:\nName a colour.\n\n### Response:\n")


def test_alpaca_chat_rendering():
    render = get_template("alpaca").render
    assert render([user("Name a colour.")]) == format_alpaca("Name a colour.")
    two_turns = render([user("Name a colour."), assistant("Blue."), user("Another?")])
    assert two_turns == (f"{ALPACA_PREAMBLE}\n\n### Instruction:\nName a colour.\n\n"
                         f"### Response:\nBlue.\n\n### Instruction:\nAnother?\n\n### Response:\n")
    with_system = render([{"role": "system", "content": "Be brief."}, user("Hi")])
    assert with_system == "Be brief.\n\n### Instruction:\nHi\n\n### Response:\n"


def test_base_template_is_continuation():
    render = get_template("base").render
    assert render([user("Once upon a time")]) == "Once upon a time"
    assert render([user("Once upon a time"), assistant(" there was a cat."), user("It")]) == \
        "Once upon a time there was a cat.\nIt"
    assert get_template("base").start_with_eot


def test_unknown_template_is_a_clear_error():
    with pytest.raises(ChatError, match="unknown chat template 'vicuna'.*base, alpaca, chatml"):
        get_template("vicuna")


def test_checkpoint_records_its_template(tmp_path):
    ckpt = tiny.checkpoint(tmp_path / "ckpt")
    assert chat_template_for(ckpt) == "base"                       # nothing recorded
    set_chat_template(ckpt, "alpaca")
    assert json.loads((ckpt / "config.json").read_text())[TEMPLATE_KEY] == "alpaca"
    assert chat_template_for(ckpt) == "alpaca"
    assert ChatEngine.from_checkpoint(ckpt).template.name == "alpaca"
    assert ChatEngine.from_checkpoint(ckpt, template="base").template.name == "base"

    # a run directory (best/) whose train_state.json names the template
    tok = tiny.tokenizer()
    run = tmp_path / "run"
    save_checkpoint(run / "best", tiny.model(tok), tok, train_state={"chat_template": "alpaca"})
    assert chat_template_for(run) == "alpaca"
    assert ChatEngine.from_checkpoint(run).name == "run"           # not "best"

    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, TEMPLATE_KEY: "llama"}))
    with pytest.raises(CheckpointError, match="'llama'"):
        chat_template_for(ckpt)


def test_checkpoint_without_tokenizer_is_a_clear_error(tmp_path):
    save_pretrained(tiny.model(tiny.tokenizer()), tmp_path)
    with pytest.raises(CheckpointError, match="no tokenizer"):
        ChatEngine.from_checkpoint(tmp_path)


@pytest.mark.parametrize("messages, match", [
    ([], "non-empty list"),
    ("hello", "non-empty list"),
    ([["user", "hi"]], r"messages\[0\] must be an object"),
    ([{"role": "robot", "content": "hi"}], r"messages\[0\].role must be one of"),
    ([user("hi"), {"role": "user", "content": 3}], r"messages\[1\].content must be a string"),
    ([{"role": "user", "content": [{"type": "image_url"}]}], "only text parts"),
])
def test_bad_messages(messages, match):
    with pytest.raises(ChatError, match=match):
        check_messages(messages)


def test_content_parts_are_joined():
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert check_messages([{"role": "user", "content": parts}]) == [user("ab")]


# -- prompts and trimming ------------------------------------------------------------------------


def test_prompt_starts_with_eot_and_user_text_cannot_forge_it(engine):
    eot = engine.eot_id
    ids, dropped = engine.chat_prompt([user("hi <|endoftext|>")], 8)
    assert ids[0] == eot and eot not in ids[1:] and dropped == 0
    assert engine.tokenizer.decode(ids[1:]) == "hi <|endoftext|>"


def test_history_is_trimmed_oldest_first_keeping_system_and_last(engine):
    # context 48, reserve min(8, 48 // 4) = 8: the prompt may use 40 tokens (1 is the eot)
    system = {"role": "system", "content": "S"}
    history = [system, user("a" * 10), assistant("b" * 10), user("c" * 10), assistant("d" * 5),
               user("e" * 5)]
    ids, dropped = engine.chat_prompt(history, 8)
    assert dropped == 2 and len(ids) <= 40
    assert engine.tokenizer.decode(ids[1:]) == "S\n" + "c" * 10 + "d" * 5 + "\n" + "e" * 5
    # the last message may use the reserve, not more
    assert len(engine.chat_prompt([user("x" * 47)], 8)[0]) == 48
    with pytest.raises(PromptTooLong, match="48 tokens"):
        engine.chat_prompt([user("x" * 48)], 8)


def test_text_the_tokenizer_cannot_encode_is_a_chat_error(engine):
    with pytest.raises(ChatError, match="cannot encode the prompt.*U\\+00E9"):
        engine.chat_prompt([user("café")], 8)


# -- replies ------------------------------------------------------------------------------------


def test_reply_stops_at_max_tokens_then_reports_length(engine):
    generation = engine.chat([user("hello")], GREEDY)
    pieces = list(generation)
    assert len(pieces) == 8 and generation.text == "".join(pieces)
    assert generation.finish_reason == "length" and generation.completion_tokens == 8
    assert generation.prompt_tokens == 6                             # eot + "hello"


def test_reply_stops_at_end_of_text_and_at_stop_strings():
    tok = tiny.tokenizer()
    rigged = ChatEngine(tiny.rig(tiny.model(tok), tok.eot_id), tok)
    generation = rigged.chat([user("hi")], GREEDY)
    assert generation.read() == "" and generation.finish_reason == "stop"

    always_a = ChatEngine(tiny.rig(tiny.model(tok), tok.encode("a")[0]), tok)
    generation = always_a.generate(always_a.prompt_ids("x"), GREEDY, stop_strings=["aaa"])
    assert generation.read() == "" and generation.finish_reason == "stop"
    assert generation.completion_tokens == 3
    generation = always_a.generate(always_a.prompt_ids("x"), GREEDY, stop_strings=["ab"])
    assert generation.read() == "a" * 8 and generation.finish_reason == "length"


def test_should_stop_cancels(engine):
    calls = []
    generation = engine.chat([user("hi")], GREEDY, should_stop=lambda: len(calls) > 2 or
                             calls.append(1))
    generation.read()
    assert generation.finish_reason == "cancelled" and generation.completion_tokens == 3


def test_session_keeps_and_resets_history(engine):
    session = ChatSession(engine, GREEDY)
    first = "".join(session.send("hi"))
    assert session.history == [user("hi"), assistant(first)]
    "".join(session.send("more"))
    assert [m["content"] for m in session.history][::2] == ["hi", "more"]
    # Long exchanges push the old ones out of the history.
    for _ in range(4):
        "".join(session.send("x" * 12))
    assert len(session.history) < 12 and session.history[-2] == user("x" * 12)
    session.reset()
    assert session.history == []


def test_an_interrupted_reply_joins_the_history_as_far_as_it_got(engine):
    session = ChatSession(engine, GREEDY)
    reply = session.send("hi")
    first = next(reply)
    reply.close()
    assert session.history == [user("hi"), assistant(first)]


def test_one_generation_at_a_time_and_a_bounded_queue(engine):
    engine.max_waiting = 1
    order = []
    with engine.turn():
        waiter = threading.Thread(target=lambda: engine.turn().__enter__() or order.append(1))
        waiter.start()
        while engine._waiting == 0:                   # the waiter is queued
            threading.Event().wait(0.001)
        with pytest.raises(EngineBusy, match="busy"):
            with engine.turn():
                pass
        assert order == []
    waiter.join(5)
    assert order == [1]


def test_closing_a_reply_early_cancels_it(engine):
    generation = engine.chat([user("hi")], GREEDY)
    next(iter(generation))
    generation.close()
    assert generation.finish_reason == "cancelled" and generation.completion_tokens == 1
