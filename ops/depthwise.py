"""Depthwise 3x3 and 5x5 convolutions (maps up to 112 wide at stride 1, most at stride 2), a
tile of output rows in vector registers at a time, the epilogue applied before the one
store.

``ops/fast.py``'s direct convolution computes a depthwise layer a kernel row at a time over
runs of the padded plane, through an accumulator in memory, and moves the kept columns
out; on the 7x7 and 14x14 maps of MobileNet V2 and EfficientNet its fixed work per plane
(a loop per pass, the moves, a compiled row call for the epilogue) cost more than the
arithmetic: 0.3 us a plane on 7x7, where ONNX Runtime takes 0.1.

Here each plane is copied into a zero-padded buffer (rows ``wq`` apart; at stride 2 into
the four phase planes of the padded plane, a row's values dealt out to two of them by
vector shuffles, so that every tap reads a contiguous run again), then a tile
(`_tile3`, `_tile5`: LLVM IR, as ``ops/pointwise.py``'s) computes ``R`` output rows of
eight columns: each output vector the sum of its ``K*K`` taps, each tap a vector load of
the padded buffer times a broadcast weight (the loads shared between rows are loaded
once), then the scale, bias, activation and gate, and a plain store. A row's last vector
may run past the row's end: its extra lanes land on the next rows' first columns, which
are stored later (the tiles go through a plane's columns from the last vector to the
first, its rows upwards), so only a vector that would run past the plane's end is stored
narrower (a masked store: on AMD's Zen 3 one costs as much as the tile's arithmetic).
Stride 1 or 2, dilation 1, one input channel per output channel, float32, the maps
``applies`` takes (measured against ``ops/fast.py``'s runs: ``WIDEST``, ``WIDEST_2``).

Layers whose channels come in whole blocks of eight (every depthwise layer of MobileNet V1
and V2 and EfficientNet-B0) take blocks of eight channels instead, one pixel's eight
channels a vector (``_depthwise8``, below the tiles): the same sums in the same order, so
the same bits, in 0.4-0.96x the tiles' time.
"""

from __future__ import annotations

import numpy as np

from . import pointwise
from .fast import act_code, borrow, contiguous, get_threads, jit, keep, numba, usable

LANES = pointwise.LANES
# Output rows per tile (``R``) by kernel size: 3x3 keeps its nine weights in registers
# beside eight sums; 5x5's 25 weights are broadcast from memory, and four rows keep its
# 8 loads a row in registers.
ROWS_3 = 8
ROWS_5 = 4
ROWS = {3: ROWS_3, 5: ROWS_5}
# The widest output map each kernel size takes at stride 1. Measured at batch 4, one thread,
# in turns against ``ops/fast.py``'s direct kernel (its time over the tiles', two runs;
# docs/performance.md, ninth session): 3x3 1.27-1.37 on 144 channels of 56x56, 1.09-1.13 on
# 32 of 112x112, 0.97-0.99 on 96 of 112x112, 1.12-1.22 on 28x28; 5x5 1.24 on 56x56,
# 1.13-1.27 on 28x28, 1.21-1.24 on 14x14. (The earlier limits, 28 and 14, were measured
# before the tiles' stores and epilogue were reworked: then the tiles lost at 56 and 112.)
WIDEST = {3: 112, 5: 56}
# The same at stride 2, by the output map's width: 3x3 from 224 to 112 wide 1.05x as fast,
# 112 -> 56 1.1x, 56 -> 28 1.1x, 28 -> 14 2x, 14 -> 7 3x; 5x5 56 -> 28 1.1x, 14 -> 7 2x
# (its larger maps not measured).
WIDEST_2 = {3: 112, 5: 28}
# False turns the tiles off: ``depthwise_conv2d`` returns False (the tests compare).
DEPTHWISE = True
# Layers whose channels come in whole blocks of eight take the blocks of eight channels
# below (False: the tiles of one plane; the tests compare). Measured at batch 4, one
# thread, in turns, their time over the tiles' (3x3 unless said): 7x7 0.64-0.74 (5x5),
# 14x14 0.76-0.91, 14 -> 7 at stride 2 0.59-0.61, 28 -> 14 0.69-0.88, 28x28 0.88, 56x56
# 0.87 (docs/performance.md, ninth session).
CHANNEL_BLOCKS = True
# Output pixels a call of the blocks' kernel computes, by stride: at stride 1 the loads of
# neighbouring pixels' taps coincide, and eight ran 5x5 layers 0.75-0.85x the time of four.
PIXELS_1 = 8
PIXELS_2 = 4


def _make_tile(kernel, rows, stride):
    """The intrinsic computing ``rows`` output rows by ``LANES`` columns of one plane, at
    ``stride`` 1 or 2."""
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic

    @intrinsic
    def tile(typingctx, plane, at, wq, phase, w, wi, out, oi, ho, wo, r0, c0, g, s, f, code,
             alpha, beta):
        """Output rows ``r0 .. r0 + rows - 1`` (those below ``ho``), columns ``c0 ..
        c0 + LANES - 1`` of a plane: ``out`` the address of its first value (rows ``wo``
        apart, plus ``oi``), ``plane[at:]`` the zero-padded input (rows ``wq`` apart; at
        stride 2 its four phase planes, ``phase`` values apart: padded row ``2R + a`` and
        column ``2C + b`` at row ``R``, column ``C`` of phase ``2a + b``), ``w[wi:]`` the
        ``kernel x kernel`` weights. Stored: ``act(sum * g + s) * f``, ``act`` as
        ``pointwise._tile``'s."""
        if not all(isinstance(t, types.Array) and t.dtype == types.float32
                   for t in (plane, w)):
            return None
        ints = types.intp
        sig = types.none(plane, ints, ints, ints, w, ints, types.uintp, ints, ints, ints, ints,
                         ints, types.float32, types.float32, types.float32, ints,
                         types.float32, types.float32)

        def codegen(context, builder, signature, args):
            (plane_, at_, wq_, phase_, w_, wi_, out_, oi_, ho_, wo_, r0_, c0_, g_, s_, f_, code_,
             alpha_, beta_) = args
            f32, i64, i32 = ir.FloatType(), ir.IntType(64), ir.IntType(32)
            vec = ir.VectorType(f32, LANES)

            def const(v):
                return ir.Constant(i64, v)

            def splat(x, kind=vec):
                return pointwise.ir_splat(builder, x, kind)

            def vector_at(pointer):
                return pointwise.ir_vector_at(builder, pointer, vec)

            t = signature.args
            pp = builder.gep(context.make_array(t[0])(context, builder, plane_).data, [at_])
            pw = builder.gep(context.make_array(t[4])(context, builder, w_).data, [wi_])
            po = builder.gep(builder.inttoptr(out_, f32.as_pointer()), [oi_])
            fma = pointwise.ir_intrinsic(builder, "fmuladd", vec)
            masked_store = pointwise.ir_intrinsic(builder, "masked.store", vec)
            weights = [splat(builder.load(builder.gep(pw, [const(q)])))
                       for q in range(kernel * kernel)]
            sums = []
            for r in range(rows):
                acc = ir.Constant(vec, [0.0] * LANES)
                for i in range(kernel):
                    for j in range(kernel):
                        # tap (i, j): its phase plane, and the row and column in it
                        p, di, dj = ((i % 2) * 2 + j % 2, i // 2, j // 2) if stride == 2 else (
                            0, i, j)
                        row = builder.add(builder.mul(builder.add(r0_, const(r + di)), wq_),
                                          builder.add(c0_, const(dj)))
                        if p:
                            row = builder.add(row, builder.mul(phase_, const(p)))
                        v = builder.load(vector_at(builder.gep(pp, [row])), align=4)
                        acc = builder.call(fma, [weights[i * kernel + j], v, acc])
                sums.append(acc)
            gain, shift, factor = splat(g_), splat(s_), splat(f_)
            ys = [builder.call(fma, [acc, gain, shift]) for acc in sums]
            # the lanes of the plane's last row's last vector that lie in the row
            iota = ir.Constant(ir.VectorType(i64, LANES), list(range(LANES)))
            inside = builder.icmp_signed("<", builder.add(splat(c0_, iota.type), iota),
                                         splat(wo_, iota.type))
            narrow = builder.icmp_signed(">", builder.add(c0_, const(LANES)), wo_)
            size = builder.mul(ho_, wo_)  # the plane's values

            def store(case):
                for r in range(rows):
                    y = pointwise.vector_act(builder, case, ys[r], alpha_, beta_, fma, splat,
                                              vec)
                    y = builder.fmul(y, factor)
                    orow = builder.add(r0_, const(r))
                    pointer = vector_at(builder.gep(po, [builder.add(builder.mul(orow, wo_),
                                                                     c0_)]))
                    with builder.if_then(builder.icmp_signed("<", orow, ho_)):
                        # a whole vector where its lanes stay in the plane (those past the
                        # row land on later rows, stored after it), else the row's lanes
                        end = builder.add(builder.add(builder.mul(orow, wo_), c0_),
                                          const(LANES))
                        spills = builder.icmp_signed(">", end, size)
                        with builder.if_else(builder.and_(spills, narrow)) as (edge, whole):
                            with edge:
                                builder.call(masked_store, [y, pointer, ir.Constant(i32, 4),
                                                            inside])
                            with whole:
                                builder.store(y, pointer, align=4)

            pointwise.ir_switch(builder, code_, sorted(pointwise.IN_TILE), store, "dw.act")
            return context.get_dummy_value()

        return sig, codegen

    return tile


def _make_row_copy():
    """The intrinsic ``copy(dst, at, src, start, count)``: ``dst[at:at + count] =
    src.flat[start:start + count]`` as vectors of ``LANES`` (``count >= 1``), the last one
    loaded under a mask and stored whole: its lanes past ``count`` are zeros written into
    ``dst``'s (zero) padding, which reaches ``LANES - 1`` values past the run."""
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic

    @intrinsic
    def copy(typingctx, dst, at, src, start, count):
        if not all(isinstance(t, types.Array) and t.dtype == types.float32
                   for t in (dst, src)):
            return None
        sig = types.none(dst, types.intp, src, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            dst_, at_, src_, start_, count_ = args
            f32, i64, i32 = ir.FloatType(), ir.IntType(64), ir.IntType(32)
            vec = ir.VectorType(f32, LANES)
            t = signature.args
            pd = builder.gep(context.make_array(t[0])(context, builder, dst_).data, [at_])
            ps = builder.gep(context.make_array(t[2])(context, builder, src_).data, [start_])
            masked_load = pointwise.ir_intrinsic(builder, "masked.load", vec)
            fn = builder.function
            entry = builder.block
            loop = fn.append_basic_block("copy.whole")
            tail = fn.append_basic_block("copy.tail")
            whole = builder.sdiv(builder.sub(count_, ir.Constant(i64, 1)),
                                 ir.Constant(i64, LANES))  # whole vectors before the last
            builder.cbranch(builder.icmp_signed(">", whole, ir.Constant(i64, 0)), loop, tail)
            builder.position_at_end(loop)
            q = builder.phi(i64)
            q.add_incoming(ir.Constant(i64, 0), entry)
            offset = builder.mul(q, ir.Constant(i64, LANES))
            v = builder.load(pointwise.ir_vector_at(builder, builder.gep(ps, [offset]), vec),
                             align=4)
            builder.store(v, pointwise.ir_vector_at(builder, builder.gep(pd, [offset]), vec),
                          align=4)
            q1 = builder.add(q, ir.Constant(i64, 1))
            q.add_incoming(q1, loop)
            builder.cbranch(builder.icmp_signed("<", q1, whole), loop, tail)
            builder.position_at_end(tail)
            offset = builder.mul(whole, ir.Constant(i64, LANES))
            left = builder.sub(count_, offset)
            iota = ir.Constant(ir.VectorType(i64, LANES), list(range(LANES)))
            bound = pointwise.ir_splat(builder, left, iota.type)
            mask = builder.icmp_signed("<", iota, bound)
            v = builder.call(masked_load, [
                pointwise.ir_vector_at(builder, builder.gep(ps, [offset]), vec),
                ir.Constant(i32, 4), mask, ir.Constant(vec, [0.0] * LANES)])
            builder.store(v, pointwise.ir_vector_at(builder, builder.gep(pd, [offset]), vec),
                          align=4)
            return context.get_dummy_value()

        return sig, codegen

    return copy


def _make_row_split():
    """The intrinsic ``split(dst, evens, odds, src, start, count)``: the ``count`` values
    of ``src.flat[start:]`` dealt out, those at even positions to ``dst[evens:]``, the
    others to ``dst[odds:]`` (a row of a plane into two phase planes), sixteen values at
    a time (two vector loads, two shuffles, two stores); the last sixteen loaded under a
    mask, their missing lanes stored as zeros into the (zero) padding past each run."""
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic

    @intrinsic
    def split(typingctx, dst, evens, odds, src, start, count):
        if not all(isinstance(t, types.Array) and t.dtype == types.float32
                   for t in (dst, src)):
            return None
        sig = types.none(dst, types.intp, types.intp, src, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            dst_, evens_, odds_, src_, start_, count_ = args
            f32, i64, i32 = ir.FloatType(), ir.IntType(64), ir.IntType(32)
            vec = ir.VectorType(f32, LANES)
            t = signature.args
            data = context.make_array(t[0])(context, builder, dst_).data
            pe, po = builder.gep(data, [evens_]), builder.gep(data, [odds_])
            ps = builder.gep(context.make_array(t[3])(context, builder, src_).data, [start_])
            masked_load = pointwise.ir_intrinsic(builder, "masked.load", vec)
            zero = ir.Constant(vec, [0.0] * LANES)
            every = ir.Constant(ir.VectorType(i32, LANES), list(range(0, 2 * LANES, 2)))
            other = ir.Constant(ir.VectorType(i32, LANES), list(range(1, 2 * LANES, 2)))

            def vector_at(pointer):
                return pointwise.ir_vector_at(builder, pointer, vec)

            def deal(q, a, b):
                builder.store(builder.shuffle_vector(a, b, every),
                              vector_at(builder.gep(pe, [builder.mul(q, ir.Constant(
                                  i64, LANES))])), align=4)
                builder.store(builder.shuffle_vector(a, b, other),
                              vector_at(builder.gep(po, [builder.mul(q, ir.Constant(
                                  i64, LANES))])), align=4)

            fn = builder.function
            entry = builder.block
            loop = fn.append_basic_block("split.whole")
            tail = fn.append_basic_block("split.tail")
            whole = builder.sdiv(builder.sub(count_, ir.Constant(i64, 1)),
                                 ir.Constant(i64, 2 * LANES))
            builder.cbranch(builder.icmp_signed(">", whole, ir.Constant(i64, 0)), loop, tail)
            builder.position_at_end(loop)
            q = builder.phi(i64)
            q.add_incoming(ir.Constant(i64, 0), entry)
            at = builder.gep(ps, [builder.mul(q, ir.Constant(i64, 2 * LANES))])
            a = builder.load(vector_at(at), align=4)
            b = builder.load(vector_at(builder.gep(at, [ir.Constant(i64, LANES)])), align=4)
            deal(q, a, b)
            q1 = builder.add(q, ir.Constant(i64, 1))
            q.add_incoming(q1, loop)
            builder.cbranch(builder.icmp_signed("<", q1, whole), loop, tail)
            builder.position_at_end(tail)
            at = builder.gep(ps, [builder.mul(whole, ir.Constant(i64, 2 * LANES))])
            left = builder.sub(count_, builder.mul(whole, ir.Constant(i64, 2 * LANES)))
            kind = ir.VectorType(i64, LANES)
            bound = pointwise.ir_splat(builder, left, kind)
            low = builder.icmp_signed("<", ir.Constant(kind, list(range(LANES))), bound)
            high = builder.icmp_signed("<", ir.Constant(kind, list(range(LANES, 2 * LANES))),
                                       bound)
            a = builder.call(masked_load, [vector_at(at), ir.Constant(i32, 4), low, zero])
            b = builder.call(masked_load, [vector_at(builder.gep(at, [ir.Constant(
                i64, LANES)])), ir.Constant(i32, 4), high, zero])
            deal(whole, a, b)
            return context.get_dummy_value()

        return sig, codegen

    return split



# ---- blocks of eight channels ---------------------------------------------------------------
# Where the channels come in whole blocks of LANES, a vector holds one pixel's LANES
# channels instead of LANES pixels of one channel: each output pixel is its taps' sum, each
# tap a vector load of the block's padded plane times a vector of the LANES channels'
# weights, with no lanes wasted past a row's end (a 7-wide row filled 7 of a vector's 8
# lanes above) and no copy per plane. The planes go in and out through 8 x 8 transposes in
# registers: a block's input rows are transposed into its padded plane (``_gather8``), and
# each output row, computed into a row buffer, is transposed back into its LANES planes
# (``_scatter8``; a row's last vector stored whole, its extra lanes landing on the next
# rows, stored after it, unless they would run past the plane). The sums are taken in the same
# order as the tiles above, so both give the same bits.


def _ir_transpose8(builder, rows):
    """The 8 x 8 transpose of eight vectors of eight float32 (``rows[k][j]`` ->
    ``result[j][k]``): unpacks of pairs, then shuffles of pairs of pairs, then halves."""
    from llvmlite import ir

    i32 = ir.IntType(32)

    def shuffle(a, b, lanes):
        return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(i32, 8), lanes))

    t = []
    for p in range(0, 8, 2):
        t.append(shuffle(rows[p], rows[p + 1], [0, 8, 1, 9, 4, 12, 5, 13]))
        t.append(shuffle(rows[p], rows[p + 1], [2, 10, 3, 11, 6, 14, 7, 15]))
    low, high = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
    u = [shuffle(t[0], t[2], low), shuffle(t[0], t[2], high),
         shuffle(t[1], t[3], low), shuffle(t[1], t[3], high),
         shuffle(t[4], t[6], low), shuffle(t[4], t[6], high),
         shuffle(t[5], t[7], low), shuffle(t[5], t[7], high)]
    first, second = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]
    return ([shuffle(u[q], u[q + 4], first) for q in range(4)]
            + [shuffle(u[q], u[q + 4], second) for q in range(4)])


def _ir_first(builder, count):
    """The lanes ``0 .. count - 1`` of a vector of eight, as a mask."""
    from llvmlite import ir

    kind = ir.VectorType(ir.IntType(64), 8)
    return builder.icmp_signed("<", ir.Constant(kind, list(range(8))),
                               pointwise.ir_splat(builder, count, kind))


def _make_gather8():
    """The intrinsic ``gather(dst, at, src, start, stride, count)``: ``dst[at + 8*j + k] =
    src.flat[start + k*stride + j]`` for pixels ``j < 8`` and channels ``k < 8``: a row of
    eight planes (``stride`` apart) into eight pixel vectors; the pixels from ``count`` on
    are zeros (masked loads), stored into the plane's (zero) padding."""
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic

    @intrinsic
    def gather(typingctx, dst, at, src, start, stride, count):
        if not all(isinstance(t, types.Array) and t.dtype == types.float32
                   for t in (dst, src)):
            return None
        sig = types.none(dst, types.intp, src, types.intp, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            dst_, at_, src_, start_, stride_, count_ = args
            vec = ir.VectorType(ir.FloatType(), 8)
            i32, i64 = ir.IntType(32), ir.IntType(64)
            t = signature.args
            pd = builder.gep(context.make_array(t[0])(context, builder, dst_).data, [at_])
            ps = builder.gep(context.make_array(t[2])(context, builder, src_).data, [start_])
            masked_load = pointwise.ir_intrinsic(builder, "masked.load", vec)
            mask = _ir_first(builder, count_)
            zero = ir.Constant(vec, [0.0] * 8)
            rows = [builder.call(masked_load, [
                pointwise.ir_vector_at(builder, builder.gep(
                    ps, [builder.mul(stride_, ir.Constant(i64, k))]), vec),
                ir.Constant(i32, 4), mask, zero]) for k in range(8)]
            for j, column in enumerate(_ir_transpose8(builder, rows)):
                builder.store(column, pointwise.ir_vector_at(
                    builder, builder.gep(pd, [ir.Constant(i64, 8 * j)]), vec), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return gather


def _make_scatter8():
    """The intrinsic ``scatter(src, at, out, oi, stride, count, exact)``: ``out[oi +
    k*stride + j] = src[at + 8*j + k]`` (``out`` an address) for pixels ``j < count`` and
    channels ``k < 8``: eight pixel vectors into a row of eight planes. Unless ``exact``,
    every vector is stored whole (its lanes past ``count`` land on each plane's next row,
    written later): a masked store cost as much as the rest of a row on AMD's Zen 3."""
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic

    @intrinsic
    def scatter(typingctx, src, at, out, oi, stride, count, exact):
        if not (isinstance(src, types.Array) and src.dtype == types.float32):
            return None
        sig = types.none(src, types.intp, types.uintp, types.intp, types.intp, types.intp,
                         types.boolean)

        def codegen(context, builder, signature, args):
            src_, at_, out_, oi_, stride_, count_, exact_ = args
            f32 = ir.FloatType()
            vec = ir.VectorType(f32, 8)
            i32, i64 = ir.IntType(32), ir.IntType(64)
            ps = builder.gep(context.make_array(signature.args[0])(context, builder,
                                                                    src_).data, [at_])
            po = builder.gep(builder.inttoptr(out_, f32.as_pointer()), [oi_])
            masked_store = pointwise.ir_intrinsic(builder, "masked.store", vec)
            pixels = [builder.load(pointwise.ir_vector_at(
                builder, builder.gep(ps, [ir.Constant(i64, 8 * j)]), vec), align=4)
                for j in range(8)]
            planes = _ir_transpose8(builder, pixels)
            places = [pointwise.ir_vector_at(builder, builder.gep(
                po, [builder.mul(stride_, ir.Constant(i64, k))]), vec) for k in range(8)]
            narrow = builder.and_(exact_, builder.icmp_signed("<", count_, ir.Constant(i64, 8)))
            with builder.if_else(narrow) as (edge, whole):
                with edge:
                    mask = _ir_first(builder, count_)
                    for plane, place in zip(planes, places):
                        builder.call(masked_store, [plane, place, ir.Constant(i32, 4), mask])
                with whole:
                    for plane, place in zip(planes, places):
                        builder.store(plane, place, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return scatter


def _make_pixels(kernel, stride, count):
    """The intrinsic computing ``count`` output pixels of a block of eight channels:
    ``row[ri + 8*p] = act(sum_ij plane[at + i*wq8 + 8*(p*stride + j)] * w[wi + 8*(i*K + j)]
    * g + s) * f`` (``g``, ``s``, ``f``: the block's scale, bias and gate vectors), ``act``
    as ``pointwise._tile``'s."""
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic

    @intrinsic
    def pixels(typingctx, plane, at, wq8, w, wi, g, s, gi, f, fi, row, ri, code, alpha, beta):
        if not all(isinstance(t, types.Array) and t.dtype == types.float32
                   for t in (plane, w, g, s, f, row)):
            return None
        ints = types.intp
        sig = types.none(plane, ints, ints, w, ints, g, s, ints, f, ints, row, ints, ints,
                         types.float32, types.float32)

        def codegen(context, builder, signature, args):
            (plane_, at_, wq8_, w_, wi_, g_, s_, gi_, f_, fi_, row_, ri_, code_, alpha_,
             beta_) = args
            vec = ir.VectorType(ir.FloatType(), 8)
            i64 = ir.IntType(64)
            t = signature.args

            def at(k, value, offset):
                data = context.make_array(t[k])(context, builder, value).data
                return builder.gep(data, [offset])

            def vector(pointer, offset=0):
                return builder.load(pointwise.ir_vector_at(
                    builder, builder.gep(pointer, [ir.Constant(i64, offset)]), vec), align=4)

            pp, pw = at(0, plane_, at_), at(3, w_, wi_)
            fma = pointwise.ir_intrinsic(builder, "fmuladd", vec)
            sums = [ir.Constant(vec, [0.0] * 8) for _ in range(count)]
            for i in range(kernel):
                line = builder.gep(pp, [builder.mul(wq8_, ir.Constant(i64, i))])
                for j in range(kernel):
                    weight = vector(pw, 8 * (i * kernel + j))
                    for p in range(count):
                        sums[p] = builder.call(fma, [weight, vector(line, 8 * (p * stride + j)),
                                                     sums[p]])
            gain, shift = vector(at(5, g_, gi_)), vector(at(6, s_, gi_))
            factor = vector(at(8, f_, fi_))
            ys = [builder.call(fma, [total, gain, shift]) for total in sums]
            pr = at(10, row_, ri_)

            def splat(x):
                return pointwise.ir_splat(builder, x, vec)

            def store(case):
                for p, y in enumerate(ys):
                    y = pointwise.vector_act(builder, case, y, alpha_, beta_, fma, splat, vec)
                    builder.store(builder.fmul(y, factor), pointwise.ir_vector_at(
                        builder, builder.gep(pr, [ir.Constant(i64, 8 * p)]), vec), align=4)

            pointwise.ir_switch(builder, code_, sorted(pointwise.IN_TILE), store, "dw8.act")
            return context.get_dummy_value()

        return sig, codegen

    return pixels


if numba is not None and pointwise.RUNS_HERE:
    _tile3 = _make_tile(3, ROWS_3, 1)
    _tile5 = _make_tile(5, ROWS_5, 1)
    _tile3s2 = _make_tile(3, ROWS_3, 2)
    _tile5s2 = _make_tile(5, ROWS_5, 2)
    _row_copy = _make_row_copy()
    _row_split = _make_row_split()
    _gather8 = _make_gather8()
    _scatter8 = _make_scatter8()
    _pixels3 = _make_pixels(3, 1, PIXELS_1)
    _pixels5 = _make_pixels(5, 1, PIXELS_1)
    _pixels3s2 = _make_pixels(3, 2, PIXELS_2)
    _pixels5s2 = _make_pixels(5, 2, PIXELS_2)
else:  # pragma: no cover - the kernels below are never called then
    _tile3 = _tile5 = _tile3s2 = _tile5s2 = _row_copy = _row_split = None
    _gather8 = _scatter8 = _pixels3 = _pixels5 = _pixels3s2 = _pixels5s2 = None


@jit()
def _depthwise(start, stop, x, w, out, scale, bias, has_scale, has_bias, gate, has_gate, code,
               alpha, beta, stride, top, left, block):
    """Jobs ``start .. stop - 1`` of (image, block of ``block`` channels): ``out (N, C, Ho,
    Wo)`` (contiguous) from ``x (N, C, H, W)`` and ``w (C, 1, K, K)`` at ``stride`` 1 or 2."""
    n, c, h, wd = x.shape
    kernel = w.shape[2]
    ho, wo = out.shape[2], out.shape[3]
    rows = ROWS_3 if kernel == 3 else ROWS_5
    if stride == 1:
        wq = wo + kernel - 1 + LANES  # (a row's last vector reads up to LANES - 1 past it)
        hq = ho + kernel - 1 + rows  # (a tile's rows past ho read rows of zeros)
    else:  # four phase planes, each of half the padded rows and columns
        wq = max(wo + kernel // 2, (wd + left + 1) // 2 + 1) + LANES + 1
        hq = max(ho + kernel // 2 + rows, (h + top) // 2 + 1) + 1
    phase = hq * wq
    padded = np.zeros(phase * stride * stride + 2 * LANES, dtype=np.float32)
    plane = borrow(padded)
    x, w, scale, bias, gate = borrow(x), borrow(w), borrow(scale), borrow(bias), borrow(gate)
    wf, xf = w.reshape(-1), x.reshape(-1)
    address = out.ctypes.data
    blocks = (c + block - 1) // block
    last_column = (wo - 1) // LANES * LANES
    even = left % 2  # the phase column of x's even columns (stride 2)
    for job in range(start, stop):
        b = job // blocks
        for ch in range((job - b * blocks) * block, min(c, (job - b * blocks + 1) * block)):
            # the interior; the padding stays zero from plane to plane
            for r in range(h):
                src = ((b * c + ch) * h + r) * wd
                if stride == 1:
                    _row_copy(plane, (r + top) * wq + left, xf, src, wd)
                else:
                    row = ((r + top) % 2 * 2) * phase + (r + top) // 2 * wq
                    _row_split(plane, row + even * phase + left // 2,
                               row + (1 - even) * phase + (left + 1) // 2, xf, src, wd)
            g = scale[ch] if has_scale else np.float32(1.0)
            s = bias[ch] if has_bias else np.float32(0.0)
            f = gate[b, ch] if has_gate else np.float32(1.0)
            oi = (b * c + ch) * ho * wo
            for r0 in range(0, ho, rows):
                for c0 in range(last_column, -1, -LANES):  # last vector first: see above
                    if stride == 1 and kernel == 3:
                        _tile3(plane, 0, wq, phase, wf, ch * 9, address, oi, ho, wo, r0, c0,
                               g, s, f, code, alpha, beta)
                    elif stride == 1:
                        _tile5(plane, 0, wq, phase, wf, ch * 25, address, oi, ho, wo, r0, c0,
                               g, s, f, code, alpha, beta)
                    elif kernel == 3:
                        _tile3s2(plane, 0, wq, phase, wf, ch * 9, address, oi, ho, wo, r0,
                                 c0, g, s, f, code, alpha, beta)
                    else:
                        _tile5s2(plane, 0, wq, phase, wf, ch * 25, address, oi, ho, wo, r0,
                                 c0, g, s, f, code, alpha, beta)
    keep(padded)


@jit()
def _depthwise8(start, stop, x, w8, out, g8, s8, f8, has_gate, code, alpha, beta, stride, top,
                left, kernel):
    """Jobs ``start .. stop - 1`` of (image, block of eight channels): ``out (N, C, Ho, Wo)``
    (contiguous) from ``x (N, C, H, W)`` and ``w8`` (``(C/8, K*K*8)``: each block's taps,
    each tap its eight channels' weights) at ``stride`` 1 or 2; ``g8``, ``s8`` each
    channel's scale and bias, ``f8`` (``(N, C)``, where ``has_gate``) its gate."""
    n, c, h, wd = x.shape
    ho, wo = out.shape[2], out.shape[3]
    count = PIXELS_1 if stride == 1 else PIXELS_2
    span = -(-wo // count) * count  # pixels computed a row (those past wo: never stored)
    # padded plane, a vector a pixel: room for the last gather's whole vector and the
    # last call's taps
    wq = max(left + -(-wd // 8) * 8, (span - 1) * stride + kernel)
    hq = max(top + h, (ho - 1) * stride + kernel)
    plane = np.zeros(hq * wq * 8, dtype=np.float32)
    row = np.empty((max(span, -(-wo // 8) * 8)) * 8, dtype=np.float32)
    pl, rw = borrow(plane), borrow(row)
    xf = borrow(x).reshape(-1)
    w8, g8, s8, f8 = borrow(w8).reshape(-1), borrow(g8), borrow(s8), borrow(f8).reshape(-1)
    address = out.ctypes.data
    blocks = c // 8
    taps = kernel * kernel * 8
    for job in range(start, stop):
        b = job // blocks
        block = job - b * blocks
        c0 = block * 8
        for r in range(h):  # the interior; the padding stays zero from block to block
            for q in range(0, wd, 8):
                _gather8(pl, ((r + top) * wq + left + q) * 8, xf, ((b * c + c0) * h + r) * wd + q,
                         h * wd, min(8, wd - q))
        fi = (b * c + c0) if has_gate else 0
        for oy in range(ho):
            line = oy * stride * wq * 8
            for ox in range(0, wo, count):
                at = line + ox * stride * 8
                if kernel == 3 and stride == 1:
                    _pixels3(pl, at, wq * 8, w8, block * taps, g8, s8, c0, f8, fi, rw, ox * 8,
                             code, alpha, beta)
                elif kernel == 3:
                    _pixels3s2(pl, at, wq * 8, w8, block * taps, g8, s8, c0, f8, fi, rw,
                               ox * 8, code, alpha, beta)
                elif stride == 1:
                    _pixels5(pl, at, wq * 8, w8, block * taps, g8, s8, c0, f8, fi, rw, ox * 8,
                             code, alpha, beta)
                else:
                    _pixels5s2(pl, at, wq * 8, w8, block * taps, g8, s8, c0, f8, fi, rw,
                               ox * 8, code, alpha, beta)
            for q in range(0, wo, 8):
                # a vector stored whole past the plane's end would land on the next
                # plane's first row, stored before it
                _scatter8(rw, q * 8, address, ((b * c + c0) * ho + oy) * wo + q, ho * wo,
                          min(8, wo - q), oy * wo + q + 8 > ho * wo)
    keep(plane)
    keep(row)


def applies(x, w, stride, dilation, pads, groups) -> bool:
    """Whether ``depthwise_conv2d`` takes this convolution."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    if not (DEPTHWISE and pointwise.CHOSEN_HERE and x.dtype == np.float32 and cg == 1
            and o == c and groups == c and kh == kw and kh in WIDEST
            and tuple(stride) in ((1, 1), (2, 2)) and tuple(dilation) == (1, 1)
            and usable(x, w)):
        return False
    step = stride[0]
    top, bottom, left, right = pads
    ho = (h + top + bottom - kh) // step + 1
    wo = (wd + left + right - kw) // step + 1
    widest = WIDEST[kh] if step == 1 else WIDEST_2[kh]
    return 0 < wo <= widest and ho > 0 and max(pads) < kh


def depthwise_conv2d(x, w, b, scale, act, out, pads, gate=None, stride=1) -> bool:
    """``out (N, C, Ho, Wo)`` = the depthwise convolution of ``x (N, C, H, W)`` by ``w (C,
    1, K, K)`` at ``stride`` (1 or 2) with ``pads`` (top, bottom, left, right), times
    ``scale``, plus ``b``, through ``act``, times ``gate`` (``(N, C)``). Returns False
    (nothing written) when the kernel does not take it."""
    code = act_code(act, np.float32)
    if code is None or code[0] not in pointwise.IN_TILE:
        return False
    code, alpha, beta = code
    n, c = x.shape[:2]
    x, w = contiguous(x), contiguous(w)
    into = out if out.flags.c_contiguous else np.empty(out.shape, dtype=np.float32)
    alpha, beta = np.float32(alpha), np.float32(beta)
    if CHANNEL_BLOCKS and c % 8 == 0 and pointwise.LANES == 8:
        k = w.shape[2]
        w8 = np.ascontiguousarray(w.reshape(c // 8, 8, k * k).transpose(0, 2, 1))
        gain = np.ones(c, np.float32) if scale is None else np.ascontiguousarray(scale)
        shift = np.zeros(c, np.float32) if b is None else np.ascontiguousarray(b)
        factor = np.ones((1, 8), np.float32) if gate is None else np.ascontiguousarray(gate)
        kernel, jobs = _depthwise8, n * (c // 8)
        args = (x, w8, into, gain, shift, factor, gate is not None, code, alpha, beta, stride,
                pads[0], pads[2], k)
    else:
        dummy = np.zeros(1, dtype=np.float32)
        block = max(1, min(16, (n * c) // (4 * max(1, get_threads()))))
        kernel, jobs = _depthwise, n * (-(-c // block))
        args = (x, w, into, dummy if scale is None else scale, dummy if b is None else b,
                scale is not None, b is not None,
                dummy.reshape(1, 1) if gate is None else gate, gate is not None,
                code, alpha, beta, stride, pads[0], pads[2], block)
    done = pointwise.run_tiles(kernel, jobs, *args, values=out.size * w.shape[2] * w.shape[3])
    if done and into is not out:
        out[...] = into
    return done
