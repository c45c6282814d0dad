"""The course's own data: how the shipped GPT-2's pretraining stories, its vocabulary, the
facts they state and the fine-tuning task are made.

One line imports the chapter: ``from lora_lab.corpus import ...``.
"""
from lora_lab.corpus import words  # noqa: F401
from lora_lab.corpus.words import (  # noqa: F401
    NAMES,
    PLACES,
    OBJECTS,
    COLOURS,
    FEELINGS,
    ANIMALS,
    ADJECTIVES,
    GET_VERBS,
    DO_VERBS,
    ANIMAL_DOINGS,
    WEATHER,
    TIMES,
    LINKERS,
    ENDINGS,
)
from lora_lab.corpus import facts  # noqa: F401
from lora_lab.corpus.facts import (  # noqa: F401
    QUESTION_TYPES,
    article,
    Fact,
    Question,
    questions,
)
from lora_lab.corpus import stories  # noqa: F401
from lora_lab.corpus.stories import (  # noqa: F401
    Story,
    make_story,
    dialogues,
    story_rng,
    pretraining_text,
    iter_corpus,
)
from lora_lab.corpus import task  # noqa: F401
from lora_lab.corpus.task import (  # noqa: F401
    SPLITS,
    PROMPT_TEMPLATE,
    Example,
    make_example,
    make_split,
    normalize_answer,
    exact_match,
    leading_match,
    shuffled,
)
