"""The conversation generator: facts found in stories, requests built only from those facts,
determinism, the held-out split, small talk and the variety of phrasings."""
from __future__ import annotations

import json
import random

import pytest

from gpt.data.conversations import (
    MOODS, SMALL_TALK, Character, Conversation, ConversationError, RequestFacts, Thing, check_reply,
    extract_facts, find_moods, find_names, main, make_benchmark_requests, make_conversations,
    make_request, make_splits, mentions, mentions_name, mood_holds, read_stories, split_holdout,
    story_id, word_forms)
from _paths import data_file

MIA = ("Once upon a time, there was a little girl named Mia. Mia had a red ball. She played with "
       "it in the park every day. One day, a dog named Rex took the ball and ran away. Mia was "
       "sad. Rex came back and said, \"I am sorry. Can we play together?\" Mia smiled. They "
       "played with the ball and became best friends.")
TOM = ("Tom was a boy who liked to paint. He painted a big yellow sun and a blue sky. His cat, "
       "Pip, jumped on the paper and made a mess. Mom laughed. \"Now it is a picture of you!\" "
       "she said. Pip purred, and they were both happy.")
BLUE = ("One day, there was a small bird. Its name was Blue. Blue wanted to fly over the hill, "
        "but the wind was strong. Blue tried and tried. At last Blue fell into a pond and cried. "
        "Blue was cold and sad.\nThe end.")
OWL = ("An old owl lived in a tree in the forest. Every night he hooted at the moon. A fox came "
       "by and asked for help. The owl helped the fox find his way home. The fox felt sorry for "
       "being rude before. The owl learned that being kind is good.")
INLINE = [MIA, TOM, BLUE, OWL]


@pytest.fixture(scope="module")
def valid_stories() -> list[str]:
    return read_stories(data_file("tinystories/valid.txt"))[:200]


def _answered_turns(conversations):
    """(request text, answer text, turn) of every assistant turn."""
    for conversation in conversations:
        for turn in conversation.turns:
            yield (conversation.messages[turn.message_index - 1]["content"],
                   conversation.messages[turn.message_index]["content"], turn)


# ---- facts --------------------------------------------------------------------------------

def test_characters_with_kinds_adjectives_and_plain_names():
    facts = extract_facts(MIA)
    assert Character("Mia", "girl", ("little",)) in facts.characters
    assert Character("Rex", "dog", ()) in facts.characters
    assert [c.name for c in facts.characters] == ["Mia", "Rex"]
    # "Its name was Blue" after "a small bird"
    assert extract_facts(BLUE).characters == (Character("Blue", "bird", ("small",)),)
    # no "named" pattern: names without kind; "Mom" is a title, "Tom" only opens sentences
    assert extract_facts(TOM).characters == (Character("Pip"),)


def test_find_names_skips_sentence_starts_titles_and_words_used_in_lowercase():
    story = ("Once upon a time, Ben met Sue. \"Wow, Sue!\" said Ben. Spring came, and the spring "
             "flowers grew. Mom and Mr Lee smiled. Max ran.")
    # Once/Wow/Max only open a sentence or a quote, Spring is used in lowercase, Mom/Mr are titles
    assert find_names(story) == ["Ben", "Sue", "Lee"]


def test_things_places_words_and_moods():
    facts = extract_facts(MIA)
    assert Thing("ball", "red") in facts.things
    assert facts.places == ("park",)
    assert {"ball", "play", "smile", "red"} <= set(facts.words)
    assert set(facts.moods) == {"happy_ending", "friends", "sorry", "talking"}
    # a sentence end between the words: "red. Ball" is no red ball
    assert extract_facts("The sun was red. Ball games are fun.").things == (Thing("ball"),)
    assert {"sad_ending"} == set(extract_facts(BLUE).moods)


def test_word_forms_are_regular_inflections_and_nothing_else():
    assert word_forms("hop") == {"hop", "hops", "hopped", "hopping"}      # not hoped, hoping
    assert word_forms("cry") == {"cry", "cries", "cried", "crying"}
    assert word_forms("dance") == {"dance", "dances", "danced", "dancing"}
    assert word_forms("box") == {"box", "boxes"}
    assert word_forms("hat") == {"hat", "hats"}                           # not hates
    assert word_forms("red") == {"red"}                                   # adjectives exactly
    assert mentions("The kids were Hopping along.", "hop")
    assert not mentions("She hoped to win.", "hop")
    assert mentions_name("Max's ball", "Max") and not mentions_name("the max", "Max")


def test_mood_rules():
    assert mood_holds('"I am sorry," said Tim.', "sorry")
    assert not mood_holds("Tim felt sorry for the bird.", "sorry")        # not said
    assert mood_holds("Ann said sorry to the cat.", "sorry")
    assert mood_holds("She helped him. Then he helped her.", "helping")
    assert not mood_holds("He shouted for help.", "helping")             # one mention only
    # the last two sentences decide the ending; a closing "The end." is not one of them
    assert find_moods("Tim lost his kite. He cried. Then he found it and smiled. He was happy."
                      "\nThe end.") == ("happy_ending",)
    assert mood_holds("They played. They were sad and cried.", "sad_ending")
    assert not mood_holds("She was sad, then happy.", "happy_ending")    # both: neither ending
    with pytest.raises(ConversationError, match="unknown mood 'scary'"):
        mood_holds("text", "scary")


# ---- requests and conversations ----------------------------------------------------------

def test_every_request_is_met_by_its_answer_inline_stories():
    rng = random.Random(0)
    for story in INLINE:
        facts = extract_facts(story)
        for _ in range(50):
            text, asked, template = make_request(facts, rng)
            assert text and template
            assert all(check_reply(story, asked).values()), (text, asked)


def test_every_request_is_met_by_its_answer_valid_stories(valid_stories):
    conversations = make_conversations(valid_stories, seed=3)
    by_id = {story_id(s): s for s in valid_stories}
    asked_something = 0
    for request, answer, turn in _answered_turns(conversations):
        if turn.story_id is None:
            continue
        assert answer == by_id[turn.story_id]
        result = check_reply(answer, turn.facts)
        assert all(result.values()), (request, result)
        asked_something += not turn.facts.is_empty()
        # every requested name and word is written in the request itself
        for name in turn.facts.names:
            assert name in request
        for word in turn.facts.words + turn.facts.kinds:
            assert word in request.lower()
        for mood in turn.facts.moods:                 # "a happy story" or one of its clauses
            adjective, clauses = MOODS[mood]
            phrases = clauses + ((f"{adjective} story",) if adjective else ())
            assert any(phrase in request for phrase in phrases), (request, mood)
    assert asked_something > 200


def test_check_reply_reports_each_fact():
    facts = RequestFacts(names=("Max",), kinds=("dog",), words=("ball", "jump"), moods=("friends",))
    reply = "Max the dog jumped. They became friends."
    assert check_reply(reply, facts) == {"name:Max": True, "kind:dog": True, "word:ball": False,
                                         "word:jump": True, "mood:friends": True}


def test_deterministic_for_a_seed(valid_stories):
    first = [c.to_dict() for c in make_conversations(valid_stories[:80], seed=11)]
    again = [c.to_dict() for c in make_conversations(valid_stories[:80], seed=11)]
    other = [c.to_dict() for c in make_conversations(valid_stories[:80], seed=12)]
    assert first == again
    assert first != other


def test_messages_have_the_chat_shape_and_survive_json(valid_stories):
    conversations = make_conversations(valid_stories[:100], seed=0)
    for conversation in conversations:
        roles = [m["role"] for m in conversation.messages]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
        assert all(isinstance(m["content"], str) and m["content"] for m in conversation.messages)
        assert [t.message_index for t in conversation.turns] == list(range(1, len(roles), 2))
        record = json.loads(json.dumps(conversation.to_dict()))
        assert Conversation.from_dict(record).to_dict() == conversation.to_dict()


def test_follow_ups_and_small_talk_are_present(valid_stories):
    conversations = make_conversations(valid_stories, seed=5)
    templates = [turn.template for c in conversations for turn in c.turns]
    follow_ups = [c for c in conversations if sum(t.story_id is not None for t in c.turns) == 2]
    assert follow_ups
    for conversation in follow_ups:       # the second story is another one
        first, second = [t.story_id for t in conversation.turns if t.story_id]
        assert first != second
    topics = {t.split("/")[1] for t in templates if t.startswith("small_talk/")}
    assert {"greeting", "abilities", "name", "thanks"} <= topics
    replies = {r for _, (_, answers) in SMALL_TALK.items() for r in answers}
    for request, answer, turn in _answered_turns(conversations):
        if turn.story_id is None:
            assert answer in replies and turn.facts.is_empty()
    chit_chat = [c for c in conversations if all(t.story_id is None for t in c.turns)]
    assert len(chit_chat) == len(valid_stories) // 40


def test_phrasings_vary(valid_stories):
    conversations = make_conversations(valid_stories, seed=1)
    requests = [r for r, _, turn in _answered_turns(conversations) if turn.story_id]
    templates = {turn.template for _, _, turn in _answered_turns(conversations) if turn.story_id}
    assert len(set(requests)) > 0.8 * len(requests)
    assert len(templates) >= 25
    openings = {r.split()[0].lower() for r in requests}
    assert {"tell", "can", "i", "please", "write"} <= openings
    assert any("with the word" in r or "Words:" in r for r in requests)


# ---- held-out split -----------------------------------------------------------------------

def test_split_holdout_depends_only_on_the_text(valid_stories):
    kept, held = split_holdout(valid_stories, 0.2)
    assert 0.1 * len(valid_stories) < len(held) < 0.3 * len(valid_stories)
    assert len(kept) + len(held) == len(valid_stories)
    kept_reversed, held_reversed = split_holdout(valid_stories[::-1], 0.2)
    assert set(held_reversed) == set(held) and set(kept_reversed) == set(kept)
    assert split_holdout(valid_stories, 0.0)[1] == []
    with pytest.raises(ConversationError, match="held-out fraction"):
        split_holdout(valid_stories, 1.0)


def test_held_out_stories_never_appear_in_training(valid_stories):
    train_stories, valid = valid_stories[:150], valid_stories[150:]
    splits = make_splits(train_stories, valid, seed=2, holdout_fraction=0.2)
    _, held = split_holdout(train_stories, 0.2)
    held_texts = set(held) | {s.strip() for s in valid}
    held_ids = {story_id(s) for s in held_texts}
    assert held and splits.held_out
    for conversation in splits.train:
        assert conversation.split == "train"
        for message in conversation.messages:
            assert message["content"] not in held_texts
        assert not {t.story_id for t in conversation.turns} & held_ids
    used = {t.story_id for c in splits.held_out for t in c.turns if t.story_id}
    assert used <= held_ids and {story_id(s) for s in valid} <= used


# ---- errors and the command line ---------------------------------------------------------

def test_bad_input_errors(tmp_path):
    with pytest.raises(ConversationError, match="no stories"):
        make_conversations(["", "  "])
    empty = tmp_path / "empty.txt"
    empty.write_text("<|endoftext|>\n")
    with pytest.raises(ConversationError, match="holds no stories"):
        read_stories(empty)


def test_main_prints_examples(tmp_path, capsys):
    path = tmp_path / "stories.txt"
    path.write_text("".join(story + "\n<|endoftext|>\n" for story in INLINE))
    out_file = tmp_path / "out.jsonl"
    assert main(["--n", "2", "--file", str(path), "--seed", "4", "--out", str(out_file)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("--- train conversation") == 2 and "[assistant]" in printed
    assert "4 stories from" in printed
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(records) == 4 and all(r["messages"] for r in records)


def test_main_bad_file_is_one_line(tmp_path, capsys):
    assert main(["--file", str(tmp_path / "missing.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read stories from") and err.count("\n") == 1


def test_benchmark_requests_ask_for_something_their_story_has(valid_stories):
    requests = make_benchmark_requests(valid_stories[:100], seed=9)
    assert len(requests) > 90
    assert requests == make_benchmark_requests(valid_stories[:100], seed=9)
    for request in requests:
        assert not request.facts.is_empty()
        assert all(check_reply(request.story, request.facts).values()), request.text
    assert sum(bool(r.facts.names) for r in requests) > 30
    assert sum(bool(r.facts.words) for r in requests) > 30
