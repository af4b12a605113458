"""Argument validation shared by the mask maths, the attention ops and the layers.

Every check raises a ``ValueError`` whose message starts with the argument's name, so a user sees
what is wrong at the call they made, not a traceback from deep inside a kernel.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def check_tensor(name: str, t: object, ndim: int | None = None, min_ndim: int | None = None) -> torch.Tensor:
    """A floating-point tensor with the given number of dimensions."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(t.shape)}")
    if min_ndim is not None and t.ndim < min_ndim:
        raise ValueError(f"{name}: expected at least {min_ndim} dimensions, got shape {tuple(t.shape)}")
    return t


def check_log_decay(name: str, t: torch.Tensor, check_values: bool = True) -> torch.Tensor:
    """Log-decays must be finite and <= 0 (decays in (0, 1]). Value checks cost a device sync."""
    if check_values and t.numel() > 0 and not torch.compiler.is_compiling():
        with torch.no_grad():
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name}: contains NaN or inf; log-decays must be finite")
            if bool((t > 0).any()):
                raise ValueError(
                    f"{name}: contains positive values (max {t.max().item():.3g}); log-decays must be <= 0"
                )
    return t


def check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_b}: shape {tuple(b.shape)} does not match {name_a} shape {tuple(a.shape)}")


def check_not_empty(name: str, t: torch.Tensor) -> None:
    """No zero-size dimension: the ops' reshapes and the ``d ** -0.5`` scale are undefined there."""
    if t.numel() == 0:
        raise ValueError(f"{name}: has a zero-size dimension, shape {tuple(t.shape)}; every dimension must be >= 1")


def check_same_dtype(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """One dtype for tensors multiplied together (backends differ in whether and how they would promote)."""
    if a.dtype != b.dtype:
        raise ValueError(f"{name_b}: dtype {b.dtype} does not match {name_a} dtype {a.dtype}; cast one of them")


def check_qkv(q: object, k: object, v: object, lead: tuple[str, ...], *, strict: bool = True) -> None:
    """q, k (*lead, d) and v (*lead, dv) of one attention; ``lead`` names the leading dimensions, e.g.
    ("B", "heads", "N") for token sequences, ("B", "heads", "H", "W") for token grids.

    ``strict``: also one dtype for q, k and v (outside autocast) and no zero-size q or v, as the attention
    backends need.
    """
    n = len(lead)
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, ndim=n + 1)
    if strict:
        if not torch.is_autocast_enabled(q.device.type):  # under autocast the products run in one dtype anyway
            check_same_dtype("q", q, "k", k)
            check_same_dtype("q", q, "v", v)
        for name, t in (("q", q), ("v", v)):
            check_not_empty(name, t)
    names = ", ".join(lead)
    if k.shape != q.shape:
        raise ValueError(f"k: shape {tuple(k.shape)} does not match q shape {tuple(q.shape)} ({names}, d)")
    if v.shape[:n] != q.shape[:n]:
        raise ValueError(f"v: leading shape {tuple(v.shape[:n])} does not match q's ({names}) {tuple(q.shape[:n])}")


def check_grid_attention(
    q: object,
    k: object,
    v: object,
    log_alpha: object,
    log_beta: object,
    *,
    check_values: bool = True,
    strict: bool = False,
) -> None:
    """The arguments of an attention on the token grid: q, k (B, heads, H, W, d), v (B, heads, H, W, dv),
    log-decays (B, heads, H, W), <= 0 (``check_values``: checked, one device sync).

    ``strict`` (the attention ops, ``ppma.ops``): also one dtype for q, k and v (outside autocast) and no
    zero-size q or v, as their backends need; ``polyline_linear_attention`` promotes mixed dtypes in its
    products and keeps its looser contract.
    """
    check_qkv(q, k, v, ("B", "heads", "H", "W"), strict=strict)
    for name, t in (("log_alpha", log_alpha), ("log_beta", log_beta)):
        check_tensor(name, t, ndim=4)
        if t.shape != q.shape[:4]:
            raise ValueError(f"{name}: shape {tuple(t.shape)} does not match q's (B, heads, H, W) {tuple(q.shape[:4])}")
        check_log_decay(name, t, check_values)


def check_output_path(path: str | os.PathLike, what: str) -> Path:
    """An output path that can be written, checked before any work: its parent folder is created and
    writable, the path itself (if it exists) writable. A one-line ``ValueError`` starting with ``what``."""
    path = Path(path)
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{what}: cannot write {path} (permission denied)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{what}: cannot create the folder {path.parent} ({e.strerror or type(e).__name__})") from e
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ValueError(f"{what}: cannot write in {path.parent} (permission denied)")
    return path
