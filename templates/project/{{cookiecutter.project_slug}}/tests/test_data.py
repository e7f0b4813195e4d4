"""The digits data: shipped with scikit-learn, split the same way every time."""

import torch

from {{ cookiecutter.package_name }}.data import DigitsDataModule


def test_digits_load_without_download_and_split_deterministically():
    first, second = DigitsDataModule(seed=0), DigitsDataModule(seed=0)
    first.setup("fit")
    second.setup("fit")
    x, y = first.train_set.tensors
    assert x.shape[1] == 64 and 0.0 <= x.min() and x.max() <= 1.0
    assert set(y.tolist()) == set(range(10))
    assert len(first.train_set) + len(first.val_set) == 1797
    assert torch.equal(first.val_set.tensors[1], second.val_set.tensors[1])


def test_shuffle_order_depends_only_on_seed_and_epoch():
    data = DigitsDataModule()
    data.setup("fit")
    sampler = data.train_dataloader().sampler
    sampler.set_epoch(3)
    epoch3 = list(sampler)
    sampler.set_epoch(4)
    assert list(sampler) != epoch3
    sampler.set_epoch(3)
    assert list(sampler) == epoch3
