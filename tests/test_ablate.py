"""``ppma ablate``: a tiny real ablation writes its table; runs reused only when the same; an interrupted
ablation continues; paired differences against a float64 reference; the timed pass; bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from ppma.ablate import AblationTable, ablate, default_base_config, measure_throughput, setup_from_runs
from ppma.cli import main
from ppma.errors import PPMAError


@pytest.fixture
def tiny_folder(tmp_path):
    """An ImageFolder with 2 classes, 6 train and 4 val images each (16x16 RGB)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 4)):
        for c, name in enumerate(("dark", "light")):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 128, (16, 16, 3)) + 120 * c
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return tmp_path / "data"


def _base(data, **changes):
    return default_base_config(**{"data_path": str(data), "epochs": 1, "batch_size": 6, "warmup_epochs": 0,
                                  "input_size": 32, "workers": 0, **changes})  # fmt: skip


FAST = {"throughput_repeats": 2, "throughput_batch": 2}


def test_tiny_ablation_writes_its_table_and_reuses_finished_runs(tiny_folder, tmp_path):
    out = tmp_path / "ablate"
    table = ablate(masks=["none", "polyline", "hilbert"], seeds=[0, 1], base=_base(tiny_folder), output_dir=out,
                   log=lambda s: None, **FAST)  # fmt: skip
    rows = table.rows()
    assert [r["mask"] for r in rows] == ["none", "polyline", "hilbert"]
    assert rows[1]["params"] == rows[2]["params"] > rows[0]["params"]  # none drops the decay generators
    for row in rows:
        top1 = list(row["top1_per_seed"].values())
        assert len(top1) == 2 and all(0 <= t <= 100 for t in top1)
        assert math.isclose(row["top1_mean"], sum(top1) / 2)
        assert row["train_images_per_s"] > 0 and row["eval_images_per_s"] > 0
        assert row["gmacs"] > 0 and row["network"] == "A"  # scan mask present: one full-attention network
        assert 0 < row["images_per_s"]["min"] <= row["images_per_s"]["median"] <= row["images_per_s"]["max"]
        assert row["images_per_s"]["n"] == 2
    assert rows[0]["diff"] is None and [r["diff"]["n"] for r in rows[1:]] == [2, 2]
    for row in rows[1:]:  # paired difference to the baseline 'none', seed by seed
        diffs = [row["top1_per_seed"][s] - rows[0]["top1_per_seed"][s] for s in (0, 1)]
        assert math.isclose(row["diff"]["mean"], sum(diffs) / 2, abs_tol=1e-12)
        assert row["diff"]["low"] <= row["diff"]["mean"] <= row["diff"]["high"]
    md = (out / "ablation.md").read_text()
    assert ("| mask | what | network | params (M) | GMACs | inference img/s (median, range) | top-1 (mean ± std) "
            "| Δ top-1 vs none [95% CI] (n) | per seed |") in md  # fmt: skip
    assert "| hilbert |" in md and "full attention in every stage" in md and "| baseline |" in md
    assert "1 epoch," in md and "Network A for every row" in md and "timed pass" in md
    saved = json.loads((out / "ablation.json").read_text())
    assert [r["mask"] for r in saved["rows"]] == ["none", "polyline", "hilbert"] and len(saved["runs"]) == 6
    assert saved["setup"]["model_kwargs"]["decomposed"] == [False] * 4
    assert all(r["settings"]["epochs"] == 1 and len(r["fingerprint"]) == 16 for r in saved["runs"])
    # light runs: result, log and config stay; checkpoints go
    run_dir = out / "polyline" / "seed1"
    assert {"result.json", "log.jsonl", "config.yaml"} <= {p.name for p in run_dir.iterdir()}
    assert not list(out.rglob("*.pth"))
    # started again: every run is read back, nothing retrains
    lines = []
    again = ablate(masks=["none", "polyline", "hilbert"], seeds=[0, 1], base=_base(tiny_folder), output_dir=out,
                   log=lines.append, **FAST)  # fmt: skip
    assert sum("done earlier" in line for line in lines) == 6
    assert [{k: v for k, v in r.items() if k != "images_per_s"} for r in again.rows()] == [
        {k: v for k, v in r.items() if k != "images_per_s"} for r in rows
    ]


def test_a_stored_run_is_reused_only_if_it_is_the_same_run(tiny_folder, tmp_path):
    """The issue's two commands, scaled down: 3 masks x 2 seeds x 2 epochs, then 2 masks x 2 seeds x 1 epoch
    in the same folder must not reuse the full-attention 2-epoch runs under a 1-epoch, decomposed footer."""
    out = tmp_path / "ablate"
    ablate(masks=["none", "polyline", "hilbert"], seeds=[0, 1], base=_base(tiny_folder, epochs=2), output_dir=out,
           log=lambda s: None, throughput_repeats=0)  # fmt: skip
    second = {"masks": ["none", "polyline"], "seeds": [0, 1], "base": _base(tiny_folder), "output_dir": out}
    with pytest.raises(PPMAError, match=r"other settings \(epochs 2 -> 1, model_kwargs.decomposed .*3 more differ"):
        ablate(**second, log=lambda s: None, on_mismatch="refuse", **FAST)
    assert json.loads((out / "none" / "seed0" / "result.json").read_text())["settings"]["epochs"] == 2  # untouched
    lines = []
    table = ablate(**second, log=lines.append, **FAST)
    retrained = [line for line in lines if "the stored run differs (epochs 2 -> 1" in line]
    assert len(retrained) == 4 and not any("done earlier" in line for line in lines)
    assert all(r["settings"]["epochs"] == 1 and "decomposed" not in r["settings"]["model_kwargs"] for r in table.runs)
    md = (out / "ablation.md").read_text()
    assert "1 epoch," in md and "the variant's decomposed stages" in md and "full attention" not in md
    assert table.setup["varies"] == []
    # the footer comes from the runs: a table of runs with different settings says so
    mixed = [dict(r, settings=dict(r["settings"], epochs=e)) for r, e in zip(table.runs, (1, 3, 1, 3), strict=True)]
    assert setup_from_runs(mixed)["epochs"] == "varies" and setup_from_runs(mixed)["varies"] == ["epochs"]
    # the same command again reuses all four; a changed recipe value re-runs
    lines.clear()
    ablate(**second, log=lines.append, throughput_repeats=0)
    assert sum("done earlier" in line for line in lines) == 4
    lines.clear()
    ablate(masks=["none"], seeds=[1], base=_base(tiny_folder, lr_base=2e-3), output_dir=out, log=lines.append,
           throughput_repeats=0, baseline=None)  # fmt: skip
    assert sum("differs (lr_base 0.01 -> 0.002)" in line for line in lines) == 1


def test_an_interrupted_ablation_continues_its_unfinished_run(tiny_folder, tmp_path):
    common = {"masks": ["polyline"], "seeds": [0], "baseline": None, "throughput_repeats": 0, "log": lambda s: None}
    straight = ablate(**common, base=_base(tiny_folder, epochs=2), output_dir=tmp_path / "straight")
    # killed in epoch 2 (2 steps per epoch): epoch 1's last.pth is on disk, no result
    out = tmp_path / "interrupted"
    with pytest.raises(PPMAError, match="stopped after step 3 before it finished; run the ablation again"):
        ablate(**common, base=_base(tiny_folder, epochs=2, stop_after_steps=3), output_dir=out)
    run_dir = out / "polyline" / "seed0"
    assert (run_dir / "last.pth").is_file() and not (run_dir / "result.json").exists()
    lines = []
    table = ablate(**dict(common, log=lines.append), base=_base(tiny_folder, epochs=2), output_dir=out,
                   keep_checkpoints=True)  # fmt: skip
    assert any("continuing the unfinished run" in line for line in lines)
    assert table.runs[0]["epochs"] == 2 and table.runs[0]["steps"] == 4
    assert (run_dir / "best.pth").is_file() and (run_dir / "last.pth").is_file()  # --keep-checkpoints

    def losses(folder):
        return [json.loads(line)["train_loss"] for line in (folder / "log.jsonl").read_text().splitlines()]

    assert losses(run_dir) == losses(tmp_path / "straight" / "polyline" / "seed0")  # the same run, exactly
    assert table.runs[0]["best_top1"] == straight.runs[0]["best_top1"]


def test_cli_ablate_runs_and_reports_bad_input(tiny_folder, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["ablate", "--masks", "rmt,h2v", "--seeds", "3", "--data-path", str(tiny_folder), "--epochs", "1",
            "--batch-size", "6", "--output-dir", str(out), "--keep-decomposed", "--no-baseline",
            "--throughput-repeats", "1"]  # fmt: skip
    config = tmp_path / "recipe.json"
    config.write_text(json.dumps({"warmup_epochs": 0, "input_size": 32, "workers": 0, "mixup": 0, "cutmix": 0,
                                  "auto_augment": None, "reprob": 0, "device": "cpu", "progress": False, "plot": False}))  # fmt: skip
    assert main(args + ["--config", str(config)]) == 0
    md = (out / "ablation.md").read_text()
    assert "| rmt |" in md and "| h2v |" in md and "3: " in md and "decomposed stages" in md
    assert main(["ablate", "--masks", "spiral"]) == 2
    assert "valid masks are 'none', 'polyline'" in capsys.readouterr().err
    bad = ["ablate", "--masks", "hilbert", "--keep-decomposed", "--output-dir", str(out / "x"), "--no-baseline"]
    assert main(bad) == 2
    assert "need full attention" in capsys.readouterr().err
    for extra, message in (
        (["--masks", "rmt,h2v"], "baseline: 'none' is not among the masks (rmt, h2v)"),
        (["--masks", "none,rmt", "--baseline", "hilbert"], "baseline: 'hilbert' is not among the masks"),
        (["--masks", "none,rmt", "--seeds", "0"], "needs at least two seeds, got [0]"),
        (["--data", "cifar10", "--data-path", str(tiny_folder)], "give one of them, not both"),
        (["--data", "imagenet21k"], "unknown dataset 'imagenet21k'"),
    ):
        assert main(["ablate", *extra, "--output-dir", str(out / "bad")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (out / "bad").exists()  # refused before anything was written


def test_paired_differences_against_a_float64_reference():
    from scipy.stats import t

    rng = np.random.default_rng()
    seeds = [0, 1, 2, 3]
    top1 = {m: rng.uniform(60, 90, len(seeds)) for m in ("none", "polyline", "rmt")}
    runs = [{"mask": m, "seed": s, "best_top1": float(top1[m][i]), "params": 1, "train_images_per_s": 1.0,
             "eval_images_per_s": 1.0} for m in top1 for i, s in enumerate(seeds)]  # fmt: skip
    table = AblationTable(runs=runs, setup={}, baseline="none")
    rows = {r["mask"]: r for r in table.rows()}
    assert rows["none"]["diff"] is None
    for mask in ("polyline", "rmt"):
        d = top1[mask].astype(np.float64) - top1["none"]
        half = t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
        got = rows[mask]["diff"]
        assert got["n"] == 4 and math.isclose(got["mean"], d.mean(), rel_tol=1e-12, abs_tol=1e-12)
        assert math.isclose(got["low"], d.mean() - half, rel_tol=1e-9)
        assert math.isclose(got["high"], d.mean() + half, rel_tol=1e-9)
        assert f"{d.mean():+.2f} [{d.mean() - half:+.2f}, {d.mean() + half:+.2f}] (4)" in table.markdown()
    assert "the paired difference to none" in table.markdown()
    with pytest.raises(ValueError, match="needs at least two seeds"):
        AblationTable(runs=[r for r in runs if r["seed"] == 0], baseline="none").rows()
    with pytest.raises(ValueError, match="baseline: 'hilbert' is not among the masks"):
        AblationTable(runs=runs, baseline="hilbert").rows()


def test_throughput_pass_times_every_model_on_the_same_batch():
    import torch

    seen = {}

    class Probe(torch.nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name, self.conv = name, torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            seen.setdefault(self.name, []).append(x.clone())
            return self.conv(x)

    speeds = measure_throughput({"a": Probe("a"), "b": Probe("b")}, input_size=12, batch=3, repeats=4, device="cpu")
    assert set(speeds) == {"a", "b"}
    for s in speeds.values():
        assert s["n"] == 4 and 0 < s["min"] <= s["median"] <= s["max"] and s["iqr"] >= 0
    assert len(seen["a"]) == len(seen["b"]) == 5  # one warm-up + four timed passes each
    assert all(torch.equal(x, seen["a"][0]) and x.shape == (3, 3, 12, 12) for x in seen["a"] + seen["b"])
    with pytest.raises(ValueError, match="repeats and batch must be >= 1"):
        measure_throughput({"a": Probe("a")}, 12, 3, 0, "cpu")


def test_table_statistics_and_markdown():
    runs = [{"mask": "rmt", "seed": s, "best_top1": t, "final_top1": t, "params": 2_000_000, "train_images_per_s": 10.0 * (s + 1),
                 "eval_images_per_s": 100.0, "output_dir": "x"} for s, t in ((0, 90.0), (1, 92.0), (2, 94.0))]  # fmt: skip
    table = AblationTable(runs=runs, setup={"model": "ppma_nano", "data": "digits", "epochs": 1, "seeds": [0, 1, 2]})
    (row,) = table.rows()
    assert row["top1_mean"] == 92.0 and row["top1_std"] == 2.0 and row["train_images_per_s"] == 20.0
    assert "| rmt | RMT: fixed Manhattan decay" in table.markdown() and "92.00 ± 2.00" in table.markdown()
    single = AblationTable(runs=runs[:1], setup={})
    assert "± n/a" in single.markdown() and single.to_json()["rows"][0]["top1_std"] is None
    with pytest.raises(ValueError, match="seeds: expected distinct"):
        ablate(masks=["none"], seeds=[1, 1])
    with pytest.raises(ValueError, match="masks: listed twice"):
        ablate(masks=["none", "none"])
    with pytest.raises(ValueError, match="baseline: 'none' is not among the masks"):
        ablate(masks=["rmt", "polyline"])
    with pytest.raises(ValueError, match="interval of a paired difference needs at least two seeds"):
        ablate(masks=["none", "rmt"], seeds=[0])
    with pytest.raises(ValueError, match="on_mismatch: expected 'rerun' or 'refuse'"):
        ablate(masks=["none"], on_mismatch="ignore")
