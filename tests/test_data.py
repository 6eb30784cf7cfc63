"""Loading tiny IDX files through torchvision, the splits, the three binarizations and the batch iterator."""

from __future__ import annotations

import os
from urllib.error import URLError

import pytest
import torch
from torchvision import datasets

from rhovae.idx import write_dataset, write_idx
from rhovae.data import (expected_files, load_image_data, n_train_batches, raw_folder, to_unit_float,
                         train_batches)
from rhovae.errors import ConfigError, DatasetError


@pytest.mark.parametrize("name", ["mnist", "fmnist"])
def test_splits_come_from_torchvision_in_order(data_root, name):
    data = load_image_data(name, data_root, binarize="none", val_size=40, download=False)
    ref_cls = {"mnist": datasets.MNIST, "fmnist": datasets.FashionMNIST}[name]
    ref_train, ref_test = ref_cls(data_root, train=True), ref_cls(data_root, train=False)
    assert data.image_shape == (1, 28, 28) and data.n_pixels == 784
    assert data.train.dtype == torch.uint8 and data.train.shape == (200, 784)
    torch.testing.assert_close(data.train, ref_train.data[:200].reshape(200, -1))
    torch.testing.assert_close(data.val, ref_train.data[200:].reshape(40, -1))
    torch.testing.assert_close(data.test, ref_test.data.reshape(80, -1))
    torch.testing.assert_close(data.test_labels, ref_test.targets)
    assert not data.dynamic


def test_eval_sets_are_one_fixed_binarization_shared_by_dynamic_and_static(data_root):
    dyn = load_image_data("mnist", data_root, binarize="dynamic", val_size=40, download=False)
    sta = load_image_data("mnist", data_root, binarize="static", val_size=40, download=False)
    grey = load_image_data("mnist", data_root, binarize="none", val_size=40, download=False)
    for t in (dyn.val, dyn.test, sta.train):
        assert set(t.unique().tolist()) <= {0, 255}
    torch.testing.assert_close(dyn.val, sta.val)
    torch.testing.assert_close(dyn.test, sta.test)
    torch.testing.assert_close(dyn.train, grey.train)  # dynamic keeps grey levels and samples per batch
    assert dyn.dynamic and not sta.dynamic
    other = load_image_data("mnist", data_root, binarize="static", val_size=40, binarize_seed=1, download=False)
    assert not torch.equal(other.test, sta.test)
    # a binarization follows the grey levels: bright pixels are mostly on, dark ones mostly off
    p = to_unit_float(grey.test)
    on = to_unit_float(sta.test)
    assert on[p > 0.7].mean() > 0.6 and on[p < 0.15].mean() < 0.2


def test_train_batches_cover_each_image_once_and_resample_binarization(data_root):
    data = load_image_data("mnist", data_root, binarize="dynamic", val_size=40, download=False)
    images = torch.arange(10, dtype=torch.uint8).repeat_interleave(3).reshape(10, 3) * 20
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    seen = torch.cat(list(train_batches(images, 4, order=order, binarize=None)))
    torch.testing.assert_close(seen, to_unit_float(images)[order])
    assert [len(b) for b in train_batches(images, 4, order=order, binarize=None)] == [4, 4, 2]
    assert len(list(train_batches(images, 4, order=order, binarize=None, max_batches=2))) == 2
    rest = torch.cat(list(train_batches(images, 4, order=order, binarize=None, start=1)))
    torch.testing.assert_close(rest, seen[4:])  # resuming part-way through an epoch
    assert n_train_batches(10, 4) == 3 and n_train_batches(10, 4, 2) == 2

    def epoch(seed):
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(data.train), generator=g)
        return torch.cat(list(train_batches(data.train, 64, order=order, binarize=g)))

    a, b = epoch(0), epoch(0)
    torch.testing.assert_close(a, b)  # seeded: reproducible
    assert set(a.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(a, epoch(1))


def test_missing_dataset_names_folder_and_files(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_image_data("fmnist", tmp_path / "nowhere", download=False)
    msg = str(err.value)
    assert str(raw_folder("fmnist", tmp_path / "nowhere")) in msg and "\n" not in msg
    for f in expected_files("fmnist"):
        assert f in msg


def test_failed_download_is_one_clear_message(tmp_path, monkeypatch):
    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://mirror, got:\n<urlopen error>")

    monkeypatch.setattr(datasets.MNIST, "download", offline)
    with pytest.raises(DatasetError, match="downloading failed") as err:
        load_image_data("mnist", tmp_path, download=True)
    assert "\n" not in str(err.value) and "train-images-idx3-ubyte" in str(err.value)
    assert "Tried https://mirror, got: <urlopen error>" in str(err.value)  # why it failed, not just that it did

    def unreachable(self):
        raise URLError("no network")

    monkeypatch.setattr(datasets.MNIST, "download", unreachable)
    with pytest.raises(DatasetError, match="downloading failed"):
        load_image_data("mnist", tmp_path, download=True)


@pytest.mark.parametrize("file,damage,reason", [
    ("train-images-idx3-ubyte", lambda b: b[:-500], "is truncated: its header announces 60 x 28 x 28 bytes of data "
                                                     "(47,056 bytes in all), the file has 46,556"),
    ("train-images-idx3-ubyte", lambda b: b"\x00\x00\x08\x07" + b[4:], "has 7 dimensions in its header, expected 3"),
    ("t10k-labels-idx1-ubyte", lambda b: b"\x1f\x8b" + b[2:], "is not an uint8 IDX file (its first bytes are 1f8b0801"),
    ("t10k-labels-idx1-ubyte", lambda b: b + b"\x00", "is longer than its header says"),
], ids=["truncated", "bad-header", "gzip-not-unpacked", "trailing-bytes"])
def test_corrupt_idx_file_is_named_with_a_readable_reason(tmp_path, file, damage, reason):
    raw = write_dataset(tmp_path, "mnist", n_train=60, n_test=20)
    path = raw / file
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DatasetError) as err:
        load_image_data("mnist", tmp_path, val_size=10, download=False)
    assert str(err.value).startswith(f"could not read mnist data: {path} {reason}")
    assert "AssertionError" not in str(err.value) and "\n" not in str(err.value)


def test_label_count_mismatch_is_reported(tmp_path):
    raw = write_dataset(tmp_path, "mnist", n_train=60, n_test=20)
    write_idx(raw / "t10k-labels-idx1-ubyte", torch.zeros(19, dtype=torch.uint8).numpy())
    with pytest.raises(DatasetError):
        load_image_data("mnist", tmp_path, val_size=10, download=False)


def test_bad_choices_are_config_errors(data_root):
    with pytest.raises(ConfigError, match="dataset.binarize='sometimes'.*dynamic, static, none"):
        load_image_data("mnist", data_root, binarize="sometimes", download=False)
    with pytest.raises(ConfigError, match="dataset.val_size=240"):
        load_image_data("mnist", data_root, val_size=240, download=False)


def test_a_failed_download_leaves_no_folders_behind(tmp_path, monkeypatch):
    def offline(self):
        os.makedirs(self.raw_folder, exist_ok=True)  # as torchvision does before it fetches anything
        raise URLError("no network")

    monkeypatch.setattr(datasets.MNIST, "download", offline)
    (tmp_path / "kept").mkdir()
    for root in (tmp_path / "nonexistent" / "data", tmp_path / "kept"):
        with pytest.raises(DatasetError, match="downloading failed"):
            load_image_data("mnist", root, download=True)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["kept"]  # what existed before stays, and only that
