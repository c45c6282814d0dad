"""The fine-tuning task: answer a question about a story, in a format the base never saw.

Each example is a story from :mod:`lora_lab.corpus.stories` (without recall sentences),
followed by a question about one of its facts and a one-word answer::

    Tom found a red ball in the park. ... Later, Tom gave the ball to Mia. Then they went home.
    Question: Who found the ball?
    Answer: Tom<|endoftext|>

The pretraining corpus holds no "Question:"/"Answer:" lines, no line breaks and no
text that stops right after a short answer, so the base model scores close to 0% exact
match. What the base *can* do is read a story and copy the right entity out of it
("The one who found the ball was Tom.", '"Who found the ball?" asked Mia. "It was Tom,"
said Ben.'): LoRA only has to connect the new format to that skill. The answer always
depends on the story: 8 question types over 100+ names, 70 objects, 40 places, 13
colours, 22 feelings and 40 animals. Answers are a name, colour or feeling alone, or a
place or thing with its article ("the park", "a ball").

The split is deterministic: training stories come from the stream "task-train",
held-out stories from "task-eval" (:func:`lora_lab.corpus.stories.story_rng`), so no held-out
story is a training story, and neither is a pretraining story.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from lora_lab.corpus.facts import QUESTION_TYPES, questions
from lora_lab.corpus.stories import make_story, story_rng

SPLITS = ("train", "eval")
PROMPT_TEMPLATE = "{story}\nQuestion: {question}\nAnswer:"


@dataclass(frozen=True)
class Example:
    """One prompt/answer pair. ``prompt + " " + answer`` is the full text (then EOS)."""

    prompt: str
    answer: str
    qtype: str
    index: int

    @property
    def completion(self) -> str:
        """What the model should generate after the prompt (without the EOS token)."""
        return " " + self.answer


def make_example(index: int, split: str = "train", seed: int = 0, *, style: str = "task") -> Example:
    """Example ``index`` of a split: a fresh story, then a question type drawn uniformly
    among those the story allows, then one of that type's questions.

    ``style="task"`` gives the new question/answer format; ``style="probe"`` asks the
    same thing the way the pretraining corpus does (story + " The one who found the
    ball was"), which measures the copying skill the base already has.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if style not in ("task", "probe"):
        raise ValueError(f"style must be 'task' or 'probe', got {style!r}")
    rng = story_rng(index, seed, f"task-{split}")
    story = make_story(rng)
    qs = questions(story.facts)
    qtype = rng.choice([t for t in QUESTION_TYPES if any(q.qtype == t for q in qs)])
    q = rng.choice([q for q in qs if q.qtype == qtype])
    if style == "probe":
        return Example(f"{story.text()} {q.recall}", q.answer, qtype, index)
    return Example(PROMPT_TEMPLATE.format(story=story.text(), question=q.text), q.answer, qtype, index)


def make_split(split: str, n: int, seed: int = 0, *, style: str = "task") -> list[Example]:
    """The first ``n`` examples of ``split`` ("train" or "eval"); deterministic in ``seed``."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    return [make_example(i, split, seed, style=style) for i in range(n)]


def normalize_answer(text: str) -> str:
    """What exact match compares: the generation up to the first line break, stripped."""
    return text.split("\n", 1)[0].strip()


def exact_match(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Fraction of predictions equal to their answer after :func:`normalize_answer`.

    ``" Tom"`` matches ``"Tom"``; ``" Tom found the ball"`` and ``" tom"`` do not.
    Returns a number in [0, 1].
    """
    if len(predictions) != len(answers):
        raise ValueError(f"predictions and answers differ in length: {len(predictions)} != {len(answers)}")
    if not answers:
        raise ValueError("exact_match needs at least one answer")
    hits = sum(normalize_answer(p) == a.strip() for p, a in zip(predictions, answers))
    return hits / len(answers)


def leading_match(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Fraction of generations that *start* with the answer's words (punctuation ignored),
    whatever follows: did the model know the answer, in any format? Always >=
    :func:`exact_match`."""
    if len(predictions) != len(answers) or not answers:
        raise ValueError("predictions and answers must be non-empty and of equal length")

    def words(text: str) -> list[str]:
        return [w.strip(".,!?\"'") for w in text.split()]

    hits = 0
    for p, a in zip(predictions, answers):
        want = words(a)
        hits += words(p)[:len(want)] == want
    return hits / len(answers)


def shuffled(examples: Sequence[Example], seed: int) -> list[Example]:
    """A copy of ``examples`` in a seeded random order."""
    out = list(examples)
    random.Random(seed).shuffle(out)
    return out
