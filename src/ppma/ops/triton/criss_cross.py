"""Decomposed ("criss-cross") polyline attention in Triton, built from one fused line-attention kernel.

Line attention, for independent lines (sequences of length ``L``), each with its float32 prefix
sum ``P`` of log-decays::

    out = softmax(q k^T * scale - |P[p] - P[q]|) @ u        (p: query, q: key, both on the line)

Rows of the grid are lines with ``P = cumsum(log_alpha, W)`` (``Aw``); columns are lines with
``P = cumsum(log_beta, H)`` (``Ah``). Every tensor is addressed through its strides, so a column
pass reads the (B, heads, H, W, d) grid through a transposed view without copying it.
The criss-cross output (design.md §4) takes three passes, as ops/cpu.py::

    Ah v;   Aw [v | Ah v] (one row pass on concatenated values);   Ah (Aw v)
    out = 0.5 * Ah(Aw v) + 0.5 * Aw(Ah v)      ("v2h" keeps Ah(Aw v), "h2v" keeps Aw(Ah v))

Forward and backward are flash-attention style: a program owns a block of queries (or keys) of one
line and loops over the other side's blocks with an online softmax; the forward stores only the
output and the log-sum-exp per query, so memory is O(N d) (no (W, W) or (H, H) tensor). The backward
recomputes the probabilities; a query-major kernel writes dq and the query-side part of dP
(``dP[p] += sum_q dS[p,q] * -sign(P[p] - P[q])``), a key-major kernel dk, du and the key-side part
(``dP[q] -= the same``), so no atomics are needed; autograd's cumsum backward (a reverse cumsum)
turns dP into the log-decay gradients.

Limits: lines up to ``MAX_LINE = 4096`` (H and W; a line is walked in blocks, so its length costs
no on-chip memory; the limit only keeps it within what is tested and indexed in int32); head
dimensions up to 256; float32, bfloat16 or
float16 on CUDA (float64 only under the interpreter); scores and softmax in float32, P in float32
(float64 for float64 inputs). Verified against ``ops/reference.py`` in float64 under
``TRITON_INTERPRET=1`` and compiled ahead of time for sm_90 (tests/test_triton.py); not yet run or
timed on a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...masks.polyline import decay_dtype
from .full import abs_value, online_softmax_step, sign

MAX_LINE = 4096  # H and W: the limit the dispatcher checks (ops/api.py)
BLOCK = 64  # queries / keys per block (at least 16 for tl.dot)


# ----------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _line_block(X, s_b, s_h, s_l, s_t, s_d, b, h, line, offs, L, N, NP: tl.constexpr):
    """(len(offs), NP) block of a (B, heads, lines, L, N) strided tensor; rows past L or N read 0."""
    cols = tl.arange(0, NP)
    ptr = X + b * s_b + h * s_h + line * s_l + offs[:, None] * s_t + cols[None, :] * s_d
    return tl.load(ptr, mask=(offs[:, None] < L) & (cols[None, :] < N), other=0.0)


@triton.jit
def _line_fwd_kernel(
    Q, K, U, P, OUT, LSE,
    sq_b, sq_h, sq_l, sq_t, sq_d,
    sk_b, sk_h, sk_l, sk_t, sk_d,
    su_b, su_h, su_l, su_t, su_d,
    sp_b, sp_h, sp_l, sp_t,
    HEADS, NL, L, D, DU, scale,
    BM: tl.constexpr, BN: tl.constexpr, DP: tl.constexpr, DUP: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HEADS
    h = bh % HEADS
    n_blk = tl.cdiv(L, BM)
    line = pid // n_blk
    offs_m = (pid % n_blk) * BM + tl.arange(0, BM)
    q_ok = offs_m < L
    q = _line_block(Q, sq_b, sq_h, sq_l, sq_t, sq_d, b, h, line, offs_m, L, D, DP)
    p_q = tl.load(P + b * sp_b + h * sp_h + line * sp_l + offs_m * sp_t, mask=q_ok, other=0.0)

    m = tl.full([BM], float("-inf"), ACC)
    l_sum = tl.zeros([BM], ACC)
    acc = tl.zeros([BM, DUP], ACC)
    for n0 in range(0, L, BN):
        offs_n = n0 + tl.arange(0, BN)
        k_ok = offs_n < L
        k = _line_block(K, sk_b, sk_h, sk_l, sk_t, sk_d, b, h, line, offs_n, L, D, DP)
        u = _line_block(U, su_b, su_h, su_l, su_t, su_d, b, h, line, offs_n, L, DU, DUP)
        p_k = tl.load(P + b * sp_b + h * sp_h + line * sp_l + offs_n * sp_t, mask=k_ok, other=0.0)
        s = tl.dot(q, tl.trans(k), out_dtype=ACC, input_precision=PREC) * scale
        s = tl.where(k_ok[None, :], s - abs_value(p_q[:, None] - p_k[None, :]).to(ACC), float("-inf"))
        m, l_sum, acc = online_softmax_step(s, m, l_sum, acc, u, ACC, PREC)

    tok = (bh * NL + line) * L + offs_m  # contiguous (B, heads, lines, L[, DU]) outputs
    offs_u = tl.arange(0, DUP)
    o_ok = q_ok[:, None] & (offs_u[None, :] < DU)
    tl.store(OUT + tok[:, None] * DU + offs_u[None, :], acc / l_sum[:, None], mask=o_ok)
    tl.store(LSE + tok, m + tl.log(l_sum), mask=q_ok)


@triton.jit
def _line_bwd_tile(q, k, u, do, p_q, p_k, lse, delta, q_ok, k_ok, scale, ACC: tl.constexpr, PREC: tl.constexpr):
    """Recomputed probabilities P, score gradients dS and sign(P[p] - P[q]) of one (BM, BN) tile."""
    s = tl.dot(q, tl.trans(k), out_dtype=ACC, input_precision=PREC) * scale
    diff = (p_q[:, None] - p_k[None, :]).to(ACC)
    ok = q_ok[:, None] & k_ok[None, :]
    p = tl.where(ok, tl.exp(s - abs_value(diff) - lse[:, None]), 0.0)
    dp = tl.dot(do, tl.trans(u), out_dtype=ACC, input_precision=PREC)
    ds = p * (dp - delta[:, None])
    return p, ds, sign(diff)


@triton.jit
def _line_bwd_query_kernel(
    Q, K, U, P, DO, LSE, DELTA, DQ, DPQ,
    sq_b, sq_h, sq_l, sq_t, sq_d,
    sk_b, sk_h, sk_l, sk_t, sk_d,
    su_b, su_h, su_l, su_t, su_d,
    sp_b, sp_h, sp_l, sp_t,
    HEADS, NL, L, D, DU, scale,
    BM: tl.constexpr, BN: tl.constexpr, DP: tl.constexpr, DUP: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """Query-major: dq and dP[p] += sum_q dS[p, q] * -sign(P[p] - P[q])."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HEADS
    h = bh % HEADS
    n_blk = tl.cdiv(L, BM)
    line = pid // n_blk
    offs_m = (pid % n_blk) * BM + tl.arange(0, BM)
    q_ok = offs_m < L
    offs_d = tl.arange(0, DP)
    offs_u = tl.arange(0, DUP)
    tok = (bh * NL + line) * L + offs_m
    q = _line_block(Q, sq_b, sq_h, sq_l, sq_t, sq_d, b, h, line, offs_m, L, D, DP)
    p_q = tl.load(P + b * sp_b + h * sp_h + line * sp_l + offs_m * sp_t, mask=q_ok, other=0.0)
    do = tl.load(DO + tok[:, None] * DU + offs_u[None, :], mask=q_ok[:, None] & (offs_u[None, :] < DU), other=0.0)
    lse = tl.load(LSE + tok, mask=q_ok, other=0.0)
    delta = tl.load(DELTA + tok, mask=q_ok, other=0.0)
    dq = tl.zeros([BM, DP], ACC)
    dpq = tl.zeros([BM], ACC)
    for n0 in range(0, L, BN):
        offs_n = n0 + tl.arange(0, BN)
        k_ok = offs_n < L
        k = _line_block(K, sk_b, sk_h, sk_l, sk_t, sk_d, b, h, line, offs_n, L, D, DP)
        u = _line_block(U, su_b, su_h, su_l, su_t, su_d, b, h, line, offs_n, L, DU, DUP)
        p_k = tl.load(P + b * sp_b + h * sp_h + line * sp_l + offs_n * sp_t, mask=k_ok, other=0.0)
        _p, ds, sg = _line_bwd_tile(q, k, u, do, p_q, p_k, lse, delta, q_ok, k_ok, scale, ACC, PREC)
        dq += tl.dot(ds.to(k.dtype), k, out_dtype=ACC, input_precision=PREC)
        dpq -= tl.sum(ds * sg, 1)
    tl.store(DQ + tok[:, None] * D + offs_d[None, :], dq * scale, mask=q_ok[:, None] & (offs_d[None, :] < D))
    tl.store(DPQ + tok, dpq, mask=q_ok)


@triton.jit
def _line_bwd_key_kernel(
    Q, K, U, P, DO, LSE, DELTA, DK, DU_, DPK,
    sq_b, sq_h, sq_l, sq_t, sq_d,
    sk_b, sk_h, sk_l, sk_t, sk_d,
    su_b, su_h, su_l, su_t, su_d,
    sp_b, sp_h, sp_l, sp_t,
    HEADS, NL, L, D, DU, scale,
    BM: tl.constexpr, BN: tl.constexpr, DP: tl.constexpr, DUP: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """Key-major: dk, du and dP[q] -= sum_p dS[p, q] * -sign(P[p] - P[q])."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HEADS
    h = bh % HEADS
    n_blk = tl.cdiv(L, BN)
    line = pid // n_blk
    offs_n = (pid % n_blk) * BN + tl.arange(0, BN)
    k_ok = offs_n < L
    offs_d = tl.arange(0, DP)
    offs_u = tl.arange(0, DUP)
    k = _line_block(K, sk_b, sk_h, sk_l, sk_t, sk_d, b, h, line, offs_n, L, D, DP)
    u = _line_block(U, su_b, su_h, su_l, su_t, su_d, b, h, line, offs_n, L, DU, DUP)
    p_k = tl.load(P + b * sp_b + h * sp_h + line * sp_l + offs_n * sp_t, mask=k_ok, other=0.0)
    dk = tl.zeros([BN, DP], ACC)
    du = tl.zeros([BN, DUP], ACC)
    dpk = tl.zeros([BN], ACC)
    for m0 in range(0, L, BM):
        offs_m = m0 + tl.arange(0, BM)
        q_ok = offs_m < L
        tok_q = (bh * NL + line) * L + offs_m
        q = _line_block(Q, sq_b, sq_h, sq_l, sq_t, sq_d, b, h, line, offs_m, L, D, DP)
        p_q = tl.load(P + b * sp_b + h * sp_h + line * sp_l + offs_m * sp_t, mask=q_ok, other=0.0)
        do = tl.load(DO + tok_q[:, None] * DU + offs_u[None, :], mask=q_ok[:, None] & (offs_u[None, :] < DU), other=0.0)
        lse = tl.load(LSE + tok_q, mask=q_ok, other=0.0)
        delta = tl.load(DELTA + tok_q, mask=q_ok, other=0.0)
        p, ds, sg = _line_bwd_tile(q, k, u, do, p_q, p_k, lse, delta, q_ok, k_ok, scale, ACC, PREC)
        du += tl.dot(tl.trans(p).to(do.dtype), do, out_dtype=ACC, input_precision=PREC)
        dk += tl.dot(tl.trans(ds).to(q.dtype), q, out_dtype=ACC, input_precision=PREC)
        dpk += tl.sum(ds * sg, 0)
    tok = (bh * NL + line) * L + offs_n
    tl.store(DK + tok[:, None] * D + offs_d[None, :], dk * scale, mask=k_ok[:, None] & (offs_d[None, :] < D))
    tl.store(DU_ + tok[:, None] * DU + offs_u[None, :], du, mask=k_ok[:, None] & (offs_u[None, :] < DU))
    tl.store(DPK + tok, dpk, mask=k_ok)


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------


def _config(q: torch.Tensor, u: torch.Tensor, block: int) -> dict:
    """Compile-time sizes: block lengths, padded head widths, accumulator dtype, product precision."""
    bl = max(16, min(block, triton.next_power_of_2(q.shape[3])))
    wide = q.dtype in (torch.float32, torch.float64)
    return dict(
        BM=bl, BN=bl,
        DP=max(16, triton.next_power_of_2(q.shape[4])), DUP=max(16, triton.next_power_of_2(u.shape[4])),
        ACC=tl.float64 if q.dtype == torch.float64 else tl.float32,
        PREC="ieee" if wide else "tf32",  # float32 inputs: exact products, like the other backends
        num_warps=4,
    )  # fmt: skip


def _args(q, k, u, p) -> tuple:
    """Strides of q, k, u, P and the sizes the kernels take after the pointers."""
    B, heads, NL, L, d = q.shape
    return (*q.stride(), *k.stride(), *u.stride(), *p.stride(), heads, NL, L, d, u.shape[4])


# Custom ops, not an autograd.Function: torch.compile then treats each kernel launch as one opaque
# op with known output shapes (register_fake) instead of tracing into Triton's launcher.
@torch.library.custom_op("ppma::line_attention_fwd", mutates_args=())
def _line_fwd(
    q: torch.Tensor, k: torch.Tensor, u: torch.Tensor, p: torch.Tensor, scale: float, block: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scale - |P[p] - P[q]|) @ u over (B, heads, lines, L, .) strided views: (out, lse)."""
    B, heads, NL, L, _ = q.shape
    acc = decay_dtype(q)
    out = torch.empty(B, heads, NL, L, u.shape[4], device=q.device, dtype=acc)
    lse = torch.empty(B, heads, NL, L, device=q.device, dtype=acc)
    cfg = _config(q, u, block)
    grid = (NL * triton.cdiv(L, cfg["BM"]), B * heads)
    _line_fwd_kernel[grid](q, k, u, p, out, lse, *_args(q, k, u, p), scale, **cfg)
    return out, lse


@_line_fwd.register_fake
def _(q, k, u, p, scale, block):
    acc = decay_dtype(q)
    return q.new_empty((*q.shape[:4], u.shape[4]), dtype=acc), q.new_empty(q.shape[:4], dtype=acc)


@torch.library.custom_op("ppma::line_attention_bwd", mutates_args=())
def _line_bwd(
    q: torch.Tensor, k: torch.Tensor, u: torch.Tensor, p: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    dout: torch.Tensor, scale: float, block: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(dq, dk, du) in the accumulator dtype and dP in P's dtype."""
    B, heads, NL, L, _ = q.shape
    delta = (dout.to(out.dtype) * out).sum(-1).contiguous()  # rowsum(dO * O) per query
    do = dout.to(u.dtype).contiguous()
    dq = torch.empty(q.shape, device=q.device, dtype=out.dtype)
    dk = torch.empty(k.shape, device=q.device, dtype=out.dtype)
    du = torch.empty(u.shape, device=q.device, dtype=out.dtype)
    dp_q = torch.empty(q.shape[:4], device=q.device, dtype=p.dtype)
    dp_k = torch.empty_like(dp_q)
    cfg = _config(q, u, block)
    args = (*_args(q, k, u, p), scale)
    _line_bwd_query_kernel[(NL * triton.cdiv(L, cfg["BM"]), B * heads)](
        q, k, u, p, do, lse, delta, dq, dp_q, *args, **cfg
    )
    _line_bwd_key_kernel[(NL * triton.cdiv(L, cfg["BN"]), B * heads)](
        q, k, u, p, do, lse, delta, dk, du, dp_k, *args, **cfg
    )
    return dq, dk, du, dp_q + dp_k


@_line_bwd.register_fake
def _(q, k, u, p, out, lse, dout, scale, block):
    grads = (q.new_empty(t.shape, dtype=out.dtype) for t in (q, k, u))
    return (*grads, q.new_empty(q.shape[:4], dtype=p.dtype))


def _line_setup_context(ctx, inputs, output):
    q, k, u, p, scale, block = inputs
    ctx.save_for_backward(q, k, u, p, *output)
    ctx.scale, ctx.block = scale, block


def _line_backward(ctx, dout, _dlse):  # lse is saved for the backward, not used outside
    q, k, u, p, out, lse = ctx.saved_tensors
    dq, dk, du, dp = _line_bwd(q, k, u, p, out, lse, dout, ctx.scale, ctx.block)
    return dq.to(q.dtype), dk.to(k.dtype), du.to(u.dtype), dp, None, None


_line_fwd.register_autograd(_line_backward, setup_context=_line_setup_context)


def line_attention(q, k, u, p, scale: float, *, block: int = BLOCK) -> torch.Tensor:
    """Fused masked attention along independent lines; gradients to q, k, u and p.

    Args:
        q, k: (B, heads, lines, L, d), any strides (a transposed view of the grid reads columns).
        u: (B, heads, lines, L, du) values, same dtype as q.
        p: (B, heads, lines, L) prefix sums of the log-decays along each line (float32 or float64).
        scale: factor on q k^T.
        block: queries / keys per block (at least 16); tests lower it to get several blocks per line.

    Returns:
        (B, heads, lines, L, du), contiguous, in float32 (float64 for float64 inputs).
    """
    if q.shape[3] > MAX_LINE:
        raise ValueError(f"q: line length {q.shape[3]} exceeds the triton kernel's limit of {MAX_LINE}")
    return _line_fwd(q, k, u, p, scale, block)[0]


def criss_cross(q, k, v, log_alpha, log_beta, scale: float, paths: str = "both", *, block: int = BLOCK) -> torch.Tensor:
    """Decomposed polyline attention ``0.5 * Ah(Aw v) + 0.5 * Aw(Ah v)``; the backend entry point.

    Args:
        q, k: (B, heads, H, W, d); v: (B, heads, H, W, dv); any strides.
        log_alpha, log_beta: (B, heads, H, W) log-decays (float32 under autocast).
        scale: factor on q k^T.
        paths: ``"both"``, ``"h2v"`` (``Aw(Ah v)`` only) or ``"v2h"`` (``Ah(Aw v)`` only).
        block: see ``line_attention``.

    Returns:
        (B, heads, H, W, dv) in float32 (float64 for float64 inputs); the dispatcher casts to q's dtype.
    """
    H, W = q.shape[2:4]
    if max(H, W) > MAX_LINE:
        raise ValueError(f"q: grid {H}x{W} has a line longer than the triton kernel's limit of {MAX_LINE}")
    device_type = q.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)  # products in the autocast dtype, like a matmul
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    elif q.dtype != k.dtype or q.dtype != v.dtype:
        k, v = k.to(q.dtype), v.to(q.dtype)
    table_dtype = decay_dtype(q)
    p_rows = torch.cumsum(log_alpha.to(table_dtype), dim=-1)  # (B, heads, H, W): row i is a line
    p_cols = torch.cumsum(log_beta.to(table_dtype), dim=-2).transpose(-1, -2)  # (B, heads, W, H) view
    q_cols, k_cols = q.transpose(2, 3), k.transpose(2, 3)  # columns as lines, no copies

    def along_rows(u):  # Aw u
        return line_attention(q, k, u.to(q.dtype), p_rows, scale, block=block)

    def along_cols(u):  # Ah u
        return line_attention(q_cols, k_cols, u.to(q.dtype).transpose(2, 3), p_cols, scale, block=block).transpose(2, 3)

    if paths == "h2v":
        return along_rows(along_cols(v))
    if paths == "v2h":
        return along_cols(along_rows(v))
    cols_v = along_cols(v)
    rows_both = along_rows(torch.cat([v, cols_v.to(q.dtype)], dim=-1))  # Aw [v | Ah v]: one row pass
    rows_v, rows_cols_v = rows_both.split(v.shape[-1], dim=-1)
    return 0.5 * along_cols(rows_v) + 0.5 * rows_cols_v
