"""``ppma ablate``: a tiny real ablation writes its table; the table maths; bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from ppma.ablate import AblationTable, ablate, default_base_config
from ppma.cli import main


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


def _base(data):
    return default_base_config(data_path=str(data), epochs=1, batch_size=6, warmup_epochs=0, input_size=32)


def test_tiny_ablation_writes_its_table_and_reuses_finished_runs(tiny_folder, tmp_path):
    out = tmp_path / "ablate"
    table = ablate(
        masks=["none", "polyline", "hilbert"], seeds=[0, 1], base=_base(tiny_folder), output_dir=out, log=lambda s: None
    )
    rows = table.rows()
    assert [r["mask"] for r in rows] == ["none", "polyline", "hilbert"]
    assert rows[1]["params"] == rows[2]["params"] > rows[0]["params"]  # none drops the decay generators
    for row in rows:
        top1 = list(row["top1_per_seed"].values())
        assert len(top1) == 2 and all(0 <= t <= 100 for t in top1)
        assert math.isclose(row["top1_mean"], sum(top1) / 2)
        assert row["train_images_per_s"] > 0 and row["eval_images_per_s"] > 0
    md = (out / "ablation.md").read_text()
    assert "| mask | what | params (M) | train img/s | inference img/s | top-1 (mean ± std) | per seed |" in md
    assert "| hilbert |" in md and "full attention in every stage" in md
    saved = json.loads((out / "ablation.json").read_text())
    assert [r["mask"] for r in saved["rows"]] == ["none", "polyline", "hilbert"] and len(saved["runs"]) == 6
    assert saved["setup"]["model_kwargs"]["decomposed"] == [False] * 4
    # started again: every run is read back, nothing retrains
    lines = []
    again = ablate(
        masks=["none", "polyline", "hilbert"], seeds=[0, 1], base=_base(tiny_folder), output_dir=out, log=lines.append
    )
    assert sum("done earlier" in line for line in lines) == 6 and again.rows() == rows


def test_cli_ablate_runs_and_reports_bad_input(tiny_folder, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["ablate", "--masks", "rmt,h2v", "--seeds", "3", "--data-path", str(tiny_folder), "--epochs", "1",
            "--batch-size", "6", "--output-dir", str(out), "--keep-decomposed"]  # fmt: skip
    config = tmp_path / "recipe.json"
    config.write_text(json.dumps({"warmup_epochs": 0, "input_size": 32, "workers": 0, "mixup": 0, "cutmix": 0,
                                  "auto_augment": None, "reprob": 0, "device": "cpu", "progress": False, "plot": False}))  # fmt: skip
    assert main(args + ["--config", str(config)]) == 0
    md = (out / "ablation.md").read_text()
    assert "| rmt |" in md and "| h2v |" in md and "3: " in md and "decomposed stages" in md
    assert main(["ablate", "--masks", "spiral"]) == 2
    assert "valid masks are 'none', 'polyline'" in capsys.readouterr().err
    assert main(["ablate", "--masks", "hilbert", "--keep-decomposed", "--output-dir", str(out / "x")]) == 2
    assert "need full attention" in capsys.readouterr().err


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
