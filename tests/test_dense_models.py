"""Mask R-CNN and UPerNet on PPMA backbones: a training step, an evaluation pass, backbone loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("pycocotools")

from ppma.checkpoint import atomic_save  # noqa: E402
from ppma.dense.backbone import create_backbone, parse_stage_flags, set_stage_checkpointing  # noqa: E402
from ppma.dense.data import CocoDetection, SegmentationSet, segmentation_pairs  # noqa: E402
from ppma.dense.detection import HEADS, build_mask_rcnn, evaluate_detection  # noqa: E402
from ppma.dense.segmentation import build_upernet, evaluate_segmentation, segmentation_loss  # noqa: E402
from ppma.models.ppma import published_state_dict  # noqa: E402


def make_coco(root, n_images: int = 3, size: tuple[int, int] = (72, 88), empty: int = 0) -> CocoDetection:
    """Noise images with 1-2 bright rectangles each (category 7 'box'), polygons as masks; ``empty`` without any."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    h, w = size
    for i in range(n_images + empty):
        pixels = np.random.randint(0, 90, (h, w, 3), dtype=np.uint8)
        if i < n_images:
            for _ in range(np.random.randint(1, 3)):
                bw, bh = (int(v) for v in np.random.randint(12, 30, 2))
                x, y = int(np.random.randint(0, w - bw)), int(np.random.randint(0, h - bh))
                pixels[y : y + bh, x : x + bw] = 230
                poly = [x, y, x + bw, y, x + bw, y + bh, x, y + bh]
                anns.append(
                    dict(
                        id=len(anns) + 1,
                        image_id=i + 1,
                        category_id=7,
                        bbox=[x, y, bw, bh],
                        area=float(bw * bh),
                        iscrowd=0,
                        segmentation=[[float(v) for v in poly]],
                    )
                )
        Image.fromarray(pixels).save(root / "img" / f"{i}.png")
        images.append(dict(id=i + 1, file_name=f"{i}.png", width=w, height=h))
    (root / "ann.json").write_text(
        json.dumps(dict(images=images, annotations=anns, categories=[dict(id=7, name="box")]))
    )
    return CocoDetection(root / "img", root / "ann.json", train=False)


def make_ade(root, n: int, size: tuple[int, int] = (40, 56), classes: int = 3) -> None:
    """ADE20K-layout images and labels (0 = ignore, 1..classes) in the 'training' and 'validation' splits."""
    for split in ("training", "validation"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            label = np.random.randint(0, classes + 1, size).astype(np.uint8)
            image = (label[..., None] * 50 + np.random.randint(0, 40, (*size, 3))).astype(np.uint8)
            Image.fromarray(image).save(root / "images" / split / f"{i}.jpg")
            Image.fromarray(label).save(root / "annotations" / split / f"{i}.png")


def make_coco_folder(path: Path, n_images: int, empty: int = 0) -> Path:
    """A COCO-layout root (``annotations/instances_tiny.json``, ``tiny/``) of ``make_coco`` images in one split,
    ``tiny``, which the tests use for training and evaluation alike."""
    make_coco(path / "gen", n_images=n_images, empty=empty)
    root = path / "coco"
    (root / "annotations").mkdir(parents=True)
    shutil.copytree(path / "gen" / "img", root / "tiny")
    shutil.copy(path / "gen" / "ann.json", root / "annotations" / "instances_tiny.json")
    return root


def _light_rcnn(num_classes: int = 1):
    return build_mask_rcnn(num_classes, "ppma_nano", min_size=96, max_size=128, **HEADS["light"])


def test_mask_rcnn_training_step_updates_backbone_and_heads_and_eval_scores_in_range(tmp_path):
    data = make_coco(tmp_path, n_images=2)
    model = _light_rcnn().train()
    body_before = model.backbone.body.model.stages[2].blocks[0].attn.q_proj.weight.detach().clone()
    mask_before = model.roi_heads.mask_predictor.mask_fcn_logits.weight.detach().clone()
    images, targets = zip(*[data[0], data[1]], strict=True)
    losses = model(list(images), list(targets))
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss.backward()
    opt.step()
    assert not torch.equal(body_before, model.backbone.body.model.stages[2].blocks[0].attn.q_proj.weight)
    assert not torch.equal(mask_before, model.roi_heads.mask_predictor.mask_fcn_logits.weight)
    scores = evaluate_detection(model, data)
    assert model.training  # evaluate_detection restores the mode
    for key in ("bbox_mAP", "bbox_mAP_50", "segm_mAP", "segm_AR_100"):
        assert 0.0 <= scores[key] <= 1.0


def test_mask_rcnn_fpn_levels_have_the_published_strides():
    model = _light_rcnn()
    feats = model.backbone(torch.randn(1, 3, 64, 96))
    assert list(feats) == ["0", "1", "2", "3", "pool"]
    assert [tuple(f.shape[2:]) for f in feats.values()] == [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    assert all(f.shape[1] == model.backbone.out_channels for f in feats.values())


def test_detection_eval_rejects_a_class_count_mismatch(tmp_path):
    data = make_coco(tmp_path, n_images=1)
    with pytest.raises(ValueError, match="1 categories but the model predicts 3 classes"):
        evaluate_detection(_light_rcnn(3), data)


def test_upernet_training_step_reaches_every_part_and_eval_pass_single_and_multiscale(tmp_path):
    make_ade(tmp_path, 2)
    pairs = segmentation_pairs(tmp_path, "training", "ade20k")
    train = SegmentationSet(pairs, 3, reduce_zero_label=True, train=True, crop_size=(32, 32), scale=(128, 32))
    model = build_upernet(3, "ppma_nano", channels=16, aux_channels=8).train()
    image, label = torch.stack([train[0][0], train[1][0]]), torch.stack([train[0][1], train[1][1]])
    outputs = model(image)
    assert isinstance(outputs, tuple) and all(o.shape == (2, 3, 32, 32) for o in outputs)
    loss, parts = segmentation_loss(outputs, label, 0.4)
    assert loss.item() == pytest.approx(parts["loss_seg"] + 0.4 * parts["loss_aux"], rel=1e-5)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    val = SegmentationSet(segmentation_pairs(tmp_path, "validation", "ade20k"), 3, True, False, (32, 32), (128, 32))
    for ms in (False, True):
        s = evaluate_segmentation(model, val, multiscale=ms, flip=ms)
        assert 0.0 <= s["mIoU"] <= 1.0
        assert np.sum(s["confusion"]) == sum(int((val.read(i)[1] != 255).sum()) for i in range(len(val)))
    assert model.training  # restored


def test_upernet_logits_match_input_size_for_odd_sizes_and_eval_mode_has_no_aux():
    model = build_upernet(5, "ppma_nano", channels=16, aux_channels=8).eval()
    assert model(torch.randn(1, 3, 45, 70)).shape == (1, 5, 45, 70)


def test_backbone_from_published_classification_and_dense_checkpoints_gives_identical_outputs(tmp_path, published):
    # classification checkpoint (published names, 'model'): per-stage LayerNorms keep their init
    cls_path = tmp_path / "cls.pth"
    atomic_save({"model": published["model"]}, cls_path)
    from_cls = create_backbone(published.model, cls_path).eval()
    # a dense checkpoint (MMDetection-style 'state_dict' with 'backbone.*' keys and a head) made from it
    ours = {k.removeprefix("model."): v for k, v in from_cls.state_dict().items()}
    dense = {f"backbone.{k}": v for k, v in published_state_dict(ours).items()}
    dense["decode_head.conv_seg.weight"] = torch.randn(3, 8, 1, 1)
    dense_path = tmp_path / "dense.pth"
    atomic_save({"state_dict": dense, "meta": {}}, dense_path)
    from_dense = create_backbone(published.model, dense_path).eval()
    fresh = create_backbone(published.model).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        a, b, c = from_cls(x), from_dense(x), fresh(x)
    for fa, fb, fc in zip(a, b, c, strict=True):
        assert torch.equal(fa, fb)
        assert not torch.allclose(fa, fc)  # the weights were really loaded


def _published_segmentor_file(model, path, classes):
    """``model`` saved the way MMSegmentation saves a UPerNet: published backbone names, heads as they are."""
    state = model.state_dict()
    weights = {k: v for k, v in state.items() if not k.startswith("backbone.")}  # the heads
    backbone = {k.removeprefix("backbone.model."): v for k, v in state.items() if k.startswith("backbone.")}
    weights.update({f"backbone.{k}": v for k, v in published_state_dict(backbone).items()})
    atomic_save({"state_dict": weights, "meta": {"CLASSES": tuple(classes)}}, path)


def test_published_upernet_checkpoint_loads_whole_and_predicts(tmp_path):
    from ppma.cli import main
    from ppma.dense.segmentation import model_from_checkpoint

    torch.manual_seed(0)
    trained = build_upernet(3, "ppma_nano", channels=16, aux_channels=8)
    for p in trained.parameters():  # not the initial values, so that loading shows
        p.data.add_(0.05 * torch.randn_like(p))
    _published_segmentor_file(trained, tmp_path / "upernet.pth", ["sky", "road", "tree"])
    model, config, meta = model_from_checkpoint(tmp_path / "upernet.pth")
    assert config["backbone"] == "ppma_nano" and (config["channels"], config["aux_channels"]) == (16, 8)
    assert meta["class_names"] == ["sky", "road", "tree"]
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained.eval()(x), rtol=1e-5, atol=1e-6)
        untrained, _, _ = model_from_checkpoint(tmp_path / "upernet.pth", weights=False)
        assert not torch.allclose(untrained(x), model(x), atol=1e-3)
    image = tmp_path / "street.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(image)
    main(["segment", "predict", str(tmp_path / "upernet.pth"), str(image), "--output", str(tmp_path / "out")])
    assert set(json.loads((tmp_path / "out" / "legend.json").read_text())) == {"sky", "road", "tree"}
    assert (tmp_path / "out" / "street_overlay.png").is_file()


def test_published_upernet_with_an_unknown_backbone_is_named(tmp_path):
    from ppma.dense.segmentation import model_from_checkpoint

    model = build_upernet(3, "ppma_nano", channels=16, aux_channels=8)
    _published_segmentor_file(model, tmp_path / "upernet.pth", ["a", "b", "c"])
    state = torch.load(tmp_path / "upernet.pth", weights_only=True)
    state["state_dict"] = {k: v for k, v in state["state_dict"].items() if ".blocks.1." not in k}  # a shallower net
    atomic_save(state, tmp_path / "upernet.pth")
    with pytest.raises(ValueError, match="match none of"):
        model_from_checkpoint(tmp_path / "upernet.pth")


def test_backbone_from_published_dense_checkpoint_matches_published_features(tmp_path, published):
    dense = {f"backbone.{k}": v for k, v in published["backbone"]["model"].items()}
    path = tmp_path / "dense.pth"
    atomic_save({"state_dict": dense}, path)
    backbone = create_backbone(published.model, path).double().eval()
    with torch.no_grad():
        feats = backbone(published["inputs"][0].double())
    for ours, ref in zip(feats, published["features_float64"], strict=True):
        assert torch.allclose(ours, ref, rtol=1e-9, atol=1e-10)


def test_per_stage_gradient_checkpointing_gives_the_same_outputs_and_gradients():
    backbone = create_backbone("ppma_nano", grad_checkpointing="2,4").double().train()
    assert [s.grad_checkpointing for s in backbone.model.stages] == [False, True, False, True]
    x = torch.randn(1, 3, 48, 64, dtype=torch.float64)
    weights = [torch.randn(f.shape, dtype=torch.float64) for f in backbone(x)]

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        backbone.zero_grad()
        out = sum((f * w).sum() for f, w in zip(backbone(x), weights, strict=True))
        out.backward()
        return out.detach(), {n: p.grad.clone() for n, p in backbone.named_parameters()}

    out_ckpt, grads_ckpt = run()
    set_stage_checkpointing(backbone, "none")
    assert [s.grad_checkpointing for s in backbone.model.stages] == [False] * 4
    out_plain, grads_plain = run()
    assert torch.allclose(out_ckpt, out_plain, rtol=1e-12)
    for name, g in grads_plain.items():
        assert torch.allclose(grads_ckpt[name], g, rtol=1e-9, atol=1e-12), name


def test_parse_stage_flags_accepts_names_and_rejects_bad_stages():
    assert parse_stage_flags("all") == [True] * 4
    assert parse_stage_flags("1,3") == [True, False, True, False]
    assert parse_stage_flags(None) == [False] * 4
    with pytest.raises(ValueError, match="stages are numbered 1..4"):
        parse_stage_flags("0,5")
    with pytest.raises(ValueError, match="expected 4 per-stage flags"):
        parse_stage_flags([True, False])


def test_bf16_autocast_training_step_runs_for_both_models(tmp_path):
    from ppma.dense.engine import autocast

    data = make_coco(tmp_path, n_images=1)
    rcnn = _light_rcnn().train()
    with autocast(torch.device("cpu"), True):
        losses = rcnn([data[0][0]], [data[0][1]])
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    upernet = build_upernet(3, "ppma_nano", channels=16, aux_channels=8).train()
    with autocast(torch.device("cpu"), True):
        main_logits, aux_logits = upernet(torch.randn(2, 3, 32, 32))
    assert main_logits.dtype == torch.bfloat16
    loss, _ = segmentation_loss((main_logits, aux_logits), torch.randint(0, 3, (2, 32, 32)), 0.4)
    loss.backward()
    assert torch.isfinite(loss)


def _lr_factors(scheduler, optimizer, at: list[int]) -> dict[int, float]:
    """The learning rate over its initial value at the iterations ``at``, stepping ``scheduler`` there."""
    base, out = optimizer.param_groups[0]["initial_lr"], {}
    for it in range(max(at) + 1):
        if it in at:
            out[it] = optimizer.param_groups[0]["lr"] / base
        optimizer.step()
        scheduler.step()
    return out


def det_lr(config, iters_per_epoch: int):
    """The detection run's schedule (``ppma.runtime.warmup_multistep``) as a factor per iteration."""
    from ppma.runtime import warmup_multistep

    def factor(it: int) -> float:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        milestones = [s * iters_per_epoch for s in config.lr_steps]
        return _lr_factors(warmup_multistep(opt, config.warmup_iters, config.warmup_ratio, milestones), opt, [it])[it]

    return factor


def seg_lr(config):
    """The segmentation run's schedule (``ppma.runtime.warmup_poly``) as a factor per iteration."""
    from ppma.runtime import warmup_poly

    def factor(it: int) -> float:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        schedule = warmup_poly(opt, config.warmup_iters, config.warmup_ratio, config.iters, config.power)
        return _lr_factors(schedule, opt, [it])[it]

    return factor


def test_schedules_follow_the_published_recipes():
    from ppma.dense.detection import DetectConfig
    from ppma.dense.segmentation import SegmentConfig

    one = DetectConfig().resolved()
    assert (one.epochs, one.lr_steps, one.multiscale, one.lr, one.weight_decay) == (12, (8, 11), False, 1e-4, 0.05)
    three = DetectConfig(schedule="3x").resolved()
    assert (three.epochs, three.lr_steps, three.multiscale) == (36, (27, 33), True)
    f = det_lr(one, iters_per_epoch=1000)
    assert f(0) == pytest.approx(0.001) and f(250) == pytest.approx(0.001 + 0.999 * 0.5)
    assert [f(e * 1000) for e in (1, 7, 8, 10, 11)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    seg = SegmentConfig(warmup_iters=0)
    g = seg_lr(seg)
    assert (seg.iters, seg.crop_size, seg.aux_weight) == (160_000, 512, 0.4)
    assert [g(0), g(40_000), g(80_000), g(160_000)] == pytest.approx([1, 0.75, 0.5, 0])
    with pytest.raises(ValueError, match="schedule: expected '1x' or '3x'"):
        DetectConfig(schedule="2x").resolved()


def test_multiscale_training_draws_short_sides_from_480_to_800():
    model = build_mask_rcnn(1, "ppma_nano", multiscale=True, **HEADS["light"])
    assert model.transform.min_size == tuple(range(480, 801, 32))
    assert model.transform.max_size == 1333


def test_pretrained_of_another_variant_is_named_in_one_line(tmp_path):
    """A ppma_tiny file given to a ppma_nano backbone listed up to 60 keys on four lines; now one line names
    the file's variant. Other misfits are one line too (load_into's key lists, joined)."""
    import timm

    torch.manual_seed(int(np.random.randint(1000)))
    tiny = timm.create_model("ppma_tiny").state_dict()
    atomic_save({"model": tiny}, tmp_path / "tiny.pth")
    atomic_save({"model": published_state_dict(tiny)}, tmp_path / "tiny_published.pth")
    for name in ("tiny.pth", "tiny_published.pth"):
        with pytest.raises(ValueError) as e:
            create_backbone("ppma_nano", tmp_path / name)
        assert str(e.value) == (f"pretrained: {tmp_path / name} holds ppma_tiny weights, but the backbone is "
                                "ppma_nano (--backbone ppma_tiny, or a ppma_nano checkpoint)")  # fmt: skip
    nano = timm.create_model("ppma_nano").state_dict()
    del nano["stages.1.blocks.0.norm1.weight"]
    atomic_save({"model": nano}, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"^pretrained: .* does not fit ppma_nano: .*blocks.0.norm1.weight") as e:
        create_backbone("ppma_nano", tmp_path / "broken.pth")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_pretrained_takes_the_backbone_of_our_own_dense_checkpoint(tmp_path, task):
    """``last.pth`` of ``ppma detect|segment train`` holds the PPMA under ``backbone.body.model.`` /
    ``backbone.model.``: as ``--pretrained`` it did not fit (every key missing). Now its backbone loads."""
    source = _light_rcnn() if task == "detect" else build_upernet(3, "ppma_nano", channels=16, aux_channels=8)
    atomic_save({"model": source.state_dict()}, tmp_path / "last.pth")
    trunk = (source.backbone.body if task == "detect" else source.backbone).eval()
    loaded, fresh = create_backbone("ppma_nano", tmp_path / "last.pth").eval(), create_backbone("ppma_nano").eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, b, c in zip(trunk(x), loaded(x), fresh(x), strict=True):
            assert torch.equal(a, b) and not torch.allclose(a, c)
