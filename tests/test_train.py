"""ppma train: the digits main job, an ImageFolder end to end, the recipe's parts, and one-line errors."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import timm
import torch
import yaml
from imagefolder import make_image_folder, one_thread  # noqa: F401  (one_thread: autouse fixture)

import ppma  # noqa: F401
from ppma import cpu_units
from ppma.cli import main
from ppma.train import DIGITS_RECIPE, TrainConfig, digits_config, evaluate_checkpoint, run
from ppma.train.config import load_config_file
from ppma.train.engine import build_optimizer, resolve_lr

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """One short ImageNet-recipe run on a generated ImageFolder with an unreadable image, shared by tests."""
    root = make_image_folder(tmp_path_factory.mktemp("data"))
    (root / "train" / "class0" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "train" / ".thumbs").mkdir()  # hidden: not a class (it used to shift every label after it)
    (root / "train" / ".thumbs" / "x.png").write_bytes((root / "val" / "class2" / "0.png").read_bytes())
    out = tmp_path_factory.mktemp("run")
    torch.set_num_threads(1)
    summary = run(TrainConfig(data_path=str(root), model="ppma_nano", input_size=32, batch_size=4, epochs=2,
                              warmup_epochs=1, lr=1e-3, workers=1, output_dir=str(out), drop_path=0.1))  # fmt: skip
    return root, out, summary


def test_digits_default_run_learns_and_writes_checkpoint_log_plot(tmp_path, capsys):
    out = tmp_path / "digits"
    assert main(["train", "--epochs", "1", "--warmup-epochs", "0", "--output-dir", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "ppma_nano" in stdout and "digits" in stdout
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["val_images"] == 360 and records[0]["train_images"] == 22 * 64
    assert records[0]["top1"] > 40, records[0]  # chance is 10 %
    for name in ("last.pth", "best.pth", "curves.png", "config.yaml"):
        assert (out / name).stat().st_size > 0, name
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert TrainConfig(**saved) == digits_config(epochs=1, warmup_epochs=0, output_dir=str(out))


def test_image_folder_trains_and_evaluates_end_to_end(folder_run, capsys):
    root, out, summary = folder_run
    assert summary["epochs"] == 2 and summary["steps"] == 2 * (25 // 4) and not summary["stopped"]
    assert summary["params"] == sum(p.numel() for p in timm.create_model("ppma_nano", num_classes=3).parameters())
    assert summary["train_images_per_s"] > 0 and summary["eval_images_per_s"] > 0
    assert summary["final_top1"] == summary["final_top1_ema"]  # EMA on: the EMA decides
    history = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2]
    assert all(r["skipped_images"] == 1 and r["val_images"] == 12 for r in history)  # broken.jpg, every epoch
    assert summary["best_top1"] == max(r["ema_top1"] for r in history)
    # the checkpoints carry their card, with the file mode of the umask (not mkstemp's 0600)
    from ppma.checkpoint import read_card, read_checkpoint

    card = read_card(read_checkpoint(out / "best.pth"))
    assert card["classes"] == ["class0", "class1", "class2"] and card["model_name"] == "ppma_nano"
    assert card["transform"] == dict(input_size=32, crop_pct=224 / 256, interpolation="bicubic",
                                     mean=list(TrainConfig().mean), std=list(TrainConfig().std))  # fmt: skip
    umask = os.umask(0)
    os.umask(umask)
    assert all((out / n).stat().st_mode & 0o777 == 0o666 & ~umask for n in ("best.pth", "last.pth"))
    # ppma eval on the best checkpoint reproduces the logged EMA top-1 of the best epoch
    metrics = evaluate_checkpoint(out / "best.pth", str(root), workers=0)
    assert metrics["weights"] == "ema" and metrics["images"] == 12
    assert metrics["top1"] == pytest.approx(summary["best_top1"])
    assert main(["eval", "--checkpoint", str(out / "best.pth"), "--data-path", str(root / "val"),
                 "--workers", "0"]) == 0
    assert f"top-1 {summary['best_top1']:.2f}" in capsys.readouterr().out


def test_optimizer_exempts_norms_biases_and_decays_from_weight_decay():
    model = timm.create_model("ppma_nano", num_classes=10)
    optimizer = build_optimizer(model, TrainConfig(), lr=1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    no_decay = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0, 0.05}
    assert decay | no_decay == set(names.values()) and not decay & no_decay
    assert {n for n in names.values() if n.endswith(("dt_bias", "A_log", ".bias"))} <= no_decay
    assert {n for n, m in model.named_modules() if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d))} == {
        n.rsplit(".", 1)[0] for n in no_decay if n.endswith(".weight")}
    gammas = {n for n in names.values() if n.endswith("gamma")}
    assert gammas and gammas <= decay  # (1, 1, 1, C) layer scale is decayed, as published
    assert all(model.get_parameter(n).ndim >= 2 for n in decay)


def test_learning_rate_scales_linearly_with_total_batch():
    assert resolve_lr(TrainConfig(), total_batch=1024) == pytest.approx(1e-3)  # the published 8 x 128
    assert resolve_lr(TrainConfig(), total_batch=512) == pytest.approx(5e-4)
    assert resolve_lr(TrainConfig(lr=3e-4), total_batch=1024) == 3e-4


def test_recipe_defaults_are_the_published_ones():
    c = TrainConfig()
    assert (c.epochs, c.warmup_epochs, c.warmup_lr, c.min_lr, c.weight_decay) == (300, 5, 1e-6, 1e-5, 0.05)
    assert (c.auto_augment, c.mixup, c.cutmix, c.smoothing, c.reprob) == ("rand-m9-mstd0.5-inc1", 0.8, 1.0, 0.1, 0.25)
    assert (c.opt, c.sched, c.clip_grad, c.ema, c.ema_decay) == ("adamw", "cosine", None, True, 0.99996)
    assert (c.input_size, c.crop_pct) == (224, 224 / 256) and c.drop_path is None  # per variant


def test_config_files_load_and_digits_file_matches_the_builtin_recipe():
    files = sorted(CONFIGS.glob("*.yaml"))
    assert {f.name for f in files} >= {"digits_nano.yaml", "in1k_ppma_tiny.yaml", "in1k_ppma_small.yaml",
                                       "in1k_ppma_base.yaml"}  # fmt: skip
    for f in files:
        TrainConfig(**load_config_file(f))
    assert TrainConfig(**load_config_file(CONFIGS / "digits_nano.yaml")) == digits_config()
    tiny = TrainConfig(**load_config_file(CONFIGS / "in1k_ppma_tiny.yaml"))
    assert tiny == TrainConfig(model="ppma_tiny", drop_path=0.1, batch_size=tiny.batch_size, workers=tiny.workers)


def test_config_file_numbers_are_typed_as_the_fields(tmp_path):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string: a float field takes it as the number; ints for floats too."""
    f = tmp_path / "c.yaml"
    f.write_text("lr: 1e-3\nmin_lr: 0\nscale: [0.5, 1]\n")
    c = TrainConfig(**load_config_file(f))
    assert (c.lr, c.min_lr, c.scale) == (0.001, 0.0, (0.5, 1.0)) and isinstance(c.min_lr, float)


def test_options_layer_recipe_then_file_then_flags(tmp_path):
    from ppma.cli import build_parser
    from ppma.cli.train import config_from_args

    parser = build_parser()
    assert config_from_args(parser.parse_args(["train"])) == digits_config()
    file = tmp_path / "c.json"
    file.write_text(json.dumps({"data-path": "/data/in1k", "epochs": 7, "mean": [0.1, 0.2, 0.3]}))
    args = parser.parse_args(["train", "--config", str(file), "--epochs", "9", "--no-ema", "--clip-grad", "none",
                              "--model-kwargs", '{"backend": "dense"}', "--scale", "0.2,1"])  # fmt: skip
    c = config_from_args(args)
    assert c == TrainConfig(data_path="/data/in1k", epochs=9, mean=(0.1, 0.2, 0.3), ema=False,
                            model_kwargs={"backend": "dense"}, scale=(0.2, 1.0))  # fmt: skip
    assert DIGITS_RECIPE["model"] == "ppma_nano" and c.model == "ppma_tiny"  # data given: the ImageNet recipe


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_bad_data_folders_are_one_line_errors(tmp_path, capsys):
    train = ["train", "--model", "ppma_nano", "--output-dir", str(tmp_path / "out"), "--data-path"]
    assert "data: no folder at" in _error(capsys, train + [str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    assert "has no 'train' folder" in _error(capsys, train + [str(tmp_path / "empty")])
    (tmp_path / "empty" / "train").mkdir()
    (tmp_path / "empty" / "val").mkdir()
    assert "has no class folders" in _error(capsys, train + [str(tmp_path / "empty")])
    root = make_image_folder(tmp_path / "differ", classes=2, train=1, val=1, size=(8, 8))
    (root / "val" / "class1").rename(root / "val" / "zebra")
    err = _error(capsys, train + [str(root)])
    assert "class folders differ" in err and "zebra" in err and "class1" in err
    root = make_image_folder(tmp_path / "hollow", classes=2, train=1, val=1, size=(8, 8))
    (root / "train" / "class9").mkdir()
    assert "empty class folders: class9" in _error(capsys, train + [str(root)])
    (root / "train" / "class9" / "notes.txt").write_text("no images here")  # a file, but no image
    (root / "val" / "class9").mkdir()
    (root / "val" / "class9" / "0.png").write_bytes((root / "val" / "class0" / "0.png").read_bytes())
    assert "class9" in _error(capsys, train + [str(root)])


def test_bad_checkpoints_and_resume_are_one_line_errors(folder_run, tmp_path, capsys):
    root, out, _ = folder_run
    best = str(out / "best.pth")
    err = _error(capsys, ["eval", "--checkpoint", best, "--model", "ppma_tiny", "--data-path", str(root)])
    assert "does not fit ppma_tiny" in err
    two = make_image_folder(tmp_path / "two", classes=2, train=1, val=1, size=(8, 8))  # 3-class model, 2 classes
    err = _error(capsys, ["eval", "--checkpoint", best, "--data-path", str(two)])
    assert "3 classes" in err and "2 class folders" in err  # (without --data-path: the run's own folder)
    err = _error(capsys, ["train", "--resume", str(out), "--model", "ppma_tiny", "--output-dir", str(tmp_path / "x"),
                          "--epochs", "3"])  # more epochs: a finished run is refused before its model is read
    assert "resume:" in err and "ppma_tiny" in err
    err = _error(capsys, ["train", "--resume", str(out), "--model-kwargs", '{"mask": "rmt"}', "--output-dir",
                          str(tmp_path / "y"), "--epochs", "3"])  # same model name, other layers: the keys are named
    assert "does not fit this model" in err and "Unexpected key(s) in state_dict" in err and ".decay." in err
    assert "nothing to resume" in _error(capsys, ["train", "--resume", "--output-dir", str(tmp_path / "none")])
    assert "nothing to resume" in _error(capsys, ["train", "--resume", str(tmp_path / "none.pth")])
    err = _error(capsys, ["train", "--data-path", str(root), "--model", "ppma_nano", "--output-dir", str(out)])
    assert "already holds a run" in err
    assert "unknown option(s) colour" in _error(capsys, ["train", "--config", str(_write(tmp_path, "colour: 1"))])


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def test_unreadable_images_are_reported_at_epoch_end(folder_run):
    _, _, summary = folder_run
    assert summary["skipped_images"] == 2 and math.isfinite(summary["final_loss"])


def test_initial_checkpoint_loads_its_weights_into_the_new_model(folder_run):
    from ppma.train.engine import build_model

    _, out, _ = folder_run
    model = build_model(TrainConfig(model="ppma_nano", initial_checkpoint=str(out / "best.pth")), num_classes=3)
    saved = torch.load(out / "best.pth", weights_only=True)["model"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name]), name
    finetune = build_model(TrainConfig(model="ppma_nano", initial_checkpoint=str(out / "best.pth")), num_classes=5)
    assert finetune.head.fc.out_features == 5  # another class count keeps a new classifier
    assert torch.equal(finetune.stem[0].weight, saved["stem.0.weight"])


def test_progress_bar_only_on_a_terminal_and_rank_0():
    from ppma.train.report import progress_bar

    assert progress_bar(range(3), 3, "x", None, rank=0).disable  # pytest's stderr is not a terminal
    assert progress_bar(range(3), 3, "x", True, rank=1).disable
    assert not progress_bar(range(3), 3, "x", True, rank=0).disable


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_and_gradient_clipping_train_and_save_the_scaler(tmp_path, amp, monkeypatch):
    # A CPU with bf16 and fp16 units, as far as ppma can tell (PyTorch computes the same numbers in software).
    monkeypatch.setattr(cpu_units, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16", "amx_fp16"}))
    root = make_image_folder(tmp_path / "data", classes=2, train=4, val=1, size=(32, 32))
    config = TrainConfig(data_path=str(root), model="ppma_nano", input_size=32, batch_size=4, epochs=1, lr=1e-3,
                         workers=0, amp=amp, clip_grad=0.5, output_dir=str(tmp_path / "run"), plot=False)  # fmt: skip
    summary = run(config)
    assert math.isfinite(summary["final_loss"]) and summary["steps"] == 2
    ckpt = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert ckpt["resolved"]["amp"] == {"bf16": "bfloat16", "fp16": "float16"}[amp]
    assert bool(ckpt["scaler"]) == (amp == "fp16")  # the grad scaler only runs (and has state) for fp16


@pytest.mark.parametrize("amp, unit", [("bf16", "amx_bf16 or avx512_bf16"), ("fp16", "amx_fp16 or avx512_fp16")])
def test_cpu_amp_without_its_units_is_refused_in_one_line(tmp_path, monkeypatch, capsys, amp, unit):
    """PyTorch would run the half type in software, slower than float32: refused before anything is written."""
    monkeypatch.setattr(cpu_units, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    root = make_image_folder(tmp_path / "data", classes=2, train=4, val=1, size=(32, 32))
    out = tmp_path / "run"
    assert main(["train", "--data-path", str(root), "--model", "ppma_nano", "--input-size", "32", "--epochs", "1",
                 "--amp", amp, "--batch-size", "4", "--output-dir", str(out), "--workers", "0"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ppma train: error: amp: {amp} on CPU needs") and unit in err[0], err
    assert not (out / "last.pth").exists()
    with pytest.raises(ValueError, match=f"amp: {amp} on CPU needs"):
        from ppma.runtime import amp_dtype_for

        amp_dtype_for(amp, torch.device("cpu"))
    assert amp_dtype_for("none", torch.device("cpu")) is None and amp_dtype_for("auto", torch.device("cpu")) is None


def test_ranks_skip_an_update_together_when_one_rank_has_no_usable_image():
    """A rank whose batch is all unreadable skips the update; under DDP every rank must skip it with it."""
    from timm.scheduler import CosineLRScheduler

    from ppma.runtime import DistInfo
    from ppma.train.data import Batch
    from ppma.train.engine import train_one_epoch
    from ppma.train.state import RunState

    class OtherRankEmptyOnFirstStep(DistInfo):  # rank 0 of 2; the stand-in rank 1 has nothing to train on at step 1
        calls = 0

        def all_reduce_sum(self, values):
            self.calls += 1
            return [v + (1.0 if self.calls == 1 else 0.0) for v in values]

    model = timm.create_model("ppma_nano", num_classes=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = RunState(model, opt, CosineLRScheduler(opt, t_initial=10), torch.amp.GradScaler("cpu", enabled=False))
    batch = Batch(torch.randn(2, 3, 32, 32), torch.tensor([0, 2]), [])
    before = [p.detach().clone() for p in model.parameters()]

    def moved():
        return any(not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))

    dist_info = OtherRankEmptyOnFirstStep(world_size=2)

    def one_step():
        train_one_epoch(model, [batch], state, torch.nn.CrossEntropyLoss(), None, torch.device("cpu"), None,
                        dist_info=dist_info)  # fmt: skip

    one_step()
    assert state.step == 1 and state.epoch_stats["images"] == 0 and not moved()  # skipped with the other rank
    one_step()
    assert state.step == 2 and state.epoch_stats["images"] == 2 and moved()  # both ranks had images: one update


def test_min_train_batch_is_two_only_where_a_batchnorm_layer_sees_one_value_per_image():
    from ppma.train.engine import min_train_batch

    model = timm.create_model("ppma_nano", num_classes=3).train()
    bn = model.head.norm
    before = (bn.running_mean.clone(), bn.num_batches_tracked.clone(), torch.get_rng_state())
    assert min_train_batch(model, 32) == 2  # 32 px: the head's BatchNorm sees a 1x1 map
    assert min_train_batch(model, 64) == 1  # 2x2: one image has 4 values per channel
    assert model.training and torch.equal(bn.running_mean, before[0]) and torch.equal(bn.num_batches_tracked, before[1])
    assert torch.equal(torch.get_rng_state(), before[2])
    x = torch.randn(1, 3, 64, 64)
    model(x).sum().backward()  # what the probe allows does train
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        model(torch.randn(1, 3, 32, 32))  # and what it refuses does not


def test_a_batch_left_with_one_usable_image_is_skipped_and_counted():
    from timm.scheduler import CosineLRScheduler

    from ppma.train.data import Batch
    from ppma.train.engine import train_one_epoch
    from ppma.train.state import RunState, new_epoch_stats

    model = timm.create_model("ppma_nano", num_classes=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = RunState(model, opt, CosineLRScheduler(opt, t_initial=10), torch.amp.GradScaler("cpu", enabled=False))
    state.epoch_stats = new_epoch_stats()
    batches = [Batch(torch.randn(3, 3, 32, 32), torch.tensor([0, 2, 1]), []),
               Batch(torch.randn(1, 3, 32, 32), torch.tensor([1]), ["a.png", "b.png"]),  # 1 of 3 readable
               Batch(torch.randn(2, 3, 32, 32), torch.tensor([2, 0]), ["c.png"])]  # fmt: skip
    train_one_epoch(model, batches, state, torch.nn.CrossEntropyLoss(), None, torch.device("cpu"), None,
                    min_images=2)  # fmt: skip
    stats = state.epoch_stats
    assert state.step == 3 and stats["images"] == 5 and stats["skipped_steps"] == 1 and stats["unused_images"] == 1
    assert stats["skipped"] == ["a.png", "b.png", "c.png"]


def test_a_run_whose_batch_has_one_readable_image_at_32px_finishes_and_reports_it(tmp_path, capsys):
    root = make_image_folder(tmp_path / "data", classes=2, train=2, val=1, size=(32, 32))
    for name in ("class0/0.png", "class0/1.png", "class1/0.png"):  # one batch of 4 with 1 readable image
        (root / "train" / name).write_bytes(b"damaged")
    out = tmp_path / "run"
    argv = ["train", "--data-path", str(root), "--model", "ppma_nano", "--input-size", "32", "--batch-size", "4",
            "--epochs", "2", "--warmup-epochs", "0", "--mixup", "0", "--cutmix", "0", "--workers", "0", "--no-plot",
            "--output-dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "1 step(s) skipped, their batch left with fewer than 2 usable image(s)" in printed
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records] == [1, 1] and [r["train_images"] for r in records] == [0, 0]
    assert [r["unused_images"] for r in records] == [1, 1] and records[-1]["step"] == 2


def test_batch_size_1_is_refused_at_start_where_batchnorm_cannot_train_on_it(tmp_path, capsys):
    assert main(["train", "--batch-size", "1", "--epochs", "1", "--output-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ppma train: error: batch_size:") and "--batch-size 2" in err and "\n" not in err


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_dense_amp_without_bf16_units_is_refused_in_one_line(tmp_path, monkeypatch, capsys, task):
    monkeypatch.setattr(cpu_units, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    out = tmp_path / "run"
    assert main([task, "train", "--data", "builtin", "--amp", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ppma {task}: error: amp: bf16 on CPU needs"), err
    assert not (out / "last.pth").exists()


@pytest.mark.parametrize("given, cpus, expect", [(None, 2, 2), (None, 64, 8), (3, 2, 3), (0, 2, 0)])
def test_loader_workers_default_is_at_most_the_cpus_and_a_given_count_is_kept(tmp_path, monkeypatch, given,
                                                                             cpus, expect):  # fmt: skip
    """The ImageNet recipe's 8 loader processes on a 2-CPU machine made torch warn about too many workers;
    the default is now 8 at most the CPUs, and a count the user gives is used as given."""
    from ppma.train import data, engine

    seen = []

    def record(dataset, sampler, batch_size, workers, *args, **kwargs):
        seen.append(workers)
        raise KeyboardInterrupt  # stop before any training

    monkeypatch.setattr(data, "available_cpus", lambda: cpus)
    monkeypatch.setattr(engine, "make_loader", record)
    root = make_image_folder(tmp_path / "data")
    with pytest.raises(KeyboardInterrupt):
        run(TrainConfig(data_path=str(root), model="ppma_nano", input_size=32, batch_size=4, epochs=1,
                        workers=given, output_dir=str(tmp_path / "run")))  # fmt: skip
    assert seen == [expect]
