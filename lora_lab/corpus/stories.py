"""A seeded grammar of simple English stories: the pretraining corpus of the shipped model.

A story is a list of sentences plus the *facts* it states (who found what, where, what
colour it was, who got it, how someone felt, which animal someone saw). The facts are
what the fine-tuning task (:mod:`lora_lab.corpus.task`) asks about.

For pretraining (:func:`pretraining_text`), most stories also restate some facts later
on, as *recall* sentences ("The one who found the ball was Tom.") or as *dialogue*
(:func:`dialogues`). Those teach the base model the skill the task leans on -- copying
the right entity out of its context -- without ever showing the task's format.

Example (``pretraining_text(3)``, with one dialogue line woven in)::

    Iris lived in a little house near the hill. In the park, Milo made a blue clock. Iris
    saw a little dog jumping in the park. Then, Milo gave the clock to Iris. Iris was very
    sad. "Who gave the clock to Iris?" Milo wanted to know. "It was Milo," Rita said. They
    laughed all the way home.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator

from lora_lab.corpus.facts import Fact, article, questions
from lora_lab.corpus.words import (
    ADJECTIVES,
    ANIMAL_DOINGS,
    ANIMALS,
    COLOURS,
    DO_VERBS,
    ENDINGS,
    FEELINGS,
    GET_VERBS,
    LINKERS,
    NAMES,
    OBJECTS,
    PLACES,
    TIMES,
    WEATHER,
)


def _at(place: str) -> str:
    """The place with its preposition: 'in the park', 'at the beach', 'by the lake'."""
    return f"{PLACES[place]} the {place}"


@dataclass(frozen=True)
class Story:
    """A story: its sentences, the facts they state, and optional recall sentences.

    ``recalls`` holds ``(after, sentence)`` pairs: the sentence restates a fact and may be
    placed after sentence index ``after`` or anywhere later.
    """

    sentences: tuple[str, ...]
    facts: tuple[Fact, ...]
    recalls: tuple[tuple[int, str], ...] = ()
    characters: tuple[str, ...] = ()
    fact_at: tuple[int, ...] = ()  # index of the sentence that states each fact

    def text(self, recalls: bool = False, *, rng: random.Random | None = None) -> str:
        """The story as one paragraph; with ``recalls`` the recall sentences are woven in
        at random positions after the sentence that states their fact (``rng`` decides)."""
        if not recalls or not self.recalls:
            return " ".join(self.sentences)
        rng = rng or random.Random(0)
        slots: dict[int, list[str]] = {}
        for after, sentence in self.recalls:
            slots.setdefault(rng.randint(after, len(self.sentences) - 1), []).append(sentence)
        out = []
        for i, s in enumerate(self.sentences):
            out.append(s)
            out.extend(slots.get(i, ()))
        return " ".join(out)


class _Builder:
    """Accumulates sentences and facts while keeping every fact unambiguous."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.sentences: list[str] = []
        self.facts: list[Fact] = []
        self.recalls: list[tuple[int, str]] = []
        self.fact_at: list[int] = []

    def say(self, sentence: str, fact: Fact | None = None, recalls: tuple[str, ...] = ()) -> None:
        self.sentences.append(sentence)
        idx = len(self.sentences) - 1
        if fact is not None:
            self.facts.append(fact)
            self.fact_at.append(idx)
        self.recalls.extend((idx, r) for r in recalls)

    def pick(self, options):
        return self.rng.choice(options)


def _get_sentence(b: _Builder, a: str, verb, obj: str, colour: str, place: str) -> None:
    base, past, pp = verb
    thing = f"{colour} {obj}"
    if b.rng.random() < 0.3:
        thing = f"{b.pick(('big', 'small', 'little', 'shiny', 'old', 'new', 'tiny'))} {thing}"
    thing = f"{article(thing)} {thing}"
    prep = PLACES[place]
    s = b.pick((
        f"{a} {past} {thing} {_at(place)}.",
        f"{prep.capitalize()} the {place}, {a} {past} {thing}.",
        f"{b.pick(TIMES)}, {a} {past} {thing} {_at(place)}.",
        f"{a} went to the {place} and {past} {thing} there.",
        f"{b.pick(TIMES)}, {a} went to the {place}. There, {a} {past} {thing}.",
    ))
    recalls = (
        b.pick((f"The one who {past} the {obj} was {a}.", f"It was {a} who {past} the {obj}.",
                f"{a} was the one who {past} the {obj}.", f"The {obj} was {pp} by {a}.")),
        b.pick((f"The place where {a} {past} the {obj} was the {place}.",
                f"{a} had {pp} the {obj} {_at(place)}.", f"The {obj} was {pp} {_at(place)}.")),
        b.pick((f"The {obj} was {colour}.", f"The colour of the {obj} was {colour}.",
                f"{a}'s {obj} was {colour}.")),
        b.pick((f"The thing that {a} {past} was {article(colour)} {colour} {obj}.",
                f"What {a} {past} was {article(obj)} {obj}.")),
    )
    b.say(s, Fact("get", a, verb, obj, colour, place), recalls)


def _do_sentence(b: _Builder, a: str, verb, obj: str, place: str | None) -> None:
    base, past, pp = verb
    where = "" if place is None else (f" to the {place}" if base == "carry" else f" {_at(place)}")
    s = b.pick((f"{a} {past} the {obj}{where}.", f"{b.pick(LINKERS)}, {a} {past} the {obj}{where}."))
    recalls = [b.pick((f"The one who {past} the {obj} was {a}.", f"It was {a} who {past} the {obj}."))]
    if place is not None:
        recalls.append(b.pick((f"The place where {a} {past} the {obj} was the {place}.",
                               f"The {obj} was {pp}{where}.")))
    b.say(s, Fact("do", a, verb, obj, place=place), tuple(recalls))


def _give_sentence(b: _Builder, a: str, other: str, obj: str, colour: str) -> None:
    s = b.pick((f"{a} gave the {obj} to {other}.", f"{a} gave {other} the {colour} {obj}.",
                f"{b.pick(LINKERS)}, {a} gave the {obj} to {other}.",
                f"{other} got the {obj} from {a}.", f"{a} wanted to share, so {a} gave the {obj} to {other}."))
    recalls = (
        b.pick((f"The one who got the {obj} was {other}.", f"In the end, the {obj} belonged to {other}.",
                f"{a} had given the {obj} to {other}.")),
        b.pick((f"The one who gave the {obj} away was {a}.", f"It was {a} who gave the {obj} to {other}.")),
    )
    b.say(s, Fact("give", a, obj=obj, other=other), recalls)


def _feel_sentence(b: _Builder, who: str, feeling: str) -> None:
    s = b.pick((f"{who} was very {feeling}.", f"That made {who} {feeling}.", f"{who} felt {feeling}.",
                f"{who} was {feeling} all day.", f"\"Thank you!\" said {who}, who felt {feeling}."))
    recalls = (b.pick((f"{who} felt {feeling}.", f"{who} was still {feeling}.",
                       f"The one who felt {feeling} was {who}.", f"{who} was feeling {feeling}.")),)
    b.say(s, Fact("feel", who, value=feeling), recalls)


def _see_sentence(b: _Builder, who: str, animal: str, place: str) -> None:
    doing = b.pick(ANIMAL_DOINGS)
    s = b.pick((f"{who} saw {article(animal)} {animal} {_at(place)}.",
                f"{PLACES[place].capitalize()} the {place}, {who} saw {article(animal)} {animal} that was {doing}.",
                f"{who} saw a little {animal} {doing} {_at(place)}."))
    recalls = (b.pick((f"The animal that {who} saw was {article(animal)} {animal}.",
                       f"{who} had seen {article(animal)} {animal}.",
                       f"It was {article(animal)} {animal} that {who} saw.")),)
    b.say(s, Fact("see", who, place=place, value=animal), recalls)


def _filler(b: _Builder, chars, owned: dict[str, str], places) -> str:
    a, o = b.pick(chars), b.pick(chars)
    options = [b.pick(WEATHER), f"The {b.pick(places)} was {b.pick(ADJECTIVES)} and {b.pick(ADJECTIVES)}.",
               f"\"{o}, come and look!\" called {a}." if a != o else f"{a} smiled.",
               f"{a} and {o} sat down to rest." if a != o else f"{a} sat down to rest."]
    if owned:
        obj, holder = b.pick(sorted(owned.items()))
        other = b.pick([c for c in chars if c != holder] or [holder])
        options += [f"\"Look at my {obj}!\" said {holder}.", f"\"What a nice {obj}!\" said {other}.",
                    f"\"Can I see the {obj}?\" asked {other}.", f"{holder} held the {obj} up high."]
    return b.pick(options)


def make_story(rng: random.Random) -> Story:
    """Generate one story from ``rng`` (a :class:`random.Random`; same state, same story).

    The story has 2-3 characters and 1-2 objects (distinct nouns, each got once with
    a colour and a place); later sentences hand objects on, hide/drop/... them, say how
    someone felt and which animal someone saw. Each (verb, object) pair, each
    character's feeling and each character's animal occurs at most once, so every
    question :mod:`lora_lab.corpus.task` asks has exactly one right answer.
    """
    b = _Builder(rng)
    chars = rng.sample(NAMES, rng.choice((2, 2, 3)))
    objs = rng.sample(OBJECTS, rng.choice((1, 2, 2)))
    places = rng.sample(sorted(PLACES), len(objs) + 2)
    colours = [rng.choice(COLOURS) for _ in objs]
    a0, a1 = chars[0], chars[1]
    b.say(b.pick((f"Once upon a time, there was a child named {a0}.", f"{a0} and {a1} were best friends.",
                  f"{a0} lived in a little house near the {places[-1]}.", f"{a0} had a friend called {a1}.",
                  b.pick(WEATHER), f"{b.pick(TIMES)}, {a0} and {a1} went out to play.")))
    owned: dict[str, str] = {}
    felt, saw = set(), set()
    events = [("get", i) for i in range(len(objs))]
    events += [("give", i) for i in range(len(objs)) if rng.random() < 0.6]
    events += [("do", i) for i in range(len(objs)) if rng.random() < 0.4]
    events += [("see", None)] * rng.choice((0, 1)) + [("fill", None)] * rng.choice((0, 1))
    rng.shuffle(events)
    pending = list(events)
    done_get: set[int] = set()
    while pending:
        kind, i = pending.pop(0)
        if kind in ("give", "do") and i not in done_get:
            pending.append((kind, i))  # its object is not got yet
            continue
        if kind == "get":
            a = rng.choice(chars)
            _get_sentence(b, a, rng.choice(GET_VERBS), objs[i], colours[i], places[i])
            owned[objs[i]] = a
            done_get.add(i)
        elif kind == "give":
            holder = owned[objs[i]]
            other = rng.choice([c for c in chars if c != holder])
            _give_sentence(b, holder, other, objs[i], colours[i])
            owned[objs[i]] = other
            if other not in felt and rng.random() < 0.7:
                felt.add(other)
                _feel_sentence(b, other, rng.choice(FEELINGS))
        elif kind == "do":
            verb = rng.choice(DO_VERBS)
            place = None if verb[0] == "fix" else rng.choice(places)
            _do_sentence(b, owned[objs[i]], verb, objs[i], place)
        elif kind == "see":
            free = [c for c in chars if c not in saw]
            if free:
                who = rng.choice(free)
                saw.add(who)
                _see_sentence(b, who, rng.choice(ANIMALS), rng.choice(places))
        else:
            b.say(_filler(b, chars, owned, places))
    lonely = [c for c in chars if c not in felt]
    if lonely and rng.random() < 0.5:
        _feel_sentence(b, rng.choice(lonely), rng.choice(FEELINGS))
    b.say(rng.choice(ENDINGS))
    return Story(tuple(b.sentences), tuple(b.facts), tuple(b.recalls), tuple(chars), tuple(b.fact_at))


def dialogues(story: Story, rng: random.Random) -> list[tuple[int, str]]:
    """Each question the story's facts answer, asked and answered by its characters:
    ``(after, '"Who found the ball?" asked Mia. "It was Tom," said Ben.')``."""
    out = []
    for q in questions(story.facts):
        asker = rng.choice(story.characters)
        teller = rng.choice([c for c in story.characters if c not in (asker, story.facts[q.fact].agent)]
                            or [c for c in story.characters if c != asker])
        line = rng.choice((f"\"{q.text}\" asked {asker}. \"{q.spoken},\" said {teller}.",
                           f"{asker} asked, \"{q.text}\" {teller} said, \"{q.spoken}.\"",
                           f"\"{q.text}\" {asker} wanted to know. \"{q.spoken},\" {teller} said."))
        out.append((story.fact_at[q.fact], line))
    return out


def story_rng(index: int, seed: int = 0, stream: str = "pretrain") -> random.Random:
    """The generator of story ``index`` in a named stream; streams never share stories'
    seeds, so the task's stories are not the pretraining corpus's."""
    if not isinstance(index, int) or index < 0:
        raise ValueError(f"index must be an integer >= 0, got {index!r}")
    return random.Random(f"{stream}:{seed}:{index}")


def pretraining_text(index: int, seed: int = 0, *, recall_prob: float = 0.85,
                     max_recalls: int = 4) -> str:
    """Story ``index`` of the pretraining corpus. With probability ``recall_prob`` it
    gets 1..``max_recalls`` practice sentences woven in, each a recall sentence or a
    dialogue question with its answer (half and half): the copying practice."""
    if not 0.0 <= recall_prob <= 1.0:
        raise ValueError(f"recall_prob must be in [0, 1], got {recall_prob!r}")
    rng = story_rng(index, seed, "pretrain")
    story = make_story(rng)
    if rng.random() >= recall_prob or not story.recalls:
        return story.text()
    talk = dialogues(story, rng)
    k = rng.randint(1, min(max_recalls, len(story.recalls)))
    chosen = [rng.choice(talk) if talk and rng.random() < 0.5 else rng.choice(story.recalls) for _ in range(k)]
    chosen = tuple(sorted(set(chosen)))
    return Story(story.sentences, story.facts, chosen).text(recalls=True, rng=rng)


def iter_corpus(n: int, seed: int = 0, start: int = 0) -> Iterator[str]:
    """Yield ``n`` pretraining stories, indices ``start .. start + n - 1``."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    for i in range(start, start + n):
        yield pretraining_text(i, seed)
