"""PPMA: a hierarchical vision transformer with polyline path masked attention (design.md §6).

image -> Stem (stride 4) -> 4 stages of [CPE, PPMA attention, conv FFN] blocks -> classifier head.
Stages 1-2 (Tiny) or 1-3 (Small, Base) use decomposed ("criss-cross") attention, the rest full.
Stage i > 0 starts with its Downsample (the published code keeps it at the end of stage i - 1; the
checkpoint filter moves it). Tokens inside stages are channels-last, (B, H, W, C).

Registered in timm: ppma_nano (CI and the digits job), ppma_tiny, ppma_small, ppma_base.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn as nn
import torch.utils.checkpoint
from timm.layers import DropPath, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from .._checks import check_tensor
from ..checkpoint import load_into, read_card, read_checkpoint
from ..decay import DecayLinear
from ..hub import is_hub_failure, reading_hub_file, weights_unavailable
from ..layers import ConvFFN, DWConv, FlatRotary, LayerScale, Mode, PolylineAttention
from ..masks import RMT_STAGE_DECAYS, RMT_VARIANT_DECAYS, get_mask
from ..ops import Backend
from .published import checkpoint_filter_fn, published_state_dict

__all__ = ["PPMA", "checkpoint_filter_fn", "published_state_dict"]


class Stem(nn.Sequential):
    """Four 3x3 convs (two with stride 2) with BatchNorm and GELU between: (B, 3, H, W) -> (B, C, H/4, W/4)."""

    def __init__(self, in_chans: int, dim: int) -> None:
        half = dim // 2
        super().__init__(
            nn.Conv2d(in_chans, half, 3, 2, 1), nn.BatchNorm2d(half), nn.GELU(),
            nn.Conv2d(half, half, 3, 1, 1), nn.BatchNorm2d(half), nn.GELU(),
            nn.Conv2d(half, dim, 3, 2, 1), nn.BatchNorm2d(dim), nn.GELU(),
            nn.Conv2d(dim, dim, 3, 1, 1), nn.BatchNorm2d(dim),
        )  # fmt: skip


class Downsample(nn.Module):
    """conv3x3 stride 2 + BatchNorm on channels-last tokens."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.reduction = nn.Conv2d(in_dim, out_dim, 3, 2, 1)
        self.norm = nn.BatchNorm2d(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, H, W, C) -> (B, C, H, W) -> (B, H/2, W/2, C')
        return self.norm(self.reduction(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)


class Block(nn.Module):
    """x + CPE(x); x + drop_path(g1 * attn(LN(x))); x + drop_path(g2 * ffn(LN(x)))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        mode: Mode,
        drop_path: float = 0.0,
        layer_scale_init: float | None = None,
        backend: str = "auto",
        mask: str = "polyline",
        rmt_decay: tuple[float, float] = RMT_STAGE_DECAYS[0],
    ) -> None:
        super().__init__()
        self.pos = DWConv(dim, 3)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = PolylineAttention(dim, num_heads, mode=mode, backend=backend, mask=mask, rmt_decay=rmt_decay)
        self.ls1 = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = ConvFFN(dim, int(mlp_ratio * dim))
        self.ls2 = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.pos(x)
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x), rotary)))
        return x + self.drop_path(self.ls2(self.ffn(self.norm2(x))))


class Stage(nn.Module):
    """Optional Downsample, then blocks sharing one flat-rotary table."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        mode: Mode,
        drop_path: Sequence[float],
        layer_scale_init: float | None,
        downsample: bool,
        backend: str = "auto",
        mask: str = "polyline",
        rmt_decay: tuple[float, float] = RMT_STAGE_DECAYS[0],
    ) -> None:
        super().__init__()
        self.downsample = Downsample(in_dim, dim) if downsample else nn.Identity()
        self.rotary = FlatRotary(dim // num_heads)
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, mode, drop_path[j], layer_scale_init, backend, mask, rmt_decay)
            for j in range(depth)
        )
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        rotary = self.rotary(x.shape[1], x.shape[2])
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(block, x, rotary, use_reentrant=False)
            else:
                x = block(x, rotary)
        return x


def _check_pool(global_pool: str) -> str:
    if global_pool not in ("avg", ""):
        raise ValueError(f"global_pool: PPMA pools by mean over tokens ('avg') or not at all (''), got {global_pool!r}")
    return global_pool


class ClassifierHead(nn.Module):
    """Linear(C -> 1024) per token, BatchNorm, Swish, mean over tokens, dropout, Linear(1024 -> classes).

    ``global_pool=""`` skips the mean: (B, H, W, classes) per-token logits, as timm's NHWC models give.
    """

    def __init__(
        self, in_dim: int, hidden_dim: int, num_classes: int, drop_rate: float = 0.0, global_pool: str = "avg"
    ) -> None:
        super().__init__()
        self.global_pool = _check_pool(global_pool)
        self.proj = nn.Linear(in_dim, hidden_dim)
        self.norm = nn.BatchNorm2d(hidden_dim)
        self.act = nn.SiLU()
        self.drop = nn.Dropout(drop_rate)  # timm's head_drop: before the final fc
        self.fc = nn.Linear(hidden_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.proj(x).permute(0, 3, 1, 2)  # (B, H, W, 1024) -> (B, 1024, H, W) for BatchNorm over channels
        x = self.act(self.norm(x))
        x = x.mean(dim=(2, 3)) if self.global_pool else x.permute(0, 2, 3, 1)
        return x if pre_logits else self.fc(self.drop(x))


class PPMA(nn.Module):
    """Polyline Path Masked Attention backbone and classifier.

    Args:
        in_chans: image channels.
        num_classes: classifier outputs; 0 for none.
        embed_dims: channels of the four stages.
        depths: blocks per stage.
        num_heads: heads per stage.
        mlp_ratios: FFN expansion per stage.
        decomposed: per stage, True for criss-cross attention, False for full attention.
        layer_scale: per stage, whether blocks carry layer scale.
        layer_scale_init: initial layer-scale value.
        drop_path_rate: stochastic depth, linear over all blocks of the network.
        head_hidden_size: width of the classifier's per-token projection.
        feature_norms: add a LayerNorm on each stage output for dense tasks (``features_only`` sets it).
        backend: attention backend for every layer (see ``ppma.ops``); ``set_backend`` changes it later.
        mask: the attention mask of every layer, a ``ppma.masks.MASKS`` name: ``"polyline"`` (published),
            ``"none"``, ``"h2v"``, ``"v2h"``, ``"polyline_shared"``, ``"rmt"`` (stage i uses
            ``rmt_decays[i]``), or a full-attention-only scan mask ``"raster"``, ``"cross_scan"``,
            ``"hilbert"``, ``"zorder"``.
        checkpoint_ema: with ``pretrained=True``, load a training checkpoint's EMA weights (True) or its
            plain ones (False); None: the EMA where the file has one for the published names
            (``ppma_tiny.in1k``: the published evaluation reports the EMA's top-1), plain for a given file.
        global_pool: ``"avg"`` (mean over tokens) or ``""``: no pooling, ``forward`` gives (B, H, W, classes)
            per-token logits (timm's convention for NHWC models such as Swin).
        drop_rate: dropout on the pooled features before the classifier (timm's ``drop_rate``).
        rmt_decays: RMT's (initial_value, heads_range) per stage for ``mask="rmt"``; the registered
            variants pass RMT's own (``ppma.masks.RMT_VARIANT_DECAYS``: Base differs from Tiny/Small).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (64, 128, 256, 512),
        depths: Sequence[int] = (2, 2, 8, 2),
        num_heads: Sequence[int] = (4, 4, 8, 16),
        mlp_ratios: Sequence[float] = (3, 3, 3, 3),
        decomposed: Sequence[bool] = (True, True, False, False),
        layer_scale: Sequence[bool] = (False, False, False, False),
        layer_scale_init: float = 1e-6,
        drop_path_rate: float = 0.1,
        head_hidden_size: int = 1024,
        feature_norms: bool = False,
        backend: str = "auto",
        mask: str = "polyline",
        checkpoint_ema: bool | None = None,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        rmt_decays: Sequence[tuple[float, float]] = RMT_STAGE_DECAYS,
    ) -> None:
        super().__init__()
        self.global_pool = _check_pool(global_pool)
        # Checked here, not at the first (training) forward or never: a bad backend failed there, drop_path_rate
        # 1.5 in DropPath's bernoulli_, -0.1 and num_classes=-1 were silently 0.
        Backend.parse(backend)
        for name, rate in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1), got {rate}")
        for name, count, least in (("in_chans", in_chans, 1), ("num_classes", num_classes, 0)):
            if count < least:
                raise ValueError(f"{name}: expected an integer >= {least}, got {count!r}")
        for name, value in (("depths", depths), ("num_heads", num_heads), ("mlp_ratios", mlp_ratios),
                            ("decomposed", decomposed), ("layer_scale", layer_scale)):  # fmt: skip
            if len(value) != len(embed_dims):
                raise ValueError(f"{name}: expected {len(embed_dims)} entries (one per stage), got {len(value)}")
        if get_mask(mask).full_only and any(decomposed):
            stages = ", ".join(str(i + 1) for i, d in enumerate(decomposed) if d)
            raise ValueError(
                f"mask: {mask!r} is a 1D scan mask and needs full attention, but stages {stages} use decomposed "
                f"(criss-cross) attention; pass decomposed={tuple(False for _ in decomposed)}"
            )
        self.mask = mask
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.checkpoint_ema = checkpoint_ema
        self.embed_dims = list(embed_dims)
        self.num_features = embed_dims[-1]
        self.head_hidden_size = head_hidden_size
        self.output_fmt = "NHWC"

        self.stem = Stem(in_chans, embed_dims[0])
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # CPU: also under a meta device
        stages, self.feature_info, start = [], [], 0
        for i, dim in enumerate(embed_dims):
            stages.append(
                Stage(
                    embed_dims[i - 1] if i else dim,
                    dim,
                    depths[i],
                    num_heads[i],
                    mlp_ratios[i],
                    "criss_cross" if decomposed[i] else "full",
                    rates[start : start + depths[i]],
                    layer_scale_init if layer_scale[i] else None,
                    downsample=i > 0,
                    backend=backend,
                    mask=mask,
                    rmt_decay=tuple(rmt_decays[min(i, len(rmt_decays) - 1)]),
                )
            )
            start += depths[i]
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2**i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in embed_dims) if feature_norms else None
        self.drop_rate = drop_rate
        self.head = ClassifierHead(embed_dims[-1], head_hidden_size, num_classes, drop_rate, global_pool)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # Network-wide init runs last, as published: every Linear trunc-normal(0.02), LayerNorm (1, 0).
        if isinstance(m, nn.Linear) and not isinstance(m, DecayLinear):  # the decay draws its own (paired seeds)
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ---- timm model interface -------------------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if n.endswith(("dt_bias", "A_log"))}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else [(r"^stages\.(\d+)\.downsample", (0,)),
                                                                            (r"^stages\.(\d+)\.blocks\.(\d+)", None)])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None, reset_other: bool = False) -> None:
        """A new ``num_classes`` classifier; ``global_pool`` ``"avg"`` or ``""`` (no pooling), None keeps it."""
        if global_pool is not None:
            self.global_pool = self.head.global_pool = _check_pool(global_pool)
        self.num_classes = num_classes
        if reset_other:  # dense use: no per-token projection either; a classifier sits on the pooled stage tokens
            self.head.proj, self.head.norm, self.head.act = nn.Identity(), nn.Identity(), nn.Identity()
            self.head_hidden_size = self.num_features
        self.head.fc = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            self._init_weights(self.head.fc)

    def set_backend(self, backend: str) -> None:
        """Use ``backend`` for every attention layer (see ``ppma.ops``)."""
        Backend.parse(backend)  # fail here, not at the next forward
        for m in self.modules():
            if isinstance(m, PolylineAttention):
                m.backend = backend

    def _check_image(self, x: torch.Tensor) -> None:
        check_tensor("x", x)
        if x.ndim != 4:
            raise ValueError(f"x: expected an image batch (B, {self.in_chans}, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"x: expected {self.in_chans} channels at dim 1, got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError("x: empty batch (B = 0)")
        weight = next(self.stem.parameters(), None)
        if (weight is not None and x.dtype != weight.dtype and not torch.compiler.is_compiling()
                and not torch.is_autocast_enabled(x.device.type)):  # fmt: skip
            # else a RuntimeError from the first convolution ("Input type ... and bias type ...")
            raise ValueError(f"x: dtype {x.dtype}, but the model's weights are {weight.dtype}; cast the images "
                             f"(x.to({weight.dtype})) or the model (model.to({x.dtype})), or run under torch.autocast")

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs, each through its dense-task LayerNorm when the model has them (``feature_norms``).

        Returns the (B, C_i, H_i, W_i) maps (``NHWC`` on request), and the last stage's tokens unless
        ``intermediates_only``. ``norm`` is accepted for timm's interface; PPMA has no final norm.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt: expected 'NCHW' or 'NHWC', got {output_fmt!r}")
        self._check_image(x)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages if not stop_early else self.stages[: max_index + 1]
        intermediates = []
        x = self.stem(x).permute(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C)
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                y = self.norms[i](x) if self.norms is not None else x
                intermediates.append(y.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else y)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        if self.norms is not None:  # a norm without an output gets no gradient: DDP's unused-parameter error
            for i in range(len(self.norms)):
                if i not in take_indices:
                    self.norms[i] = nn.Identity()
        if prune_head:
            self.reset_classifier(0, reset_other=True)
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) image -> (B, H/32, W/32, C_last) tokens (rounded up per stride-2 step)."""
        self._check_image(x)
        x = self.stem(x).permute(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def load_pretrained(self, path: str) -> None:
        """timm's custom-load hook: load a published ``.pth`` or one of ours (see ``ppma.checkpoint``).

        A file with a model card (ours) also sets ``pretrained_cfg``'s evaluation transform and label
        names, so ``timm.data.resolve_data_config(model=model)`` sees the images as the model was
        trained to (not the registry's 224 px ImageNet defaults). A classifier left at its initial
        values (the file has another class count) is said in a warning.
        """
        use_ema = self.checkpoint_ema
        cfg = getattr(self, "pretrained_cfg", None)
        cfg = cfg if isinstance(cfg, dict) else {}
        if use_ema is None:  # "hf": the published weights through timm's hub loading
            use_ema = "auto" if cfg.get("custom_load") == "hf" else False
        from_hub = cfg.get("custom_load") == "hf"  # a file in the Hugging Face cache: say how to fetch it again
        with reading_hub_file(path, cfg.get("hf_hub_id"), cfg.get("hf_hub_filename")) if from_hub else nullcontext():
            contents = read_checkpoint(path)
        other_classes = load_into(self, path, use_ema=use_ema, contents=contents, adapt_in_chans=True)
        if other_classes is not None and self.norms is None:  # a dense backbone (norms) never uses head.fc
            warnings.warn(f"pretrained: {path} has a {other_classes}-class classifier, the model {self.num_classes} "
                          "classes: head.fc keeps its initial weights (fine-tuning); pass "
                          f"num_classes={other_classes} to use the trained classifier", stacklevel=2)  # fmt: skip
        card = read_card(contents)
        t = card["transform"]
        if t:
            cfg.update(input_size=(self.in_chans, t["input_size"], t["input_size"]), crop_pct=t["crop_pct"],
                       interpolation=t["interpolation"], mean=tuple(t["mean"]), std=tuple(t["std"]))  # fmt: skip
        if card["classes"] and len(card["classes"]) == self.num_classes:
            cfg["label_names"] = list(card["classes"])
        elif len(cfg.get("label_names") or ()) != self.num_classes:  # a folder's config.json names the file's
            cfg.pop("label_names", None)
            cfg.pop("label_descriptions", None)


# ---- registry -----------------------------------------------------------------------------------------


def _cfg(**kwargs) -> dict:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 224 / 256,
        "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "first_conv": "stem.0",
        "classifier": "head.fc",
        "custom_load": True,  # loads go through PPMA.load_pretrained: published .pth files need our filter
        "license": "apache-2.0",
        **kwargs,
    }


# The published weights on the Hugging Face Hub, loaded by timm's own hub code (custom_load="hf":
# hf_hub_download into the HF cache, then PPMA.load_pretrained maps the published key names). The
# published evaluation reports the EMA top-1, so the hook takes `model_ema` where a file has one.
PUBLISHED_HUB_ID = "ZhongchenZhao/PPMA"
_PUBLISHED = {  # variant: (file in the hub repository, published ImageNet-1K top-1 at 224)
    "ppma_tiny": ("checkpoints/classification/PPMA_T_202502251000/best.pth", 82.6),
    "ppma_small": ("checkpoints/classification/PPMA_S_202504021000/best.pth", 84.2),
    "ppma_base": ("checkpoints/classification/PPMA_B_202504101400/best.pth", 85.0),
}


def _published_cfg(variant: str) -> dict:
    filename, top1 = _PUBLISHED[variant]
    return _cfg(
        hf_hub_id=PUBLISHED_HUB_ID,
        hf_hub_filename=filename,
        custom_load="hf",
        origin_url="https://github.com/zhongchenzhao/PPMA",
        paper_ids="arXiv:2506.15940",
        paper_name="Polyline Path Masked Attention for Vision Transformer",
        description=f"published ImageNet-1K weights; top-1 {top1} (EMA weights, 224, resize 256 + centre crop)",
        notes=(f"top1={top1}", "weights=ema-if-present"),
    )


# A local copy instead: timm.create_model("ppma_tiny", pretrained=True, pretrained_cfg_overlay=dict(file="best.pth")).
default_cfgs = generate_default_cfgs({
    "ppma_nano.untrained": _cfg(num_classes=10, input_size=(3, 32, 32), pool_size=(1, 1), crop_pct=1.0),
    **{f"{variant}.in1k": _published_cfg(variant) for variant in _PUBLISHED},
})


# The weights file of a timm hub folder, in timm's order of preference (timm.models._hub._PREFERRED_FILES).
_FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth")


def _hub_weights_file(repo_id: str) -> str:
    """The weights file of a timm model repository: the first of ``_FOLDER_WEIGHTS`` in the local cache, else
    ``model.safetensors`` (timm's ``push_to_hf_hub`` writes it by default)."""
    from huggingface_hub import try_to_load_from_cache

    return next((f for f in _FOLDER_WEIGHTS if isinstance(try_to_load_from_cache(repo_id, f), str)), _FOLDER_WEIGHTS[0])


def _check_out_indices(out_indices: int | Sequence[int], num_stages: int) -> None:
    """``features_only``'s stage indices, checked before timm: its message named -1 for an index of -5, and a
    repeated index returned the same map twice."""
    if isinstance(out_indices, int):  # timm: the last n stages
        if not 1 <= out_indices <= num_stages:
            raise ValueError(f"out_indices: an int takes the last n stages, n in 1..{num_stages}, got {out_indices}")
        return
    indices = list(out_indices)
    if not indices or any(not isinstance(i, int) or not -num_stages <= i < num_stages for i in indices):
        raise ValueError(f"out_indices: stages are 0..{num_stages - 1} (or {-num_stages}..-1), got {out_indices!r}")
    if len({i % num_stages for i in indices}) != len(indices):
        raise ValueError(f"out_indices: a stage named twice in {out_indices!r}")


def _create_ppma(variant: str, pretrained: bool = False, **kwargs) -> PPMA:
    if kwargs.get("features_only"):
        kwargs.setdefault("feature_norms", True)
        _check_out_indices(kwargs.get("out_indices", (0, 1, 2, 3)), len(kwargs["embed_dims"]))
    # "local-dir:FOLDER" (an export): timm's own folder loading skips custom_load, so another num_classes
    # silently dropped the classifier, kept the file's label_names and the 3-channel input_size (in_chans=1).
    # The folder's weights file goes through PPMA.load_pretrained like any other file.
    cfg = kwargs.get("pretrained_cfg")
    if isinstance(cfg, dict) and cfg.get("source") == "local-dir" and cfg.get("file"):
        weights = next((p for p in map(Path(cfg["file"]).joinpath, _FOLDER_WEIGHTS) if p.is_file()), None)
        if weights is not None:
            kwargs["pretrained_cfg"] = {**cfg, "source": "", "file": str(weights)}
    # "hf-hub:ID" (an export pushed to the Hub): the same problem; its weights file is fetched by timm's hub
    # download and loaded by PPMA.load_pretrained (custom_load "hf", set below).
    if isinstance(cfg, dict) and cfg.get("source") == "hf-hub" and cfg.get("hf_hub_id"):
        kwargs["pretrained_cfg"] = {**cfg, "source": "", "file": None, "url": None,
                                    "hf_hub_filename": _hub_weights_file(cfg["hf_hub_id"])}  # fmt: skip
    # timm turns custom_load off when a file is given; keep it on, so every file goes through
    # PPMA.load_pretrained (published key names, safe unpickling, EMA choice, strict key report).
    # A hub file (hf_hub_filename without a file or url) goes through timm's hub download first ("hf").
    for key in ("pretrained_cfg_overlay", "pretrained_cfg"):
        cfg = kwargs.get(key)
        if isinstance(cfg, dict) and any(cfg.get(k) for k in ("file", "url", "hf_hub_id", "hf_hub_filename")):
            hub_file = cfg.get("hf_hub_filename") and not (cfg.get("file") or cfg.get("url"))
            kwargs[key] = {**cfg, "custom_load": "hf" if hub_file else True}
    try:
        return build_model_with_cfg(
            PPMA,
            variant,
            pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
            **kwargs,
        )
    except Exception as e:
        if not (pretrained and is_hub_failure(e)):
            raise
        # A failed download: say where the weights come from and how to pass a local file instead.
        from timm.models import resolve_pretrained_cfg

        cfg = resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay"))
        name = f"{variant}.{cfg.tag}" if cfg.tag else variant
        raise weights_unavailable(name, cfg.hf_hub_id or "?", cfg.hf_hub_filename or "?", e) from e


@register_model
def ppma_nano(pretrained: bool = False, **kwargs) -> PPMA:
    """A CPU-sized PPMA (the published code's test configuration): CI, the digits job, ablations."""
    args = dict(embed_dims=(32, 64, 128, 256), depths=(1, 1, 2, 2), num_heads=(2, 2, 4, 8), mlp_ratios=(3, 3, 3, 3),
                decomposed=(True, True, True, False), layer_scale=(False, False, True, True), drop_path_rate=0.0,
                num_classes=10)  # fmt: skip
    return _create_ppma("ppma_nano", pretrained, **dict(args, **kwargs))


@register_model
def ppma_tiny(pretrained: bool = False, **kwargs) -> PPMA:
    args = dict(embed_dims=(64, 128, 256, 512), depths=(2, 2, 8, 2), num_heads=(4, 4, 8, 16), mlp_ratios=(3, 3, 3, 3),
                decomposed=(True, True, False, False), drop_path_rate=0.1)  # fmt: skip
    return _create_ppma("ppma_tiny", pretrained, **dict(args, **kwargs))


@register_model
def ppma_small(pretrained: bool = False, **kwargs) -> PPMA:
    args = dict(embed_dims=(64, 128, 256, 512), depths=(3, 4, 18, 4), num_heads=(4, 4, 8, 16), mlp_ratios=(4, 4, 3, 3),
                decomposed=(True, True, True, False), drop_path_rate=0.15)  # fmt: skip
    return _create_ppma("ppma_small", pretrained, **dict(args, **kwargs))


@register_model
def ppma_base(pretrained: bool = False, **kwargs) -> PPMA:
    args = dict(embed_dims=(80, 160, 320, 512), depths=(4, 8, 25, 8), num_heads=(5, 5, 10, 16), mlp_ratios=(4, 4, 3, 3),
                decomposed=(True, True, True, False), layer_scale=(False, False, True, True),
                drop_path_rate=0.4, rmt_decays=RMT_VARIANT_DECAYS["base"])  # fmt: skip
    return _create_ppma("ppma_base", pretrained, **dict(args, **kwargs))
