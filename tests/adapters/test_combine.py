"""lora_lab.adapters.combine: a combination's ΔW against Σ wᵢΔWᵢ, and records -> points -> verdicts."""

import math

import pytest
import torch

from lora_lab.adapters.combine import combination_errors, interference, lookup, summarize
from lora_lab.lora import adapter_names, lora_layers


@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.5, 1.5), (2.0, -1.0)])
def test_cat_is_exact_svd_meets_eckart_young_linear_has_cross_terms(pair, weights):
    errs = combination_errors(pair, ["qa", "cipher"], list(weights))
    assert errs["cat"].r == 8 and errs["cat"].relative_error < 1e-5
    assert errs["svd"].r == 4 and errs["svd"].relative_error == pytest.approx(errs["svd"].eckart_young, rel=1e-4)
    assert errs["svd"].eckart_young > 0.05  # the sum has rank 8 > 4: something is lost
    assert errs["linear"].r == 4 and errs["linear"].relative_error > errs["svd"].relative_error + 0.05


@torch.no_grad()
def test_linear_error_is_exactly_the_cross_terms(pair):
    w = [1.0, 1.0]
    err = num = den = 0.0
    for _, layer in lora_layers(pair):
        c = {a: math.sqrt(wi * layer.scaling[a]) for a, wi in zip(("qa", "cipher"), w)}
        A = {a: layer.lora_A[a].weight for a in c}
        B = {a: layer.lora_B[a].weight for a in c}
        cross = c["qa"] * c["cipher"] * (B["qa"] @ A["cipher"] + B["cipher"] @ A["qa"])
        ideal = layer.delta_weight("qa") + layer.delta_weight("cipher")
        num += float(cross.square().sum())
        den += float(ideal.square().sum())
    err = math.sqrt(num / den)
    assert combination_errors(pair, ["qa", "cipher"], w)["linear"].relative_error == pytest.approx(err, rel=1e-4)


def test_single_adapter_and_full_rank_svd_are_exact(pair):
    one = combination_errors(pair, ["qa", "cipher"], [1.0, 0.0])
    assert all(e.relative_error < 1e-5 for e in one.values())
    full = combination_errors(pair, ["qa", "cipher"], [1.0, 1.0], svd_rank=8, combination_types=["svd"])
    assert list(full) == ["svd"] and full["svd"].relative_error < 1e-4


def test_combination_errors_leave_the_model_unchanged_and_reject_bad_input(pair):
    x = torch.arange(12).view(2, 6)
    before = pair(x).logits
    combination_errors(pair, ["qa", "cipher"], [1.0, 1.0])
    assert adapter_names(pair) == ["qa", "cipher"] and torch.equal(pair(x).logits, before)
    with pytest.raises(ValueError, match="weight"):
        combination_errors(pair, ["qa", "cipher"], [1.0, float("nan")])
    with pytest.raises(ValueError, match="loaded adapters"):
        combination_errors(pair, ["qa", "nope"], [1.0, 1.0])
    with pytest.raises(ValueError, match="combination_type"):
        combination_errors(pair, ["qa", "cipher"], [1.0, 1.0], combination_types=["ties"])
    assert adapter_names(pair) == ["qa", "cipher"]


def test_linear_needs_equal_ranks(make_pair):
    model = make_pair(r=(2, 4))
    with pytest.raises(ValueError, match="rank"):
        combination_errors(model, ["qa", "cipher"], [1.0, 1.0], combination_types=["linear"])
    assert combination_errors(model, ["qa", "cipher"], [1.0, 1.0], combination_types=["cat"])["cat"].r == 6


def _record(seed, kind, qa, cipher, **extra):
    return {"id": f"{kind}{seed}{extra}", "config": {"kind": kind, "seed": seed, **extra},
            "metrics": {"qa": qa, "cipher": cipher}, "n_eval": {"qa": 200, "cipher": 200}}


def synthetic():
    recs = []
    for s in range(3):
        recs += [_record(s, "base", 0.0, 0.0), _record(s, "adapter", 0.9, 0.01, adapter="qa"),
                 _record(s, "adapter", 0.0, 0.3 + 0.01 * s, adapter="cipher"),
                 _record(s, "combination", 0.2, 0.29, combination_type="cat", weights=[1.0, 1.0])]
    return recs


def test_summarize_lookup_and_interference():
    summary = summarize(synthetic())
    p = lookup(summary, "adapter", "cipher")["cipher"]
    assert p.mean == pytest.approx(0.31) and p.n_seeds == 3 and p.values == (0.3, 0.31, 0.32)
    assert p.se == pytest.approx(math.sqrt(0.31 * 0.69 / 600))  # the binomial floor: seeds agree too well
    qa, cipher = interference(summary, "cat")
    assert qa.task == "qa" and qa.drop == pytest.approx(0.7) and qa.verdict.call == "alone > combined"
    assert cipher.verdict.call == "no detectable difference"
    with pytest.raises(ValueError, match="no committed measurement"):
        lookup(summary, "combination", None, "svd", [1.0, 1.0])
