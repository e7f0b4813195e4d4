from collections import namedtuple

import pytest
import torch

from lightning_eff.module import EfficientModule, batch_size_of, index_batch

Pair = namedtuple("Pair", "x y")


def test_index_batch_cuts_every_tensor_and_keeps_the_container_type():
    batch = {"x": torch.arange(10).view(5, 2), "y": torch.arange(5), "meta": "shared", "nested": [torch.arange(5)]}
    out = index_batch(batch, torch.tensor([4, 0]))
    assert out["x"].tolist() == [[8, 9], [0, 1]]
    assert out["y"].tolist() == [4, 0]
    assert out["meta"] == "shared"
    assert out["nested"][0].tolist() == [4, 0]


def test_index_batch_keeps_namedtuples_and_tuples():
    out = index_batch(Pair(torch.arange(3), torch.arange(3) * 2), torch.tensor([2]))
    assert isinstance(out, Pair) and out.y.tolist() == [4]
    out = index_batch((torch.arange(3), torch.arange(3)), torch.tensor([1]))
    assert isinstance(out, tuple) and out[0].tolist() == [1]


def test_batch_size_of_nested_batches():
    assert batch_size_of({"ids": torch.zeros(7, 3), "labels": torch.zeros(7)}) == 7
    assert batch_size_of(("text", torch.zeros(3))) == 3
    with pytest.raises(TypeError, match="holds no tensor"):
        batch_size_of(["a", "b"])


def test_missing_per_sample_loss_says_what_to_implement():
    class Bare(EfficientModule):
        pass

    with pytest.raises(NotImplementedError, match="Bare mixes in EfficientModule but does not implement per_sample_loss"):
        Bare().per_sample_loss(None)
