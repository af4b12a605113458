"""Fused full polyline-masked attention in Triton: forward and backward, the mask formed on the fly.

What it computes (design.md §3), per batch and head, tokens row-major n = i * W + j::

    out = 0.5 * softmax(S + M) @ v + 0.5 * softmax(S + M^T) @ v,   S = q k^T * scale
    M[(i,j),(k,l)]   = -|A[i,j] - A[i,l]| - |B[i,l] - B[k,l]|    (h2v: along row i, then column l)
    M^T[(i,j),(k,l)] = -|A[k,l] - A[k,j]| - |B[k,j] - B[i,j]|    (v2h: along column j, then row k)

with the prefix-sum tables ``A = cumsum(log_alpha, W)`` and ``B = cumsum(log_beta, H)`` (float32, or
float64 for float64 inputs). Gradients reach q, k, v and both log-decays; nothing of size N x N is
stored in the forward or the backward (saved: two outputs and two log-sum-exps per query, O(N)).

Tiling. A query tile is ``R_Q`` whole grid rows and a key tile ``R_K`` whole grid rows, each row
padded to ``WP = next_pow2(W)`` columns. Every table entry a tile needs is then a row of the tile's
own ``(rows, WP)`` table: ``A[i, l]`` (query row, key column) lives in the query tile's table and
``A[k, j]`` (key row, query column) in the key tile's, so the mask is built by broadcasting four
small tables over a ``(R_Q, WP, R_K, WP)`` view of the score tile, with no per-element gathers.
The same ownership makes the backward free of atomics: the query-major kernel owns the gradient of
its rows of A and B (and dq), the key-major kernel the gradient of its key rows (and dk, dv); the
two are added, and autograd's cumsum backward turns them into the log-decay gradients.

Both softmaxes run in one pass with two online-softmax states (m, l, acc) per query row: their
normalisers differ, so they cannot share one.

Limits: W <= 256 (a whole row must fit one tile); head dimensions up to 256; inputs float32,
bfloat16 or float16 on CUDA (float64 only under the interpreter); scores and mask in float32, float32
inputs use IEEE (not TF32) products. Verified against ``ops/reference.py`` in float64 under
``TRITON_INTERPRET=1`` (tests/test_triton.py); GPU runs are in the tests marked ``cuda``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ...masks.polyline import decay_dtype
from .._common import prefix_sums

MAX_WIDTH = 256  # a whole grid row (padded to a power of two) is one tile row
TILE_TOKENS = 64  # target tokens per tile: R = max(1, TILE_TOKENS // WP) rows
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


# ----------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def abs_value(x):
    return tl.where(x < 0, -x, x)


@triton.jit
def sign(x):
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0)).to(x.dtype)


@triton.jit
def _masks(aq, bq, ak, bk, BM: tl.constexpr, BN: tl.constexpr):
    """h2v and v2h log-masks of a (BM, BN) tile from the tiles' (rows, WP) prefix tables.

    4D view [i, j, k, l]: query row i (of the query tile), query column j, key row k, key column l.
    """
    a_ij = aq[:, :, None, None]
    a_il = aq[:, None, None, :]
    b_il = bq[:, None, None, :]
    b_ij = bq[:, :, None, None]
    a_kl = ak[None, None, :, :]
    b_kl = bk[None, None, :, :]
    a_kj = tl.trans(ak)[None, :, :, None]
    b_kj = tl.trans(bk)[None, :, :, None]
    h2v = -abs_value(a_ij - a_il) - abs_value(b_il - b_kl)
    v2h = -abs_value(a_kl - a_kj) - abs_value(b_kj - b_ij)
    return tl.reshape(h2v, (BM, BN)), tl.reshape(v2h, (BM, BN))


@triton.jit
def online_softmax_step(s, m, l_sum, acc, v, ACC: tl.constexpr, PREC: tl.constexpr):
    """One key tile of a running softmax: rescale (m, l_sum, acc) to the new row maximum, add p @ v."""
    m_new = tl.maximum(m, tl.max(s, 1))
    p = tl.exp(s - m_new[:, None])
    c = tl.exp(m - m_new)
    l_sum = l_sum * c + tl.sum(p, 1)
    acc = acc * c[:, None] + tl.dot(p.to(v.dtype), v, out_dtype=ACC, input_precision=PREC)
    return m_new, l_sum, acc


@triton.jit
def _fwd_kernel(
    Q, K, V, CA, CB, OUT, O1, LSE1, LSE2,
    sq_b, sq_h, sq_i, sq_j, sq_d,
    sk_b, sk_h, sk_i, sk_j, sk_d,
    sv_b, sv_h, sv_i, sv_j, sv_d,
    HEADS, H, W, D, DV, scale,
    R_Q: tl.constexpr, R_K: tl.constexpr, WP: tl.constexpr, DP: tl.constexpr, DVP: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    BM: tl.constexpr = R_Q * WP
    BN: tl.constexpr = R_K * WP
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HEADS
    h = bh % HEADS
    cols = tl.arange(0, WP)
    offs_d = tl.arange(0, DP)
    offs_dv = tl.arange(0, DVP)

    # query tile: rows pid*R_Q .. +R_Q, all columns
    offs_m = tl.arange(0, BM)
    qi = pid * R_Q + offs_m // WP
    qj = offs_m % WP
    q_ok = (qi < H) & (qj < W)
    q = tl.load(
        Q + b * sq_b + h * sq_h + qi[:, None] * sq_i + qj[:, None] * sq_j + offs_d[None, :] * sq_d,
        mask=q_ok[:, None] & (offs_d[None, :] < D), other=0.0,
    )
    rows_q = pid * R_Q + tl.arange(0, R_Q)
    tq_ok = (rows_q[:, None] < H) & (cols[None, :] < W)
    t_q = bh * H * W + rows_q[:, None] * W + cols[None, :]
    aq = tl.load(CA + t_q, mask=tq_ok, other=0.0)
    bq = tl.load(CB + t_q, mask=tq_ok, other=0.0)

    m1 = tl.full([BM], float("-inf"), ACC)
    m2 = tl.full([BM], float("-inf"), ACC)
    l1 = tl.zeros([BM], ACC)
    l2 = tl.zeros([BM], ACC)
    acc1 = tl.zeros([BM, DVP], ACC)
    acc2 = tl.zeros([BM, DVP], ACC)
    offs_n = tl.arange(0, BN)
    for r0 in range(0, H, R_K):
        ki = r0 + offs_n // WP
        kj = offs_n % WP
        k_ok = (ki < H) & (kj < W)
        k = tl.load(
            K + b * sk_b + h * sk_h + ki[:, None] * sk_i + kj[:, None] * sk_j + offs_d[None, :] * sk_d,
            mask=k_ok[:, None] & (offs_d[None, :] < D), other=0.0,
        )
        v = tl.load(
            V + b * sv_b + h * sv_h + ki[:, None] * sv_i + kj[:, None] * sv_j + offs_dv[None, :] * sv_d,
            mask=k_ok[:, None] & (offs_dv[None, :] < DV), other=0.0,
        )
        rows_k = r0 + tl.arange(0, R_K)
        tk_ok = (rows_k[:, None] < H) & (cols[None, :] < W)
        t_k = bh * H * W + rows_k[:, None] * W + cols[None, :]
        ak = tl.load(CA + t_k, mask=tk_ok, other=0.0)
        bk = tl.load(CB + t_k, mask=tk_ok, other=0.0)

        s = tl.dot(q, tl.trans(k), out_dtype=ACC, input_precision=PREC) * scale
        mh, mv = _masks(aq, bq, ak, bk, BM, BN)
        s1 = tl.where(k_ok[None, :], s + mh, float("-inf"))
        s2 = tl.where(k_ok[None, :], s + mv, float("-inf"))

        m1, l1, acc1 = online_softmax_step(s1, m1, l1, acc1, v, ACC, PREC)
        m2, l2, acc2 = online_softmax_step(s2, m2, l2, acc2, v, ACC, PREC)

    o1 = acc1 / l1[:, None]
    o2 = acc2 / l2[:, None]
    tok = bh * H * W + qi * W + qj  # contiguous (B, heads, H, W[, DV]) outputs
    o_ptr = tok[:, None] * DV + offs_dv[None, :]
    o_ok = q_ok[:, None] & (offs_dv[None, :] < DV)
    tl.store(OUT + o_ptr, 0.5 * (o1 + o2), mask=o_ok)
    tl.store(O1 + o_ptr, o1, mask=o_ok)
    tl.store(LSE1 + tok, m1 + tl.log(l1), mask=q_ok)
    tl.store(LSE2 + tok, m2 + tl.log(l2), mask=q_ok)


@triton.jit
def _bwd_tile(q, k, v, do, aq, bq, ak, bk, lse1, lse2, d1, d2, k_ok, scale,
              BM: tl.constexpr, BN: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    """Recompute both probability tiles and their score gradients dS1 (h2v), dS2 (v2h), (BM, BN)."""
    s = tl.dot(q, tl.trans(k), out_dtype=ACC, input_precision=PREC) * scale
    mh, mv = _masks(aq, bq, ak, bk, BM, BN)
    p1 = tl.where(k_ok[None, :], tl.exp(s + mh - lse1[:, None]), 0.0)
    p2 = tl.where(k_ok[None, :], tl.exp(s + mv - lse2[:, None]), 0.0)
    dp = tl.dot(do, tl.trans(v), out_dtype=ACC, input_precision=PREC)  # same for both branches
    ds1 = p1 * (dp - d1[:, None])
    ds2 = p2 * (dp - d2[:, None])
    return p1, p2, ds1, ds2


@triton.jit
def _load_query_side(Q, DO, LSE1, LSE2, DEL1, DEL2, CA, CB, b, h, bh, r0,
                     sq_b, sq_h, sq_i, sq_j, sq_d, H, W, D, DV,
                     R_Q: tl.constexpr, WP: tl.constexpr, DP: tl.constexpr, DVP: tl.constexpr):  # fmt: skip
    """q, 0.5 * dO, the per-query statistics and the (R_Q, WP) tables of the query rows r0 .. r0 + R_Q."""
    BM: tl.constexpr = R_Q * WP
    offs_m = tl.arange(0, BM)
    qi = r0 + offs_m // WP
    qj = offs_m % WP
    q_ok = (qi < H) & (qj < W)
    offs_d = tl.arange(0, DP)
    offs_dv = tl.arange(0, DVP)
    q = tl.load(
        Q + b * sq_b + h * sq_h + qi[:, None] * sq_i + qj[:, None] * sq_j + offs_d[None, :] * sq_d,
        mask=q_ok[:, None] & (offs_d[None, :] < D), other=0.0,
    )
    tok = bh * H * W + qi * W + qj
    do = tl.load(DO + tok[:, None] * DV + offs_dv[None, :], mask=q_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
    do = (0.5 * do).to(do.dtype)  # each branch carries half of the output
    lse1 = tl.load(LSE1 + tok, mask=q_ok, other=0.0)
    lse2 = tl.load(LSE2 + tok, mask=q_ok, other=0.0)
    d1 = tl.load(DEL1 + tok, mask=q_ok, other=0.0)
    d2 = tl.load(DEL2 + tok, mask=q_ok, other=0.0)
    rows = r0 + tl.arange(0, R_Q)
    cols = tl.arange(0, WP)
    t_ok = (rows[:, None] < H) & (cols[None, :] < W)
    t = bh * H * W + rows[:, None] * W + cols[None, :]
    aq = tl.load(CA + t, mask=t_ok, other=0.0)
    bq = tl.load(CB + t, mask=t_ok, other=0.0)
    return q, do, lse1, lse2, d1, d2, aq, bq, qi, qj, q_ok


@triton.jit
def _load_key_side(K, V, CA, CB, b, h, bh, r0,
                   sk_b, sk_h, sk_i, sk_j, sk_d, sv_b, sv_h, sv_i, sv_j, sv_d, H, W, D, DV,
                   R_K: tl.constexpr, WP: tl.constexpr, DP: tl.constexpr, DVP: tl.constexpr):  # fmt: skip
    """k, v and the (R_K, WP) tables of the key rows r0 .. r0 + R_K."""
    BN: tl.constexpr = R_K * WP
    offs_n = tl.arange(0, BN)
    ki = r0 + offs_n // WP
    kj = offs_n % WP
    k_ok = (ki < H) & (kj < W)
    offs_d = tl.arange(0, DP)
    offs_dv = tl.arange(0, DVP)
    k = tl.load(
        K + b * sk_b + h * sk_h + ki[:, None] * sk_i + kj[:, None] * sk_j + offs_d[None, :] * sk_d,
        mask=k_ok[:, None] & (offs_d[None, :] < D), other=0.0,
    )
    v = tl.load(
        V + b * sv_b + h * sv_h + ki[:, None] * sv_i + kj[:, None] * sv_j + offs_dv[None, :] * sv_d,
        mask=k_ok[:, None] & (offs_dv[None, :] < DV), other=0.0,
    )
    rows = r0 + tl.arange(0, R_K)
    cols = tl.arange(0, WP)
    t_ok = (rows[:, None] < H) & (cols[None, :] < W)
    t = bh * H * W + rows[:, None] * W + cols[None, :]
    ak = tl.load(CA + t, mask=t_ok, other=0.0)
    bk = tl.load(CB + t, mask=t_ok, other=0.0)
    return k, v, ak, bk, ki, kj, k_ok


@triton.jit
def _bwd_query_kernel(
    Q, K, V, CA, CB, DO, LSE1, LSE2, DEL1, DEL2, DQ, DCA, DCB,
    sq_b, sq_h, sq_i, sq_j, sq_d,
    sk_b, sk_h, sk_i, sk_j, sk_d,
    sv_b, sv_h, sv_i, sv_j, sv_d,
    HEADS, H, W, D, DV, scale,
    R_Q: tl.constexpr, R_K: tl.constexpr, WP: tl.constexpr, DP: tl.constexpr, DVP: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """Query-major: dq and the gradient of the query rows' tables (terms indexed by query row)."""
    BM: tl.constexpr = R_Q * WP
    BN: tl.constexpr = R_K * WP
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HEADS
    h = bh % HEADS
    q, do, lse1, lse2, d1, d2, aq, bq, qi, qj, q_ok = _load_query_side(
        Q, DO, LSE1, LSE2, DEL1, DEL2, CA, CB, b, h, bh, pid * R_Q,
        sq_b, sq_h, sq_i, sq_j, sq_d, H, W, D, DV, R_Q, WP, DP, DVP,
    )
    dq = tl.zeros([BM, DP], ACC)
    daq = tl.zeros([R_Q, WP], ACC)
    dbq = tl.zeros([R_Q, WP], ACC)
    a_ij = aq[:, :, None, None]
    a_il = aq[:, None, None, :]
    b_il = bq[:, None, None, :]
    b_ij = bq[:, :, None, None]
    for r0 in range(0, H, R_K):
        k, v, ak, bk, ki, kj, k_ok = _load_key_side(
            K, V, CA, CB, b, h, bh, r0,
            sk_b, sk_h, sk_i, sk_j, sk_d, sv_b, sv_h, sv_i, sv_j, sv_d, H, W, D, DV, R_K, WP, DP, DVP,
        )
        p1, p2, ds1, ds2 = _bwd_tile(q, k, v, do, aq, bq, ak, bk, lse1, lse2, d1, d2, k_ok, scale, BM, BN, ACC, PREC)
        dq += tl.dot((ds1 + ds2).to(k.dtype), k, out_dtype=ACC, input_precision=PREC)
        g1 = tl.reshape(ds1, (R_Q, WP, R_K, WP))  # [i, j, k, l]
        g2 = tl.reshape(ds2, (R_Q, WP, R_K, WP))
        # h2v: -|A[i,j] - A[i,l]| -> A[i,j]: -sign, A[i,l]: +sign;  -|B[i,l] - B[k,l]| -> B[i,l]: -sign
        gs1 = g1 * sign(a_ij - a_il)
        daq += tl.sum(tl.sum(gs1, 2), 1) - tl.sum(tl.sum(gs1, 3), 2)
        dbq -= tl.sum(tl.sum(g1 * sign(b_il - bk[None, None, :, :]), 2), 1)
        # v2h: -|B[k,j] - B[i,j]| -> B[i,j]: +sign
        dbq += tl.sum(tl.sum(g2 * sign(tl.trans(bk)[None, :, :, None] - b_ij), 3), 2)
    dq = dq * scale
    offs_d = tl.arange(0, DP)
    tok = bh * H * W + qi * W + qj
    tl.store(DQ + tok[:, None] * D + offs_d[None, :], dq, mask=q_ok[:, None] & (offs_d[None, :] < D))
    rows = pid * R_Q + tl.arange(0, R_Q)
    cols = tl.arange(0, WP)
    t_ok = (rows[:, None] < H) & (cols[None, :] < W)
    t = bh * H * W + rows[:, None] * W + cols[None, :]
    tl.store(DCA + t, daq, mask=t_ok)
    tl.store(DCB + t, dbq, mask=t_ok)


@triton.jit
def _bwd_key_kernel(
    Q, K, V, CA, CB, DO, LSE1, LSE2, DEL1, DEL2, DK, DV_, DCA, DCB,
    sq_b, sq_h, sq_i, sq_j, sq_d,
    sk_b, sk_h, sk_i, sk_j, sk_d,
    sv_b, sv_h, sv_i, sv_j, sv_d,
    HEADS, H, W, D, DV, scale,
    R_Q: tl.constexpr, R_K: tl.constexpr, WP: tl.constexpr, DP: tl.constexpr, DVP: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """Key-major: dk, dv and the gradient of the key rows' tables (terms indexed by key row)."""
    BM: tl.constexpr = R_Q * WP
    BN: tl.constexpr = R_K * WP
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HEADS
    h = bh % HEADS
    k, v, ak, bk, ki, kj, k_ok = _load_key_side(
        K, V, CA, CB, b, h, bh, pid * R_K,
        sk_b, sk_h, sk_i, sk_j, sk_d, sv_b, sv_h, sv_i, sv_j, sv_d, H, W, D, DV, R_K, WP, DP, DVP,
    )
    dk = tl.zeros([BN, DP], ACC)
    dv = tl.zeros([BN, DVP], ACC)
    dak = tl.zeros([R_K, WP], ACC)
    dbk = tl.zeros([R_K, WP], ACC)
    a_kl = ak[None, None, :, :]
    b_kl = bk[None, None, :, :]
    a_kj = tl.trans(ak)[None, :, :, None]
    b_kj = tl.trans(bk)[None, :, :, None]
    for r0 in range(0, H, R_Q):
        q, do, lse1, lse2, d1, d2, aq, bq, qi, qj, q_ok = _load_query_side(
            Q, DO, LSE1, LSE2, DEL1, DEL2, CA, CB, b, h, bh, r0,
            sq_b, sq_h, sq_i, sq_j, sq_d, H, W, D, DV, R_Q, WP, DP, DVP,
        )
        p1, p2, ds1, ds2 = _bwd_tile(q, k, v, do, aq, bq, ak, bk, lse1, lse2, d1, d2, k_ok, scale, BM, BN, ACC, PREC)
        dv += tl.dot(tl.trans(p1 + p2).to(do.dtype), do, out_dtype=ACC, input_precision=PREC)
        dk += tl.dot(tl.trans(ds1 + ds2).to(q.dtype), q, out_dtype=ACC, input_precision=PREC)
        g1 = tl.reshape(ds1, (R_Q, WP, R_K, WP))  # [i, j, k, l]
        g2 = tl.reshape(ds2, (R_Q, WP, R_K, WP))
        # h2v: -|B[i,l] - B[k,l]| -> B[k,l]: +sign
        dbk += tl.sum(tl.sum(g1 * sign(bq[:, None, None, :] - b_kl), 1), 0)
        # v2h: -|A[k,l] - A[k,j]| -> A[k,l]: -sign, A[k,j]: +sign;  -|B[k,j] - B[i,j]| -> B[k,j]: -sign
        gs3 = g2 * sign(a_kl - a_kj)
        dak += tl.trans(tl.sum(tl.sum(gs3, 3), 0)) - tl.sum(tl.sum(gs3, 1), 0)
        dbk -= tl.trans(tl.sum(tl.sum(g2 * sign(b_kj - bq[:, :, None, None]), 3), 0))
    dk = dk * scale
    offs_d = tl.arange(0, DP)
    offs_dv = tl.arange(0, DVP)
    tok = bh * H * W + ki * W + kj
    tl.store(DK + tok[:, None] * D + offs_d[None, :], dk, mask=k_ok[:, None] & (offs_d[None, :] < D))
    tl.store(DV_ + tok[:, None] * DV + offs_dv[None, :], dv, mask=k_ok[:, None] & (offs_dv[None, :] < DV))
    rows = pid * R_K + tl.arange(0, R_K)
    cols = tl.arange(0, WP)
    t_ok = (rows[:, None] < H) & (cols[None, :] < W)
    t = bh * H * W + rows[:, None] * W + cols[None, :]
    tl.store(DCA + t, dak, mask=t_ok)
    tl.store(DCB + t, dbk, mask=t_ok)


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------


def _config(q: torch.Tensor, v: torch.Tensor, tile_tokens: int) -> dict:
    """Compile-time sizes: rows per tile, padded widths, accumulator dtype, product precision."""
    W, d, dv = q.shape[3], q.shape[4], v.shape[4]
    wp = triton.next_power_of_2(W)
    rows = max(1, tile_tokens // wp)
    wide = q.dtype in (torch.float32, torch.float64)
    return dict(
        R_Q=rows, R_K=rows, WP=wp,
        DP=max(16, triton.next_power_of_2(d)), DVP=max(16, triton.next_power_of_2(dv)),
        ACC=tl.float64 if q.dtype == torch.float64 else tl.float32,
        PREC="ieee" if wide else "tf32",  # float32 inputs: exact products, like the other backends
        num_warps=8 if rows * wp >= 128 else 4,
    )  # fmt: skip


def _strides(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.stride())


# paths as the custom ops take them (their schema has no strings to spare): 0 both, 1 h2v, 2 v2h.
PATH_CODES = {"both": 0, "h2v": 1, "v2h": 2}


def _forward(q, k, v, cum_a, cum_b, scale: float, tile_tokens: int, path: int = 0):
    B, heads, H, W, d = q.shape
    acc = decay_dtype(q)
    out = torch.empty(*q.shape[:4], v.shape[-1], device=q.device, dtype=acc)
    o1 = torch.empty_like(out)
    lse1 = torch.empty(q.shape[:4], device=q.device, dtype=acc)
    lse2 = torch.empty_like(lse1)
    cfg = _config(q, v, tile_tokens)
    grid = (triton.cdiv(H, cfg["R_Q"]), B * heads)
    _fwd_kernel[grid](
        q, k, v, cum_a, cum_b, out, o1, lse1, lse2,
        *_strides(q), *_strides(k), *_strides(v),
        heads, H, W, d, v.shape[-1], scale, **cfg,
    )  # fmt: skip
    # One path: the kernel still runs both softmaxes (O(N d) memory either way); its output is then the
    # branch itself: o1 (h2v), or o2 = 2 out - o1 (v2h).
    if path == 1:
        out.copy_(o1)
    elif path == 2:
        out.mul_(2).sub_(o1)
    return out, o1, lse1, lse2


def _backward(q, k, v, cum_a, cum_b, out, o1, lse1, lse2, dout, scale: float, tile_tokens: int, path: int = 0):
    B, heads, H, W, d = q.shape
    dv_ = v.shape[-1]
    acc = out.dtype
    dout = dout.contiguous()
    if path == 0:
        # Per-branch Delta = rowsum(dO_branch * O_branch) with dO_branch = dO / 2; O2 = 2 out - O1.
        half = 0.5 * dout.to(acc)
        delta1 = (half * o1).sum(-1)
        delta2 = (half * (2 * out - o1)).sum(-1)
    else:
        # One path carries all of dO (the kernels halve what they load, so pass 2 dO); the other path's
        # log-sum-exp set to +inf makes its probabilities exp(s - inf) = 0: it adds nothing to any gradient.
        full_do = dout.to(acc)
        delta = (full_do * out).sum(-1)  # out is the kept branch's output
        zero = torch.zeros_like(delta)
        delta1, delta2 = (delta, zero) if path == 1 else (zero, delta)
        inf = torch.full_like(lse1, float("inf"))
        lse1, lse2 = (lse1, inf) if path == 1 else (inf, lse2)
        dout = 2 * dout
    dq = torch.empty(q.shape, device=q.device, dtype=acc)
    dk = torch.empty(k.shape, device=q.device, dtype=acc)
    dv = torch.empty(v.shape, device=q.device, dtype=acc)
    dca_q, dcb_q, dca_k, dcb_k = (torch.empty_like(cum_a) for _ in range(4))
    cfg = _config(q, v, tile_tokens)
    common = (*_strides(q), *_strides(k), *_strides(v), heads, H, W, d, dv_, scale)
    do = dout.to(q.dtype)
    _bwd_query_kernel[(triton.cdiv(H, cfg["R_Q"]), B * heads)](
        q, k, v, cum_a, cum_b, do, lse1, lse2, delta1, delta2, dq, dca_q, dcb_q, *common, **cfg
    )
    _bwd_key_kernel[(triton.cdiv(H, cfg["R_K"]), B * heads)](
        q, k, v, cum_a, cum_b, do, lse1, lse2, delta1, delta2, dk, dv, dca_k, dcb_k, *common, **cfg
    )
    return dq, dk, dv, dca_q + dca_k, dcb_q + dcb_k


# Custom ops, not an autograd.Function: torch.compile then treats each kernel launch as one opaque
# op with known output shapes (register_fake) instead of tracing into Triton's launcher.
@torch.library.custom_op("ppma::polyline_full_fwd", mutates_args=())
def _full_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cum_a: torch.Tensor, cum_b: torch.Tensor, scale: float,
    tile_tokens: int, path: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(out, o1, lse1, lse2): the output (the average, or the one ``path``), the h2v branch's output, and each
    branch's log-sum-exp."""
    return _forward(q, k, v, cum_a, cum_b, scale, tile_tokens, path)


@_full_fwd.register_fake
def _(q, k, v, cum_a, cum_b, scale, tile_tokens, path=0):
    acc = decay_dtype(q)
    out = q.new_empty((*q.shape[:4], v.shape[-1]), dtype=acc)
    lse = q.new_empty(q.shape[:4], dtype=acc)
    return out, torch.empty_like(out), lse, torch.empty_like(lse)


@torch.library.custom_op("ppma::polyline_full_bwd", mutates_args=())
def _full_bwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cum_a: torch.Tensor, cum_b: torch.Tensor, out: torch.Tensor,
    o1: torch.Tensor, lse1: torch.Tensor, lse2: torch.Tensor, dout: torch.Tensor, scale: float, tile_tokens: int,
    path: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(dq, dk, dv, d cum_a, d cum_b) in the accumulator dtype."""
    return _backward(q, k, v, cum_a, cum_b, out, o1, lse1, lse2, dout, scale, tile_tokens, path)


@_full_bwd.register_fake
def _(q, k, v, cum_a, cum_b, out, o1, lse1, lse2, dout, scale, tile_tokens, path=0):
    grads = (q.new_empty(t.shape, dtype=out.dtype) for t in (q, k, v))
    return (*grads, torch.empty_like(cum_a), torch.empty_like(cum_b))


def _full_setup_context(ctx, inputs, output):
    q, k, v, cum_a, cum_b, scale, tile_tokens, path = inputs
    ctx.save_for_backward(q, k, v, cum_a, cum_b, *output)
    ctx.scale, ctx.tile_tokens, ctx.path = scale, tile_tokens, path


def _full_backward(ctx, dout, *_unused_grads):  # o1, lse1, lse2 are saved for the backward, not used outside
    q, k, v, cum_a, cum_b, out, o1, lse1, lse2 = ctx.saved_tensors
    dq, dk, dv, dca, dcb = _full_bwd(q, k, v, cum_a, cum_b, out, o1, lse1, lse2, dout, ctx.scale, ctx.tile_tokens,
                                     ctx.path)  # fmt: skip
    # autograd's cumsum backward turns d cum_a, d cum_b into the log-decay gradients
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dca, dcb, None, None, None


_full_fwd.register_autograd(_full_backward, setup_context=_full_setup_context)


def full(q, k, v, log_alpha, log_beta, scale: float, paths: str = "both", *,
         tile_tokens: int = TILE_TOKENS) -> torch.Tensor:  # fmt: skip
    """Fused full polyline-masked attention (see the module docstring); the backend entry point.

    Args:
        q, k: (B, heads, H, W, d); v: (B, heads, H, W, dv); any strides.
        log_alpha, log_beta: (B, heads, H, W) log-decays (float32 under autocast).
        scale: factor on q k^T.
        paths: ``"both"`` (the average), ``"h2v"`` or ``"v2h"`` (one softmax; the kernel still forms both,
            and the other branch drops out of the backward).
        tile_tokens: tokens per tile target (rows per tile = max(1, tile_tokens // next_pow2(W)));
            tests lower it to exercise several tiles on small grids.

    Returns:
        (B, heads, H, W, dv) in float32 (float64 for float64 inputs); the dispatcher casts to q's dtype.
    """
    if q.shape[3] > MAX_WIDTH:
        raise ValueError(f"q: grid width {q.shape[3]} exceeds the triton kernel's limit of {MAX_WIDTH}")
    device_type = q.device.type
    if torch.is_autocast_enabled(device_type):
        # Like a matmul under autocast: the products run in the autocast dtype. (The model's rotary
        # rotation multiplies bf16 q, k by float32 tables, so they arrive here as float32.)
        dtype = torch.get_autocast_dtype(device_type)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    elif q.dtype != k.dtype or q.dtype != v.dtype:
        k, v = k.to(q.dtype), v.to(q.dtype)
    table_dtype = decay_dtype(q)
    cum_a, cum_b = (t.contiguous() for t in prefix_sums(log_alpha, log_beta, table_dtype))
    return _full_fwd(q, k, v, cum_a, cum_b, scale, tile_tokens, PATH_CODES[paths])[0]
