"""Depthwise 3x3 and 5x5 convolutions of small maps (stride 1), a tile of output rows in
vector registers at a time, the epilogue applied before the one store.

``ops/fast.py``'s direct convolution computes a depthwise layer a kernel row at a time over
runs of the padded plane, through an accumulator in memory, and moves the kept columns
out; on the 7x7 and 14x14 maps of MobileNet V2 and EfficientNet its fixed work per plane
(a loop per pass, the moves, a compiled row call for the epilogue) cost more than the
arithmetic: 0.3 us a plane on 7x7, where ONNX Runtime takes 0.1.

Here each plane is copied into a zero-padded buffer (rows ``wq`` apart), then a tile
(`_tile3`, `_tile5`: LLVM IR, as ``ops/pointwise.py``'s) computes ``R`` output rows of
eight columns: each output vector the sum of its ``K*K`` taps, each tap a vector load of
the padded buffer times a broadcast weight (the loads shared between rows are loaded
once), then the scale, bias, activation and gate, and a plain store. A row's last vector
may run past the row's end: its extra lanes land on the next rows' first columns, which
are stored later (the tiles go through a plane's columns from the last vector to the
first, its rows upwards), so only a vector that would run past the plane's end is stored
narrower (a masked store: on AMD's Zen 3 one costs as much as the tile's arithmetic). Stride 1, dilation 1, one input channel per output channel, float32, the maps
``applies`` takes (measured: larger maps run faster through ``ops/fast.py``'s runs).
"""

from __future__ import annotations

import numpy as np

from . import pointwise
from .fast import act_code, borrow, get_threads, jit, keep, numba, parallel, usable

LANES = pointwise.LANES
# Output rows per tile (``R``) by kernel size: 3x3 keeps its nine weights in registers
# beside eight sums; 5x5's 25 weights are broadcast from memory, and four rows keep its
# 8 loads a row in registers.
ROWS_3 = 8
ROWS_5 = 4
ROWS = {3: ROWS_3, 5: ROWS_5}
# The widest output map each kernel size takes (measured at batch 8, one thread, against
# ``ops/fast.py``: 3x3 2.5x as fast on 7x7, 1.4x on 14x14 and 28x28, 1.0x on 56x56, 0.75x on
# 112x112; 5x5 1.7x on 7x7, 1.05x on 14x14, 0.8x on 28x28).
WIDEST = {3: 28, 5: 14}
# False turns the tiles off: ``depthwise_conv2d`` returns False (the tests compare).
DEPTHWISE = True


def _make_tile(kernel, rows):
    """The intrinsic computing ``rows`` output rows by ``LANES`` columns of one plane."""
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.extending import intrinsic

    @intrinsic
    def tile(typingctx, plane, at, wq, w, wi, out, oi, ho, wo, r0, c0, g, s, f, code, alpha,
             beta):
        """Output rows ``r0 .. r0 + rows - 1`` (those below ``ho``), columns ``c0 ..
        c0 + LANES - 1`` of a plane: ``out`` the address of its first value (rows ``wo``
        apart, plus ``oi``), ``plane`` the zero-padded input (row ``r`` of output row
        ``r``'s window at ``at + r*wq``), ``w[wi:]`` the ``kernel x kernel`` weights.
        Stored: ``act(sum * g + s) * f``, ``act`` as ``pointwise._tile``'s."""
        if not all(isinstance(t, types.Array) and t.dtype == types.float32
                   for t in (plane, w)):
            return None
        ints = types.intp
        sig = types.none(plane, ints, ints, w, ints, types.uintp, ints, ints, ints, ints, ints,
                         types.float32, types.float32, types.float32, ints, types.float32,
                         types.float32)

        def codegen(context, builder, signature, args):
            (plane_, at_, wq_, w_, wi_, out_, oi_, ho_, wo_, r0_, c0_, g_, s_, f_, code_,
             alpha_, beta_) = args
            f32, i64, i32 = ir.FloatType(), ir.IntType(64), ir.IntType(32)
            vec = ir.VectorType(f32, LANES)
            lanes = ir.VectorType(ir.IntType(1), LANES)
            fn = builder.function

            def const(v):
                return ir.Constant(i64, v)

            def splat(x, kind=vec):
                one = builder.insert_element(ir.Constant(kind, ir.Undefined), x,
                                             ir.Constant(i32, 0))
                return builder.shuffle_vector(one, ir.Constant(kind, ir.Undefined),
                                              ir.Constant(ir.VectorType(i32, LANES),
                                                          [0] * LANES))

            def vector_at(pointer):
                return builder.bitcast(pointer, vec.as_pointer())

            t = signature.args
            pp = builder.gep(context.make_array(t[0])(context, builder, plane_).data, [at_])
            pw = builder.gep(context.make_array(t[3])(context, builder, w_).data, [wi_])
            po = builder.gep(builder.inttoptr(out_, f32.as_pointer()), [oi_])
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vec, [vec, vec, vec]),
                f"llvm.fmuladd.v{LANES}f32")
            masked_store = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [vec, vec.as_pointer(), i32,
                                                                lanes]),
                f"llvm.masked.store.v{LANES}f32.p0")
            weights = [splat(builder.load(builder.gep(pw, [const(q)])))
                       for q in range(kernel * kernel)]
            sums = []
            for r in range(rows):
                acc = ir.Constant(vec, [0.0] * LANES)
                for i in range(kernel):
                    row = builder.add(builder.mul(builder.add(r0_, const(r + i)), wq_), c0_)
                    base = builder.gep(pp, [row])
                    for j in range(kernel):
                        v = builder.load(vector_at(builder.gep(base, [const(j)])), align=4)
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
            done = fn.append_basic_block("dw.done")
            cases = sorted(pointwise._IN_TILE)
            blocks = [fn.append_basic_block(f"dw.act{case}") for case in cases]
            switch = builder.switch(code_, blocks[0])  # (an unknown code: identity)
            for case, block in zip(cases, blocks):
                switch.add_case(const(case), block)
                builder.position_at_end(block)
                for r in range(rows):
                    y = pointwise._vector_act(builder, case, ys[r], alpha_, beta_, fma, splat,
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
                builder.branch(done)
            builder.position_at_end(done)
            return context.get_dummy_value()

        return sig, codegen

    return tile


def _make_row_copy():
    """The intrinsic ``copy(dst, at, src, start, count)``: ``dst[at:at + count] =
    src.flat[start:start + count]`` as vectors of ``LANES`` (``count >= 1``), the last one
    loaded under a mask and stored whole: its lanes past ``count`` are zeros written into
    ``dst``'s (zero) padding, which reaches ``LANES - 1`` values past the run."""
    from llvmlite import ir
    from numba.core import cgutils, types
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
            lanes = ir.VectorType(ir.IntType(1), LANES)
            t = signature.args
            pd = builder.gep(context.make_array(t[0])(context, builder, dst_).data, [at_])
            ps = builder.gep(context.make_array(t[2])(context, builder, src_).data, [start_])
            masked_load = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vec, [vec.as_pointer(), i32, lanes, vec]),
                f"llvm.masked.load.v{LANES}f32.p0")
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
            v = builder.load(builder.bitcast(builder.gep(ps, [offset]), vec.as_pointer()),
                             align=4)
            builder.store(v, builder.bitcast(builder.gep(pd, [offset]), vec.as_pointer()),
                          align=4)
            q1 = builder.add(q, ir.Constant(i64, 1))
            q.add_incoming(q1, loop)
            builder.cbranch(builder.icmp_signed("<", q1, whole), loop, tail)
            builder.position_at_end(tail)
            offset = builder.mul(whole, ir.Constant(i64, LANES))
            left = builder.sub(count_, offset)
            iota = ir.Constant(ir.VectorType(i64, LANES), list(range(LANES)))
            one = builder.insert_element(ir.Constant(iota.type, ir.Undefined), left,
                                         ir.Constant(i32, 0))
            bound = builder.shuffle_vector(one, ir.Constant(iota.type, ir.Undefined),
                                           ir.Constant(ir.VectorType(i32, LANES), [0] * LANES))
            mask = builder.icmp_signed("<", iota, bound)
            v = builder.call(masked_load, [
                builder.bitcast(builder.gep(ps, [offset]), vec.as_pointer()),
                ir.Constant(i32, 4), mask, ir.Constant(vec, [0.0] * LANES)])
            builder.store(v, builder.bitcast(builder.gep(pd, [offset]), vec.as_pointer()),
                          align=4)
            return context.get_dummy_value()

        return sig, codegen

    return copy


if numba is not None and pointwise.RUNS_HERE:
    _tile3 = _make_tile(3, ROWS_3)
    _tile5 = _make_tile(5, ROWS_5)
    _row_copy = _make_row_copy()
else:  # pragma: no cover - the kernel below is never called then
    _tile3 = _tile5 = _row_copy = None


@jit()
def _depthwise(start, stop, x, w, out, scale, bias, has_scale, has_bias, gate, has_gate, code,
               alpha, beta, top, left, block):
    """Jobs ``start .. stop - 1`` of (image, block of ``block`` channels): ``out (N, C, Ho,
    Wo)`` (contiguous) from ``x (N, C, H, W)`` and ``w (C, 1, K, K)``."""
    n, c, h, wd = x.shape
    kernel = w.shape[2]
    ho, wo = out.shape[2], out.shape[3]
    rows = ROWS_3 if kernel == 3 else ROWS_5
    wq = wo + kernel - 1 + LANES  # (a row's last vector reads up to LANES - 1 past it)
    hq = ho + kernel - 1 + rows  # (a tile's rows past ho read rows of zeros)
    padded = np.zeros(hq * wq + LANES, dtype=np.float32)
    plane = borrow(padded)
    x, w, scale, bias, gate = borrow(x), borrow(w), borrow(scale), borrow(bias), borrow(gate)
    wf, xf = w.reshape(-1), x.reshape(-1)
    address = out.ctypes.data
    blocks = (c + block - 1) // block
    last_column = (wo - 1) // LANES * LANES
    for job in range(start, stop):
        b = job // blocks
        for ch in range((job - b * blocks) * block, min(c, (job - b * blocks + 1) * block)):
            for r in range(h):  # the interior; the padding stays zero from plane to plane
                _row_copy(plane, (r + top) * wq + left, xf, ((b * c + ch) * h + r) * wd, wd)
            g = scale[ch] if has_scale else np.float32(1.0)
            s = bias[ch] if has_bias else np.float32(0.0)
            f = gate[b, ch] if has_gate else np.float32(1.0)
            oi = (b * c + ch) * ho * wo
            for r0 in range(0, ho, rows):
                for c0 in range(last_column, -1, -LANES):  # last vector first: see above
                    if kernel == 3:
                        _tile3(plane, 0, wq, wf, ch * 9, address, oi, ho, wo, r0, c0, g, s, f,
                               code, alpha, beta)
                    else:
                        _tile5(plane, 0, wq, wf, ch * 25, address, oi, ho, wo, r0, c0, g, s,
                               f, code, alpha, beta)
    keep(padded)


def applies(x, w, stride, dilation, pads, groups) -> bool:
    """Whether ``depthwise_conv2d`` takes this convolution."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    if not (DEPTHWISE and pointwise.CHOSEN_HERE and x.dtype == np.float32 and cg == 1
            and o == c and groups == c and kh == kw and kh in WIDEST
            and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1) and usable(x, w)):
        return False
    top, bottom, left, right = pads
    ho, wo = h + top + bottom - kh + 1, wd + left + right - kw + 1
    return (0 < wo <= WIDEST[kh] and ho > 0 and max(pads) < kh
            and top <= kh - 1 and left <= kw - 1)


def depthwise_conv2d(x, w, b, scale, act, out, pads, gate=None) -> bool:
    """``out (N, C, Ho, Wo)`` = the depthwise convolution of ``x (N, C, H, W)`` by ``w (C,
    1, K, K)`` at stride 1 with ``pads`` (top, bottom, left, right), times ``scale``, plus
    ``b``, through ``act``, times ``gate`` (``(N, C)``). Returns False (nothing written)
    when the kernel does not take it."""
    code = act_code(act, np.float32)
    if code is None or code[0] not in pointwise._IN_TILE:
        return False
    code, alpha, beta = code
    n, c = x.shape[:2]
    x = x if x.flags.c_contiguous and x.flags.writeable else np.array(x, order="C")
    w = w if w.flags.c_contiguous and w.flags.writeable else np.array(w, order="C")
    into = out if out.flags.c_contiguous else np.empty(out.shape, dtype=np.float32)
    dummy = np.zeros(1, dtype=np.float32)
    block = max(1, min(16, (n * c) // (4 * max(1, get_threads()))))
    parallel(_depthwise, n * (-(-c // block)), x, w, into,
             dummy if scale is None else scale, dummy if b is None else b,
             scale is not None, b is not None,
             dummy.reshape(1, 1) if gate is None else gate, gate is not None,
             code, np.float32(alpha), np.float32(beta), pads[0], pads[2], block,
             values=out.size * w.shape[2] * w.shape[3])
    if into is not out:
        out[...] = into
    return True
