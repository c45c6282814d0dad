"""A second task whose difficulty needs rank: the name cipher of K names.

The chapter-05 task (:mod:`lora_lab.corpus.task`) is a *format* change: the base model can
already read a story and copy the right name out of it, so a rank-1 adapter solves it.
The cipher task keeps that skill and adds a *table* to learn::

    Kai found a red ball in the park. ... Later, Kai gave the ball to Vera.
    Question: Who found the ball?
    Cipher: Otto<|endoftext|>

Every story's characters are renamed into a fixed set of K names, every question asks
for a name ("who", "giver", "recipient"), and the answer is not the name but its image
under a fixed derangement π of the K names (π(n) ≠ n, so copying scores 0 and guessing
scores 1/K). The adapter must store K new associations name → π(name): at the output
layer that is a map between K token directions, whose rank grows with K. So accuracy vs
r rises and saturates at an r that moves with K, which the chapter-05 task cannot show.

Splits are deterministic and disjoint as in :mod:`lora_lab.corpus.task` (streams "cipher-train"
and "cipher-eval"); π depends only on K and ``cipher_seed``.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache

from lora_lab.corpus.facts import questions
from lora_lab.corpus.stories import make_story, story_rng
from lora_lab.corpus.task import SPLITS, Example
from lora_lab.corpus.words import ANIMALS, COLOURS, FEELINGS, NAMES, OBJECTS, PLACES

CIPHER_TEMPLATE = "{story}\nQuestion: {question}\nCipher:"
NAME_QTYPES = ("who", "giver", "recipient")
_OTHER_WORDS = {w.lower() for w in (*ANIMALS, *COLOURS, *FEELINGS, *OBJECTS, *PLACES)}
#: names usable by the cipher: not also a colour, object, animal, feeling or place
CIPHER_NAMES = tuple(n for n in NAMES if n.lower() not in _OTHER_WORDS)
MIN_K = 3  # a story has up to 3 characters, each renamed to a distinct cipher name


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not MIN_K <= k <= len(CIPHER_NAMES):
        raise ValueError(f"k must be an integer in [{MIN_K}, {len(CIPHER_NAMES)}] (the number of cipher "
                         f"names), got k={k!r}")
    return k


@lru_cache(maxsize=None)
def cipher_table(k: int, cipher_seed: int = 0) -> dict[str, str]:
    """The fixed derangement π of the K cipher names: {name: π(name)}, π(n) ≠ n for all n.

    The K names are the first K of a seeded shuffle of :data:`CIPHER_NAMES`; π is a
    random cyclic shift of a second shuffle (a single K-cycle, so no fixed point).
    """
    _check_k(k)
    rng = random.Random(f"cipher:{cipher_seed}")
    names = list(CIPHER_NAMES)
    rng.shuffle(names)
    chosen = names[:k]
    order = chosen[:]
    rng.shuffle(order)
    return {order[i]: order[(i + 1) % k] for i in range(k)}


def make_cipher_example(index: int, split: str = "train", k: int = 8, cipher_seed: int = 0) -> Example:
    """Example ``index`` of a split of the K-name cipher task (see the module docstring)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    table = cipher_table(_check_k(k), cipher_seed)
    pool = sorted(table)
    rng = story_rng(index, cipher_seed, f"cipher-{split}")
    while True:  # a story with at least one name question (almost every story has one)
        story = make_story(rng)
        qs = [q for q in questions(story.facts) if q.qtype in NAME_QTYPES]
        if qs:
            break
    rename = dict(zip(story.characters, rng.sample(pool, len(story.characters))))
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, rename)) + r")\b")

    def sub(text: str) -> str:
        return pattern.sub(lambda m: rename[m.group(1)], text)

    q = rng.choice(qs)
    answer = table[rename[q.answer]]
    prompt = CIPHER_TEMPLATE.format(story=sub(story.text()), question=sub(q.text))
    return Example(prompt, answer, f"cipher-{q.qtype}", index)


def make_cipher_split(split: str, n: int, k: int = 8, cipher_seed: int = 0) -> list[Example]:
    """The first ``n`` examples of ``split`` ("train" or "eval") of the K-name cipher."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    return [make_cipher_example(i, split, k, cipher_seed) for i in range(n)]
