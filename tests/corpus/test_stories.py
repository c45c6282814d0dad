"""The story grammar: seeded, varied, every fact stated, no task format in the corpus."""

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lora_lab.corpus.facts import QUESTION_TYPES, questions
from lora_lab.corpus.stories import dialogues, iter_corpus, make_story, pretraining_text, story_rng


def test_same_index_same_story_and_streams_differ():
    assert pretraining_text(7) == pretraining_text(7)
    assert pretraining_text(7) != pretraining_text(8)
    a = make_story(story_rng(3, 0, "pretrain")).text()
    b = make_story(story_rng(3, 0, "task-eval")).text()
    assert a != b


def test_corpus_has_real_variety():
    texts = list(iter_corpus(2000))
    words = {w.strip('.,!?"\'').lower() for t in texts for w in t.split()}
    assert len(words) >= 400, len(words)  # hundreds of words
    openings = {t.split(",")[0].split(" ")[0] for t in texts}
    assert len(openings) > 50
    assert len(set(texts)) == len(texts)


def test_corpus_never_shows_the_task_format():
    for t in iter_corpus(3000):
        assert "Question:" not in t and "Answer:" not in t and "\n" not in t


def test_corpus_practises_copying():
    texts = list(iter_corpus(1000))
    assert sum("The one who" in t for t in texts) > 100   # recall sentences
    assert sum("asked" in t and "?\"" in t for t in texts) > 100  # dialogue questions


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=10**9))
def test_every_answer_is_in_the_story_and_unambiguous(index):
    story = make_story(story_rng(index, 0, "task-train"))
    text = story.text()
    qs = questions(story.facts)
    assert qs, "every story allows at least one question"
    for q in qs:
        assert q.qtype in QUESTION_TYPES
        assert re.search(rf"\b{re.escape(q.answer.split()[-1])}\b", text), (q, text)
    by_text = {}
    for q in qs:  # the same question never has two answers
        assert by_text.setdefault(q.text, q.answer) == q.answer


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=0, max_value=10**9))
def test_recalls_and_dialogues_state_true_facts(index):
    story = make_story(story_rng(index, 0, "pretrain"))
    for after, line in dialogues(story, random.Random(index)):
        assert 0 <= after < len(story.sentences)
        assert line.count('"') == 4
    for after, line in story.recalls:
        assert 0 <= after < len(story.sentences)
        assert line.endswith(".")


def test_bad_arguments():
    with pytest.raises(ValueError, match="index"):
        story_rng(-1)
    with pytest.raises(ValueError, match="recall_prob"):
        pretraining_text(0, recall_prob=1.5)
    with pytest.raises(ValueError, match="n must be"):
        list(iter_corpus(-2))
