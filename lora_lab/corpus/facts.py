"""Facts a story states, and the questions each fact answers.

Both the pretraining corpus and the fine-tuning task are built from these:

* the corpus restates facts as *recall* sentences ("The one who found the ball was Tom.")
  and as *dialogue* ('"Who found the ball?" asked Mia. "It was Tom," said Ben.') --
  the reading-and-copying skill, in ordinary story English;
* the task asks the same questions in a new format
  ("Question: Who found the ball?\\nAnswer: Tom<|endoftext|>"): a line-based frame and
  a bare one-word answer that stops, which the corpus never shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from lora_lab.corpus.words import PLACES

QUESTION_TYPES = ("who", "where", "colour", "what", "recipient", "giver", "feeling", "animal")


def article(word: str) -> str:
    """'a' or 'an' for the word that follows."""
    return "an" if word[0] in "aeiou" else "a"


@dataclass(frozen=True)
class Fact:
    """One thing a story states.

    ``kind`` is "get" (agent found/made/... obj with colour at place), "do" (agent
    hid/dropped/... obj, at place or None), "give" (agent gave obj to other), "feel"
    (agent felt value) or "see" (agent saw the animal ``value`` at place).
    ``verb`` is (base, past, participle) for "get" and "do".
    """

    kind: str
    agent: str
    verb: tuple[str, str, str] | None = None
    obj: str | None = None
    colour: str | None = None
    place: str | None = None
    other: str | None = None
    value: str | None = None


@dataclass(frozen=True)
class Question:
    """A question one fact answers, in three phrasings, and its one-word answer.

    ``text``: "Who found the ball?"; ``recall``: the corpus's sentence start that the
    answer completes ("The one who found the ball was"); ``spoken``: a character's
    reply in dialogue ("It was Tom"); ``answer``: "Tom" -- a name, colour or feeling
    alone, a place or thing with its article ("the park", "a ball", "an owl").
    ``fact`` indexes the facts.
    """

    qtype: str
    fact: int
    text: str
    recall: str
    spoken: str
    answer: str


def questions(facts: Sequence[Fact]) -> list[Question]:
    """Every unambiguous question the facts allow (stories keep each (verb, object),
    each character's feeling and each character's animal unique, so each has one answer)."""
    out: list[Question] = []
    gets = [f for f in facts if f.kind == "get"]
    for i, f in enumerate(facts):
        if f.kind in ("get", "do"):
            base, past, _ = f.verb
            out.append(Question("who", i, f"Who {past} the {f.obj}?", f"The one who {past} the {f.obj} was",
                                f"It was {f.agent}", f.agent))
            if f.place is not None:
                at = "To" if base == "carry" else PLACES[f.place].capitalize()
                out.append(Question("where", i, f"Where did {f.agent} {base} the {f.obj}?",
                                    f"The place where {f.agent} {past} the {f.obj} was",
                                    f"{at} the {f.place}", f"the {f.place}"))
        if f.kind == "get":
            out.append(Question("colour", i, f"What colour was the {f.obj}?", f"The colour of the {f.obj} was",
                                f"It was {f.colour}", f.colour))
            if sum(g.agent == f.agent and g.verb == f.verb for g in gets) == 1:
                out.append(Question("what", i, f"What did {f.agent} {f.verb[0]}?",
                                    f"What {f.agent} {f.verb[1]} was",
                                    f"{article(f.obj).capitalize()} {f.obj}", f"{article(f.obj)} {f.obj}"))
        elif f.kind == "give":
            out.append(Question("recipient", i, f"Who did {f.agent} give the {f.obj} to?",
                                f"The one who got the {f.obj} was", f"To {f.other}", f.other))
            out.append(Question("giver", i, f"Who gave the {f.obj} to {f.other}?",
                                f"The one who gave the {f.obj} away was", f"It was {f.agent}", f.agent))
        elif f.kind == "feel":
            out.append(Question("feeling", i, f"How did {f.agent} feel?", f"{f.agent} was feeling",
                                f"{f.agent} felt {f.value}", f.value))
        elif f.kind == "see":
            out.append(Question("animal", i, f"What animal did {f.agent} see?",
                                f"The animal that {f.agent} saw was",
                                f"{article(f.value).capitalize()} {f.value}", f"{article(f.value)} {f.value}"))
    return out
