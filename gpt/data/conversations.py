"""Chat conversations made from TinyStories itself: requests that each story answers.

    python -m gpt.data.conversations --n 5 [--file PATH] [--seed S] [--out conversations.jsonl]

A model pretrained on stories only continues text. To make it a storyteller that answers what it
is asked, it is fine-tuned on conversations, and those conversations are made here from the
pretraining corpus, with no other model involved: for each story, a request is written from what
the story really contains, and the story itself is the answer. Because every request is built
from facts found in its answer, the answer always satisfies the request.

What is read from a story (`extract_facts`), with plain regular expressions and word lists:

- characters: names (capitalised words that are not sentence-initial, whose lowercase form the
  story never uses, and that are not titles such as "Mom"), with their kind when the story says
  it the way TinyStories nearly always does: "a little girl named Lily", "a dog called Max",
  "a bird. Its name was Blue";
- things and places: nouns from the curated lists below ("ball", "park"), with a colour or
  other look when the story puts one right before the noun ("a red ball");
- words: nouns, verbs and adjectives from the curated lists that the story uses in some form
  ("jump" for "jumped"; this is what "a story with the words ..." asks for);
- moods and endings: keyword rules (`MOODS`): a happy or sad ending, becoming friends, saying
  sorry, a lesson, sharing, helping, talking.

A request combines a few of those facts in one of many phrasings ("Tell me a story about a dog
named Max.", "Can you write a story with the words ball, jump and shiny?", "I want a story about
a cat."). Some conversations open with small talk ("Hi!", "What can you do?", "What is your
name?") or close with thanks, answered in the storyteller's voice by short fixed replies; some
have a follow-up ("Once more, but about a dog named Max.") answered by another story that has
those facts. Each request carries the facts it asked for (`RequestFacts`: names, kinds, words,
moods), and `check_reply` tells which of them a reply meets, with the same word matching used to
find them, so a benchmark can score a model's replies to held-out requests
(`make_benchmark_requests` makes single-turn ones).

Held-out data: `split_holdout` sets aside a fixed share of stories by a hash of their text
(independent of order and seed), and `make_splits` makes the training conversations from the
remaining train stories only, and the held-out conversations from the set-aside stories and the
validation split. Follow-up stories are drawn from the same side, so no held-out story is ever in
a training conversation.

A conversation is a list of messages {"role": "user" | "assistant", "content": str}, the shape
of OpenAI-style chat APIs, with metadata (`Conversation.to_dict`). Everything is deterministic
for a given seed (one `random.Random(seed)`, never the global generator).

This module imports only the standard library, so it can move to any package unchanged.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

from gpt.data.corpora import fetch
from gpt.errors import GPTError

STORY_SEPARATOR = "<|endoftext|>"

# ----------------------------------------------------------------------------------------------
# Word lists (written for TinyStories' vocabulary)

# Kinds of character, as in "a little girl named Lily" (the noun right before "named")
KINDS = frozenset("""
    girl boy dog cat bird bunny bear fish frog mouse rabbit squirrel bug duck monkey lion
    elephant bee horse turtle man lady woman puppy kitten owl penguin zebra giraffe snake
    tiger pig cow goat sheep pony parrot fox deer dolphin whale shark crab ant butterfly
    ladybug spider chicken hen robot dragon unicorn fairy princess prince king queen
    giant pirate clown teacher doctor farmer kid child baby car truck train boat plane doll
""".split())

# Words in front of a kind that may go into the request ("a little girl named Lily")
CHARACTER_ADJECTIVES = frozenset("""
    little big small young old tiny kind brave happy friendly nice shy smart curious funny
    gentle strong clever playful silly lazy sleepy grumpy cute fluffy furry proud
""".split())

# Concrete nouns a request may ask for ("a story about a red ball")
THINGS = frozenset("""
    ball toy kite book box car truck train doll hat shoe boat balloon cake cookie apple
    flower tree rock stick leaf shell key bike necklace crayon picture drum blanket bed
    cup bowl pie candy sandwich banana carrot star moon rainbow bubble feather button bag
    basket jar clock phone lamp map coin treasure gift sword crown wand robot puzzle
    slide swing snowman umbrella coat scarf dress sock brush pencil letter card bell whistle
    bucket shovel rope wagon sled plane rocket bottle pot spoon plate chair table window door
    mirror bench fence bridge nest egg seed jacket helmet castle tent tower
""".split())

# Places, with the phrase a request uses for each
PLACES: dict[str, str] = {
    "park": "in the park", "forest": "in the forest", "garden": "in a garden",
    "beach": "at the beach", "school": "at school", "farm": "on a farm", "sea": "by the sea",
    "ocean": "in the ocean", "lake": "at a lake", "river": "by a river", "pond": "at a pond",
    "jungle": "in the jungle", "town": "in a town", "city": "in a city",
    "zoo": "at the zoo", "kitchen": "in the kitchen", "playground": "at the playground",
    "store": "at the store", "shop": "in a shop", "woods": "in the woods", "hill": "on a hill",
    "mountain": "on a mountain", "village": "in a village", "yard": "in the yard",
    "backyard": "in the backyard", "cave": "in a cave", "island": "on an island",
    "meadow": "in a meadow", "field": "in a field",
}

VERBS = frozenset("""
    play jump help share laugh smile dance climb hug paint bake clean fix explore race kick
    pull push roll splash chase wave bounce listen visit wish pick plant open fly cry hop
    wash walk talk shout whisper giggle yell count learn touch carry try hurry dream search
    watch call collect kiss cook dig float look scream hide build swim sing draw
""".split())

ADJECTIVES = frozenset("""
    shiny soft bright colorful fluffy tiny huge brave kind funny silly scary sparkly warm
    cold wet dirty pretty beautiful fast slow loud quiet yummy sweet sticky smooth rough
    heavy dark strong gentle curious proud careful lazy grumpy sleepy hungry thirsty excited
    scared red blue green yellow pink purple brown black white golden silver big small
    little old new special fancy messy noisy tall
""".split())

# Words of the lists above that a fifth or more of TinyStories use: a request for them says little
COMMON_WORDS = frozenset("big play little look smile help try new excited hug walk".split())

# Adjectives that may describe a thing in a request ("a red ball")
THING_ADJECTIVES = frozenset("""
    red blue green yellow pink purple brown black white golden silver orange big small little
    tiny huge shiny soft fluffy sparkly old new special pretty colorful fancy
""".split())

# Capitalised words that are not names even in the middle of a sentence
NOT_NAMES = frozenset("""
    I Mom Mommy Mum Mummy Mama Dad Daddy Papa Grandma Granny Grandpa Nana Mr Mrs Ms Miss Sir
    Aunt Uncle God End The Little True Today Birthday Happy Christmas Halloween Easter
    Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April
    May June July August September October November December English Earth OK Okay
""".split())

# ----------------------------------------------------------------------------------------------
# Word matching: the same rules find a word in a story and check it in a reply

WORD_RE = re.compile(r"[A-Za-z]+")


def _third_person(word: str) -> str:
    """The -s form of a noun or verb: balls, boxes, puppies, plays."""
    if re.search(r"(?:s|sh|ch|x|z)$", word):
        return word + "es"
    if re.search(r"[^aeiou]y$", word):
        return word[:-1] + "ies"
    return word + "s"


def _noun_forms(noun: str) -> set[str]:
    forms = {noun, _third_person(noun)}
    if noun.endswith("f"):
        forms.add(noun[:-1] + "ves")        # leaf -> leaves
    return forms


def _verb_forms(verb: str) -> set[str]:
    """The regular forms: base, -s, past and -ing (irregular pasts such as "ran" are not here,
    so such a verb counts only in its regular forms, the same way in story and reply)."""
    if re.fullmatch(r"[^aeiou]*[aeiou][^aeiouwxy]", verb):      # hop -> hopped, hopping
        stem = verb + verb[-1]
        return {verb, verb + "s", stem + "ed", stem + "ing"}
    if verb.endswith("e"):                                     # dance -> danced, dancing
        return {verb, verb + "s", verb + "d", verb[:-1] + "ing"}
    if re.search(r"[^aeiou]y$", verb):                         # cry -> cries, cried, crying
        return {verb, verb[:-1] + "ies", verb[:-1] + "ied", verb + "ing"}
    return {verb, _third_person(verb), verb + "ed", verb + "ing"}


@lru_cache(maxsize=4096)
def word_forms(word: str) -> frozenset[str]:
    """The lowercase forms that count as using `word`: verbs from `VERBS` in any regular
    inflection, adjectives from `ADJECTIVES` exactly, any other word also as a plural."""
    word = word.lower()
    if word in VERBS:
        return frozenset(_verb_forms(word))
    if word in ADJECTIVES:
        return frozenset({word})
    return frozenset(_noun_forms(word))


def mentions(text: str, word: str) -> bool:
    """Whether `text` uses `word` (case-insensitive, in one of `word_forms(word)`)."""
    return not word_forms(word).isdisjoint(w.lower() for w in WORD_RE.findall(text))


def mentions_name(text: str, name: str) -> bool:
    """Whether `text` has the name as a whole word, capitalised as given ("Max's" counts)."""
    return name in WORD_RE.findall(text)


# ----------------------------------------------------------------------------------------------
# Moods and endings: one keyword rule each, used both to find and to check

# How a request names each mood: as an adjective of "story" (or None) and as clauses after it
# (each mood has a clause that does not start with "about", for requests that name a subject)
MOODS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "happy_ending": ("happy", ("with a happy ending", "that ends happily")),
    "sad_ending": ("sad", ("with a sad ending", "that ends sadly")),
    "friends": (None, ("where they become friends", "about making friends",
                       "about friendship")),
    "sorry": (None, ("where someone says sorry", "about saying sorry")),
    "lesson": (None, ("with a lesson", "where someone learns something")),
    "sharing": (None, ("about sharing", "where someone shares")),
    "helping": (None, ("about helping others", "where someone helps")),
    "talking": (None, ("where the characters talk", "with some talking in it")),
}

# An ending is happy when its last two sentences have a word of the first list and none of the
# second, sad the other way round.
HAPPY_WORDS = frozenset("""happy happily smiled smile smiling laughed laugh fun glad proud
    loved hugged enjoyed joy cheered""".split())
SAD_WORDS = frozenset("""sad sadly cried crying cry tears hurt lost broken alone""".split())
# The other rules read the lowercased text.
FRIENDS_RE = re.compile(r"\b(?:bec[oa]me|becoming|were|are|be|stay(?:ed)?)\s+"
                        r"(?:best\s+|good\s+|new\s+|great\s+)?friends\b"
                        r"|\bmade\s+(?:a\s+)?new\s+friends?\b")
SORRY_RE = re.compile(r"\b(?:said|say|says|saying)\s+sorry\b|\bapologi[sz]ed?\b")
LESSON_RE = re.compile(r"\b(?:lesson|moral)\b|\blearned\s+(?:that|to|how|about)\b")
SHARING_RE = re.compile(r"\bshar(?:e|ed|es|ing)\b")
HELPING_RE = re.compile(r"\bhelp(?:ed|s|ing)?\b")
SENTENCE_END_RE = re.compile(r"(?<=[.!?])[\"”']?\s+")


def _quoted(text: str) -> list[str]:
    """What the characters say: spans between straight quotes (taken in pairs) or curly ones."""
    return re.findall(r'"([^"]*)"', text) + re.findall(r"“([^”]*)”", text)


def _ending_words(lowered: str) -> set[str]:
    """The words of the last two sentences (a closing "The end." does not count)."""
    sentences = [s for s in SENTENCE_END_RE.split(lowered.strip())
                 if s and not re.fullmatch(r"the end[.!]*", s)]
    return set(re.findall(r"[a-z]+", " ".join(sentences[-2:])))


def find_moods(text: str) -> tuple[str, ...]:
    """The moods of `MOODS` that `text` has, by one keyword rule each."""
    lowered = text.lower()
    ending = _ending_words(lowered)
    happy, sad = bool(ending & HAPPY_WORDS), bool(ending & SAD_WORDS)
    holds = {
        "happy_ending": happy and not sad,
        "sad_ending": sad and not happy,
        "friends": FRIENDS_RE.search(lowered) is not None,
        # said so, or "sorry" inside what someone says ("I feel sorry for him" is not saying it)
        "sorry": SORRY_RE.search(lowered) is not None
                 or any(re.search(r"\bsorry\b", quote) for quote in _quoted(lowered)),
        "lesson": LESSON_RE.search(lowered) is not None,
        "sharing": SHARING_RE.search(lowered) is not None,
        "helping": len(HELPING_RE.findall(lowered)) >= 2,     # one "Help!" is not about helping
        "talking": len(_quoted(text)) >= 1,
    }
    return tuple(mood for mood in MOODS if holds[mood])


def mood_holds(text: str, mood: str) -> bool:
    """Whether `text` has `mood` (a key of `MOODS`) by its keyword rule."""
    if mood not in MOODS:
        raise ConversationError(f"unknown mood {mood!r}; the moods are: {', '.join(MOODS)}")
    return mood in find_moods(text)


# ----------------------------------------------------------------------------------------------
# Facts of a story

class ConversationError(GPTError, ValueError):
    """Bad input to the conversation generator (an unknown mood, an empty story file, ...)."""


@dataclass(frozen=True)
class Character:
    """A named character: for "a little girl named Lily", "Lily", "girl" and ("little",)."""
    name: str
    kind: str | None = None
    adjectives: tuple[str, ...] = ()


@dataclass(frozen=True)
class Thing:
    """A thing or place the story mentions, with the look the story gives it ("red" ball)."""
    noun: str
    adjective: str | None = None


@dataclass(frozen=True)
class StoryFacts:
    """What a request about this story may ask for; every field is found in the story text."""
    characters: tuple[Character, ...]
    things: tuple[Thing, ...]
    places: tuple[str, ...]
    words: tuple[str, ...]          # from VERBS, ADJECTIVES and THINGS, in their base form
    moods: tuple[str, ...]


# "a little girl named Lily", "her dog called Max" (the kind is checked against KINDS after)
NAMED_RE = re.compile(r"\b(?:[Aa]n?|[Tt]he|[Hh]er|[Hh]is|[Tt]heir|[Mm]y)\s+((?:[a-z]+\s+){0,2}?)"
                      r"([a-z]+)\s+(?:named|called)\s+([A-Z][a-z]+)\b")
# "there was a little bird. Its name was Blue."
# (here the kind must be one of KINDS inside the pattern: "[a-z]+" could stop at "little")
_KIND_ALTERNATION = "|".join(sorted(KINDS, key=len, reverse=True))
NAME_WAS_RE = re.compile(r"\b(?:[Aa]n?)\s+((?:[a-z]+\s+){0,2}?)"
                         rf"({_KIND_ALTERNATION})\b[^.!?]{{0,60}}[.!?]\s+"
                         r"(?:Her|His|Its|Their)\s+name\s+(?:was|is)\s+([A-Z][a-z]+)\b")
# a word is sentence-initial when what precedes it (spaces aside) ends a sentence or opens a quote
SENTENCE_START_CHARS = frozenset(".!?:;\"“”'‘’(\n")


def _is_sentence_initial(text: str, start: int) -> bool:
    before = text[:start].rstrip()
    return not before or before[-1] in SENTENCE_START_CHARS


def find_names(story: str) -> list[str]:
    """Names in order of first appearance: capitalised words used at least once inside a
    sentence, never in lowercase in the story, and not in `NOT_NAMES`."""
    lowercase_words = set(re.findall(r"\b[a-z]+\b", story))
    names: list[str] = []
    for match in re.finditer(r"\b[A-Z][a-z]+\b", story):
        word = match.group()
        if (word in names or word in NOT_NAMES or word.lower() in lowercase_words
                or _is_sentence_initial(story, match.start())):
            continue
        names.append(word)
    return names


def find_characters(story: str) -> list[Character]:
    """Named characters, with their kind and adjectives where a "named" pattern gives them."""
    described: dict[str, Character] = {}
    # the cheap substring tests skip the patterns in stories that cannot match them
    patterns = [pattern for pattern, needles in ((NAMED_RE, (" named ", " called ")),
                                                 (NAME_WAS_RE, (" name was ", " name is ")))
                if any(needle in story for needle in needles)]
    for pattern in patterns:
        for match in pattern.finditer(story):
            before, kind, name = match.group(1).split(), match.group(2), match.group(3)
            if kind not in KINDS or name in NOT_NAMES or name in described:
                continue
            adjectives = tuple(w for w in before if w in CHARACTER_ADJECTIVES)
            # only keep adjectives when they are all of what stood before the kind ("a little
            # girl", not "a girl with little..."): a request must quote the story's phrase
            if len(adjectives) != len(before):
                adjectives = ()
            described[name] = Character(name, kind, adjectives)
    characters = list(described.values())
    characters += [Character(name) for name in find_names(story) if name not in described]
    return characters


def find_things(story: str) -> list[Thing]:
    """Nouns from `THINGS` the story uses in the singular, each with the adjective from
    `THING_ADJECTIVES` the story puts right before it, if any."""
    things: dict[str, str | None] = {}
    # punctuation stays a token, so "It was red. Ball..." does not make a red ball
    tokens = re.findall(r"[a-z]+|[^a-z\s]", story.lower())
    for index, token in enumerate(tokens):
        if token not in THINGS:
            continue
        previous = tokens[index - 1] if index else ""
        adjective = previous if previous in THING_ADJECTIVES else None
        if token not in things or (things[token] is None and adjective):
            things[token] = adjective
    return [Thing(noun, adjective) for noun, adjective in things.items()]


@lru_cache(maxsize=1)
def _vocabulary_by_form() -> dict[str, tuple[str, ...]]:
    """Each form of a word of the curated lists -> the base words it is a form of."""
    by_form: dict[str, list[str]] = {}
    for word in sorted(VERBS | ADJECTIVES | THINGS):
        for form in word_forms(word):
            by_form.setdefault(form, []).append(word)
    return {form: tuple(words) for form, words in by_form.items()}


def extract_facts(story: str) -> StoryFacts:
    """Everything a request about `story` may ask for (see the module docstring)."""
    words = {w.lower() for w in WORD_RE.findall(story)}
    by_form = _vocabulary_by_form()
    used = tuple(sorted({base for w in words for base in by_form.get(w, ())}))
    return StoryFacts(
        characters=tuple(find_characters(story)),
        things=tuple(find_things(story)),
        places=tuple(p for p in PLACES if p in words),
        words=used,
        moods=find_moods(story),
    )


# ----------------------------------------------------------------------------------------------
# Requests

@dataclass(frozen=True)
class RequestFacts:
    """What a request asked for: names to use (exact case), kinds and words to use (any form
    `mentions` accepts), moods that must hold (`mood_holds`)."""
    names: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    words: tuple[str, ...] = ()
    moods: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        return not (self.names or self.kinds or self.words or self.moods)


def check_reply(reply: str, facts: RequestFacts) -> dict[str, bool]:
    """For each requested fact, whether `reply` meets it. Keys: "name:Max", "kind:dog",
    "word:ball", "mood:friends"."""
    result = {f"name:{n}": mentions_name(reply, n) for n in facts.names}
    result.update({f"kind:{k}": mentions(reply, k) for k in facts.kinds})
    result.update({f"word:{w}": mentions(reply, w) for w in facts.words})
    result.update({f"mood:{m}": mood_holds(reply, m) for m in facts.moods})
    return result


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class _Request:
    """A request being assembled: phrase pieces and the facts they ask for."""

    def __init__(self) -> None:
        self.subjects: list[str] = []
        self.place: str | None = None
        self.mood: str | None = None
        self.words: list[str] = []
        self.names: list[str] = []
        self.kinds: list[str] = []
        self.fact_words: list[str] = []
        self.moods: list[str] = []

    def facts(self) -> RequestFacts:
        unique = lambda items: tuple(dict.fromkeys(items))          # noqa: E731 (keeps order)
        return RequestFacts(unique(self.names), unique(self.kinds),
                            unique(self.fact_words + self.words), unique(self.moods))


def _describe_character(character: Character, rng: random.Random, request: _Request) -> str:
    """A noun phrase for `character`; records the name and kind it uses."""
    if character.kind is None:
        request.names.append(character.name)
        return rng.choice([character.name, character.name, f"someone named {character.name}"])
    style = rng.choice(["full", "full", "kind_name", "kind", "name"])
    kind = character.kind
    if style == "full" and character.adjectives:
        kind = " ".join(character.adjectives) + " " + kind
    if style in ("full", "kind_name"):
        request.names.append(character.name)
        request.kinds.append(character.kind)
        return f"{_article(kind)} named {character.name}"
    if style == "kind":
        request.kinds.append(character.kind)
        return _article(kind)
    request.names.append(character.name)
    return character.name


def _describe_thing(thing: Thing, rng: random.Random, request: _Request) -> str:
    request.fact_words.append(thing.noun)
    if thing.adjective and rng.random() < 0.7:
        request.fact_words.append(thing.adjective)
        return _article(f"{thing.adjective} {thing.noun}")
    return _article(thing.noun)


def _pick_words(facts: StoryFacts, rng: random.Random, taken: Sequence[str] = ()) -> list[str]:
    """One to three words, one of each kind when the story has it (noun, verb, adjective),
    preferring words that are not in half the stories anyway (`COMMON_WORDS`)."""
    free = [w for w in facts.words if w not in taken]         # not "a tree ... Words: tree"
    rare = [w for w in free if w not in COMMON_WORDS] or free
    groups = [[w for w in rare if w in THINGS], [w for w in rare if w in VERBS],
              [w for w in rare if w in ADJECTIVES and w not in VERBS]]
    chosen = [rng.choice(group) for group in groups if group]
    rng.shuffle(chosen)
    return chosen[:rng.randint(1, 3)]


def _fill_request(facts: StoryFacts, rng: random.Random) -> _Request:
    """Choose which facts of the story a request asks for."""
    request = _Request()
    options = []
    if facts.characters:
        options += ["character"] * 5
    if facts.things:
        options += ["thing"] * 2
    if facts.words:
        options += ["words"] * 2
    if facts.places:
        options += ["place"]
    if facts.moods:
        options += ["mood"]
    focus = rng.choice(options) if options else "plain"
    if focus == "character" or (focus in ("place", "mood") and facts.characters
                                and rng.random() < 0.6):
        characters = rng.sample(facts.characters, min(len(facts.characters), rng.choice([1, 1, 2])))
        request.subjects += [_describe_character(c, rng, request) for c in characters]
    if focus == "thing" or (focus == "character" and facts.things and rng.random() < 0.25):
        request.subjects.append(_describe_thing(rng.choice(facts.things), rng, request))
    if facts.places and (focus == "place" or rng.random() < 0.15):
        place = rng.choice(facts.places)
        request.place = PLACES[place]
        request.fact_words.append(place)
        if not request.subjects and rng.random() < 0.5:       # "a story about the beach"
            request.subjects.append("the " + place)
            request.place = None
    if facts.moods and (focus == "mood" or rng.random() < 0.15):
        request.mood = rng.choice(facts.moods)
        request.moods.append(request.mood)
    if focus == "words" or (facts.words and rng.random() < 0.15):
        request.words = _pick_words(facts, rng, taken=request.fact_words + request.kinds)
    return request


# Openers of a first request; {story} is "a story" or "a happy story", {about} the subjects.
OPENERS = (
    "Tell me {story} about {about}.", "Can you tell me {story} about {about}?",
    "I want {story} about {about}.", "Please write {story} about {about}.",
    "Write {story} about {about}.", "{Story} about {about}, please.",
    "Could you make up {story} about {about}?", "I would like to hear {story} about {about}.",
    "Tell me a story. It should be about {about}.", "Can I have {story} about {about}?",
    "Please tell me {story} about {about}!", "{story} about {about}",
    "Do you know {story} about {about}?", "Make up {story} about {about}.",
)
# Openers of a follow-up in the same conversation
FOLLOW_UPS = (
    "Once more, but about {about}.", "Another one, please, about {about}.",
    "Now tell me one about {about}.", "Can you tell another one? This time about {about}.",
    "Again! But with {about}.", "One more story, about {about}.",
    "Now a different story, about {about}.", "Tell me another story about {about}.",
)
# Openers without a subject, for requests of words or a mood only
STORY_ONLY = (
    "Tell me {story}.", "Can you tell me {story}?", "I want {story}.", "Please write {story}.",
    "{Story}, please.", "Could you tell me {story}?", "I would love {story}.",
)
FOLLOW_UPS_STORY_ONLY = ("Once more, but {story}.", "Another one, please: {story}.",
                         "Now tell me {story}.", "One more, please: {story}.",
                         "And now {story}?")
PLAIN_REQUESTS = ("Tell me a story.", "Can you tell me a story?", "I want a story.",
                  "Please tell me a story!", "Story time!", "Tell me a bedtime story.",
                  "Do you know any stories?", "Write a story.", "tell me a story")
PLAIN_FOLLOW_UPS = ("Tell me another one.", "Another one, please!", "One more!",
                    "Can you tell me one more story?", "Again, a different one.")
# {the_words} is "the word ball" or "the words ball, jump and red" (plain or in quotes)
WORDS_PHRASES = (" with {the_words}", " that uses {the_words}", " that has {the_words} in it",
                 " using {the_words}")
WORDS_SENTENCES = (" Use {the_words}.", " Please use {the_words}.", " Put {the_words} in it.",
                   " It should have {the_words}.", " Words: {list}.")


def _words_values(words: Sequence[str], rng: random.Random) -> dict[str, str]:
    shown = [f'"{w}"' for w in words] if rng.random() < 0.3 else list(words)
    noun = "the word " if len(words) == 1 else "the words "
    return {"the_words": noun + _join(shown), "list": ", ".join(words)}


def _phrase_request(request: _Request, rng: random.Random, follow_up: bool) -> tuple[str, str]:
    """Put a filled request into words; returns (text, template id)."""
    if not (request.subjects or request.mood or request.words or request.place):
        plain = PLAIN_FOLLOW_UPS if follow_up else PLAIN_REQUESTS
        index = rng.randrange(len(plain))
        return plain[index], ("plain_follow_up" if follow_up else "plain") + f"/{index}"
    if request.subjects:
        templates, name = (FOLLOW_UPS, "follow_up") if follow_up else (OPENERS, "about")
    else:
        templates, name = ((FOLLOW_UPS_STORY_ONLY, "follow_up_story") if follow_up
                           else (STORY_ONLY, "story"))
    index = rng.randrange(len(templates))
    template = templates[index]
    story, mood_clause = "a story", ""
    if request.mood:
        adjective, clauses = MOODS[request.mood]
        # "a happy story" only where the template says "{story}" ("Once more, but about ..."
        # has no place for it)
        if adjective and "story}" in template.lower() and rng.random() < 0.5:
            story = _article(f"{adjective} story")
        else:
            if request.subjects:        # not "a story about Lily about sharing"
                clauses = tuple(c for c in clauses if not c.startswith("about "))
            mood_clause = " " + rng.choice(clauses)
    words_inline = words_sentence = ""
    if request.words:
        values = _words_values(request.words, rng)
        # a follow-up without a subject needs the words inside it ("Once more, but a story ...")
        if rng.random() < 0.6 or (follow_up and not request.subjects):
            words_inline = rng.choice(WORDS_PHRASES).format(**values)
        else:
            words_sentence = rng.choice(WORDS_SENTENCES).format(**values)
    about = ""
    if request.subjects:
        about = _join(request.subjects) + (" " + request.place if request.place else "")
        about += mood_clause + words_inline
    else:
        if request.place:           # "a story set in the park", not "tell me ... in the park"
            story += rng.choice([" set ", " that happens ", " that takes place "]) + request.place
        story += mood_clause + words_inline
    text = template.format(story=story, Story=story[0].upper() + story[1:], about=about)
    text += words_sentence
    if rng.random() < 0.1:          # people do not always capitalise
        text = text[0].lower() + text[1:]
    return text, f"{name}/{index}"


def make_request(facts: StoryFacts, rng: random.Random, follow_up: bool = False
                 ) -> tuple[str, RequestFacts, str]:
    """A request that a story with `facts` answers: (text, what it asks for, template id)."""
    request = _fill_request(facts, rng)
    text, template = _phrase_request(request, rng, follow_up)
    return text, request.facts(), template


# ----------------------------------------------------------------------------------------------
# Small talk: what a user says to a storyteller, and its replies

SMALL_TALK: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "greeting": (
        ("Hi!", "Hello!", "Hey there!", "Hi", "Good morning!", "Hello there.", "Hey!"),
        ("Hello! I am a storyteller. Tell me what you want a story about, and I will tell you one.",
         "Hi there! Do you want to hear a story? You can tell me who it should be about.",
         "Hello, friend! I love to tell stories. What story do you want today?",
         "Hi! I am happy to see you. Shall I tell you a story?"),
    ),
    "how_are_you": (
        ("How are you?", "How are you today?", "How is it going?"),
        ("I am very well, thank you! I am ready to tell you a story.",
         "I am happy today, thank you for asking. Do you want a story?",
         "I feel great! Telling stories makes me happy."),
    ),
    "abilities": (
        ("What can you do?", "What do you do?", "How can you help me?", "What are you good at?",
         "What can I ask you?"),
        ("I tell short stories. You can ask me for a story about a girl, a dog, a ball or "
         "anything you like. You can also give me words to put in the story.",
         "I am a storyteller. Tell me a name, an animal or a place, and I will make a story "
         "about it.",
         "I can tell you stories! Ask for a happy story, a story about a cat named Tom, or a "
         "story with the words you like."),
    ),
    "name": (
        ("What is your name?", "Who are you?", "What's your name?", "Do you have a name?"),
        ("I do not have a name. I am a storyteller, and I love to tell stories.",
         "I am a little storyteller. I know many stories about kids, animals and toys.",
         "I am a storyteller! You can call me Storyteller."),
    ),
    "thanks": (
        ("Thank you!", "Thanks!", "That was nice, thank you.", "I loved it!", "Thank you so much!",
         "Great story!"),
        ("You are welcome! I am happy you liked it.",
         "You are welcome! Do you want to hear another one?",
         "I am glad you liked it. I have many more stories.",
         "You are welcome! Come back for another story soon."),
    ),
    "goodbye": (
        ("Bye!", "Goodbye!", "Good night!", "See you later!"),
        ("Goodbye! Come back for another story soon.", "Bye! Have a happy day.",
         "Good night! Sleep well and have sweet dreams."),
    ),
}


def small_talk_turn(topic: str, rng: random.Random) -> tuple[str, str]:
    """A (user, assistant) pair of small talk on `topic` (a key of `SMALL_TALK`)."""
    if topic not in SMALL_TALK:
        raise ConversationError(f"unknown small-talk topic {topic!r}; the topics are: "
                                f"{', '.join(SMALL_TALK)}")
    said, replies = SMALL_TALK[topic]
    return rng.choice(said), rng.choice(replies)


# ----------------------------------------------------------------------------------------------
# Conversations

def story_id(story: str) -> str:
    """A short id that depends only on the story's text (sha256, 12 hex digits)."""
    return hashlib.sha256(story.strip().encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class TurnInfo:
    """One assistant turn: the index of its message, what its user message asked for, which
    story answers it (None for small talk), and the template or small-talk topic used."""
    message_index: int
    facts: RequestFacts
    story_id: str | None
    template: str


@dataclass
class Conversation:
    """Messages in the OpenAI chat shape, and what each assistant turn answered."""
    messages: list[dict[str, str]]
    turns: list[TurnInfo] = field(default_factory=list)
    split: str = "train"

    def add(self, user: str, assistant: str, facts: RequestFacts, source: str | None,
            template: str) -> None:
        self.messages += [{"role": "user", "content": user},
                          {"role": "assistant", "content": assistant}]
        self.turns.append(TurnInfo(len(self.messages) - 1, facts, source, template))

    def to_dict(self) -> dict:
        return {"messages": self.messages, "split": self.split,
                "turns": [asdict(turn) for turn in self.turns]}

    @classmethod
    def from_dict(cls, record: dict) -> "Conversation":
        turns = [TurnInfo(t["message_index"], RequestFacts(**{k: tuple(v) for k, v in
                                                              t["facts"].items()}),
                          t["story_id"], t["template"]) for t in record["turns"]]
        return cls(list(record["messages"]), turns, record.get("split", "train"))


def _add_request(conversation: Conversation, story: str, facts: StoryFacts, rng: random.Random,
                 follow_up: bool) -> None:
    text, asked, template = make_request(facts, rng, follow_up)
    conversation.add(text, story, asked, story_id(story), template)


def _add_small_talk(conversation: Conversation, topic: str, rng: random.Random) -> None:
    user, reply = small_talk_turn(topic, rng)
    conversation.add(user, reply, RequestFacts(), None, "small_talk/" + topic)


def make_conversations(stories: Sequence[str], seed: int = 0, *, split: str = "train",
                       follow_up_rate: float = 0.15, small_talk_rate: float = 0.25,
                       chit_chat_every: int = 40) -> list[Conversation]:
    """One conversation per story (in order), plus one small-talk-only conversation after every
    `chit_chat_every` stories (0: none).

    Each story is the answer to a request built from its facts. With probability
    `small_talk_rate` the conversation opens with small talk (half the time) or ends with
    thanks; with probability `follow_up_rate` a second request follows, answered by another
    story of `stories` (so both stories come from the same side of the held-out split).
    """
    stories = [s.strip() for s in stories if s.strip()]
    if not stories:
        raise ConversationError("no stories to make conversations from")
    rng = random.Random(seed)
    facts_cache: dict[int, StoryFacts] = {}

    def facts_of(index: int) -> StoryFacts:
        if index not in facts_cache:
            facts_cache[index] = extract_facts(stories[index])
        return facts_cache[index]

    conversations = []
    for index, story in enumerate(stories):
        conversation = Conversation([], split=split)
        small_talk = rng.random() < small_talk_rate
        opens_with_small_talk = small_talk and rng.random() < 0.5
        if opens_with_small_talk:
            _add_small_talk(conversation, rng.choice(["greeting", "greeting", "abilities",
                                                      "name", "how_are_you"]), rng)
        _add_request(conversation, story, facts_of(index), rng, follow_up=False)
        if len(stories) > 1 and rng.random() < follow_up_rate:
            other = rng.randrange(len(stories) - 1)
            other += other >= index                     # any story but this one
            _add_request(conversation, stories[other], facts_of(other), rng, follow_up=True)
        if small_talk and not opens_with_small_talk:
            _add_small_talk(conversation, "thanks", rng)
            if rng.random() < 0.3:
                _add_small_talk(conversation, "goodbye", rng)
        conversations.append(conversation)
        if chit_chat_every and (index + 1) % chit_chat_every == 0:
            chat = Conversation([], split=split)
            topics = rng.sample(["greeting", "how_are_you", "abilities", "name"], rng.randint(1, 3))
            for topic in topics + (["goodbye"] if rng.random() < 0.3 else []):
                _add_small_talk(chat, topic, rng)
            conversations.append(chat)
    return conversations


def split_holdout(stories: Iterable[str], fraction: float = 0.05
                  ) -> tuple[list[str], list[str]]:
    """(kept, held out): a story is held out when its `story_id` falls in the first `fraction`
    of the hash range, so the choice depends only on its text."""
    if not 0.0 <= fraction < 1.0:
        raise ConversationError(f"the held-out fraction must be in [0, 1), got {fraction}")
    kept, held_out = [], []
    for story in stories:
        story = story.strip()
        if story:
            in_holdout = int(story_id(story), 16) < fraction * 16 ** 12
            (held_out if in_holdout else kept).append(story)
    return kept, held_out


@dataclass
class ConversationSplits:
    train: list[Conversation]
    held_out: list[Conversation]


def make_splits(train_stories: Sequence[str], valid_stories: Sequence[str] = (), seed: int = 0,
                holdout_fraction: float = 0.05) -> ConversationSplits:
    """Training conversations from the train stories that `split_holdout` keeps; held-out ones
    from the stories it sets aside and from `valid_stories` (never seen in training)."""
    kept, held_out = split_holdout(train_stories, holdout_fraction)
    held_out += [s.strip() for s in valid_stories if s.strip()]
    train = make_conversations(kept, seed, split="train")
    # another stream for the held-out side, so its requests do not shadow the training ones
    held = make_conversations(held_out, seed + 1_000_003, split="held_out") if held_out else []
    return ConversationSplits(train, held)


@dataclass(frozen=True)
class BenchmarkRequest:
    """A single-turn request for scoring a model: its text, what it asks for, the story that
    answers it (a reference reply) and the template used."""
    text: str
    facts: RequestFacts
    story: str
    template: str


def make_benchmark_requests(stories: Sequence[str], seed: int = 0) -> list[BenchmarkRequest]:
    """One opening request per story that asks for at least one fact (a story with none to
    ask for is skipped). Give it held-out stories (`make_splits`' side, or the valid split)."""
    rng = random.Random(seed)
    requests = []
    for story in (s.strip() for s in stories):
        facts = extract_facts(story) if story else None
        # a plain "Tell me a story." asks for nothing a reply could be scored on: draw again
        for _ in range(20 if facts else 0):
            text, asked, template = make_request(facts, rng)
            if not asked.is_empty():
                requests.append(BenchmarkRequest(text, asked, story, template))
                break
    return requests


def read_stories(path: str | os.PathLike) -> list[str]:
    """Stories of a TinyStories text file (each ends with a line `<|endoftext|>`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConversationError(f"cannot read stories from {path}: {error}") from None
    stories = [s.strip() for s in text.split(STORY_SEPARATOR) if s.strip()]
    if not stories:
        raise ConversationError(f"{path} holds no stories")
    return stories


# ----------------------------------------------------------------------------------------------
# Command line

def _format(conversation: Conversation) -> str:
    lines = [f"--- {conversation.split} conversation"]
    for message in conversation.messages:
        lines.append(f"[{message['role']}] {message['content']}")
    for turn in conversation.turns:
        if not turn.facts.is_empty():
            facts = {k: list(v) for k, v in asdict(turn.facts).items() if v}
            lines.append(f"  (turn {turn.message_index}: {turn.template}, asks {facts})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gpt.data.conversations",
        description="Make chat conversations from TinyStories and print examples.")
    parser.add_argument("--file", help="a TinyStories text file (default: the named corpus "
                        "tinystories, found or downloaded by gpt.data.corpora.fetch)")
    parser.add_argument("--n", type=int, default=5, help="how many conversations to print")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--holdout", type=float, default=0.05,
                        help="share of stories held out by hash (default 0.05)")
    parser.add_argument("--out", help="write every conversation (both splits) here as JSON lines")
    args = parser.parse_args(argv)
    try:
        if args.n < 0:
            raise ConversationError(f"--n must be 0 or more, got {args.n}")
        path = args.file or fetch("tinystories")
        stories = read_stories(path)
        started = time.perf_counter()
        splits = make_splits(stories, seed=args.seed, holdout_fraction=args.holdout)
        seconds = time.perf_counter() - started
    except GPTError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    shown = random.Random(args.seed).sample(splits.train, min(args.n, len(splits.train)))
    for conversation in shown:
        print(_format(conversation), end="\n\n")
    turns = sum(len(c.turns) for c in splits.train)
    print(f"{len(stories)} stories from {path}: {len(splits.train)} "
          f"training conversations ({turns} assistant turns), {len(splits.held_out)} held out, "
          f"made in {seconds:.1f} s")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as out:
            for conversation in splits.train + splits.held_out:
                out.write(json.dumps(conversation.to_dict(), ensure_ascii=False) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
