"""ppma.viz: the arrays equal what the mask and attention functions compute; every command writes a valid picture."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch
from conftest import random_decays
from PIL import Image

import ppma
import ppma.errors
from ppma import viz
from ppma.cli import main

pytest.importorskip("matplotlib")


def _photo(h: int, w: int) -> np.ndarray:
    """A random but structured RGB image: smooth gradients plus noise (never constant)."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x / w, y / h, (x + y) / (h + w)], -1) * 200
    return (base + np.random.rand(h, w, 3) * 55).astype(np.uint8)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("viz") / "generated.png"
    Image.fromarray(_photo(50, 70)).save(path)  # not a multiple of 32: resized and padded
    return path


@pytest.fixture(scope="module")
def nano():
    return viz.load_model("ppma_nano")


@pytest.fixture(scope="module")
def cap(image_file, nano):
    return viz.run(nano, image_file, size=64)


@pytest.fixture
def cli(monkeypatch, nano):
    """``ppma`` with random-weight ppma_nano built once (building a model dominates a small run)."""
    real = viz.capture.load_model

    def cached(name, checkpoint=None, ema=False, **kwargs):
        return nano if (name, checkpoint) == ("ppma_nano", None) else real(name, checkpoint, ema, **kwargs)

    monkeypatch.setattr(viz.capture, "load_model", cached)
    return main


def _eye_values(H: int, W: int) -> torch.Tensor:
    """v = identity over the N keys, (1, 1, H, W, N): the op's output row for a query is its attention row."""
    return torch.eye(H * W, dtype=torch.float64).reshape(1, 1, H, W, H * W)


# ---- arrays against the core ------------------------------------------------------------------------


@pytest.mark.parametrize("H, W", [(3, 5), (4, 4)])
def test_query_mask_maps_are_rows_of_polyline_log_mask(H, W):
    la, lb = random_decays(H, W), random_decays(H, W)
    M = ppma.polyline_log_mask(la[None, None], lb[None, None])[0, 0]
    for token in [(0, 0), (H - 1, W - 2), (1, 2)]:
        n = token[0] * W + token[1]
        maps = viz.query_mask_maps(viz.polyline_mask(la, lb), token, (H, W))
        torch.testing.assert_close(maps["h2v"], M[n].exp().reshape(H, W), rtol=0, atol=1e-14)
        torch.testing.assert_close(maps["v2h"], M.T[n].exp().reshape(H, W), rtol=0, atol=1e-14)
        torch.testing.assert_close(maps["average"], 0.5 * (maps["h2v"] + maps["v2h"]))
        assert maps["h2v"][token] == 1.0 and bool((maps["h2v"] < 1).sum() == H * W - 1)


@pytest.mark.parametrize("H, W", [(3, 5), (5, 2)])
def test_full_attention_map_equals_polyline_attention(H, W):
    q, k = torch.randn(1, 1, H, W, 6, dtype=torch.float64), torch.randn(1, 1, H, W, 6, dtype=torch.float64)
    la, lb = random_decays(1, 1, H, W), random_decays(1, 1, H, W)
    attn = ppma.polyline_attention(q, k, _eye_values(H, W), la, lb, scale=1.0, backend="reference")[0, 0]
    plain = torch.softmax(q[0, 0].reshape(H * W, 6) @ k[0, 0].reshape(H * W, 6).T, -1)
    M = viz.polyline_mask(la[0, 0], lb[0, 0])
    for token in [(0, 0), (H - 1, W - 1), (1, 1)]:
        got = viz.full_attention_map(q[0, 0], k[0, 0], M, token)
        torch.testing.assert_close(got, attn[token].reshape(H, W), rtol=1e-12, atol=1e-14)
        unmasked = viz.full_attention_map(q[0, 0], k[0, 0], torch.zeros_like(M), token)
        torch.testing.assert_close(unmasked.flatten(), plain[token[0] * W + token[1]], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("H, W", [(3, 5), (4, 4)])
def test_criss_cross_map_equals_op_and_sums_to_one(H, W):
    q, k = torch.randn(1, 1, H, W, 4, dtype=torch.float64), torch.randn(1, 1, H, W, 4, dtype=torch.float64)
    la, lb = random_decays(1, 1, H, W), random_decays(1, 1, H, W)
    attn = ppma.criss_cross_polyline_attention(q, k, _eye_values(H, W), la, lb, scale=1.0, backend="reference")[0, 0]
    for i in range(H):
        for j in range(W):
            got = viz.criss_cross_attention_map(q[0, 0], k[0, 0], la[0, 0], lb[0, 0], (i, j))
            torch.testing.assert_close(got, attn[i, j].reshape(H, W), rtol=1e-12, atol=1e-14)
            assert abs(got.sum().item() - 1) < 1e-12 and bool((got > 0).all())


def test_window_log_mask_is_a_submatrix_of_the_grid_mask():
    H, W = 6, 7
    la, lb = random_decays(H, W), random_decays(H, W)
    M = viz.polyline_mask(la, lb)
    sub, (top, left) = viz.window_log_mask(la, lb, (5, 0), (3, 4))
    assert (top, left) == (3, 0)  # centred on the token, then kept inside the grid
    index = torch.tensor([r * W + c for r in range(top, top + 3) for c in range(left, left + 4)])
    torch.testing.assert_close(sub, M[index][:, index], rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="matrix"):
        viz.window_log_mask(la, lb, (0, 0), (7, 2))


def test_capture_holds_what_the_attention_modules_computed(nano):
    """Captured q, k and decays, fed to the op with the module's own v, reproduce each module's output."""
    model = nano
    seen = {}

    def record(name):
        def hook(module, args, output):
            seen[name] = (module, args[0], output)

        return hook

    names = ["stages.0.blocks.0.attn", "stages.3.blocks.1.attn"]  # decomposed and full
    handles = [model.get_submodule(n).register_forward_hook(record(n)) for n in names]
    image = viz.prepare_image(_photo(40, 90), size=96)
    blocks = viz.capture_blocks(model, image.tensor)
    for h in handles:
        h.remove()
    assert [len(s) for s in blocks] == [1, 1, 2, 2]
    assert not any(m._forward_pre_hooks for m in model.modules())  # capture removed its hooks
    for name in names:
        module, x, output = seen[name]
        s, b = int(name.split(".")[1]), int(name.split(".")[3])
        got = blocks[s][b]
        assert got["mode"] == ("full" if s == 3 else "criss_cross") and got["stride"] == 4 * 2**s
        v = module._heads(module.v_proj(x))
        op = ppma.polyline_attention if got["mode"] == "full" else ppma.criss_cross_polyline_attention
        out = op(got["q"][None], got["k"][None], v, got["log_alpha"][None], got["log_beta"][None], scale=1.0)
        out = out.permute(0, 2, 3, 1, 4).flatten(-2)
        torch.testing.assert_close(module.out_proj(out + module.lepe(module.v_proj(x))), output)


def test_capture_arrays(cap):
    # The 50x70 image is resized to 46x64 and padded to 64x64: stage 0 has 16x16 tokens.
    assert cap.image.pixels.shape == (46, 64, 3) and tuple(cap.image.tensor.shape) == (1, 3, 64, 64)
    bc = cap.block(0, 0)
    assert bc.grid == (16, 16) and bc.stride == 4
    m = viz.mask_maps(cap, (0.25, 0.5), stage=0, block=0, head=1)
    assert m["token"] == (5, 4)  # y = 25 px of 50 -> 23 resized px -> row 5; x = 17.5 of 70 -> 16 px -> column 4
    M = ppma.polyline_log_mask(bc.log_alpha[None, 1:2], bc.log_beta[None, 1:2])[0, 0]
    np.testing.assert_allclose(m["h2v"], M[5 * 16 + 4].exp().reshape(16, 16).numpy(), rtol=1e-6)
    # Pixels and fractions name the same token; the mean over heads lies between the heads.
    assert viz.mask_maps(cap, (17, 25), 0, 0)["token"] == (5, 4)
    both = [viz.mask_maps(cap, (17, 25), 0, 0, h)["average"] for h in (0, 1)]
    np.testing.assert_allclose(viz.mask_maps(cap, (17, 25), 0, 0, None)["average"], 0.5 * (both[0] + both[1]))
    for stage in range(4):
        a = viz.attention_maps(cap, (0.9, 0.1), stage, -1, head=None)
        for key in ("masked", "unmasked"):
            assert abs(a[key].sum() - 1) < 1e-5 and a[key].shape == cap.block(stage, -1).grid
    d = viz.decay_maps(cap, block=0, head=0)
    np.testing.assert_allclose(d[2]["alpha"], cap.block(2, 0).log_alpha[0].exp().numpy())
    assert all(((s["beta"] > 0) & (s["beta"] <= 1)).all() for s in d)


def test_checkpoint_weights_are_used_and_named(image_file, published, cap):
    model = viz.load_model(published.model, published.path)
    stored = published["model"]["layers.1.blocks.0.retention.path_embed.A_log"]
    assert torch.equal(model.stages[1].blocks[0].attn.decay.A_log.detach(), stored)
    loaded = viz.run(model, image_file, size=64)
    named = dataclasses.replace(loaded, model_name=published.model, weights=None)  # what viz.run(published.model) says
    assert "RANDOM" in named.caption() and "RANDOM" not in loaded.caption()
    assert published.path.name in viz.run(model, image_file, checkpoint=published.path, size=64).caption()
    assert not torch.equal(loaded.block(1, 0).log_alpha, cap.block(1, 0).log_alpha)


def test_viz_reads_the_checkpoint_once(image_file, checkpoint_reads, tmp_path, capsys):
    """The command's note and the model share one read of the file."""
    from conftest import PUBLISHED_MICRO

    out = tmp_path / "d.png"
    argv = ["viz", "decay", str(image_file), "--checkpoint", str(PUBLISHED_MICRO), "--model", "ppma_micro_fixture",
            "--size", "64", "--dpi", "30", "-o", str(out)]  # fmt: skip
    assert main(argv) == 0 and capsys.readouterr().out.strip() == str(out)
    assert checkpoint_reads.count(PUBLISHED_MICRO) == 1, checkpoint_reads


# ---- figures and the command line -------------------------------------------------------------------


def _png(path, size):
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == size
        assert np.asarray(im.convert("L")).std() > 10  # something is drawn


@pytest.mark.parametrize(
    "args, files",
    [
        (["mask", "--stage", "0", "--query", "10,40", "--matrix", "3x3"],
         {"out.png": (600, 370), "out_matrix.png": (550, 280)}),
        (["attention", "--stage", "3", "--block", "1", "--query", "0.2,0.8"], {"out.png": (440, 390)}),
        (["attention", "--stage", "0", "--head", "1"], {"out.png": (440, 390)}),
        (["decay", "--stage", "0", "--stage", "2", "--head", "1"], {"out.png": (660, 370)}),
    ],
)  # fmt: skip
def test_commands_write_pictures(cli, tmp_path, image_file, capsys, args, files, atomic_renames):
    out = tmp_path / "out.png"
    rc = cli(["viz", *args, str(image_file), "--model", "ppma_nano", "--size", "64", "--dpi", "50", "-o", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / name) for name in files]
    for name, size in files.items():
        _png(tmp_path / name, size)
    # written atomically (a temporary file beside it, renamed): an interrupted run leaves no half picture
    assert [dst for _, dst, _ in atomic_renames] == printed


def test_the_matrix_picture_is_checked_before_any_work(cli, tmp_path, image_file, capsys):
    """``--matrix``'s second file (``NAME_matrix.png``) was checked only after the first picture was saved."""
    (tmp_path / "x_matrix.png").mkdir()
    argv = ["viz", "mask", str(image_file), "--model", "ppma_nano", "--size", "64", "--matrix", "2x2",
            "-o", str(tmp_path / "x.png")]  # fmt: skip
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'x_matrix.png'} is a folder" in err, err
    assert not (tmp_path / "x.png").exists()


def test_sweep_writes_an_animated_gif(cli, tmp_path, image_file, capsys):
    out = tmp_path / "sweep.gif"
    rc = cli(["viz", "sweep", str(image_file), "--model", "ppma_nano", "--size", "64", "--stage", "1",
               "--steps", "2", "--dpi", "40", "--what", "mask", "-o", str(out)])  # fmt: skip
    assert rc == 0 and capsys.readouterr().out.strip() == str(out)
    with Image.open(out) as im:
        assert im.format == "GIF" and im.size == (240, 208) and im.n_frames == 4
        frames = []
        for t in range(im.n_frames):
            im.seek(t)
            frames.append(np.asarray(im.convert("RGB"), dtype=np.int16))
    assert np.abs(frames[0] - frames[1]).max() > 0  # the query moved


def test_figures_from_python_on_the_bundled_photograph(nano):
    cap = viz.run(nano, None, size=64, sample="chelsea")
    assert cap.image.original_size == (300, 451) and "chelsea" in cap.caption()
    fig = viz.mask_figure(cap, (300, 100), stage=1, log_mask_fn=lambda a, b: viz.polyline_mask(b, a), dpi=30)
    assert tuple(np.round(fig.get_size_inches() * fig.dpi)) == (360, 222)
    assert len(viz.sweep_frames(cap, stage=3, steps=1, dpi=20)) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["mask", "{bad}"], "image: cannot read"),
        (["mask", "{missing}"], "image: no file"),
        (["attention", "{img}", "--query", "70,10"], "query: (70, 10) is outside the 70x50 image"),
        (["mask", "{img}", "--model", "resnet50"], "model: unknown name 'resnet50'"),
        (["mask", "{img}", "--matrix", "9x9"], "matrix: a 9x9 window does not fit"),  # no x.png either
    ],
)  # fmt: skip
def test_bad_input_is_a_one_line_error(cli, tmp_path, image_file, capsys, args, message):
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    paths = {"bad": tmp_path / "bad.png", "missing": tmp_path / "none.jpg", "img": image_file}
    argv = ["viz", *[a.format(**paths) for a in args], "--size", "64", "-o", str(tmp_path / "x.png")]
    if "--model" not in argv:
        argv += ["--model", "ppma_nano"]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ppma viz: error: ") and message in err, err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda c: viz.attention_maps(c, (0.5, 1.5), 0, 0), "query: fraction 1.5 outside [0, 1]"),
        (lambda c: viz.mask_maps(c, (0, -1), 0, 0), "query: (0, -1) is outside the 70x50 image"),
        (lambda c: viz.attention_figure(c, stage=4), "stage: 4 out of range; ppma_nano has stages 0-3"),
        (lambda c: viz.mask_maps(c, (1, 1), 1, 1), "block: 1 out of range; stage 1 of ppma_nano has blocks 0-0"),
        (lambda c: viz.decay_figure(c, head=2), "head: 2 out of range; stage 0 has heads 0-1"),
        (lambda c: viz.mask_matrix(c, (1, 1), 3, 0, window=(3, 3)), "matrix: a 3x3 window does not fit the 2x2"),
        (lambda c: viz.sweep_frames(c, what="decay"), "what: expected 'attention' or 'mask'"),
    ],
)  # fmt: skip
def test_bad_arguments_name_what_is_wrong(cap, call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call(dataclasses.replace(cap, model_name="ppma_nano"))


def test_attention_maps_refuse_other_mask_kinds(cap):
    rmt = dataclasses.replace(cap.block(2, 0), mask="rmt")
    other = dataclasses.replace(cap, blocks=[*cap.blocks[:2], [rmt, *cap.blocks[2][1:]], *cap.blocks[3:]])
    with pytest.raises(ppma.errors.PPMAError, match="mask='polyline'"):
        viz.attention_maps(other, (0.5, 0.5), 2, 0)
    assert cap.block(2, 0).mask == "polyline" and viz.attention_maps(cap, (0.5, 0.5), 2, 0)["masked"].shape == (4, 4)


@pytest.mark.parametrize("stage", [0, 3])  # a decomposed (criss-cross) and a full-attention stage
def test_attention_picture_is_the_layers_own_attention(image_file, stage):
    """The map drawn equals the layer's attention: its own project(), its own op, identity values."""
    model = viz.load_model("ppma_nano")
    seen = {}
    attn = model.stages[stage].blocks[0].attn
    handle = attn.register_forward_pre_hook(lambda m, args: seen.update(x=args[0][:1], rotary=args[1]))
    cap = viz.run(model, image_file, size=64)
    handle.remove()
    bc = cap.block(stage, 0)
    H, W = bc.grid
    query = (0.3, 0.6)
    token = cap.image.query_token(query, bc.stride)
    with torch.no_grad():
        q, k, _, log_alpha, log_beta = attn.project(seen["x"], seen["rotary"])
        rows = attn._attend(q[:, :1], k[:, :1], _eye_values(H, W).float(), log_alpha[:, :1], log_beta[:, :1])
    want = rows[0, 0][token].reshape(H, W).numpy()
    got = viz.attention_maps(cap, query, stage, 0, head=0)["masked"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_pictures_follow_the_layers_projection(image_file, monkeypatch):
    """Change the layer's projection: the captured q, k and decays change with it (no copy of the layer's code)."""
    model = viz.load_model("ppma_nano")
    before = viz.run(model, image_file, size=64).block(0, 0)  # the first layer: its input is unchanged
    real = ppma.PolylineAttention.project

    def doubled(self, x, rotary):
        q, k, v, log_alpha, log_beta = real(self, x, rotary)
        return type(real(self, x, rotary))(2 * q, -k, v, 3 * log_alpha, log_beta)

    monkeypatch.setattr(ppma.PolylineAttention, "project", doubled)
    after = viz.run(model, image_file, size=64).block(0, 0)
    torch.testing.assert_close(after.q, 2 * before.q)
    torch.testing.assert_close(after.k, -before.k)
    torch.testing.assert_close(after.log_alpha, 3 * before.log_alpha)


@pytest.mark.parametrize("kind", ["polyline_shared", "rmt", "h2v", "hilbert"])
def test_mask_picture_is_the_layers_own_mask_or_refused(image_file, kind):
    """The polyline picture of a single-path (h2v) or scan-mask (hilbert) layer was drawn from its decays
    without a word, a mask the layer never applies; now refused, pointing at the zoo picture of its own kind.
    Kinds whose mask it is (both paths, shared or fixed decays) still draw, equal to the kind's definition."""
    import timm

    from ppma.masks import zoo_log_masks

    decomposed = (False,) * 4 if kind == "hilbert" else (True, True, False, False)
    model = timm.create_model("ppma_nano", mask=kind, decomposed=decomposed).eval()
    with torch.no_grad():  # decays away from their initial values
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    cap = viz.run(model, image_file, size=96)
    stage, query = 1, (0.3, 0.6)
    bc = cap.block(stage, 0)
    if kind in ("h2v", "hilbert"):
        for draw in (lambda: viz.mask_maps(cap, query, stage, 0), lambda: viz.mask_matrix(cap, query, stage, 0)):
            with pytest.raises(ppma.errors.PPMAError, match=f"uses mask '{kind}'.*--mask {kind}"):
                draw()
        return
    H, W = bc.grid
    i, j = cap.image.query_token(query, bc.stride)
    if kind == "rmt":  # the zoo's rmt has a gamma of its own; the layer's is one per head, both directions
        assert torch.allclose(bc.log_alpha[1], bc.log_alpha[1, 0, 0]) and torch.equal(bc.log_alpha, bc.log_beta)
    definition = "polyline" if kind == "rmt" else kind  # RMT's mask: the polyline mask of constant decays
    masks = zoo_log_masks(definition, H, W, bc.log_alpha[1].double(), bc.log_beta[1].double())
    want = torch.stack([m[i * W + j].exp() for m in masks]).mean(0).reshape(H, W).numpy()
    got = viz.mask_maps(cap, query, stage, 0, head=1)["average"]
    assert got.min() < 0.99  # the decays are not all 1
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_pictures_of_a_training_checkpoint_use_its_ema_weights_by_default(tmp_path, image_file):
    """viz drew the plain weights of a best.pth chosen by its EMA's top-1 (eval, predict and export take the
    EMA where the file has it); ``--weights auto`` is now the default there too, and captions say which."""
    import timm

    from ppma.checkpoint import atomic_save
    from ppma.cli import build_parser

    plain, ema = (timm.create_model("ppma_nano").state_dict() for _ in range(2))
    atomic_save({"model_name": "ppma_nano", "model": plain, "model_ema": ema}, tmp_path / "best.pth")
    atomic_save({"model_name": "ppma_nano", "model": plain}, tmp_path / "plain.pth")
    caps = {w: viz.run(None, image_file, checkpoint=tmp_path / "best.pth", ema=w, size=64)
            for w in ("auto", True, False)}  # fmt: skip
    assert torch.equal(caps["auto"].block(0, 0).log_alpha, caps[True].block(0, 0).log_alpha)
    assert not torch.equal(caps["auto"].block(0, 0).log_alpha, caps[False].block(0, 0).log_alpha)
    assert caps["auto"].weights == "best.pth (EMA)" and caps[False].weights == "best.pth"
    assert viz.run(None, image_file, checkpoint=tmp_path / "plain.pth", ema="auto", size=64).weights == "plain.pth"
    parse = build_parser().parse_args
    assert [parse(["viz", "decay", *extra]).weights for extra in ([], ["--ema"], ["--weights", "model"])] == [
        "auto", "ema", "model"]  # fmt: skip
