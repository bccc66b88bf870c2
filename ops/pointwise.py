"""1x1 convolutions (stride 1, no padding, ungrouped) as register-blocked products of our
own, with the epilogue applied while the sums are still in registers.

A 1x1 convolution of one image is the product ``Y (O, HW) = W (O, C) @ X (C, HW)``. Where
OpenBLAS runs it (the GEMM path of ``ops/conv.py``), it packs both operands on every call,
writes ``Y``, and the epilogue (scale, bias, activation) reads and writes ``Y`` once more.
MobileNet V2's and EfficientNet's 1x1 layers are many, with few input channels (16 to 960)
or few outputs, and that GEMM ran them at 36-70 GFLOP/s inside the networks.

Here the product is computed in tiles of ``MR`` output channels by ``NR`` columns (pixels
of the flattened batch), the tile's ``MR x NR`` sums held in vector registers through the
loop over input channels: per input channel, ``NR / LANES`` vector loads of ``X``, ``MR``
broadcast weights, ``MR * NR / LANES`` fused multiply-adds. The tile is written once, with
the scale, the bias and a clamp (no activation, relu, relu6) applied in registers; another
activation or a gate is applied to each block of columns afterwards, while it is in L2.
numba's loops do not keep a tile in registers, so the tile is LLVM IR written here
(`_tile`, an intrinsic: vector types and ``llvm.fmuladd``).

Columns are taken in blocks sized for L2, and a block's input is first copied into one
contiguous buffer: read straight from the image, every input channel is a different
page, and 96 input channels over 56x56 maps missed the TLB on each row (a third of the
speed). Two orders, chosen by the map's size (measured, ``SMALL_MAP``):

- large maps: a block holds every input channel; each panel of ``MR`` output channels
  meets every strip of the block in turn, so the outputs are written ``MR`` rows at a
  time along the map. The block is packed row by row (long contiguous copies) for layers
  of few outputs, strip by strip (each tile then reads one contiguous run) for the others.
- small maps (14x14 and 7x7, many channels): the input channels come ``DEPTH`` at a time;
  each strip (``DEPTH x NR`` values, in L1) meets every panel of weights, and the block's
  partial sums stay in L2 until the last depth (the tile adds the stored sums, ``more``,
  and applies the epilogue at the ``last``).

A strip that runs across two images, or a block's narrower last strip, keeps its sums in
a small buffer and is scattered into the output at the end of its block.

Jobs are the column blocks, shared among ``fast.parallel``'s threads; a result does not
depend on the thread count. The weights are packed (panels of ``MR`` channels,
channel-minor) on every call, a pass over ``O x C`` values: a kernel that keeps no state
never meets weights updated in place (training).

Float32 only, on x86-64 CPUs with AVX2 and FMA and without AVX-512 (``CHOSEN_HERE``): where
it was measured (``python benchmarks/bench_kernels.py --pointwise``). Elsewhere, for
float64 and for the layers ``applies`` refuses, the caller keeps its GEMM.
"""

from __future__ import annotations

import math
import os

import numpy as np

from . import fast
from .fast import act_code, borrow, constants, finish_row, jit, keep, numba, parallel, usable

# False (or ``CNNC_POINTWISE=0``) turns the kernel off: ``pointwise_conv2d`` returns False
# and the caller runs its GEMM (the benchmark and the tests compare the two).
POINTWISE = os.environ.get("CNNC_POINTWISE", "1").strip() not in ("0", "off")
# The tile: MR output channels by NV vectors of LANES float32 columns, MR * NV sums in
# registers (AVX2 has 16: 12 sums, NV loads of X, one broadcast weight). Timed against
# 6 x 16 over MobileNet V2's 1x1 shapes: 4 x 24 the faster in total.
MR = 4
NV = 3
LANES = 8
NR = NV * LANES
# Layers that reduce their channels this many times or more (GoogLeNet's 480 -> 16, 832 ->
# 32 on 14x14 and 7x7 maps) keep the GEMM: there each input value meets few outputs, and
# the tiles ran 1.1-1.3x slower than OpenBLAS.
REDUCTION = 12
# Bytes of packed input per column block (L2 holds it beside the output block).
BLOCK_BYTES = 1 << 17
# Layers of at most this many output channels pack their input block row by row (long
# contiguous copies), the others strip by strip (each tile then reads one contiguous run:
# 1.1-1.3x faster on wide layers, but a copy of NR values per strip and channel costs
# more than a few panels of tiles gain: 0.6-0.8x on 96 -> 24 and 144 -> 24).
BY_ROW_CHANNELS = 32
# Maps of at most this many pixels (16 x 16) take their input channels DEPTH at a time (a
# strip of DEPTH x NR input values, 24 KiB, stays in L1 while it meets every panel of
# weights); the block's partial sums, at most OUT_BLOCK_BYTES, stay in L2 between depths.
# Measured on the 14x14 and 7x7 layers of GoogLeNet, MobileNet V2 and EfficientNet: 1.1-1.5x
# the speed of every channel at once; on 28x28 and larger maps slower (the strips' outputs
# lie a map apart, a page each).
SMALL_MAP = 256
# On larger maps the tiles take layers of at most this many input channels (MobileNet V2's
# and EfficientNet's expansions, 16 -> 96 at 112x112: 1.5x OpenBLAS and its epilogue): there
# the product is bound by writing its output, and the epilogue in registers saves a pass.
# With more input channels OpenBLAS's blocking for L1 wins (GoogLeNet's 192 -> 64 and 256 ->
# 128 at 28x28, EfficientNet's 240 -> 40: 0.8-0.9x; panels taken in groups of 2 to 8 per
# strip did no better).
LARGE_MAP_CHANNELS = 64
SMALL_MAP_CHANNELS = 48
# (256 rather than 160, which kept a strip at 15 KiB: one thread, batch 4, in turns, 0.95x the
# time on 512 -> 512 and 256 -> 512 at 14x14, 0.98 on 1024 -> 1024 at 7x7, 1.00-1.02 on the
# narrowing 576 -> 96; whole networks at batch 8, MobileNet V1 0.98, V2 0.984,
# EfficientNet-B0 0.965, GoogLeNet 1.004.)
DEPTH = 256
OUT_BLOCK_BYTES = 1 << 18
# Jobs wanted per thread: where a layer has fewer column blocks (14x14 and 7x7 maps at batch
# 1: one to three), each block's panels are cut into parts, a job each. MobileNet V2 at
# batch 1, two threads, in turns: 0.93x the time (EfficientNet-B0, V1, GoogLeNet: 1.01-1.02).
SPLIT_JOBS = 2


def _host_features() -> set:
    """The features of the CPU numba compiles for (``+avx2``, ``-avx512f``, ...)."""
    if numba is None:
        return set()
    try:
        import llvmlite.binding as llvm

        return set(llvm.get_host_cpu_features().flatten().split(","))
    except Exception:  # noqa: BLE001 - no feature list: the kernel stays off
        return set()


def _pointer_suffix() -> str:
    """How LLVM names a vector intrinsic's pointer operand (``llvm.masked.load.v8f32.p0``):
    ``p0`` with the opaque pointers of LLVM 17 and later, ``p0v8f32`` before."""
    try:
        import llvmlite.binding as llvm

        major = llvm.llvm_version_info[0]
    except Exception:  # noqa: BLE001 - no version: the newer naming
        major = 17
    return "p0" if major >= 17 else f"p0v{LANES}f32"


_FEATURES = _host_features()
POINTER = _pointer_suffix()
# The error that kept the tiles from compiling in this process (an LLVM or numba older
# or newer than the ones measured), after which the callers keep their own kernels.
BROKEN = None
# Whether the tile can run here (its vectors are AVX2's, its multiply-adds FMA's), and
# whether it is chosen: not where AVX-512 is (OpenBLAS's own kernels there are twice as
# wide as this tile; not measured). The tests run it wherever it can run.
RUNS_HERE = "+avx2" in _FEATURES and "+fma" in _FEATURES
CHOSEN_HERE = RUNS_HERE and "+avx512f" not in _FEATURES


# The activations the tile applies itself (``fast.ACT_CODES``: identity, relu, leaky relu,
# sigmoid, swish, relu6, hardsigmoid, hardswish); RAW: none, the sums stored as they are
# (an input depth before the last).
IN_TILE = frozenset({0, 1, 2, 6, 9, 10, 11, 12})
RAW = -1


def ir_splat(builder, value, kind):
    """A vector of LLVM type ``kind`` with ``value`` in every lane."""
    from llvmlite import ir

    i32 = ir.IntType(32)
    one = builder.insert_element(ir.Constant(kind, ir.Undefined), value, ir.Constant(i32, 0))
    return builder.shuffle_vector(one, ir.Constant(kind, ir.Undefined),
                                  ir.Constant(ir.VectorType(i32, kind.count), [0] * kind.count))


def ir_vector_at(builder, pointer, kind):
    """``pointer`` (to an element) as a pointer to a vector of LLVM type ``kind``."""
    return builder.bitcast(pointer, kind.as_pointer())


def ir_intrinsic(builder, name, kind):
    """The LLVM intrinsic ``name`` on vectors of type ``kind`` (float32 lanes), declared in
    the builder's module: ``fmuladd`` (a * b + c), ``masked.load`` (pointer, alignment,
    lanes, values of the lanes left out) or ``masked.store`` (value, pointer, alignment,
    lanes)."""
    from llvmlite import ir
    from numba.core import cgutils

    lanes = ir.VectorType(ir.IntType(1), kind.count)
    i32, pointer = ir.IntType(32), kind.as_pointer()
    signature = {"fmuladd": ir.FunctionType(kind, [kind, kind, kind]),
                 "masked.load": ir.FunctionType(kind, [pointer, i32, lanes, kind]),
                 "masked.store": ir.FunctionType(ir.VoidType(), [kind, pointer, i32, lanes])}
    suffix = "" if name == "fmuladd" else f".{POINTER}"
    return cgutils.get_or_insert_function(builder.module, signature[name],
                                          f"llvm.{name}.v{kind.count}f32{suffix}")


def ir_switch(builder, code, cases, emit, name):
    """A block per case of the integer ``code`` (an unknown one takes case 0's), each
    filled by ``emit(case)``; the builder is left after them."""
    from llvmlite import ir

    fn = builder.function
    after = fn.append_basic_block(f"{name}.after")
    blocks = {case: fn.append_basic_block(f"{name}.{case}") for case in cases}
    switch = builder.switch(code, blocks[0])
    for case, block in blocks.items():
        switch.add_case(ir.Constant(code.type, case), block)
        builder.position_at_end(block)
        emit(case)
        builder.branch(after)
    builder.position_at_end(after)


def _vector_exp(builder, v, fma, vec):
    """``fast._exp32`` on a vector ``v``: the same steps (clamps that keep NaN, ``k`` read
    from the rounding's bits, the degree-7 polynomial, ``2**k`` from exponent bits)."""
    from llvmlite import ir

    i32 = ir.IntType(32)
    ivec = ir.VectorType(i32, LANES)

    def k(x):
        return ir.Constant(vec, [x] * LANES)

    def fmuladd(a, b, c):
        return builder.call(fma, [a, b, c])

    c = builder.select(builder.fcmp_ordered(">", k(fast.EXP_LOW), v), k(fast.EXP_LOW), v)
    c = builder.select(builder.fcmp_ordered("<", k(fast.EXP_HIGH), c), k(fast.EXP_HIGH), c)
    t = fmuladd(c, k(fast.LOG2E), k(fast.ROUND))
    kk = builder.fsub(t, k(fast.ROUND))
    r = fmuladd(kk, k(-fast.LN2_HI), c)
    r = fmuladd(kk, k(fast.LN2_LO), r)
    p = k(fast.EXP_POLY[0])
    for coef in fast.EXP_POLY[1:]:
        p = fmuladd(p, r, k(coef))
    p = builder.fadd(fmuladd(p, builder.fmul(r, r), r), k(1.0))
    biased = builder.sub(builder.bitcast(t, ivec), ir.Constant(ivec, [0x4B400000 - 127] * LANES))
    scale = builder.bitcast(builder.shl(biased, ir.Constant(ivec, [23] * LANES)), vec)
    e = builder.fmul(p, scale)
    return builder.select(builder.fcmp_ordered(">", v, k(fast.EXP_INF)), k(float("inf")), e)


def vector_act(builder, code, y, alpha, beta, fma, splat, vec):
    """The activation ``code`` on a vector ``y``, as ``fast.finish_row`` computes it."""
    from llvmlite import ir

    def k(x):
        return ir.Constant(vec, [x] * LANES)

    def clamp(v, top):
        v = builder.select(builder.fcmp_ordered("<", v, k(0.0)), k(0.0), v)
        return builder.select(builder.fcmp_ordered(">", v, k(top)), k(top), v)

    if code == 0:
        return y
    if code == 1:  # NaN stays NaN: ``0 if v < 0 else v``
        return builder.select(builder.fcmp_ordered("<", y, k(0.0)), k(0.0), y)
    if code == 10:
        return clamp(y, 6.0)
    if code == 2:
        return builder.select(builder.fcmp_ordered(">=", y, k(0.0)), y,
                              builder.fmul(y, splat(alpha)))
    if code == 11:
        return builder.fdiv(clamp(builder.fadd(y, k(3.0)), 6.0), k(6.0))
    if code == 12:
        return builder.fmul(y, builder.fdiv(clamp(builder.fadd(y, k(3.0)), 6.0), k(6.0)))
    if code == 6:
        return builder.fdiv(k(1.0), builder.fadd(k(1.0), _vector_exp(
            builder, builder.fsub(k(-0.0), y), fma, vec)))
    if code == 9:
        arg = builder.fsub(k(-0.0), builder.fmul(splat(beta), y))
        return builder.fdiv(y, builder.fadd(k(1.0), _vector_exp(builder, arg, fma, vec)))
    raise ValueError(f"no activation {code} in the tile")


if numba is not None:
    from llvmlite import ir as _ir
    from numba.core import types as _types
    from numba.extending import intrinsic as _intrinsic

    @_intrinsic
    def _tile(typingctx, a, ai, b, bi, bs, kk, c, ci, cs, g, s, gi, code, alpha, beta, rows,
              more, last):
        """One ``MR x NR`` tile of ``c`` (``c[ci + i*cs + j]``, ``i < rows``, ``j < NR``):
        ``S[i, j] = sum_k a[ai + k*MR + i] * b[bi + k*bs + j]`` over ``kk >= 1`` input
        channels, plus the tile's stored values where ``more`` (a later block of input
        channels); stored as ``act(S * g[gi+i] + s[gi+i])`` where ``last``, else as ``S``;
        ``act`` the activation of ``fast.ACT_CODES``'s ``code`` with its ``alpha`` and
        ``beta``, computed as ``fast.finish_row`` does (sigmoid and swish through the same
        exp, `_vector_exp`). Rows past ``rows`` are computed, never loaded or stored. ``a``,
        ``b``, ``g``, ``s``: float32 arrays of any layout, addressed from their first
        element by the element offsets given; ``c``: the address of float32 memory (an
        array's ``ctypes.data``), so that one call site serves the output and a buffer (a
        call site per array type made the kernel's compilation 1.5 s longer). The sums
        stay in registers through the loop over ``k``."""
        arrays = (a, b, g, s)
        if any(not isinstance(t, _types.Array) or t.dtype != _types.float32 for t in arrays):
            return None
        if not isinstance(c, _types.Integer):
            return None
        sig = _types.none(a, _types.intp, b, _types.intp, _types.intp, _types.intp, _types.uintp,
                          _types.intp, _types.intp, g, s, _types.intp, _types.intp,
                          _types.float32, _types.float32, _types.intp, _types.boolean,
                          _types.boolean)

        def codegen(context, builder, signature, args):
            (a_, ai_, b_, bi_, bs_, kk_, c_, ci_, cs_, g_, s_, gi_, code_, alpha_, beta_, rows_,
             more_, last_) = args
            t = signature.args
            f32 = _ir.FloatType()
            i64 = _ir.IntType(64)
            vec = _ir.VectorType(f32, LANES)
            fn = builder.function

            def base(value, typ, offset):
                data = context.make_array(typ)(context, builder, value).data
                return builder.gep(data, [offset])

            def const(v):
                return _ir.Constant(i64, v)

            def splat(x):
                return ir_splat(builder, x, vec)

            def vector_at(pointer):
                return ir_vector_at(builder, pointer, vec)

            def row_guard(i, name):
                """A block entered for row ``i < rows`` (and the block after it)."""
                inside = fn.append_basic_block(f"tile.{name}{i}")
                after = fn.append_basic_block(f"tile.{name}{i}.after")
                builder.cbranch(builder.icmp_signed("<", const(i), rows_), inside, after)
                builder.position_at_end(inside)
                return inside, after

            pa, pb = base(a_, t[0], ai_), base(b_, t[2], bi_)
            pc = builder.gep(builder.inttoptr(c_, f32.as_pointer()), [ci_])
            pg, ps = base(g_, t[9], gi_), base(s_, t[10], gi_)
            row_at = [builder.gep(pc, [builder.mul(const(i), cs_)]) for i in range(MR)]
            fma = ir_intrinsic(builder, "fmuladd", vec)
            zero = _ir.Constant(vec, [0.0] * LANES)
            # the starting sums: zero, or (``more``) the tile's stored rows
            start = []
            for i in range(MR):
                before = builder.block
                read = fn.append_basic_block(f"tile.read{i}")
                after = fn.append_basic_block(f"tile.read{i}.after")
                go = builder.and_(more_, builder.icmp_signed("<", const(i), rows_))
                builder.cbranch(go, read, after)
                builder.position_at_end(read)
                got = [builder.load(vector_at(builder.gep(row_at[i], [const(v * LANES)])),
                                    align=4) for v in range(NV)]
                builder.branch(after)
                builder.position_at_end(after)
                row = []
                for v in range(NV):
                    p = builder.phi(vec)
                    p.add_incoming(got[v], read)
                    p.add_incoming(zero, before)
                    row.append(p)
                start.append(row)
            entry = builder.block
            loop = fn.append_basic_block("tile.k")
            done = fn.append_basic_block("tile.store")
            builder.branch(loop)
            builder.position_at_end(loop)
            k = builder.phi(i64)
            k.add_incoming(const(0), entry)
            sums = [[builder.phi(vec) for _ in range(NV)] for _ in range(MR)]
            for i in range(MR):
                for v in range(NV):
                    sums[i][v].add_incoming(start[i][v], entry)
            pbk = builder.gep(pb, [builder.mul(k, bs_)])
            xs = [builder.load(vector_at(builder.gep(pbk, [const(v * LANES)])), align=4)
                  for v in range(NV)]
            pak = builder.gep(pa, [builder.mul(k, const(MR))])
            new = []
            for i in range(MR):
                wi = splat(builder.load(builder.gep(pak, [const(i)])))
                new.append([builder.call(fma, [wi, xs[v], sums[i][v]]) for v in range(NV)])
            k1 = builder.add(k, const(1))
            k.add_incoming(k1, loop)
            for i in range(MR):
                for v in range(NV):
                    sums[i][v].add_incoming(new[i][v], loop)
            builder.cbranch(builder.icmp_signed("<", k1, kk_), loop, done)
            builder.position_at_end(done)
            # the activation's code where ``last``, else RAW: the sums stored as they are
            chosen = builder.select(last_, code_, const(RAW))
            cases = [RAW] + sorted(IN_TILE)
            for i in range(MR):
                _, after = row_guard(i, "row")
                gain = splat(builder.load(builder.gep(pg, [const(i)])))
                shift = splat(builder.load(builder.gep(ps, [const(i)])))
                ys = [builder.call(fma, [new[i][v], gain, shift]) for v in range(NV)]

                def store(case, i=i, ys=ys):
                    for v in range(NV):
                        y = (new[i][v] if case == RAW else
                             vector_act(builder, case, ys[v], alpha_, beta_, fma, splat, vec))
                        builder.store(y, vector_at(builder.gep(row_at[i], [const(v * LANES)])),
                                      align=4)

                ir_switch(builder, chosen, cases, store, f"tile.act{i}")
                builder.branch(after)
                builder.position_at_end(after)
            return context.get_dummy_value()

        return sig, codegen
else:  # pragma: no cover - the kernels below are never called without numba
    _tile = None


@jit()
def _pack_weights(w, packed):
    """``w (O, C)`` into panels of ``MR`` channels, channel-minor: ``packed[(p*C + k)*MR + i]
    = w[p*MR + i, k]``, zero past ``O``."""
    o, c = w.shape
    for p in range(0, o, MR):
        base = p * c
        for k in range(c):
            for i in range(MR):
                packed[base + k * MR + i] = w[p + i, k] if p + i < o else 0.0


@jit()
def scatter_strip(tmp, out, t, panels, first, valid, ch0, ch1):
    """Strip ``t``'s sums kept in ``tmp`` (``(strip, panel, MR, NR)``), output channels
    ``ch0 .. ch1 - 1``, into ``out (N, O, HW)``: its ``valid`` columns from column ``first``
    of the flattened batch, which may run across images."""
    hw = out.shape[2]
    q = 0
    while q < valid:
        im = (first + q) // hw
        pp = first + q - im * hw
        run = min(hw - pp, valid - q)
        for ch in range(ch0, ch1):
            at = ((t * panels + ch // MR) * MR + ch % MR) * NR + q
            dst = out[im, ch, pp:pp + run]
            src = tmp[at:at + run]
            for r in range(run):
                dst[r] = src[r]
        q += run


@jit()
def _pointwise(start, stop, packed, x, out, gain, shift, act, alpha, beta, post, code, k, gate,
               has_gate, in_gate, has_in_gate, per_block, blocks, depth, by_strip, group,
               split):
    """Jobs ``start .. stop - 1``: column block ``job // split`` of ``blocks``, its panels of
    weights cut into ``split`` parts, part ``job % split`` (see ``pointwise_conv2d``):
    ``out (N, O, HW)`` from ``x (N, C, HW)``, both with contiguous rows, ``depth`` input
    channels at a time. ``by_strip``: the input block packed strip by strip (else row by
    row); ``group``: panels of weights (``MR`` output channels each) taken together, each
    strip of the block meeting every panel of a group in turn. ``act`` (with ``alpha``,
    ``beta``): the activation the tile applies; ``post``: the activation ``code``
    (constants ``k``) and the gate are applied after the tiles, on each row of the block.
    ``in_gate`` (``(N, C)``, where ``has_in_gate``) multiplies the input as it is
    packed."""
    n, c, hw = x.shape
    o = out.shape[1]
    panels = (o + MR - 1) // MR
    cols = n * hw
    on, oc = out.strides[0] // 4, out.strides[1] // 4
    one = np.float32(1.0)
    width_max = per_block + NR
    most = width_max // NR + 1  # strips in a block
    starts = np.empty(most, dtype=np.int64)
    images = np.empty(most, dtype=np.int64)
    direct = np.empty(most, dtype=np.bool_)
    # (+ NR: a narrow last strip's tile reads NR columns of its row-packed block)
    buffer = np.empty(depth * width_max + NR, dtype=np.float32)
    # the sums of strips that run across images, (strip, panel, MR, NR), scattered at the end
    scratch = np.empty(most * panels * MR * NR, dtype=np.float32)
    row = np.empty(width_max, dtype=np.float32)
    buf, tmp, rowbuf = borrow(buffer), borrow(scratch), borrow(row)
    out_data, tmp_data = out.ctypes.data, scratch.ctypes.data  # (the tile's stores)
    x, out, packed = borrow(x), borrow(out), borrow(packed)
    gain, shift, gate, k = borrow(gain), borrow(shift), borrow(gate), borrow(k)
    in_gate = borrow(in_gate)
    per_part = (panels + split - 1) // split
    for job in range(start, stop):
        block = job // split
        p0 = (job - block * split) * per_part  # this job's panels: p0 .. p1 - 1
        p1 = min(panels, p0 + per_part)
        if p0 >= p1:
            continue
        mine = p1 - p0
        ch0, ch1 = p0 * MR, min(o, p1 * MR)  # and their output channels
        c0 = block * per_block
        c1 = cols if block == blocks - 1 else c0 + per_block
        width = c1 - c0
        strips = (width + NR - 1) // NR
        for t in range(strips):
            first = c0 + t * NR
            starts[t] = first
            images[t] = first // hw
            # a strip within one image and the block is written straight to ``out``;
            # one across two images, or the block's last when narrower, goes through
            # ``tmp`` (its sums carried there from one depth to the next)
            direct[t] = first - images[t] * hw + NR <= hw and first + NR <= c1
        for k0 in range(0, c, depth):
            kn = min(depth, c - k0)
            if by_strip:
                # strip t's columns of input channel k0 + ch at buf[(t*kn + ch)*NR:][:NR]:
                # a tile reads one contiguous run of kn*NR values
                for ch in range(kn):
                    for t in range(strips):
                        img = images[t]
                        p = starts[t] - img * hw
                        dst = buf[(t * kn + ch) * NR:(t * kn + ch + 1) * NR]
                        g = in_gate[img, k0 + ch] if has_in_gate else one
                        if direct[t]:
                            src = x[img, k0 + ch, p:p + NR]
                            for q in range(NR):
                                dst[q] = src[q] * g
                        else:  # across two images at most (hw >= NR here); the columns
                            # past the block are left as they are: their sums are dropped
                            valid = min(NR, c1 - starts[t])
                            part = min(hw - p, valid)
                            src = x[img, k0 + ch, p:p + part]
                            for q in range(part):
                                dst[q] = src[q] * g
                            if valid > part:  # (else the strip ends in the last image)
                                g = in_gate[img + 1, k0 + ch] if has_in_gate else one
                                src = x[img + 1, k0 + ch, 0:valid - part]
                                for q in range(valid - part):
                                    dst[part + q] = src[q] * g
            else:
                # the block's columns of input channel k0 + ch at buf[ch*width:][:width]
                col = c0
                while col < c1:
                    img = col // hw
                    p = col - img * hw
                    run = min(hw - p, c1 - col)
                    for ch in range(kn):
                        src = x[img, k0 + ch, p:p + run]
                        dst = buf[ch * width + col - c0:ch * width + col - c0 + run]
                        g = in_gate[img, k0 + ch] if has_in_gate else one
                        for q in range(run):
                            dst[q] = src[q] * g
                    col += run
            more = k0 > 0
            last = k0 + kn == c
            step = NR if by_strip else width
            for u in range(strips * mine):  # groups of panels, each meeting every
                g0 = u // (strips * group) * group  # strip in turn (the strip in L1)
                size = min(group, mine - g0)
                t = (u - g0 * strips) // size
                m = p0 + g0 + (u - g0 * strips) % size
                m0 = m * MR
                rows = min(MR, o - m0)
                img = images[t]
                p = starts[t] - img * hw
                at = t * kn * NR if by_strip else starts[t] - c0
                if direct[t]:
                    target, at_out, row_step = out_data, img * on + m0 * oc + p, oc
                else:
                    target, at_out, row_step = tmp_data, (t * panels + m) * MR * NR, NR
                _tile(packed, m0 * c + k0 * MR, buf, at, step, kn, target, at_out, row_step,
                      gain, shift, m0, act, alpha, beta, rows, more, last)
        for t in range(strips):  # the strips kept in ``tmp``, into their images
            if not direct[t]:
                scatter_strip(tmp, out, t, panels, starts[t], min(NR, c1 - starts[t]), ch0, ch1)
        if post:
            col = c0
            while col < c1:
                img = col // hw
                p = col - img * hw
                run = min(hw - p, c1 - col)
                part = rowbuf[:run]
                for ch in range(ch0, ch1):
                    dst = out[img, ch, p:p + run]
                    for q in range(run):
                        part[q] = dst[q]
                    finish_row(part, dst, k[1], k[0], False, False, code, k,
                               gate[img if has_gate else 0, ch if has_gate else 0], has_gate)
                col += run
    keep(buffer)
    keep(scratch)
    keep(row)


def run_tiles(kernel, jobs, *args, values=None) -> bool:
    """``fast.parallel(kernel, jobs, *args)`` for a kernel built on this module's IR (here
    and in ``ops/depthwise.py``); False, with a warning once and the tiles off for the
    process, if it does not compile here (nothing was written then: compilation comes
    before the first job)."""
    global BROKEN, CHOSEN_HERE
    try:
        parallel(kernel, jobs, *args, values=values)
    except (numba.core.errors.NumbaError, RuntimeError) as error:
        if BROKEN is not None or CHOSEN_HERE is False:
            raise
        BROKEN, CHOSEN_HERE = error, False
        import warnings

        warnings.warn(f"cnnc: the compiled tiles (1x1, depthwise, strided) do not compile here "
                      f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
                      f"the GEMM and direct kernels run instead", RuntimeWarning, stacklevel=3)
        return False
    return True


def applies(x, w, dtype) -> bool:
    """Whether ``pointwise_conv2d`` runs this 1x1 convolution (the caller has checked the
    geometry: 1x1 kernel, stride 1, no padding, one group)."""
    n, c = x.shape[:2]
    hw = math.prod(x.shape[2:])
    cols = n * hw
    return (POINTWISE and CHOSEN_HERE and np.dtype(dtype) == np.float32 and cols >= NR
            and c < REDUCTION * w.shape[0] and (hw <= SMALL_MAP or c <= LARGE_MAP_CHANNELS)
            and usable(x, w))


def packed_weights(w):
    """``w (O, C, kh, kw)`` in the tiles' panels over ``K = C*kh*kw`` (`_pack_weights`; a
    1x1 layer's ``K`` is its input channels): a flat float32 array."""
    o, k = w.shape[0], math.prod(w.shape[1:])
    packed = np.empty(-(-o // MR) * MR * k, dtype=np.float32)
    _pack_weights(np.ascontiguousarray(w.reshape(o, k)), packed)
    return packed


def kept_weights(w, prepared, key: str):
    """`packed_weights` of ``w``, kept in the layer's `ops.base.PreparedLayer` under ``key``
    where there is one (packed on every call without it: 0.1 ms a layer of MobileNet V2)."""
    if prepared is not None:
        size = -(-w.shape[0] // MR) * MR * math.prod(w.shape[1:]) * 4
        packed = prepared.kept(key, size, lambda: packed_weights(w), source=w)
        if packed is not None:
            return packed
    return packed_weights(w)


def pointwise_conv2d(x, w, b, scale, act, out, gate=None, in_gate=None,
                     prepared=None) -> bool:
    """``out (N, O, H, W)`` (rows contiguous) = the 1x1 convolution of ``x (N, C, H, W)``
    (each image's channels times ``in_gate``, ``(N, C)`` or None, as they are packed) by
    ``w (O, C, 1, 1)``, times ``scale``, plus ``b`` (``(O,)`` or None), through ``act`` and
    times ``gate`` (``(N, O)`` or None). Returns False (nothing written) when the kernel
    does not take it: the caller runs its GEMM. ``prepared``: the layer's
    `ops.base.PreparedLayer` (conv2d's), where the packed weights are kept (packed on
    every call without it: 0.1 ms a layer of MobileNet V2, 4 % of its time)."""
    if not applies(x, w, x.dtype):
        return False
    code = act_code(act, x.dtype)
    if code is None:
        return False
    code, alpha, beta = code
    n, c = x.shape[:2]
    o = w.shape[0]
    hw = math.prod(x.shape[2:])
    x3 = x.reshape(n, c, hw)
    if x3.strides[2] != 4 or (hw > 1 and x3.strides[1] < hw * 4):
        x3 = np.ascontiguousarray(x3)
    out3 = out.reshape(n, o, hw) if out.flags.c_contiguous else _rows_view(out, n, o, hw)
    packed = kept_weights(w, prepared, "pointwise")
    gain = np.ones(o, np.float32) if scale is None else np.ascontiguousarray(scale)
    shift = np.zeros(o, np.float32) if b is None else np.ascontiguousarray(b)
    # the tile applies the activation where it has it; the rest, and a gate (after the
    # activation), in a pass over each block's rows
    act, code = (code, 0) if code in IN_TILE else (0, code)
    post = gate is not None or code != 0
    cols = n * hw
    if NR <= hw <= SMALL_MAP and o > SMALL_MAP_CHANNELS:
        # small maps: input channels DEPTH at a time, each strip (DEPTH x NR values, in
        # L1) meeting every panel of weights; the block's output stays in L2 between them
        depth = min(c, DEPTH)
        per_block = min(OUT_BLOCK_BYTES // (o * 4), BLOCK_BYTES // (depth * 4))
        by_strip = True
        group = -(-o // MR)  # every panel
    else:
        # large maps: every input channel at once, each panel meeting every strip (a
        # strip's outputs are MR rows a map apart: NR values in each of O pages, when
        # each strip met every panel)
        depth = c
        per_block = BLOCK_BYTES // (c * 4)
        by_strip = o > BY_ROW_CHANNELS and hw >= NR
        group = 1
    per_block = max(NR, per_block // NR * NR)  # whole strips
    blocks = -(-cols // per_block)
    if blocks > 1 and cols - (blocks - 1) * per_block < NR:
        blocks -= 1  # the last block takes the rest, so that it is at least NR wide
    # fewer blocks than the threads have jobs to share (a small map at batch 1): each
    # block's panels of weights are cut into parts, a job each (the parts pack the block's
    # input each; every output channel is computed as it would be whole)
    threads = fast.get_threads()
    split = 1
    if (threads > 1 and blocks < SPLIT_JOBS * threads
            and cols * o * c >= fast.MIN_PARALLEL_VALUES):  # (else one thread runs it)
        split = min(-(-o // MR), -(-SPLIT_JOBS * threads // blocks))
    return run_tiles(_pointwise, blocks * split, packed, x3, out3, gain, shift, act,
                     np.float32(alpha), np.float32(beta), post, code,
                     constants(np.float32, alpha, beta),
                     np.zeros((1, 1), np.float32) if gate is None else gate, gate is not None,
                     np.ones((1, 1), np.float32) if in_gate is None else in_gate,
                     in_gate is not None, per_block, blocks, depth, by_strip, group, split,
                     values=cols * o * c)


def _rows_view(out, n, o, hw):
    """``out (N, O, H, W)`` with contiguous rows seen as ``(N, O, H*W)``."""
    s_n, s_o = out.strides[:2]
    return np.lib.stride_tricks.as_strided(out, (n, o, hw), (s_n, s_o, 4))
