"""The course's own data: how the shipped GPT-2's pretraining stories, its vocabulary, the
facts they state and the fine-tuning task are made.

One line imports the chapter: ``from lora_lab.corpus import ...``.
"""
from lora_lab.corpus import (
    facts,  # noqa: F401
    stories,  # noqa: F401
    task,  # noqa: F401
    words,  # noqa: F401
)
from lora_lab.corpus.facts import QUESTION_TYPES, Fact, Question, article, questions  # noqa: F401
from lora_lab.corpus.stories import Story, dialogues, iter_corpus, make_story, pretraining_text, story_rng  # noqa: F401
from lora_lab.corpus.task import (  # noqa: F401
    PROMPT_TEMPLATE,
    SPLITS,
    Example,
    exact_match,
    leading_match,
    make_example,
    make_split,
    normalize_answer,
    shuffled,
)

# the word lists themselves: lora_lab.corpus.words (ANIMALS, COLOURS, ...); chapter 05 uses these three
from lora_lab.corpus.words import NAMES, OBJECTS, PLACES  # noqa: F401
