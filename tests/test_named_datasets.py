"""Named benchmarks read from small files the tests write in each dataset's own distribution format."""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from ppma.errors import PPMAError
from ppma.train.datasets import NAMED_DATASETS, load_named_dataset, named_recipe


def _write_cifar(root, name, rng, n_per_file=5):
    """CIFAR's python layout: pickled dicts with 'data' uint8 (n, 3072) channel-planar rows and label lists."""
    spec = NAMED_DATASETS[name]
    folder = root / spec.folder
    folder.mkdir(parents=True)
    label_key, n_classes = ("labels", 10) if name == "cifar10" else ("fine_labels", 100)
    written = {}
    for f in spec.files:
        if f in ("batches.meta", "meta"):
            key = "label_names" if name == "cifar10" else "fine_label_names"
            payload = {key: [f"class{i}" for i in range(n_classes)]}
        else:
            data = rng.integers(0, 256, size=(n_per_file, 3072), dtype=np.uint8)
            labels = rng.integers(0, n_classes, size=n_per_file).tolist()
            payload = {"batch_label": f, "data": data, label_key: labels}
            written[f] = (data, labels)
        (folder / f).write_bytes(pickle.dumps(payload, protocol=2))
    return written


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reads_the_standard_files(tmp_path, name):
    rng = np.random.default_rng()
    written = _write_cifar(tmp_path, name, rng)
    train_files = [f for f in written if f not in ("test_batch", "test")]
    train = load_named_dataset(name, tmp_path, "train", download=False)
    val = load_named_dataset(name, tmp_path, "val", download=False)
    assert len(train) == 5 * len(train_files) and len(val) == 5
    data, labels = written[train_files[-1]]
    index = len(train) - 1  # the last image of the last training file
    image, target = train[index]
    assert target == labels[-1]
    expected = data[-1].reshape(3, 32, 32).transpose(1, 2, 0)  # planar R, G, B -> (H, W, 3)
    np.testing.assert_array_equal(np.asarray(image), expected)
    assert train.classes[0] == "class0" and len(train.classes) == (10 if name == "cifar10" else 100)


def _write_idx(path, array, gz=False):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)


def test_fashion_mnist_reads_idx_files_plain_and_gzipped(tmp_path):
    rng = np.random.default_rng()
    folder = tmp_path / "FashionMNIST" / "raw"
    folder.mkdir(parents=True)
    train_images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    train_labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    _write_idx(folder / "train-images-idx3-ubyte", train_images, gz=True)
    _write_idx(folder / "train-labels-idx1-ubyte", train_labels)
    _write_idx(folder / "t10k-images-idx3-ubyte", train_images[:3])
    _write_idx(folder / "t10k-labels-idx1-ubyte", train_labels[:3], gz=True)
    train = load_named_dataset("fashion-mnist", tmp_path, "train", download=False)
    assert len(train) == 7 and len(load_named_dataset("fashion_mnist", tmp_path, "val", download=False)) == 3
    image, target = train[4]
    assert target == int(train_labels[4]) and image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image)[..., 1], train_images[4])


def test_missing_files_name_what_was_looked_for(tmp_path):
    with pytest.raises(PPMAError, match="cifar-10-batches-py lacks data_batch_1"):
        load_named_dataset("cifar10", tmp_path, "train", download=False)


def test_failed_download_is_one_line(tmp_path, monkeypatch):
    import ppma.train.datasets as datasets

    def offline(spec, root):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(datasets, "_download", offline)
    with pytest.raises(PPMAError, match="download failed .*name resolution.*standard files") as info:
        load_named_dataset("cifar100", tmp_path, "train")
    assert "\n" not in str(info.value)


def test_unknown_name_and_missing_root():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet21k'.*cifar10"):
        load_named_dataset("imagenet21k", "/tmp", "train")
    with pytest.raises(ValueError, match="needs --data-root"):
        load_named_dataset("cifar10", None, "train")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    _write_cifar(tmp_path, "cifar10", np.random.default_rng())
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps({"data": _Exploit()}))
    with pytest.raises(PPMAError, match="refusing to load posix.system|refusing to load os.system"):
        load_named_dataset("cifar10", tmp_path, "train", download=False)


def test_recipes_are_training_configs():
    from ppma.train.config import TrainConfig

    for name in NAMED_DATASETS:
        config = TrainConfig(**named_recipe(name))
        assert config.input_size > 32 and len(config.mean) == 3
