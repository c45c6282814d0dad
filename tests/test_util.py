"""lora_lab._util: the mechanisms every chapter shares."""

import warnings

import pytest
from torch import nn
from transformers.pytorch_utils import Conv1D

from lora_lab._util import atomic_write_bytes, atomic_write_text, is_bnb_4bit, is_conv1d, warn_rank_above_min


def test_layer_kinds():
    assert is_conv1d(Conv1D(6, 4)) and not is_conv1d(nn.Linear(4, 6))
    assert not is_bnb_4bit(nn.Linear(4, 6)) and not is_bnb_4bit(Conv1D(6, 4))


def test_rank_warning_names_the_sizes_and_points_at_the_caller():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_rank_above_min(4, 4, 8)  # r == min: no warning
    with pytest.warns(UserWarning, match=r"r=5 is larger than min\(out_features, in_features\)=4 of x: "
                                         r"a \(out_features=4, in_features=8\) matrix") as rec:
        warn_rank_above_min(5, 4, 8, names=("out_features", "in_features"), where=" of x", stacklevel=1)
    assert rec[0].filename == __file__  # stacklevel counts from the caller: 1 is the calling line


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "sub" / "f.txt"
    atomic_write_text(p, "one")
    atomic_write_bytes(p, b"two")
    assert p.read_bytes() == b"two"
    assert [q.name for q in p.parent.iterdir()] == ["f.txt"]
