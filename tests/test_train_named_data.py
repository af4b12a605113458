"""``--data NAME --data-root DIR`` for ``ppma train``, ``ppma ablate`` and ``TrainConfig``: the recipe layers,
the named dataset's splits and class names reach the run, and bad input is one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_named_datasets import _write_cifar

from ppma.cli import main
from ppma.train.config import TrainConfig, dataset_config, layered_config
from ppma.train.datasets import named_recipe


@pytest.fixture
def offline(monkeypatch):
    """No network in tests: a download attempt fails as it would offline."""
    import ppma.train.datasets as datasets

    def no_network(spec, root):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(datasets, "_download", no_network)


def test_the_recipe_layers_under_resumed_config_file_and_flags():
    recipe = named_recipe("cifar10")
    c = layered_config(None, None, {"data": "CIFAR-10", "data_root": "/d"})
    assert c.data == "cifar10" and c.mean == tuple(recipe["mean"]) and c.input_size == recipe["input_size"]
    assert c.epochs == recipe["epochs"] and c.mixup == 0 and c.model == "ppma_nano"
    resumed = c.replace(epochs=7, lr_base=1e-3).to_dict()
    c = layered_config(resumed, {"input_size": 96, "epochs": 5}, {"epochs": 2})
    assert (c.epochs, c.input_size, c.lr_base, c.data) == (2, 96, 1e-3, "cifar10")  # flags > file > resumed
    f = layered_config(None, None, {"data": "fashion_mnist", "data_root": "/d"})
    assert f.input_size == named_recipe("fashion_mnist")["input_size"] and f.mean != c.mean
    assert dataset_config("cifar100", "/d", epochs=3) == layered_config(
        None, None, {"data": "cifar100", "data_root": "/d", "epochs": 3}
    )
    assert layered_config(None, None, {"data": "digits"}).input_size == 32  # the digits recipe by name too
    with pytest.raises(ValueError, match="give one of them, not both"):
        layered_config(None, None, {"data": "cifar10", "data_root": "/d", "data_path": "/imagenet"})
    with pytest.raises(ValueError, match="data_path: give one of them"):
        TrainConfig(data="cifar10", data_root="/d", data_path="/imagenet")
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        TrainConfig(data="svhn")
    with pytest.raises(ValueError, match="data_root: cifar10 needs the folder"):
        TrainConfig(data="cifar10")


def test_train_on_a_tiny_cifar10_records_its_classes(tmp_path, capsys, offline):
    written = _write_cifar(tmp_path / "root", "cifar10", np.random.default_rng(), n_per_file=4)
    out = tmp_path / "run"
    args = ["train", "--data", "cifar10", "--data-root", str(tmp_path / "root"), "--epochs", "1", "--batch-size", "5",
            "--input-size", "48", "--workers", "0", "--device", "cpu", "--warmup-epochs", "0", "--no-plot",
            "--output-dir", str(out)]  # fmt: skip
    assert main(args) == 0
    assert "on cifar10 (" in capsys.readouterr().out
    best = torch.load(out / "best.pth", map_location="cpu", weights_only=True)
    assert best["classes"] == [f"class{i}" for i in range(10)] and best["num_classes"] == 10
    config = best["config"]
    assert config["data"] == "cifar10" and config["input_size"] == 48  # the flag upsamples 32 -> 48
    assert config["mean"] == list(named_recipe("cifar10")["mean"])  # the dataset's recipe
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    n_train = sum(len(written[f][1]) for f in written if f.startswith("data_batch"))
    assert log[0]["train_images"] == n_train // 5 * 5 and log[0]["val_images"] == len(written["test_batch"][1])
    # eval without --data-path: the run's own named val split
    assert main(["eval", "--checkpoint", str(out / "best.pth"), "--workers", "0", "--device", "cpu"]) == 0
    assert "on 4 images" in capsys.readouterr().out


def test_ablate_on_a_named_dataset_uses_its_recipe(tmp_path, offline):
    _write_cifar(tmp_path / "root", "cifar100", np.random.default_rng(), n_per_file=12)
    out = tmp_path / "ablate"
    (tmp_path / "c.json").write_text(json.dumps({"workers": 0, "warmup_epochs": 0}))
    assert main(["ablate", "--config", str(tmp_path / "c.json"), "--data", "cifar100", "--data-root",
                 str(tmp_path / "root"), "--masks", "rmt", "--seeds", "0", "--no-baseline", "--epochs", "1",
                 "--batch-size", "6", "--input-size", "32", "--device", "cpu", "--throughput-repeats", "1",
                 "--output-dir", str(out)]) == 0  # fmt: skip
    saved = json.loads((out / "ablation.json").read_text())
    (run,) = saved["runs"]
    assert run["num_classes"] == 100 and run["settings"]["data"] == "cifar100"
    assert run["settings"]["mean"] == list(named_recipe("cifar100")["mean"])
    assert "cifar100 (" in (out / "ablation.md").read_text()


def test_bad_data_is_one_line(tmp_path, capsys, offline):
    for extra, message in (
        (["--data", "imagenet21k"], "unknown dataset 'imagenet21k'; known: digits, cifar10"),
        (["--data", "cifar10", "--data-path", str(tmp_path)], "give one of them, not both"),
        (["--data", "cifar10", "--data-root", str(tmp_path)], "lacks data_batch_1"),
        (["--data", "cifar10"], "data_root: cifar10 needs the folder"),
        (["--data-root", str(tmp_path)], "is only read with data (--data cifar10"),
    ):
        assert main(["train", *extra, "--output-dir", str(tmp_path / "run"), "--epochs", "1"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
