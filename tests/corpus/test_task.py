"""The fine-tuning task: deterministic split, exact match, answers that depend on the input."""

import collections

import pytest

from lora_lab.corpus.stories import iter_corpus
from lora_lab.corpus.task import (
    PROMPT_TEMPLATE,
    QUESTION_TYPES,
    exact_match,
    leading_match,
    make_example,
    make_split,
    normalize_answer,
)


def test_split_is_deterministic_and_disjoint():
    train, held = make_split("train", 2000), make_split("eval", 300)
    assert [e.prompt for e in make_split("eval", 300)] == [e.prompt for e in held]
    stories = lambda ex: {e.prompt.split("\nQuestion:")[0] for e in ex}  # noqa: E731
    assert not stories(train) & stories(held)
    corpus = set(iter_corpus(3000))
    assert not stories(held) & corpus


def test_held_out_set_is_large_and_covers_every_question_type():
    held = make_split("eval", 200)
    assert len(held) >= 200
    counts = collections.Counter(e.qtype for e in held)
    assert set(counts) == set(QUESTION_TYPES)
    # the answer depends on the input: no single answer covers more than 5% of prompts
    top = collections.Counter(e.answer for e in held).most_common(1)[0][1]
    assert top / len(held) < 0.05


def test_prompt_format():
    e = make_example(0, "eval")
    assert e.prompt.endswith("\nAnswer:") and "\nQuestion: " in e.prompt
    assert e.completion == " " + e.answer
    assert PROMPT_TEMPLATE.count("{") == 2
    probe = make_example(0, "eval", style="probe")
    assert probe.answer == e.answer and "Question" not in probe.prompt


@pytest.mark.parametrize("pred, answer, em, lead", [
    (" Tom", "Tom", 1, 1),
    (" Tom\nQuestion: Who", "Tom", 1, 1),
    (" Tom found the ball", "Tom", 0, 1),
    (" tom", "Tom", 0, 0),
    (" the park", "the park", 1, 1),
    (" the park.", "the park", 0, 1),
    (" park", "the park", 0, 0),
    ("", "Tom", 0, 0),
])
def test_exact_and_leading_match(pred, answer, em, lead):
    assert exact_match([pred], [answer]) == em
    assert leading_match([pred], [answer]) == lead
    assert leading_match([pred], [answer]) >= exact_match([pred], [answer])


def test_normalize_answer():
    assert normalize_answer("  red \nmore") == "red"


def test_bad_input():
    with pytest.raises(ValueError, match="split"):
        make_example(0, "test")
    with pytest.raises(ValueError, match="style"):
        make_example(0, style="chat")
    with pytest.raises(ValueError, match="n must be"):
        make_split("eval", 0)
    with pytest.raises(ValueError, match="length"):
        exact_match(["a"], ["a", "b"])
    with pytest.raises(ValueError):
        exact_match([], [])
