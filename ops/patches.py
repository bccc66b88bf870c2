"""Strided convolutions (a stem's 7x7 at stride 2, ResNet's 3x3 and 1x1 at stride 2) as
register tiles over patches gathered from phase planes, the epilogue applied in registers.

Where OpenBLAS runs them (`ops/conv._conv_shifted`), the column matrix of the shifted
phase planes is built for the whole image, a quarter of its columns at stride 2 are
computed and dropped, and the epilogue is a pass of its own: ResNet-18's 7x7 stem ran at 42
GFLOP/s inside the network where ONNX Runtime's blocked kernels ran 73, its stride-2 3x3
layers at 47 against 72.

Here each image is first laid out as the phase planes of its zero-padded self
(``fast.phase_copy``): padded row ``R`` and column ``C`` at phase ``(R % sh, C % sw)``,
position ``(R // sh, C // sw)``. Tap ``(i, j)`` of consecutive output pixels of a row then
reads consecutive values of one phase plane, so a strip of ``NR`` output pixels (the
flattened map, which may run across rows) reads its patch, ``K = C*kh*kw`` rows of ``NR``
values, from its block's patch rows, each gathered as a run of plain copies per output row.
The input channels and taps come ``DEPTH`` at a time: the strip (``DEPTH x NR`` values, in
L1) meets every panel of ``MR`` output channels in the tile of ``ops/pointwise.py``
(`pointwise._tile`), whose sums stay in registers through the depth and are added to the
stored ones at the next depth; the last applies the scale, the bias and the activation. A block of strips (output pixels of the flattened batch) keeps its
partial sums in the output (in L2); a strip that runs across images, or a block's narrower
last one, keeps them in a small buffer, scattered into the images at the end.

Jobs are the blocks, shared among ``fast.parallel``'s threads; a result does not depend
on the thread count. Float32, where the tiles run
(``pointwise.CHOSEN_HERE``); the activations the tile applies, no gate. Elsewhere the
caller keeps its GEMM.
"""

from __future__ import annotations

import os

import numpy as np

from . import pointwise
from .fast import borrow, contiguous, jit, keep, numba, phase_copy, usable
from .pointwise import MR, NR

# False (or ``CNNC_PATCHES=0``) turns the kernel off: the caller runs its GEMM.
PATCHES = os.environ.get("CNNC_PATCHES", "1").strip() not in ("0", "off")
# Input channels times taps per depth (a strip of DEPTH x NR float32, 24 KiB, in L1).
DEPTH = 256
# Output columns per job: a block's partial sums (O x columns) and its strips' patches stay
# in L2 between depths.
OUT_BLOCK_BYTES = 1 << 18
BLOCK_BYTES = 1 << 17
# Layers of more weights than this keep the GEMM: every block of output pixels meets every
# weight, which, past L2, is read again from memory for each block, where OpenBLAS's GEMM
# reads it once a call. One thread, batch 4, two runs in turns against the shifted-rows GEMM
# (ResNet-18's layers): the 7x7 stem 0.56-0.67x the time, 64 -> 128 3x3 at stride 2
# 0.76-0.90x, 128 -> 256 (1.2 MiB of weights) 0.89-0.92x, the 1x1 shortcuts 0.69-0.81x
# (1.02-1.06x for 256 -> 512); but 256 -> 512 3x3 (4.5 MiB) 1.18-1.70x (1.0-1.1x with
# larger blocks or shallower depths, or each panel meeting every strip). MobileNet's 3x3
# stems, which the direct loop ran before (`conv.DIRECT_CHANNELS`), 0.90-1.00x.
WEIGHT_BYTES = 2 << 20


def applies(x, w, stride, gate, act) -> bool:
    """Whether `patches_conv2d` runs this (ungrouped) convolution: float32 where the tiles
    are chosen, a stride of 2 or more, no gate, an activation the tile applies, weights of
    at most ``WEIGHT_BYTES``."""
    if not (PATCHES and pointwise.CHOSEN_HERE and numba is not None and gate is None
            and max(stride) >= 2 and x.dtype == np.float32 and usable(x, w)
            and w.size * 4 <= WEIGHT_BYTES):
        return False
    code = pointwise.act_code(act, x.dtype)
    return code is not None and code[0] in pointwise.IN_TILE


@jit()
def _layout(start, stop, x, phases, top, left, sh, sw):
    """Planes ``start .. stop - 1`` of ``x (N, C, H, W)`` into ``phases (N, C, sh*sw, Hq+1,
    Wq)``, zeros from the start (the padding's cells stay so)."""
    c = x.shape[1]
    for p in range(start, stop):
        img = p // c
        phase_copy(x[img, p - img * c], phases[img, p - img * c], top, left, sh, sw, True)


@jit()
def _patches(start, stop, packed, phases, out, gain, shift, act, alpha, beta, kh, kw, sh, sw,
             dh, dw, ho, wo, per_block, blocks, depth):
    """Column blocks ``start .. stop - 1`` of ``blocks`` (``per_block`` output pixels each
    of the flattened batch, ``N*Ho*Wo``): ``out (N, O, Ho*Wo)`` from the phase planes
    ``phases (N, C, sh*sw, Hq+1, Wq)`` and the packed weights (``pointwise._pack_weights``
    of ``(O, C*kh*kw)``), ``depth`` rows of the patch at a time."""
    n, c, phase_count = phases.shape[0], phases.shape[1], phases.shape[2]
    rows_q, wq = phases.shape[3], phases.shape[4]
    o = out.shape[1]
    hw = ho * wo
    cols = n * hw
    kk_all = c * kh * kw
    panels = (o + MR - 1) // MR
    on, oc = out.strides[0] // 4, out.strides[1] // 4
    most = per_block // NR + 1
    # (+ NR: a narrower last strip's tile reads NR values of each row)
    buffer = np.empty(depth * per_block + NR, dtype=np.float32)
    buffer[:] = 0.0
    # the sums of strips that run across images or are narrower, (strip, panel, MR, NR),
    # scattered into the images at the end of their block
    scratch = np.empty(most * panels * MR * NR, dtype=np.float32)
    buf, tmp = borrow(buffer), borrow(scratch)
    out_data, tmp_data = out.ctypes.data, scratch.ctypes.data
    flat = borrow(phases).reshape(-1)
    out, packed = borrow(out), borrow(packed)
    gain, shift = borrow(gain), borrow(shift)
    plane = rows_q * wq
    for block in range(start, stop):
        c0 = block * per_block
        c1 = min(cols, c0 + per_block)
        width = c1 - c0
        strips = (width + NR - 1) // NR
        for k0 in range(0, kk_all, depth):
            kn = min(depth, kk_all - k0)
            # patch row kk (channel ch, tap (i, j)) of the block's pixels at
            # buf[kk*width:][:width]: a run of copies per output row the block meets
            for kk in range(kn):
                k = k0 + kk
                ch = k // (kh * kw)
                i = (k // kw) % kh
                j = k % kw
                phase = (i * dh) % sh * sw + (j * dw) % sw
                tap = phase * plane + (i * dh) // sh * wq + (j * dw) // sw
                u = 0
                while u < width:
                    col = c0 + u
                    img = col // hw
                    oy = (col - img * hw) // wo
                    ox = col - img * hw - oy * wo
                    run = min(wo - ox, width - u)
                    at = (img * c + ch) * phase_count * plane + tap + oy * wq + ox
                    to = kk * width + u
                    src = flat[at:at + run]  # (views, indexed from 0: the copy vectorises;
                    dst = buf[to:to + run]  # indexed at an offset, it ran 5x slower)
                    for r in range(run):
                        dst[r] = src[r]
                    u += run
            more = k0 > 0
            last = k0 + kn == kk_all
            for t in range(strips):
                first = c0 + t * NR
                img = first // hw
                direct = first - img * hw + NR <= hw and first + NR <= c1
                for m in range(panels):
                    m0 = m * MR
                    rows = min(MR, o - m0)
                    if direct:
                        target = out_data
                        at_out, row_step = img * on + m0 * oc + first - img * hw, oc
                    else:
                        target, at_out, row_step = tmp_data, (t * panels + m) * MR * NR, NR
                    pointwise._tile(packed, m0 * kk_all + k0 * MR, buf, t * NR, width, kn,
                                    target, at_out, row_step, gain, shift, m0, act, alpha,
                                    beta, rows, more, last)
        for t in range(strips):  # the strips kept in ``tmp``, into their images
            first = c0 + t * NR
            img = first // hw
            if first - img * hw + NR > hw or first + NR > c1:
                pointwise.scatter_strip(tmp, out, t, panels, first, min(NR, c1 - first), 0, o)
    keep(buffer)
    keep(scratch)


def patches_conv2d(x, w, b, scale, act, out, stride, pads, dilation, prepared=None) -> bool:
    """``out (N, O, Ho, Wo)`` (each channel's map contiguous) = the convolution of ``x (N, C,
    H, W)`` by ``w (O, C, kh, kw)`` at ``stride``, zero padding ``pads`` (top, bottom, left,
    right) and ``dilation``, times ``scale``, plus ``b``, through ``act``. Returns False
    (nothing written) where the kernel does not take it (`applies` first): the caller runs
    its GEMM. ``prepared``: the layer's `ops.base.PreparedLayer`, where the packed weights
    are kept."""
    code = pointwise.act_code(act, x.dtype)
    if code is None or code[0] not in pointwise.IN_TILE:
        return False
    code, alpha, beta = code
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    _, _, ho, wo = out.shape
    sh, sw = stride
    dh, dw = dilation
    top, _, left, _ = pads
    hw = ho * wo
    if n * hw < NR or out.strides[3] != 4 or out.strides[2] != wo * 4:
        return False
    k = c * kh * kw
    packed = pointwise.kept_weights(w, prepared, "patches")
    # the phase planes: every tap of every output pixel inside them
    hq = max(-(-(h + top) // sh), ho + ((kh - 1) * dh) // sh)
    wq = max(-(-(wd + left) // sw), wo + ((kw - 1) * dw) // sw)
    phases = np.zeros((n, c, sh * sw, hq + 1, wq), dtype=np.float32)
    # (writable too: numba types `phase_copy` for both directions, and a read-only plane
    # would not compile, turning the tiles off for the process)
    x = contiguous(x)
    if not pointwise.run_tiles(_layout, n * c, x, phases, top, left, sh, sw,
                               values=phases.size):
        return False
    gain = np.ones(o, np.float32) if scale is None else np.ascontiguousarray(scale)
    shift = np.zeros(o, np.float32) if b is None else np.ascontiguousarray(b)
    depth = min(k, DEPTH)
    per_block = min(OUT_BLOCK_BYTES // (o * 4), BLOCK_BYTES // (depth * 4))
    per_block = max(NR, per_block // NR * NR)
    blocks = -(-n * hw // per_block)
    out3 = out.reshape(n, o, hw) if out.flags.c_contiguous else np.lib.stride_tricks.as_strided(
        out, (n, o, hw), out.strides[:2] + (4,))
    return pointwise.run_tiles(_patches, blocks, packed, phases, out3, gain, shift, code,
                               np.float32(alpha), np.float32(beta), kh, kw, sh, sw, dh, dw,
                               ho, wo, per_block, blocks, depth, values=n * hw * o * k)
