"""Winograd F(2x2, 3x3) and F(4x4, 3x3): a 3x3, stride-1, dilation-1, ungrouped CONV2D in
2.25x (4x) fewer multiplications than the direct (GEMM) convolution.

F(2x2, 3x3) first; F(4x4, 3x3) (`tile_for`, its section below) works the same way on 4x4
blocks of outputs from 6x6 blocks of input, with 36 positions and 36 products.

Every 2x2 block of outputs (a tile) is computed from the 4x4 block of padded input around
it (Lavin and Gray 2015)::

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (* elementwise over the 16 positions)

with ``g`` a 3x3 kernel, ``d`` a 4x4 input tile and the constant matrices below. Summed over
the input channels, the elementwise product becomes 16 independent matrix products, one per
position ``k`` of the 4x4 transform::

    M[k] (O, P) = U[k] (O, C) @ V[k] (C, P)      U = G g G^T,  V = B^T d B

``P`` the tiles of a chunk of images (image-major, then tile row, then tile column). The
transforms are compiled (numba, serial loops over (image, channel-block) jobs, which
``fast.parallel`` shares among threads, like ``ops/fast.py``'s); the 16 products are one
``np.matmul`` on stacked arrays (OpenBLAS, its threads set by ``runtime/threads.py``). The
output transform applies the epilogue (scale, bias, the activation of ``fast.act_code``,
the gate) as it writes each output row.

NaN: in F(2x2, 3x3) each output of a tile depends, through the transforms, only on the
nine inputs of its own window (the rows and columns of ``B`` and ``A`` make a NaN reach
exactly the outputs whose window holds it), and the padding is zeros, so a NaN in ``x``
gives NaN in the outputs whose window holds it and in no other. F(4x4, 3x3)'s matrices mix
each tile's 36 inputs into all 16 outputs: a NaN also reaches the other outputs of the
tiles whose input block holds it. An infinity may give NaN where the direct convolution
gives +-inf (the transforms subtract it from itself).

Threads: one chunk of images joins its threads 18 times (38 for F(4x4, 3x3): the two
compiled transforms and the 16 or 36 BLAS products, each a parallel region), where the GEMM
convolution joins them two or three times. With threads to spare that costs little; at a fixed 2 threads on a 2-core
machine whose cores other processes keep busy, every join waits for a time slice, and the
kernel ran 2 to 30x slower than at 1 thread (the GEMM path 2 to 8x): the case
``runtime/threads.py``'s automatic count avoids by running one thread.

The weight transform ``U`` is recomputed on every call (a compiled pass over the weights)
unless the caller passes one: the kernel keeps no state, so weights updated in place
(training) can never meet a stale ``U`` (see ``weight_transform``). The inference executor
keeps one per layer (`prepared_transform`) and forgets them when told the weights changed
(`Model.mark_changed`; a weight file, an optimizer step and a restored checkpoint do so).
"""

from __future__ import annotations

import numpy as np

from .fast import (act_code, borrow, constants, finish_row, jit, keep, parallel,
                   usable)

# False turns the kernel off: ``winograd_conv2d`` returns False and the caller runs its
# GEMM convolution (the benchmark and the tests compare the two).
WINOGRAD = True
# False: the weight gradient of a 3x3 layer always comes from the column path (see
# `takes_weight_grad`).
GRADIENT = True
# Bytes of the transformed input ``V`` and output ``M`` of one chunk of images, together
# (``chunk_images``; at least one image a chunk). 2 to 32 MiB timed on ResNet-18's 3x3
# layers (benchmarks/bench_winograd.py --budgets) differed by less than the noise of the
# shared 2-core machine; 8 MiB keeps a chunk in its 32 MiB L3.
WORKSPACE_BYTES = 8 << 20
# The same for the weight gradient (`weight_grad`): its 16 products take the chunk's tiles
# as their inner dimension, so longer chunks make fewer, larger products.
GRAD_WORKSPACE_BYTES = 32 << 20
# Tile columns from which the input transform's rows are long enough for one vectorised
# loop per transform position (shorter ones: one fused loop, measured).
WIDE = 16
# ``worthwhile``'s thresholds (measured).
MIN_CHANNELS = 64
WIDE_CHANNELS = 128  # from here on, maps of any size (with fewer, 14 x 14 or larger)
MIN_MAP = 14
MIN_TILES = 64
U_CACHED_BYTES = 2 << 20
# F(4x4, 3x3) on maps at least this wide and high (`tile_for`).
TILE4_MAP = 28


# ---- the transforms ---------------------------------------------------------------------------
#        | 1    0    0  |           | 1  0 -1  0 |           | 1  1  1  0 |
#   G =  | 1/2  1/2  1/2|    B^T =  | 0  1  1  0 |    A^T =  | 0  1 -1 -1 |
#        | 1/2 -1/2  1/2|           | 0 -1  1  0 |
#        | 0    0    1  |           | 0  1  0 -1 |


@jit()
def _weight_transform(start, stop, w, u, half):
    """``u (16, O, C)`` = ``G g G^T`` of every kernel ``g = w[o, c] (3, 3)``; position
    ``k = 4*i + j`` of the 4x4 transform at ``u[k]``. Per output channel the nine taps are
    first gathered tap-major (``wt (9, C)``), so that every later loop runs over the input
    channels with one array written and contiguous reads (vectorised; the transform kernel
    by kernel ran scalar, 2x slower)."""
    c = w.shape[1]
    w, u = borrow(w), borrow(u)  # (views of borrowed arrays count no references)
    for oc in range(start, stop):  # jobs: o
        taps = np.empty((9, c), dtype=w.dtype)
        rows = np.empty((12, c), dtype=w.dtype)  # G g: rows i = 0..3, columns j = 0..2
        wt, t = borrow(taps), borrow(rows)
        flat = w[oc].reshape(c, 9)
        for ic in range(c):
            for tap in range(9):
                wt[tap, ic] = flat[ic, tap]
        for j in range(3):
            g0 = wt[j]
            g1 = wt[3 + j]
            g2 = wt[6 + j]
            d = t[j]
            for ic in range(c):
                d[ic] = g0[ic]
            d = t[3 + j]
            for ic in range(c):
                d[ic] = (g0[ic] + g1[ic] + g2[ic]) * half
            d = t[6 + j]
            for ic in range(c):
                d[ic] = (g0[ic] - g1[ic] + g2[ic]) * half
            d = t[9 + j]
            for ic in range(c):
                d[ic] = g2[ic]
        for i in range(4):
            a0 = t[3 * i]
            a1 = t[3 * i + 1]
            a2 = t[3 * i + 2]
            d = u[4 * i, oc]
            for ic in range(c):
                d[ic] = a0[ic]
            d = u[4 * i + 1, oc]
            for ic in range(c):
                d[ic] = (a0[ic] + a1[ic] + a2[ic]) * half
            d = u[4 * i + 2, oc]
            for ic in range(c):
                d[ic] = (a0[ic] - a1[ic] + a2[ic]) * half
            d = u[4 * i + 3, oc]
            for ic in range(c):
                d[ic] = a2[ic]
        keep(taps)
        keep(rows)


@jit()
def _input_transform(start, stop, x, n0, m, top, left, th, tw, v, block):
    """``v (16, C, m*th*tw)`` = ``B^T d B`` of every 4x4 tile ``d`` of images ``n0 .. n0+m``
    of ``x`` padded by ``top`` and ``left`` (and zeros past its end). One job per image and
    block of channels; each copies its planes into a zero-padded buffer (the padding stays
    zero from one channel to the next, only the interior is rewritten), applies ``B^T``
    down the columns of each band of four rows, then ``B`` along the band's rows, tile by
    tile.

    Rows of ``WIDE`` tiles or more: every inner loop writes one array and reads one or two,
    since LLVM vectorises a loop only where it can check at run time that its arrays do
    not overlap, and gives up past a few pairs (four outputs in one loop ran scalar,
    1.3x slower at 56x56). Shorter rows: one loop writes the four outputs of a transform
    row (there the many short loops cost more than they gain)."""
    c, h, wd = x.shape[1], x.shape[2], x.shape[3]
    hb = 2 * th + 2
    wb = 2 * tw + 2
    tiles = th * tw
    blocks = (c + block - 1) // block
    rows = min(h, hb - top)
    cols = min(wd, wb - left)
    x, v = borrow(x), borrow(v)
    for job in range(start, stop):  # jobs: m * blocks
        bi = job // blocks
        c0 = (job - bi * blocks) * block
        padded = np.zeros((hb, wb), dtype=x.dtype)
        bands = np.empty((4, wb), dtype=x.dtype)
        pad, t = borrow(padded), borrow(bands)
        t0 = t[0]
        t1 = t[1]
        t2 = t[2]
        t3 = t[3]
        for ch in range(c0, min(c, c0 + block)):
            for r in range(rows):
                src = x[n0 + bi, ch, r, :cols]
                dst = pad[r + top, left:left + cols]
                for q in range(cols):
                    dst[q] = src[q]
            for ty in range(th):
                r0 = pad[2 * ty]
                r1 = pad[2 * ty + 1]
                r2 = pad[2 * ty + 2]
                r3 = pad[2 * ty + 3]
                for q in range(wb):
                    t0[q] = r0[q] - r2[q]
                for q in range(wb):
                    t1[q] = r1[q] + r2[q]
                for q in range(wb):
                    t2[q] = r2[q] - r1[q]
                for q in range(wb):
                    t3[q] = r1[q] - r3[q]
                at = bi * tiles + ty * tw
                if tw < WIDE:  # short rows: one loop per row of the transform
                    for i in range(4):
                        ti = t[i]
                        for tx in range(tw):
                            a0 = ti[2 * tx]
                            a1 = ti[2 * tx + 1]
                            a2 = ti[2 * tx + 2]
                            a3 = ti[2 * tx + 3]
                            v[4 * i, ch, at + tx] = a0 - a2
                            v[4 * i + 1, ch, at + tx] = a1 + a2
                            v[4 * i + 2, ch, at + tx] = a2 - a1
                            v[4 * i + 3, ch, at + tx] = a1 - a3
                    continue
                for i in range(4):
                    ti = t[i]
                    d = v[4 * i, ch, at:at + tw]
                    for tx in range(tw):
                        d[tx] = ti[2 * tx] - ti[2 * tx + 2]
                    d = v[4 * i + 1, ch, at:at + tw]
                    for tx in range(tw):
                        d[tx] = ti[2 * tx + 1] + ti[2 * tx + 2]
                    d = v[4 * i + 2, ch, at:at + tw]
                    for tx in range(tw):
                        d[tx] = ti[2 * tx + 2] - ti[2 * tx + 1]
                    d = v[4 * i + 3, ch, at:at + tw]
                    for tx in range(tw):
                        d[tx] = ti[2 * tx + 1] - ti[2 * tx + 3]
        keep(padded)
        keep(bands)


@jit()
def _output_transform(start, stop, mm, n0, m, th, tw, out, scale, bias, has_scale, has_bias,
                      code, k, gate, has_gate, block):
    """``out[n0 .. n0+m]`` = the epilogue of ``A^T M A`` of every tile of ``mm (16, O,
    m*th*tw)``: each band of tiles becomes two output rows (the second one dropped past an
    odd height, the last column past an odd width), through scale, bias, activation and
    gate as they are copied into ``out``. (Split into one array written per loop, as the
    input transform, it ran 1.5-3x slower: the rows are short.)"""
    o = mm.shape[1]
    ho, wo = out.shape[2], out.shape[3]
    tiles = th * tw
    blocks = (o + block - 1) // block
    mm, out, scale, bias = borrow(mm), borrow(out), borrow(scale), borrow(bias)
    k, gate = borrow(k), borrow(gate)
    for job in range(start, stop):  # jobs: m * blocks
        bi = job // blocks
        o0 = (job - bi * blocks) * block
        b = n0 + bi
        columns = np.empty((4, tw), dtype=out.dtype)
        pair = np.empty((2, 2 * tw), dtype=out.dtype)
        e, y = borrow(columns), borrow(pair)
        for oc in range(o0, min(o, o0 + block)):
            g = scale[oc if has_scale else 0]
            s = bias[oc if has_bias else 0]
            f = gate[b if has_gate else 0, oc if has_gate else 0]
            for ty in range(th):
                at = bi * tiles + ty * tw
                # A^T down the columns of the tiles: e[j] = row 0 (m0 + m1 + m2) of
                # column j, then row 1 (m1 - m2 - m3); A along the rows
                for j in range(4):
                    for tx in range(tw):
                        e[j, tx] = (mm[j, oc, at + tx] + mm[4 + j, oc, at + tx]
                                    + mm[8 + j, oc, at + tx])
                for tx in range(tw):
                    y[0, 2 * tx] = e[0, tx] + e[1, tx] + e[2, tx]
                    y[0, 2 * tx + 1] = e[1, tx] - e[2, tx] - e[3, tx]
                finish_row(y[0, :wo], out[b, oc, 2 * ty], g, s, has_scale, has_bias, code, k,
                           f, has_gate)
                if 2 * ty + 1 < ho:
                    for j in range(4):
                        for tx in range(tw):
                            e[j, tx] = (mm[4 + j, oc, at + tx] - mm[8 + j, oc, at + tx]
                                        - mm[12 + j, oc, at + tx])
                    for tx in range(tw):
                        y[1, 2 * tx] = e[0, tx] + e[1, tx] + e[2, tx]
                        y[1, 2 * tx + 1] = e[1, tx] - e[2, tx] - e[3, tx]
                    finish_row(y[1, :wo], out[b, oc, 2 * ty + 1], g, s, has_scale,
                               has_bias, code, k, f, has_gate)
        keep(columns)
        keep(pair)


# ---- F(4x4, 3x3) ------------------------------------------------------------------------------
# Each 4x4 block of outputs from the 6x6 block of padded input around it: 36 products per 16
# outputs (2.25 per output, against F(2x2, 3x3)'s 4), the matrices of the Toom-Cook
# construction at the points 0, 1, -1, 1/2, -2 and infinity. The usual points 0, +-1, +-2 put
# the largest error of a float32 layer at about 1e-5 of its largest output; these put it at
# about 4e-6 (256 -> 256 at 14x14, ReLU inputs; the direct convolution's is about 1e-6), as
# the error analyses of Winograd convolution that prefer reciprocal pairs of points predict.
#
#          | 1   -3/2 -2    3/2  1   0 |          | 1     0     0   |
#          | 0   -1    1/2  5/2  1   0 |          | 1/3   1/3   1/3 |       | 1  1  1  1    1  0 |
#   B^T =  | 0    1   -5/2  1/2  1   0 |    G =   | -1/3  1/3  -1/3 | A^T = | 0  1 -1  1/2 -2  0 |
#          | 0   -2   -1    2    1   0 |          | -16/15 -8/15 -4/15|     | 0  1  1  1/4  4  0 |
#          | 0    1/2 -1   -1/2  1   0 |          | 1/15 -2/15  4/15|       | 0  1 -1  1/8 -8  1 |
#          | 0    1   -3/2 -2    3/2 1 |          | 0     0     1   |

_G4 = np.array([[1, 0, 0], [1 / 3, 1 / 3, 1 / 3], [-1 / 3, 1 / 3, -1 / 3],
                [-16 / 15, -8 / 15, -4 / 15], [1 / 15, -2 / 15, 4 / 15], [0, 0, 1]])
# the transforms' coefficients other than +-1, as the kernels read them (``_coefficients``)
_HALF, _ONE_HALF, _TWO, _FIVE_HALVES, _QUARTER, _FOUR, _EIGHTH, _EIGHT = range(8)


def _coefficients(dtype):
    return np.array([0.5, 1.5, 2.0, 2.5, 0.25, 4.0, 0.125, 8.0], dtype=dtype)


@jit()
def _weight_transform4(start, stop, w, u):
    """``u (36, O, C)`` = ``G g G^T`` of every kernel ``g = w[o, c] (3, 3)`` for F(4x4,
    3x3), computed in float64 and rounded once (G's thirds and fifteenths are not exact in
    binary). One job per output channel; the kernels of a channel one after another (the
    transform runs once per plan, `prepared_transform`)."""
    c = w.shape[1]
    w, u = borrow(w), borrow(u)
    third = 1.0 / 3.0
    fifteenth = 1.0 / 15.0
    t = np.empty((6, 3))
    for oc in range(start, stop):
        for ic in range(c):
            g = w[oc, ic]
            for j in range(3):  # G g, column j
                a0 = np.float64(g[0, j])
                a1 = np.float64(g[1, j])
                a2 = np.float64(g[2, j])
                t[0, j] = a0
                t[1, j] = (a0 + a1 + a2) * third
                t[2, j] = (a1 - a0 - a2) * third
                t[3, j] = -(16.0 * a0 + 8.0 * a1 + 4.0 * a2) * fifteenth
                t[4, j] = (a0 - 2.0 * a1 + 4.0 * a2) * fifteenth
                t[5, j] = a2
            for i in range(6):  # (G g) G^T, row i
                a0 = t[i, 0]
                a1 = t[i, 1]
                a2 = t[i, 2]
                u[6 * i, oc, ic] = a0
                u[6 * i + 1, oc, ic] = (a0 + a1 + a2) * third
                u[6 * i + 2, oc, ic] = (a1 - a0 - a2) * third
                u[6 * i + 3, oc, ic] = -(16.0 * a0 + 8.0 * a1 + 4.0 * a2) * fifteenth
                u[6 * i + 4, oc, ic] = (a0 - 2.0 * a1 + 4.0 * a2) * fifteenth
                u[6 * i + 5, oc, ic] = a2


def weight_transform4(w):
    """``U (36, O, C)``: ``G g G^T`` of every 3x3 kernel of ``w (O, C, 3, 3)`` for F(4x4,
    3x3), position ``k = 6*i + j`` of the 6x6 transform at ``u[k]``, in ``w``'s dtype."""
    w = np.ascontiguousarray(w)
    o, c = w.shape[:2]
    u = np.empty((36, o, c), dtype=w.dtype)
    parallel(_weight_transform4, o, w, u, values=u.size)
    return u


@jit()
def _input_transform4(start, stop, x, n0, m, top, left, th, tw, v, block, kc):
    """``v (36, C, m*th*(tw+1))`` = ``B^T d B`` of every 6x6 tile ``d`` (tiles 4 apart) of
    images ``n0 .. n0+m`` of ``x`` padded by ``top`` and ``left`` (and zeros past its end).

    One job per image and block of channels. Each plane is copied into a zero-padded
    buffer dealt out to 4 x 4 phases (padded row ``4*a + p``, column ``4*b + k`` at
    ``[p, k, a*(tw+1) + b]``), so that row ``j`` of every band of tiles, and column ``l`` of
    every tile, is one run of a phase at a fixed offset: both halves of the transform then
    run as loops over the whole plane at unit stride (a loop per band and tile column, as
    F(2x2, 3x3)'s, ran 1.5 to 2.3x slower here: loops of 4 to 14 iterations, read 4 apart).
    Each row of tiles carries one more tile, made of the padding and the next band's
    first columns, through the products; `_output_transform4` never reads it. So each of a
    channel's 36 rows of ``v`` is one run, written as computed: the tiles alone, copied
    out of a buffer a row of tiles at a time, made the transform 1.4x slower at 56x56 (7 %
    more products there, 14 % at 28x28)."""
    c, h, wd = x.shape[1], x.shape[2], x.shape[3]
    tw1 = tw + 1
    span = th * tw1  # a phase's rows of tiles, with the extra column
    hb = 4 * th + 2
    wb = 4 * tw + 2
    blocks = (c + block - 1) // block
    rows = min(h, hb - top)
    cols = min(wd, wb - left)
    x, v, kc = borrow(x), borrow(v), borrow(kc)
    half = kc[_HALF]
    one_half = kc[_ONE_HALF]
    two = kc[_TWO]
    five_halves = kc[_FIVE_HALVES]
    for job in range(start, stop):  # jobs: m * blocks
        bi = job // blocks
        c0 = (job - bi * blocks) * block
        padded = np.zeros((4, 4, (th + 1) * tw1), dtype=x.dtype)
        bands = np.zeros((6, 4, span + 1), dtype=x.dtype)  # B^T d: [i, column phase, ...]
        pad, t = borrow(padded), borrow(bands)
        for ch in range(c0, min(c, c0 + block)):
            for r in range(rows):
                src = x[n0 + bi, ch, r]
                at = ((r + top) // 4) * tw1
                for k in range(4):  # padded column 4*q + k is source column 4*q + k - left
                    lo = max(0, (left - k + 3) // 4)
                    hi = min(tw1, (cols + left - k + 3) // 4)
                    dst = pad[(r + top) % 4, k, at:at + tw1]
                    for q in range(lo, hi):
                        dst[q] = src[4 * q + k - left]
            for k in range(4):  # B^T down the columns: band rows 4*a + j, j = 0 .. 5
                r0 = pad[0, k, :span]
                r1 = pad[1, k, :span]
                r2 = pad[2, k, :span]
                r3 = pad[3, k, :span]
                r4 = pad[0, k, tw1:tw1 + span]
                r5 = pad[1, k, tw1:tw1 + span]
                d = t[0, k]
                for q in range(span):
                    d[q] = r0[q] - two * r2[q] + r4[q] + one_half * (r3[q] - r1[q])
                d = t[1, k]
                for q in range(span):
                    d[q] = half * r2[q] + five_halves * r3[q] + r4[q] - r1[q]
                d = t[2, k]
                for q in range(span):
                    d[q] = r1[q] - five_halves * r2[q] + half * r3[q] + r4[q]
                d = t[3, k]
                for q in range(span):
                    d[q] = two * (r3[q] - r1[q]) - r2[q] + r4[q]
                d = t[4, k]
                for q in range(span):
                    d[q] = half * (r1[q] - r3[q]) - r2[q] + r4[q]
                d = t[5, k]
                for q in range(span):
                    d[q] = r1[q] - two * r3[q] + r5[q] + one_half * (r4[q] - r2[q])
            base = bi * span
            for i in range(6):  # B along the rows: tile columns 4*b + l, l = 0 .. 5
                p0 = t[i, 0, :span]
                p1 = t[i, 1, :span]
                p2 = t[i, 2, :span]
                p3 = t[i, 3, :span]
                p4 = t[i, 0, 1:span + 1]
                p5 = t[i, 1, 1:span + 1]
                d = v[6 * i, ch, base:base + span]
                for q in range(span):
                    d[q] = p0[q] - two * p2[q] + p4[q] + one_half * (p3[q] - p1[q])
                d = v[6 * i + 1, ch, base:base + span]
                for q in range(span):
                    d[q] = half * p2[q] + five_halves * p3[q] + p4[q] - p1[q]
                d = v[6 * i + 2, ch, base:base + span]
                for q in range(span):
                    d[q] = p1[q] - five_halves * p2[q] + half * p3[q] + p4[q]
                d = v[6 * i + 3, ch, base:base + span]
                for q in range(span):
                    d[q] = two * (p3[q] - p1[q]) - p2[q] + p4[q]
                d = v[6 * i + 4, ch, base:base + span]
                for q in range(span):
                    d[q] = half * (p1[q] - p3[q]) - p2[q] + p4[q]
                d = v[6 * i + 5, ch, base:base + span]
                for q in range(span):
                    d[q] = p1[q] - two * p3[q] + p5[q] + one_half * (p4[q] - p2[q])
        keep(padded)
        keep(bands)


@jit()
def _output_transform4(start, stop, mm, n0, m, th, tw, out, scale, bias, has_scale, has_bias,
                       code, k, gate, has_gate, block, kc):
    """``out[n0 .. n0+m]`` = the epilogue of ``A^T M A`` of every tile of ``mm (36, O,
    m*th*(tw+1))``: each band of tiles becomes four output rows (those past the height
    dropped, the columns past the width cut, the extra tile of each row of tiles never
    read), through `finish_row`. Each channel's 36 rows of ``mm`` are first copied whole into
    a buffer (read in place, 36 short runs a band a page apart each, the transform took
    1.27x the time at 56x56; the same at 28x28)."""
    o = mm.shape[1]
    ho, wo = out.shape[2], out.shape[3]
    tiles = th * (tw + 1)  # each row of tiles carries one more (`_tiles`), dropped here
    blocks = (o + block - 1) // block
    mm, out, scale, bias = borrow(mm), borrow(out), borrow(scale), borrow(bias)
    k, gate, kc = borrow(k), borrow(gate), borrow(kc)
    half = kc[_HALF]
    two = kc[_TWO]
    quarter = kc[_QUARTER]
    four = kc[_FOUR]
    eighth = kc[_EIGHTH]
    eight = kc[_EIGHT]
    for job in range(start, stop):  # jobs: m * blocks
        bi = job // blocks
        o0 = (job - bi * blocks) * block
        b = n0 + bi
        columns = np.empty((4, 6, tw), dtype=out.dtype)
        row = np.empty(4 * tw, dtype=out.dtype)
        plane = np.empty((36, tiles), dtype=out.dtype)  # one channel's M
        e, y, ml = borrow(columns), borrow(row), borrow(plane)
        for oc in range(o0, min(o, o0 + block)):
            g = scale[oc if has_scale else 0]
            s = bias[oc if has_bias else 0]
            f = gate[b if has_gate else 0, oc if has_gate else 0]
            base = bi * tiles
            for pos in range(36):
                src = mm[pos, oc, base:base + tiles]
                dst = ml[pos]
                for q in range(tiles):
                    dst[q] = src[q]
            for ty in range(th):
                at = ty * (tw + 1)
                # A^T down the columns of the tiles: e[r, j] = row r of column j
                for j in range(6):
                    for tx in range(tw):
                        m0 = ml[j, at + tx]
                        m1 = ml[6 + j, at + tx]
                        m2 = ml[12 + j, at + tx]
                        m3 = ml[18 + j, at + tx]
                        m4 = ml[24 + j, at + tx]
                        m5 = ml[30 + j, at + tx]
                        e[0, j, tx] = m0 + m1 + m2 + m3 + m4
                        e[1, j, tx] = m1 - m2 + half * m3 - two * m4
                        e[2, j, tx] = m1 + m2 + quarter * m3 + four * m4
                        e[3, j, tx] = m1 - m2 + eighth * m3 - eight * m4 + m5
                for r in range(min(4, ho - 4 * ty)):
                    er = e[r]
                    for tx in range(tw):  # A along the rows
                        a0 = er[0, tx]
                        a1 = er[1, tx]
                        a2 = er[2, tx]
                        a3 = er[3, tx]
                        a4 = er[4, tx]
                        a5 = er[5, tx]
                        y[4 * tx] = a0 + a1 + a2 + a3 + a4
                        y[4 * tx + 1] = a1 - a2 + half * a3 - two * a4
                        y[4 * tx + 2] = a1 + a2 + quarter * a3 + four * a4
                        y[4 * tx + 3] = a1 - a2 + eighth * a3 - eight * a4 + a5
                    finish_row(y[:wo], out[b, oc, 4 * ty + r], g, s, has_scale, has_bias,
                               code, k, f, has_gate)
        keep(columns)
        keep(row)
        keep(plane)


# ---- the kernel ------------------------------------------------------------------------------


def applies(x, w, stride=(1, 1), dilation=(1, 1), groups=1) -> bool:
    """Whether ``winograd_conv2d`` takes this convolution: a 3x3 kernel at stride 1,
    dilation 1, one group, NumPy float32 or float64 arrays with numba on."""
    return (WINOGRAD and tuple(w.shape[2:]) == (3, 3) and tuple(stride) == (1, 1)
            and tuple(dilation) == (1, 1) and groups == 1 and x.ndim == 4
            and w.shape[1] == x.shape[1] and usable(x, w))


def worthwhile(n, c, o, ho, wo, itemsize=4, have_u=False) -> bool:
    """Whether the Winograd kernel is expected to beat the GEMM convolution on this layer
    (measured on the 2-core AVX2 machine, benchmarks/bench_winograd.py and smaller
    layers). Not with few input channels, where the transforms cost more than the smaller
    GEMMs save (one thread, batch 32: 16 -> 16 ran 1.4 to 3.1x slower at 4 to 28 wide;
    64 -> 64 1.1 to 1.9x slower at 4 and 8 wide, even or faster from 14; 256 -> 256 1.35
    to 1.9x faster at every size; 3 -> 64 at 56x56 1.1 to 1.7x slower): so not under
    ``MIN_CHANNELS``, nor under ``WIDE_CHANNELS`` on maps smaller than ``MIN_MAP``. And not
    where the weight transform is recomputed for few tiles, ``n * ceil(Ho/2) * ceil(Wo/2)
    < MIN_TILES``, while ``U`` outgrows the caches (``16 * O * C`` values over
    ``U_CACHED_BYTES``): 512 -> 512 at 7x7 ran 1.1 to 1.5x slower at batch 1 and 2."""
    if c < MIN_CHANNELS or (c < WIDE_CHANNELS and min(ho, wo) < MIN_MAP):
        return False
    tiles = n * ((ho + 1) // 2) * ((wo + 1) // 2)
    return have_u or tiles >= MIN_TILES or 16 * o * c * itemsize <= U_CACHED_BYTES


def tile_for(ho, wo, prepared=False) -> int:
    """The output tile of a layer's Winograd convolution: 4 (F(4x4, 3x3)) on maps of at
    least ``TILE4_MAP`` on both sides when the caller keeps the weight transform
    (``prepared``: an inference plan, see `prepared_transform`), else 2.

    F(4x4, 3x3) multiplies 1.78x less than F(2x2, 3x3), but its transforms cost more per
    output, each row of tiles carries one more through the products (`_input_transform4`:
    7 % more at 56x56, 14 % at 28x28) and a small map wastes more of its tiles (14 wide:
    16 columns and the extra tile, 20 in all). One
    thread, batch 4, each the whole layer against F(2x2, 3x3) (`benchmarks/bench_winograd.py
    --tiles`): 64 -> 64 at 56x56 1.19-1.26x faster, 128 -> 128 at 28x28 1.03-1.28x,
    96 -> 128 and 128 -> 192 at 28x28 1.10-1.30x, 64 -> 192 at 56x56 1.31x; 256 -> 256 at
    14x14 0.76-0.99x, 512 -> 512 at 7x7 0.83-1.0x and GoogLeNet's 14x14 and 7x7 layers
    0.82-0.89x, so those keep F(2x2, 3x3). Its weight transform (4x the weights, in float64
    rounded once) is computed once per plan, not per call, and training, which updates the
    weights between calls, keeps F(2x2, 3x3): its results do not change."""
    return 4 if prepared and min(ho, wo) >= TILE4_MAP else 2


def _transform(w, tile):
    """``U`` of ``w`` for ``tile`` 2 (`weight_transform`) or 4 (`weight_transform4`)."""
    w = np.ascontiguousarray(w)
    return weight_transform(w) if tile == 2 else weight_transform4(w)


def _tiles(th, tw, tile):
    """Tiles an image takes in ``V`` and ``M``: F(4x4, 3x3) carries one more a row of tiles
    (`_input_transform4`)."""
    return th * tw if tile == 2 else th * (tw + 1)


def prepared_transform(w, ho, wo, prepared):
    """``(U, tile)`` of a layer of weights ``w`` and output map ``ho x wo``, from the
    caller's ``prepared`` (an `ops.base.PreparedLayer`): kept there on first use, F(4x4,
    3x3)'s where `tile_for` picks it, else F(2x2, 3x3)'s, within the plan's budget; past
    the budget ``(None, 2)`` (computed on every call, as without ``prepared``)."""
    o, c = w.shape[:2]
    for tile in (4, 2) if tile_for(ho, wo, True) == 4 else (2,):
        positions = (tile + 2) ** 2
        u = prepared.kept(("winograd", tile, w.dtype.str), positions * o * c * w.itemsize,
                          lambda: _transform(w, tile), source=w)
        if u is not None:
            return u, tile
    return None, 2


def weight_transform(w):
    """``U (16, O, C)``: ``G g G^T`` of every 3x3 kernel of ``w (O, C, 3, 3)``, in ``w``'s
    dtype.

    Not cached here: a cache keyed on the array's identity serves a stale ``U`` once
    training updates the weights in place, and a safe key (a copy of the weights to
    compare, or a hash of them) reads the weights once more, which is a good part of what
    the transform itself costs (one compiled pass writing 16/9 of the weights' bytes). A
    caller that knows the weights are frozen (an inference plan) may keep ``U`` per layer
    and pass it to ``winograd_conv2d(..., u=U)``: it matters at batch 1 on wide layers
    (the benchmark's ``U ms`` column against the layer's time)."""
    o, c = w.shape[:2]
    u = np.empty((16, o, c), dtype=w.dtype)
    parallel(_weight_transform, o, w, u, w.dtype.type(0.5), values=u.size)
    return u


def chunk_images(n, c, o, tiles, itemsize, budget=None, positions=16):
    """Images per chunk: ``V (positions, C, tiles)`` and ``M (positions, O, tiles)`` of the
    chunk within ``budget`` bytes (``WORKSPACE_BYTES``), at least one image."""
    budget = WORKSPACE_BYTES if budget is None else budget
    per_image = positions * (c + o) * tiles * itemsize
    return max(1, min(n, budget // max(1, per_image)))


def _block(jobs_per_block, count):
    """Channels per parallel job: a few per job to share its buffers, while leaving several
    jobs per thread (the last ones balance the load)."""
    return max(1, min(16, (jobs_per_block * count) // 64))


def _input_chunk(x, n0, m, top, left, th, tw, vbuf, block, tile=2):
    """``V (16, C, m*th*tw)`` of images ``n0 .. n0+m`` (`_input_transform`), in the start of
    the flat buffer ``vbuf``; ``tile=4``: ``V (36, ...)`` for F(4x4, 3x3)."""
    c = x.shape[1]
    positions = (tile + 2) ** 2
    per_image = _tiles(th, tw, tile)
    v = vbuf[:positions * c * m * per_image].reshape(positions, c, m * per_image)
    if tile == 2:
        parallel(_input_transform, m * -(-c // block), x, n0, m, top, left, th, tw, v, block,
                 values=v.size)
    else:
        parallel(_input_transform4, m * -(-c // block), x, n0, m, top, left, th, tw, v,
                 block, _coefficients(x.dtype), values=v.size)
    return v


def winograd_conv2d(x, w, b, scale, act, out, pads, gate=None, u=None, tile=2) -> bool:
    """A 3x3, stride-1, dilation-1, ungrouped CONV2D of ``x (N, C, H, W)`` (C-contiguous)
    by ``w (O, C, 3, 3)`` into ``out (N, O, Ho, Wo)`` (contiguous rows: a channel slice of
    a larger array works), padded by ``pads = (top, bottom, left, right)``:
    ``out = act(conv * scale + b) * gate``, ``scale`` and ``b`` ``(O,)`` or None, ``gate``
    ``(N, O)`` or None, ``act`` as ``fast.act_code`` takes it.

    Returns False, having written nothing, when it does not apply: the activation is not
    one the compiled epilogue has (``act_code(act)`` is None), the arrays are not what the
    compiled kernels take (``fast.usable``), the kernel is not 3x3. Else True, with every
    output written. ``u``: ``weight_transform(w)`` computed beforehand by a caller that
    knows ``w`` has not changed since (None: computed here, every call). ``tile``: 2 for
    F(2x2, 3x3), 4 for F(4x4, 3x3) (``u`` then from `weight_transform4`)."""
    if not WINOGRAD:
        return False
    if not usable(x, w, b, scale, out, gate):
        return False
    code = act_code(act, x.dtype)
    if code is None:
        return False
    if x.ndim != 4 or w.ndim != 4 or tuple(w.shape[2:]) != (3, 3) or w.shape[1] != x.shape[1]:
        return False
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    code, alpha, beta = code
    n, c, h, wd = x.shape
    o = w.shape[0]
    top, bottom, left, right = (int(p) for p in pads)
    ho, wo = h + top + bottom - 2, wd + left + right - 2
    if min(top, bottom, left, right) < 0 or ho < 1 or wo < 1:
        return False
    if tuple(out.shape) != (n, o, ho, wo):
        raise ValueError(f"winograd_conv2d: out must be {[n, o, ho, wo]}, got "
                         f"{list(out.shape)}")
    if tile not in (2, 4):
        raise ValueError(f"winograd_conv2d: tile must be 2 or 4, got {tile!r}")
    positions = (tile + 2) ** 2
    th, tw = -(-ho // tile), -(-wo // tile)
    tiles = _tiles(th, tw, tile)
    if u is None:
        u = _transform(w, tile)
    elif u.shape != (positions, o, c) or u.dtype != x.dtype:
        raise ValueError(f"winograd_conv2d: u must be [{positions}, {o}, {c}] {x.dtype}, "
                         f"got {list(u.shape)} {u.dtype}")
    dtype = x.dtype
    nb = chunk_images(n, c, o, tiles, x.itemsize, positions=positions)
    vbuf = np.empty(positions * c * nb * tiles, dtype=dtype)
    mbuf = np.empty(positions * o * nb * tiles, dtype=dtype)
    dummy = np.zeros(1, dtype=dtype)
    k = constants(dtype, alpha, beta)
    in_block = _block(min(n, nb), c)
    out_block = _block(min(n, nb), o)
    has_gate = gate is not None
    epilogue = (dummy if scale is None else scale, dummy if b is None else b,
                scale is not None, b is not None, code, k,
                gate if has_gate else dummy.reshape(1, 1), has_gate, out_block)
    for n0 in range(0, n, nb):
        m = min(nb, n - n0)
        v = _input_chunk(x, n0, m, top, left, th, tw, vbuf, in_block, tile)
        mm = mbuf[:positions * o * m * tiles].reshape(positions, o, m * tiles)
        np.matmul(u, v, out=mm)
        if tile == 2:
            parallel(_output_transform, m * -(-o // out_block), mm, n0, m, th, tw, out,
                     *epilogue, values=mm.size)
        else:
            parallel(_output_transform4, m * -(-o // out_block), mm, n0, m, th, tw, out,
                     *epilogue, _coefficients(dtype), values=mm.size)
    return True


# ---- the weight gradient ---------------------------------------------------------------------
#   dL/dM = A dY A^T (dY a tile's 2x2 output gradient),   dL/dU[k] = sum over tiles of
#   dL/dM[k] * V[k], one product per position k, and dL/dg = G^T (dL/dU) G: 16 products of
#   (O, P) by (P, C) where the column matrix's product is one of (O, N*Ho*Wo) by
#   (N*Ho*Wo, 9C): 2.25x fewer multiplications, and no column matrix.

@jit()
def _output_grad_transform(start, stop, dy, th, tw, into, block):
    """``into (16, O, m*th*tw)`` = ``A dY A^T`` of every 2x2 tile of ``dy (m, O, Ho, Wo)``
    (zeros past an odd edge), tiles image-major as the input transform's. One job per
    image and block of channels: a band of two rows, padded to ``2*tw`` wide, becomes
    four rows (A down the columns), each then four runs of ``into`` (A along the rows),
    one array written per loop as in the input transform. (In NumPy, slices and sums of
    whole arrays, it took longer than the 16 products it feeds.)"""
    m, o, ho, wo = dy.shape
    tiles = th * tw
    blocks = (o + block - 1) // block
    dy, into = borrow(dy), borrow(into)
    for job in range(start, stop):  # jobs: m * blocks
        b = job // blocks
        o0 = (job - b * blocks) * block
        band = np.zeros((2, 2 * tw), dtype=dy.dtype)
        combos = np.empty((4, 2 * tw), dtype=dy.dtype)
        pair, t = borrow(band), borrow(combos)
        t0, t1, t2, t3 = t[0], t[1], t[2], t[3]
        for oc in range(o0, min(o, o0 + block)):
            plane = dy[b, oc]
            for ty in range(th):
                top = pair[0]
                bottom = pair[1]
                src = plane[2 * ty]
                for q in range(wo):
                    top[q] = src[q]
                if 2 * ty + 1 < ho:
                    src = plane[2 * ty + 1]
                    for q in range(wo):
                        bottom[q] = src[q]
                else:  # an odd height: the last tile's second row is zeros
                    for q in range(wo):
                        bottom[q] = 0
                for q in range(2 * tw):
                    t0[q] = top[q]
                for q in range(2 * tw):
                    t1[q] = top[q] + bottom[q]
                for q in range(2 * tw):
                    t2[q] = top[q] - bottom[q]
                for q in range(2 * tw):
                    t3[q] = -bottom[q]
                at = b * tiles + ty * tw
                for i in range(4):
                    ti = t[i]
                    d = into[4 * i, oc, at:at + tw]
                    for tx in range(tw):
                        d[tx] = ti[2 * tx]
                    d = into[4 * i + 1, oc, at:at + tw]
                    for tx in range(tw):
                        d[tx] = ti[2 * tx] + ti[2 * tx + 1]
                    d = into[4 * i + 2, oc, at:at + tw]
                    for tx in range(tw):
                        d[tx] = ti[2 * tx] - ti[2 * tx + 1]
                    d = into[4 * i + 3, oc, at:at + tw]
                    for tx in range(tw):
                        d[tx] = -ti[2 * tx + 1]
        keep(band)
        keep(combos)


def _weight_from_transform(grad_u):
    """``G^T dU G`` of ``grad_u (4, 4, O, C)``: ``(O, C, 3, 3)``, G's zeros and halves
    written out (numpy's tensordot copied its operands into shape twice: 30 ms at
    512 x 512)."""
    o, c = grad_u.shape[2:]
    half = grad_u.dtype.type(0.5)
    rows = []  # T[i] (3 columns) = U[i] G
    for i in range(4):
        u0, u1, u2, u3 = grad_u[i]
        mid = (u1 + u2) * half
        rows.append((u0 + mid, (u1 - u2) * half, mid + u3))
    out = np.empty((o, c, 3, 3), dtype=grad_u.dtype)
    for b in range(3):  # gW[a, b] = (G^T T)[a, b]
        c0, c1, c2, c3 = (rows[i][b] for i in range(4))
        mid = (c1 + c2) * half
        out[:, :, 0, b] = c0 + mid
        out[:, :, 1, b] = (c1 - c2) * half
        out[:, :, 2, b] = mid + c3
    return out


def takes_weight_grad(x, w, geometry, out_hw) -> bool:
    """Whether `weight_grad` computes this layer's weight gradient (conv2d_backward asks;
    else the column path): where the forward would run Winograd (`applies`,
    `worthwhile`), on maps of at least ``MIN_MAP``. A ResNet-18 SGD step at batch 8 took
    0.89-0.93 of the time at one thread; at two threads inside each product it was 1.02-1.08
    (its 16 products a chunk share two BLAS threads worse than the column path's one long
    product), but a training step now runs large convolutions a share of the images a
    thread (`Model._lanes`), and the rule does not depend on the thread count, so that a
    step computes the same at any count. 512 -> 512 at 7x7 ran 1.3x slower (128 tiles:
    products too short)."""
    stride, dilation, _, groups = geometry
    n, c = x.shape[:2]
    ho, wo = out_hw
    return (GRADIENT and min(ho, wo) >= MIN_MAP
            and applies(x, w, stride, dilation, groups)
            and worthwhile(n, c, w.shape[0], ho, wo, x.itemsize))


def weight_grad(x, dy, pads):
    """``gW (O, C, 3, 3)`` of a 3x3, stride-1, dilation-1, ungrouped CONV2D of ``x (N, C,
    H, W)`` padded by ``pads = (top, bottom, left, right)``, from the output gradient
    ``dy (N, O, Ho, Wo)``, by Winograd F(2x2, 3x3) (the column path takes the others:
    `applies`). In chunks of images as the forward (``chunk_images``): the input
    and output gradient transforms (compiled), 16 products summed."""
    x = np.ascontiguousarray(x)
    dy = np.ascontiguousarray(dy, dtype=x.dtype)
    n, c, h, wd = x.shape
    o, ho, wo = dy.shape[1:]
    top, left = int(pads[0]), int(pads[2])
    th, tw = (ho + 1) // 2, (wo + 1) // 2
    tiles = th * tw
    nb = chunk_images(n, c, o, tiles, x.itemsize, GRAD_WORKSPACE_BYTES)
    vbuf = np.empty(16 * c * nb * tiles, dtype=x.dtype)
    ybuf = np.empty(16 * o * nb * tiles, dtype=x.dtype)
    in_block = _block(min(n, nb), c)
    out_block = _block(min(n, nb), o)
    grad_u = np.zeros((16, o, c), dtype=x.dtype)
    part = np.empty_like(grad_u) if nb < n else None
    for n0 in range(0, n, nb):
        m = min(nb, n - n0)
        v = _input_chunk(x, n0, m, top, left, th, tw, vbuf, in_block)
        yhat = ybuf[:16 * o * m * tiles].reshape(16, o, m * tiles)
        parallel(_output_grad_transform, m * -(-o // out_block), dy[n0:n0 + m], th, tw, yhat,
                 out_block, values=yhat.size)
        if part is None:
            np.matmul(yhat, v.transpose(0, 2, 1), out=grad_u)
        else:
            np.matmul(yhat, v.transpose(0, 2, 1), out=part)
            grad_u += part
    return _weight_from_transform(grad_u.reshape(4, 4, o, c))


__all__ = ["winograd_conv2d", "weight_transform", "weight_grad", "takes_weight_grad",
           "applies", "worthwhile", "chunk_images"]
