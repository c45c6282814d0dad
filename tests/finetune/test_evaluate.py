"""Generation, the task score and perplexity."""

import math

import pytest

from lora_lab.corpus.stories import iter_corpus
from lora_lab.corpus.task import make_split
from lora_lab.finetune.evaluate import evaluate_task, generate, perplexity
from lora_lab.finetune.models import load_model, load_tokenizer


@pytest.fixture(scope="module")
def model_tok():
    return load_model(), load_tokenizer()


def test_batched_left_padded_generation_matches_one_by_one(model_tok):
    model, tok = model_tok
    prompts = [e.prompt for e in make_split("eval", 6, style="probe")]
    together = generate(model, tok, prompts, max_new_tokens=4, batch_size=6)
    alone = [generate(model, tok, [p], max_new_tokens=4)[0] for p in prompts]
    assert together == alone


def test_base_model_knows_answers_but_not_the_format(model_tok):
    model, tok = model_tok
    probe = evaluate_task(model, tok, make_split("eval", 100, style="probe"), max_new_tokens=4)
    task = evaluate_task(model, tok, make_split("eval", 100))
    assert probe.leading_match >= 0.9   # it can copy the right entity ...
    assert task.exact_match <= 0.10     # ... but not in the task's format
    assert len(task.predictions) == 100 and 0 <= task.percent <= 100


def test_perplexity_of_held_out_stories(model_tok):
    model, tok = model_tok
    texts = list(iter_corpus(40, start=3_000_000))  # past the pretraining corpus
    ppl = perplexity(model, tok, texts, batch_size=16)
    assert 1.5 < ppl < 4.0  # build_metrics.json: held-out loss 0.90, perplexity 2.47
    assert perplexity(model, tok, ["Tom zebra the the purple of was."]) > 10 * ppl


def test_bad_arguments(model_tok):
    model, tok = model_tok
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, tok, ["x"], max_new_tokens=0)
    with pytest.raises(ValueError, match="batch_size"):
        generate(model, tok, ["x"], batch_size=0)
    with pytest.raises(ValueError, match="at least one"):
        perplexity(model, tok, [])
    assert math.isfinite(perplexity(model, tok, ["Tom smiled."]))
