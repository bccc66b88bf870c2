"""The CuPy (GPU) backend: ``KERNELS`` for inference and ``GRADS`` for training, over the
same closed set of ops and calling conventions as the NumPy backend (``runtime/ops.py``,
``runtime/grads``).

Hand-written CUDA kernels (``runtime/cuda_kernels.py``) run where one pays: convolution
(im2col, cuBLAS through ``cupy.matmul``, one fused bias + activation epilogue; col2im for
the backward pass), max and average pooling, activations, LRN and inference batch norm.
Where CuPy's own array operations are already one or two kernels (flatten, concat, add,
softmax, maxout, global pooling, dropout) the table reuses the NumPy backend's kernels,
which are written against the array module and run on CuPy arrays unchanged. ``GRADS``
overrides conv, dense, pooling and activations, and hands every other op to the generic
``runtime.grads`` table, imported when first needed.

CuPy is imported inside functions, never at module level, so this module imports on a
machine without CuPy or a GPU. All array work goes through ``_cupy()`` and all kernel
launches through ``_kernel()``; the CPU tests replace those two with NumPy and a C++ build
of the same CUDA text, and run everything here unchanged.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy

from . import cuda_kernels
from .grads._util import as_grad
from .kernels import activation as activation_module
from .kernels import conv as conv_module
from .kernels import pool as pool_module
from .kernels.linear import dense as numpy_dense
from .kernels.norm import batchnorm as numpy_batchnorm
from .kernels.norm import lrn as numpy_lrn
from .numpy_backend import KERNELS as NUMPY_KERNELS
from .ops import Op

# Bytes of workspace (column matrix and GEMM result) one convolution chunk may use.
WORKSPACE_BYTES = 256 << 20
# Threads per block, and the most blocks one launch asks for: the kernels' grid-stride
# loops cover any size with any grid.
BLOCK = 256
MAX_BLOCKS = 1 << 16

_FLOATS = (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64))


# ---------------------------------------------------------------- device plumbing


def _cupy():
    """The array module every array here lives in."""
    import cupy

    return cupy


@functools.lru_cache(maxsize=None)
def _module(device_id):
    """Every kernel instantiation in one module, compiled by NVRTC on first use (CuPy keeps
    the binary in its kernel cache) and loaded on device ``device_id``."""
    import cupy

    return cupy.RawModule(code=cuda_kernels.source(),
                          name_expressions=cuda_kernels.instantiations())


@functools.lru_cache(maxsize=None)
def _device_kernel(device_id, name, dtype_name):
    return _module(device_id).get_function(cuda_kernels.instantiation(name, dtype_name))


def _kernel(name, dtype_name):
    """The compiled kernel ``name`` for one element type, on the current device."""
    import cupy

    return _device_kernel(cupy.cuda.runtime.getDevice(), name, dtype_name)


def launch_geometry(n, block=None, max_blocks=None):
    """``(grid, block)`` for ``n`` work items: one thread per item, in blocks of ``block``
    threads (``BLOCK``), at most ``max_blocks`` blocks (``MAX_BLOCKS``)."""
    block = BLOCK if block is None else block
    max_blocks = MAX_BLOCKS if max_blocks is None else max_blocks
    if n < 1:
        raise ValueError(f"a launch needs at least one work item, got {n}")
    return min(-(-n // block), max_blocks), block


def pack_args(name, dtype, args):
    """Convert ``args`` to the exact types of kernel ``name``'s parameters.

    CuPy passes a Python int as a 64-bit integer and a float as a double whatever the
    kernel declares; a mismatch reads garbage on the device. So every scalar is converted
    here to its declared width, and every array is checked for dtype and C order.
    """
    params = cuda_kernels.signatures()[name]
    if len(args) != len(params):
        raise TypeError(f"{name} takes {len(params)} arguments, got {len(args)}")
    scalar = {"T": dtype.type, "int": numpy.int32, "long long": numpy.int64}
    out = []
    for (ctype, pname), value in zip(params, args):
        if ctype in scalar:
            if ctype == "int" and not -(1 << 31) <= int(value) < (1 << 31):
                raise OverflowError(f"{name}: {pname}={value} does not fit an int32")
            out.append(scalar[ctype](value))
            continue
        want = numpy.dtype(numpy.int32) if "int" in ctype else dtype
        if value.dtype != want or not value.flags.c_contiguous:
            raise TypeError(f"{name}: {pname} must be a C-contiguous {want} array, got "
                            f"{value.dtype} with shape {tuple(value.shape)}")
        out.append(value)
    return tuple(out)


def _launch(name, dtype, n, *args):
    """Run kernel ``name`` over ``n`` work items (nothing when ``n`` is 0)."""
    if n == 0:
        return
    grid, block = launch_geometry(n)
    kernel = _kernel(name, dtype.name)
    kernel((grid,), (block,), pack_args(name, dtype, args))


def compute_dtype(*dtypes):
    """The float type an op computes in (NumPy's rule: integers compute in float64), or
    None when the CUDA kernels have no instantiation for it (float16)."""
    dtype = numpy.result_type(*dtypes)
    if dtype.kind != "f":
        dtype = numpy.dtype(numpy.float64)
    return dtype if dtype in _FLOATS else None


def _contiguous(a, dtype, xp):
    """``a`` on the device as a C-contiguous array of ``dtype``; no copy when it is one."""
    return xp.ascontiguousarray(xp.asarray(a, dtype=dtype))


def _grad_input(dy, shape, dtype, xp, where):
    """``dy`` as a C-contiguous ``dtype`` array of the forward output's ``shape``."""
    return _contiguous(as_grad(dy, shape, dtype, xp, where), dtype, xp)


def _target(out, shape, dtype, xp, where):
    """The array a kernel writes its ``shape``/``dtype`` result into: ``out`` itself when
    it is C-contiguous, else a fresh array that ``_deliver`` copies into ``out`` (a channel
    slice of a concat buffer, say). ``out`` must have the result's shape and dtype."""
    if out is None:
        return xp.empty(shape, dtype=dtype)
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype:
        raise ValueError(f"{where}: out must be {list(shape)} {dtype}, got "
                         f"{list(out.shape)} {out.dtype}")
    if out.flags.c_contiguous:
        return out
    return xp.empty(shape, dtype=dtype)


def _deliver(y, out):
    """``y``, copied into ``out`` first when the kernel could not write there directly."""
    if out is None or y is out:
        return y
    out[...] = y
    return out


def _dummy(dtype, xp):
    """A one-element array for a pointer parameter the kernel will not read (a bias when
    there is none, slopes when the activation is not prelu, argmax when not kept)."""
    return xp.empty(1, dtype=dtype)


# ---------------------------------------------------------------- activations


@dataclass(frozen=True)
class ActSpec:
    """An activation as the kernels take it: code, alpha, beta and prelu's slopes."""

    name: str
    code: int
    alpha: float
    beta: float
    weight: object = None  # prelu's slopes, an array of 1 or C values

    @property
    def identity(self):
        return self.code == cuda_kernels.ACTIVATION_CODES["identity"]


def act_spec(act):
    """Normalise a fused activation (None, a name, or ``(name, params)``) to an ActSpec,
    with PyTorch's defaults as ``runtime/kernels/activation.py`` has them."""
    if act is None:
        return make_act_spec("identity")
    if isinstance(act, str):
        return make_act_spec(act)
    name, params = act
    return make_act_spec(name, **dict(params or {}))


def make_act_spec(name, alpha=None, beta=None, weight=None):
    defaults = activation_module.DEFAULTS
    if name not in defaults:
        known = ", ".join(sorted(defaults))
        raise ValueError(f"unknown activation {name!r}; known: {known}")
    default_alpha, default_beta = defaults[name]
    alpha = default_alpha if alpha is None else alpha
    beta = default_beta if beta is None else beta
    if name == "prelu" and weight is None:
        raise ValueError("prelu: needs its per-channel weight, got none")
    return ActSpec(name, cuda_kernels.ACTIVATION_CODES[name], float(alpha or 0.0),
                   float(beta or 0.0), weight if name == "prelu" else None)


def _slopes(spec, shape, dtype, xp):
    """``(slopes array, count)`` for the kernels; a dummy unless the activation is prelu."""
    if spec.weight is None:
        return _dummy(dtype, xp), 1
    slopes = _contiguous(spec.weight, dtype, xp).reshape(-1)
    channels = shape[1] if len(shape) > 1 else 1
    if slopes.size not in (1, channels):
        raise ValueError(
            f"prelu: weight has {slopes.size} slopes, expected 1 or {channels} "
            f"(one per channel of input {tuple(shape)})"
        )
    return slopes, slopes.size


def _channels_inner(shape):
    """``(channels, inner)`` of an array seen as (outer, channels, inner) along axis 1."""
    channels = shape[1] if len(shape) > 1 else 1
    inner = 1
    for d in shape[2:]:
        inner *= d
    return channels, inner


def _act_args(spec, shape, dtype, xp):
    slopes, n_slopes = _slopes(spec, shape, dtype, xp)
    return (spec.code, spec.alpha, spec.beta, slopes, n_slopes)


def _bias_act(x, y, bias, spec, xp):
    """``y = act(x + bias[c])`` in one pass; ``y`` may be ``x``."""
    if bias is None and spec.identity and y is x:
        return y  # nothing to do
    dtype = x.dtype
    channels, inner = _channels_inner(x.shape)
    has_bias = bias is not None
    b = _contiguous(bias, dtype, xp) if has_bias else _dummy(dtype, xp)
    _launch("cnnc_bias_act", dtype, x.size, x, y, b, int(has_bias), x.size, channels, inner,
            *_act_args(spec, x.shape, dtype, xp))
    return y


def _act_backward(dy, x, spec, xp):
    """``dy * act'(x)``, a new array; ``dy`` already has ``x``'s shape."""
    dtype = x.dtype
    dy = _contiguous(dy, dtype, xp)
    dx = xp.empty_like(x)
    channels, inner = _channels_inner(x.shape)
    _launch("cnnc_act_backward", dtype, x.size, dy, x, dx, x.size, channels, inner,
            *_act_args(spec, x.shape, dtype, xp))
    return dx


def activation(x, weight=None, *, name, alpha=None, beta=None, out=None):
    """The ACTIVATION op: a new array and ``x`` untouched, unless ``out`` is given (which
    may be ``x`` itself: in place)."""
    xp = _cupy()
    dtype = compute_dtype(x.dtype)
    if dtype is None:
        return NUMPY_KERNELS[Op.ACTIVATION](x, weight, name=name, alpha=alpha, beta=beta,
                                            out=out)
    spec = make_act_spec(name, alpha, beta, weight)
    x = _contiguous(x, dtype, xp)
    y = _target(out, x.shape, dtype, xp, "activation")
    return _deliver(_bias_act(x, y, None, spec, xp), out)


def _activation_forward(x, weight=None, *, train=True, rng=None, name, alpha=None,
                        beta=None):
    xp = _cupy()
    dtype = compute_dtype(x.dtype)
    if dtype is None:
        return _generic_forward(Op.ACTIVATION, x, weight, train=train, rng=rng, name=name,
                                alpha=alpha, beta=beta)
    spec = make_act_spec(name, alpha, beta, weight)
    x = _contiguous(x, dtype, xp)
    y = _bias_act(x, xp.empty_like(x), None, spec, xp)
    return y, dict(x=x, spec=spec, weight=weight)


def _activation_backward(saved, dy):
    if "generic" in saved:
        return _generic_backward(Op.ACTIVATION, saved, dy)
    xp = _cupy()
    x, spec, weight = saved["x"], saved["spec"], saved["weight"]
    dy = _grad_input(dy, x.shape, x.dtype, xp, "activation")
    dx = _act_backward(dy, x, spec, xp)
    if spec.weight is None:
        return (dx,), ()
    # prelu's slopes: dL/da_c sums dy * x over the cells of channel c where x <= 0
    contrib = dy * xp.minimum(x, 0)
    weight_size = int(numpy.prod(weight.shape))
    if weight_size == 1 or x.ndim < 2:
        gw = contrib.sum()
    else:
        axes = (0,) + tuple(range(2, x.ndim))
        gw = contrib.sum(axis=axes)
    return (dx,), (gw.reshape(weight.shape).astype(x.dtype, copy=False),)


# ---------------------------------------------------------------- convolution


@dataclass(frozen=True)
class ConvGeometry:
    """Every size of one convolution, from the shapes and the step's attributes."""

    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    stride: tuple
    dilation: tuple
    pads: tuple  # (top, bottom, left, right)
    groups: int
    ho: int
    wo: int

    @property
    def cg(self):
        return self.c // self.groups

    @property
    def og(self):
        return self.o // self.groups

    @property
    def spatial(self):
        return self.ho * self.wo

    @property
    def k(self):
        """Rows of one group's column matrix: C/G * kh * kw."""
        return self.cg * self.kh * self.kw

    @property
    def pointwise(self):
        """A 1x1, stride-1, unpadded convolution: a matmul over the input as it lies."""
        return (self.kh == self.kw == 1 and self.stride == (1, 1) and max(self.pads) == 0)

    @property
    def depthwise(self):
        """One input channel per group (and more than one group): a direct kernel."""
        return self.groups > 1 and self.cg == 1 and not self.pointwise

    def window_args(self):
        """The im2col / col2im geometry arguments after ``nb, C, H, W``."""
        return (self.kh, self.kw, self.stride[0], self.stride[1], self.pads[0], self.pads[2],
                self.dilation[0], self.dilation[1], self.ho, self.wo)


def conv_geometry(x, w, b, stride, pad, dilation, groups):
    """Check the shapes and attributes of a convolution as the NumPy kernel does (same
    messages) and return its ConvGeometry."""
    conv_module._check_conv_shapes(x, w, b, groups)
    (sh, sw), (dh, dw), pads, (ho, wo) = conv_module.conv_geometry(x, w, stride, pad, dilation)
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    return ConvGeometry(n, c, h, wd, o, kh, kw, (sh, sw), (dh, dw), pads, groups, ho, wo)


def batch_chunk(n, per_sample_bytes, budget=None):
    """How many samples one chunk takes so that its workspace stays within ``budget``
    bytes (``WORKSPACE_BYTES``); at least one, however large a sample."""
    budget = WORKSPACE_BYTES if budget is None else budget
    return max(1, min(n, budget // max(1, per_sample_bytes)))


def _columns(x, geo, n0, nb, xp):
    """The column matrix of samples ``n0 .. n0+nb`` as ``(G, C/G*kh*kw, nb*Ho*Wo)``."""
    if geo.pointwise:
        part = x[n0:n0 + nb].reshape(nb, geo.groups, geo.cg, geo.spatial)
        col = xp.ascontiguousarray(part.transpose(1, 2, 0, 3))  # (G, C/G, nb, S)
    else:
        col = xp.empty((geo.c * geo.kh * geo.kw, nb * geo.spatial), dtype=x.dtype)
        _launch("cnnc_im2col", x.dtype, col.size, x[n0:n0 + nb], col, col.size, nb,
                geo.c, geo.h, geo.w, *geo.window_args())
    return col.reshape(geo.groups, geo.k, nb * geo.spatial)


def _conv_raw(x, w, b, geo, spec, xp, out=None):
    """The convolution with bias and the activation ``spec`` fused, ``(N, O, Ho, Wo)``,
    written into ``out`` (C-contiguous) when given."""
    dtype = x.dtype
    if out is None:
        out = xp.empty((geo.n, geo.o, geo.ho, geo.wo), dtype=dtype)
    has_bias = b is not None
    bias = b if has_bias else _dummy(dtype, xp)
    act_args = _act_args(spec, out.shape, dtype, xp)
    if geo.depthwise:
        _launch("cnnc_depthwise_conv", dtype, out.size, x, w, bias, int(has_bias), out,
                out.size, geo.c, geo.h, geo.w, geo.o, *geo.window_args(), *act_args)
        return out
    if geo.pointwise:
        wg = w.reshape(geo.groups, geo.og, geo.cg)
        xg = x.reshape(geo.n, geo.groups, geo.cg, geo.spatial)
        xp.matmul(wg, xg, out=out.reshape(geo.n, geo.groups, geo.og, geo.spatial))
        return _bias_act(out, out, b, spec, xp)
    wg = w.reshape(geo.groups, geo.og, geo.k)
    per_sample = (geo.c * geo.kh * geo.kw + geo.o) * geo.spatial * x.itemsize
    chunk = batch_chunk(geo.n, per_sample)
    for n0 in range(0, geo.n, chunk):
        nb = min(chunk, geo.n - n0)
        col = _columns(x, geo, n0, nb, xp)  # (G, C/G*kh*kw, nb*S)
        if geo.groups == 1:
            tmp = xp.matmul(wg[0], col[0])  # (O, nb*S)
        else:
            tmp = xp.matmul(wg, col)  # (G, O/G, nb*S)
        tmp = xp.ascontiguousarray(tmp)
        part = out[n0:n0 + nb]
        _launch("cnnc_conv_epilogue", dtype, part.size, tmp, part, bias, int(has_bias),
                part.size, nb, geo.o, geo.spatial, *act_args)
    return out


def _conv_inputs(x, w, b, xp):
    dtype = compute_dtype(x.dtype, w.dtype)
    if dtype is None:
        return None
    x = _contiguous(x, dtype, xp)
    w = _contiguous(w, dtype, xp)
    if b is not None:
        b = _contiguous(b, dtype, xp)
    return x, w, b


def conv2d(x, w, b=None, *, stride=1, pad=0, dilation=1, groups=1, act=None, out=None):
    """CONV2D: ``x (N, C, H, W)`` with ``w (O, C/groups, kh, kw)`` -> ``(N, O, Ho, Wo)``,
    written into ``out`` when given."""
    xp = _cupy()
    arrays = _conv_inputs(x, w, b, xp)
    if arrays is None:
        return NUMPY_KERNELS[Op.CONV2D](x, w, b, stride=stride, pad=pad, dilation=dilation,
                                        groups=groups, act=act, out=out)
    x, w, b = arrays
    geo = conv_geometry(x, w, b, stride, pad, dilation, groups)
    y = _target(out, (geo.n, geo.o, geo.ho, geo.wo), x.dtype, xp, "conv2d")
    return _deliver(_conv_raw(x, w, b, geo, act_spec(act), xp, y), out)


def _refuse_fused_prelu(spec, where):
    if spec.weight is not None:
        raise ValueError(
            f"{where}: a fused prelu has trainable slopes that this step cannot return a "
            f"gradient for; keep prelu as its own step for training"
        )


def _conv_forward(x, w, b=None, *, train=True, rng=None, stride=1, pad=0, dilation=1,
                  groups=1, act=None):
    xp = _cupy()
    arrays = _conv_inputs(x, w, b, xp)
    if arrays is None:
        return _generic_forward(Op.CONV2D, x, w, b, train=train, rng=rng, stride=stride,
                                pad=pad, dilation=dilation, groups=groups, act=act)
    x, w, b = arrays
    geo = conv_geometry(x, w, b, stride, pad, dilation, groups)
    spec = act_spec(act)
    _refuse_fused_prelu(spec, "conv2d")
    if spec.identity:
        y = _conv_raw(x, w, b, geo, spec, xp)
        return y, dict(x=x, w=w, has_bias=b is not None, geo=geo, spec=spec, z=None)
    z = _conv_raw(x, w, b, geo, act_spec(None), xp)  # before the activation
    y = _bias_act(z, xp.empty_like(z), None, spec, xp)
    return y, dict(x=x, w=w, has_bias=b is not None, geo=geo, spec=spec, z=z)


def _conv_backward(saved, dy):
    if "generic" in saved:
        return _generic_backward(Op.CONV2D, saved, dy)
    xp = _cupy()
    x, w, geo, spec = saved["x"], saved["w"], saved["geo"], saved["spec"]
    dtype = x.dtype
    gz = _grad_input(dy, (geo.n, geo.o, geo.ho, geo.wo), dtype, xp, "conv2d")
    if saved["z"] is not None:
        gz = _act_backward(gz, saved["z"], spec, xp)
    gz = gz.reshape(geo.n, geo.o, geo.spatial)  # (N, O, S)
    wg = w.reshape(geo.groups, geo.og, geo.k)
    gW = xp.zeros((geo.groups, geo.og, geo.k), dtype=dtype)
    gx = xp.empty_like(x)
    # a chunk holds the column matrix, its gradient, and the permuted output gradient
    per_sample = (2 * geo.c * geo.kh * geo.kw + geo.o) * geo.spatial * x.itemsize
    chunk = batch_chunk(geo.n, per_sample)
    for n0 in range(0, geo.n, chunk):
        nb = min(chunk, geo.n - n0)
        part = gz[n0:n0 + nb].reshape(nb, geo.groups, geo.og, geo.spatial)
        gz_g = xp.ascontiguousarray(part.transpose(1, 2, 0, 3))  # (G, O/G, nb, S)
        gz_g = gz_g.reshape(geo.groups, geo.og, nb * geo.spatial)
        col = _columns(x, geo, n0, nb, xp)  # (G, C/G*kh*kw, nb*S)
        if geo.groups == 1:
            # 2-D products hand the transposes to cuBLAS; CuPy's batched matmul would
            # first copy each transposed operand
            gW[0] += xp.matmul(gz_g[0], col[0].T)  # (O, C*kh*kw)
            gcol = xp.matmul(wg[0].T, gz_g[0])[None]  # (1, C*kh*kw, nb*S)
        else:
            gW += xp.matmul(gz_g, col.transpose(0, 2, 1))  # (G, O/G, C/G*kh*kw)
            gcol = xp.matmul(wg.transpose(0, 2, 1), gz_g)  # (G, C/G*kh*kw, nb*S)
        gx_part = gx[n0:n0 + nb]
        if geo.pointwise:
            gcol = gcol.reshape(geo.groups, geo.cg, nb, geo.spatial).transpose(2, 0, 1, 3)
            gx_part[...] = gcol.reshape(nb, geo.c, geo.h, geo.w)
        else:
            gcol = xp.ascontiguousarray(gcol)
            _launch("cnnc_col2im", dtype, gx_part.size, gcol, gx_part, gx_part.size, nb,
                    geo.c, geo.h, geo.w, *geo.window_args())
    grads = (gW.reshape(w.shape),)
    if saved["has_bias"]:
        grads += (gz.sum(axis=(0, 2)),)
    return (gx,), grads


# ---------------------------------------------------------------- dense


def _dense_inputs(x, w, b, xp):
    dtype = compute_dtype(x.dtype, w.dtype)
    if dtype is None:
        return None
    x = _contiguous(x, dtype, xp)
    w = _contiguous(w, dtype, xp)
    if x.ndim != 2 or w.ndim != 2 or w.shape[1] != x.shape[1]:
        raise ValueError(
            f"dense: input must be [N, F] and weight [O, F]; got input {tuple(x.shape)}, "
            f"weight {tuple(w.shape)}"
        )
    if b is not None:
        if tuple(b.shape) != (w.shape[0],):
            raise ValueError(f"dense: bias must be [{w.shape[0]}], got {tuple(b.shape)}")
        b = _contiguous(b, dtype, xp)
    return x, w, b


def dense(x, w, b=None, *, act=None, out=None):
    """DENSE: ``x (N, F) @ w.T + b`` with ``w (O, F)``, then the fused activation; written
    into ``out`` when given."""
    xp = _cupy()
    arrays = _dense_inputs(x, w, b, xp)
    if arrays is None:
        return numpy_dense(x, w, b, act=act, out=out)
    x, w, b = arrays
    y = _target(out, (x.shape[0], w.shape[0]), x.dtype, xp, "dense")
    xp.matmul(x, w.T, out=y)  # (N, O)
    return _deliver(_bias_act(y, y, b, act_spec(act), xp), out)


def _dense_forward(x, w, b=None, *, train=True, rng=None, act=None):
    xp = _cupy()
    arrays = _dense_inputs(x, w, b, xp)
    if arrays is None:
        return _generic_forward(Op.DENSE, x, w, b, train=train, rng=rng, act=act)
    x, w, b = arrays
    spec = act_spec(act)
    _refuse_fused_prelu(spec, "dense")
    z = xp.ascontiguousarray(xp.matmul(x, w.T))  # (N, O)
    if b is not None:
        _bias_act(z, z, b, act_spec(None), xp)
    if spec.identity:
        return z, dict(x=x, w=w, has_bias=b is not None, spec=spec, z=None)
    y = _bias_act(z, xp.empty_like(z), None, spec, xp)
    return y, dict(x=x, w=w, has_bias=b is not None, spec=spec, z=z)


def _dense_backward(saved, dy):
    if "generic" in saved:
        return _generic_backward(Op.DENSE, saved, dy)
    xp = _cupy()
    x, w = saved["x"], saved["w"]
    gz = _grad_input(dy, (x.shape[0], w.shape[0]), x.dtype, xp, "dense")
    if saved["z"] is not None:
        gz = _act_backward(gz, saved["z"], saved["spec"], xp)
    gx = xp.matmul(gz, w)  # (N, F)
    gW = xp.matmul(gz.T, x)  # (O, F)
    grads = (gW,)
    if saved["has_bias"]:
        grads += (gz.sum(axis=0),)
    return (gx,), grads


# ---------------------------------------------------------------- pooling


def _pool_setup(x, kernel, stride, pad, dilation, ceil, where, xp):
    """Checked geometry as the NumPy kernel computes it (same messages), and ``x`` as a
    contiguous float array; None when the dtype has no CUDA instantiation."""
    pool_module._check_input(x, where)
    dtype = compute_dtype(x.dtype)
    if dtype is None or (where == "maxpool2d" and x.dtype not in _FLOATS):
        return None
    x = _contiguous(x, dtype, xp)
    geometry = pool_module._geometry(x, kernel, stride, pad, dilation, ceil, where)
    return x, geometry


def _pool_args(x, geometry):
    (kh, kw), (sh, sw), (dh, dw), pads, (ho, wo) = geometry
    h, w = x.shape[2:]
    return h, w, ho, wo, kh, kw, sh, sw, pads, dh, dw


def _maxpool_raw(x, geometry, save_argmax, xp, out=None):
    h, w, ho, wo, kh, kw, sh, sw, pads, dh, dw = _pool_args(x, geometry)
    if h * w >= 1 << 31:
        raise ValueError(f"maxpool2d: an input plane of {h}x{w} cells is past int32 indexing")
    y = _target(out, x.shape[:2] + (ho, wo), x.dtype, xp, "maxpool2d")
    argmax = xp.empty(y.shape, dtype=numpy.int32) if save_argmax else _dummy(numpy.int32, xp)
    _launch("cnnc_maxpool_forward", x.dtype, y.size, x, y, argmax, int(save_argmax), y.size,
            h, w, ho, wo, kh, kw, sh, sw, pads[0], pads[2], dh, dw, -numpy.inf)
    return y, argmax


def maxpool2d(x, *, kernel, stride=None, pad=0, dilation=1, ceil=False, out=None):
    """MAXPOOL2D: max over windows; padding never wins, ties go to the first tap."""
    xp = _cupy()
    setup = _pool_setup(x, kernel, stride, pad, dilation, ceil, "maxpool2d", xp)
    if setup is None:
        return NUMPY_KERNELS[Op.MAXPOOL2D](x, kernel=kernel, stride=stride, pad=pad,
                                           dilation=dilation, ceil=ceil, out=out)
    x, geometry = setup
    return _deliver(_maxpool_raw(x, geometry, False, xp, out)[0], out)


def _maxpool_forward(x, *, train=True, rng=None, kernel, stride=None, pad=0, dilation=1,
                     ceil=False):
    xp = _cupy()
    setup = _pool_setup(x, kernel, stride, pad, dilation, ceil, "maxpool2d", xp)
    if setup is None:
        return _generic_forward(Op.MAXPOOL2D, x, train=train, rng=rng, kernel=kernel,
                                stride=stride, pad=pad, dilation=dilation, ceil=ceil)
    x, geometry = setup
    y, argmax = _maxpool_raw(x, geometry, True, xp)
    return y, dict(argmax=argmax, shape=x.shape, geometry=geometry, dtype=x.dtype)


def _maxpool_backward(saved, dy):
    if "generic" in saved:
        return _generic_backward(Op.MAXPOOL2D, saved, dy)
    xp = _cupy()
    shape, dtype = saved["shape"], saved["dtype"]
    dy = _grad_input(dy, saved["argmax"].shape, dtype, xp, "maxpool2d")
    gx = xp.empty(shape, dtype=dtype)
    h, w, ho, wo, kh, kw, sh, sw, pads, dh, dw = _pool_args(gx, saved["geometry"])
    _launch("cnnc_maxpool_backward", dtype, gx.size, dy, saved["argmax"], gx, gx.size,
            h, w, ho, wo, kh, kw, sh, sw, pads[0], pads[2], dh, dw)
    return (gx,), ()


def avgpool2d(x, *, kernel, stride=None, pad=0, ceil=False, count_pad=True, out=None):
    """AVGPOOL2D: mean over windows, divisors as in ``runtime/kernels/pool.py``."""
    xp = _cupy()
    setup = _pool_setup(x, kernel, stride, pad, 1, ceil, "avgpool2d", xp)
    if setup is None:
        return NUMPY_KERNELS[Op.AVGPOOL2D](x, kernel=kernel, stride=stride, pad=pad,
                                           ceil=ceil, count_pad=count_pad, out=out)
    x, geometry = setup
    h, w, ho, wo, kh, kw, sh, sw, pads, _, _ = _pool_args(x, geometry)
    y = _target(out, x.shape[:2] + (ho, wo), x.dtype, xp, "avgpool2d")
    _launch("cnnc_avgpool_forward", x.dtype, y.size, x, y, y.size, h, w, ho, wo, kh, kw,
            sh, sw, *pads, int(bool(count_pad)))
    return _deliver(y, out)


def _avgpool_forward(x, *, train=True, rng=None, kernel, stride=None, pad=0, ceil=False,
                     count_pad=True):
    xp = _cupy()
    setup = _pool_setup(x, kernel, stride, pad, 1, ceil, "avgpool2d", xp)
    if setup is None:
        return _generic_forward(Op.AVGPOOL2D, x, train=train, rng=rng, kernel=kernel,
                                stride=stride, pad=pad, ceil=ceil, count_pad=count_pad)
    x, geometry = setup
    y = avgpool2d(x, kernel=kernel, stride=stride, pad=pad, ceil=ceil, count_pad=count_pad)
    return y, dict(shape=x.shape, y_shape=y.shape, geometry=geometry, dtype=x.dtype,
                   count_pad=count_pad)


def _avgpool_backward(saved, dy):
    if "generic" in saved:
        return _generic_backward(Op.AVGPOOL2D, saved, dy)
    xp = _cupy()
    shape, dtype = saved["shape"], saved["dtype"]
    dy = _grad_input(dy, saved["y_shape"], dtype, xp, "avgpool2d")
    gx = xp.empty(shape, dtype=dtype)
    h, w, ho, wo, kh, kw, sh, sw, pads, _, _ = _pool_args(gx, saved["geometry"])
    _launch("cnnc_avgpool_backward", dtype, gx.size, dy, gx, gx.size, h, w, ho, wo, kh, kw,
            sh, sw, *pads, int(bool(saved["count_pad"])))
    return (gx,), ()


# ---------------------------------------------------------------- normalisation


def lrn(x, *, size=5, alpha=1e-4, beta=0.75, k=1.0):
    """LRN across channels, as ``torch.nn.LocalResponseNorm``; one pass."""
    xp = _cupy()
    dtype = compute_dtype(x.dtype)
    if dtype is None or x.ndim < 3 or size < 1:
        return numpy_lrn(x, size=size, alpha=alpha, beta=beta, k=k)  # or its error
    x = _contiguous(x, dtype, xp)
    y = xp.empty_like(x)
    channels, inner = _channels_inner(x.shape)
    _launch("cnnc_lrn_forward", dtype, x.size, x, y, x.size, channels, inner, size,
            alpha / size, beta, k)
    return y


def batchnorm(x, weight, bias, running_mean, running_var, *, eps=1e-5, momentum=0.1,
              out=None):
    """Inference batch norm, folded to one scale and one shift per channel (computed in
    float64 as the NumPy kernel does) and applied in one pass; into ``out`` when given
    (which may be ``x`` itself)."""
    xp = _cupy()
    dtype = compute_dtype(x.dtype)
    channels = x.shape[1] if x.ndim > 1 else None
    arrays = (weight, bias, running_mean, running_var)
    shaped = all(v is None or tuple(v.shape) == (channels,) for v in arrays)
    if dtype is None or x.ndim < 2 or not shaped:
        return numpy_batchnorm(x, weight, bias, running_mean, running_var, eps=eps,
                               momentum=momentum, out=out)  # or its error
    x = _contiguous(x, dtype, xp)
    scale = 1.0 / xp.sqrt(xp.asarray(running_var, dtype=xp.float64) + eps)  # (C,)
    if weight is not None:
        scale = scale * xp.asarray(weight)
    shift = -xp.asarray(running_mean, dtype=xp.float64) * scale
    if bias is not None:
        shift = shift + xp.asarray(bias)
    scale = _contiguous(scale, dtype, xp)
    shift = _contiguous(shift, dtype, xp)
    y = _target(out, x.shape, dtype, xp, "batchnorm")
    _, inner = _channels_inner(x.shape)
    _launch("cnnc_scale_shift", dtype, x.size, x, y, scale, shift, x.size, channels, inner)
    return _deliver(y, out)


# ---------------------------------------------------------------- the tables

# Ops whose kernel takes ``out=`` (runtime/executor.py writes into the memory plan's arrays);
# the same set as the NumPy backend's.
ACCEPTS_OUT = frozenset({
    Op.CONV2D, Op.DENSE, Op.MAXPOOL2D, Op.AVGPOOL2D, Op.ACTIVATION, Op.ADD, Op.BATCHNORM,
})

KERNELS = {
    Op.CONV2D: conv2d,
    Op.MAXPOOL2D: maxpool2d,
    Op.AVGPOOL2D: avgpool2d,
    Op.GLOBAL_AVGPOOL: NUMPY_KERNELS[Op.GLOBAL_AVGPOOL],  # one CuPy reduction
    Op.GLOBAL_MAXPOOL: NUMPY_KERNELS[Op.GLOBAL_MAXPOOL],  # one CuPy reduction
    Op.LRN: lrn,
    Op.BATCHNORM: batchnorm,
    Op.ACTIVATION: activation,
    Op.SOFTMAX: NUMPY_KERNELS[Op.SOFTMAX],  # max, exp, sum: CuPy reductions
    Op.MAXOUT: NUMPY_KERNELS[Op.MAXOUT],  # a reshape and one reduction
    Op.DENSE: dense,
    Op.FLATTEN: NUMPY_KERNELS[Op.FLATTEN],
    Op.CONCAT: NUMPY_KERNELS[Op.CONCAT],
    Op.ADD: NUMPY_KERNELS[Op.ADD],
    Op.DROPOUT: NUMPY_KERNELS[Op.DROPOUT],
}


def _generic(op):
    """The generic training pair for ``op``, imported on first use."""
    from .grads import GRADS as GENERIC

    return GENERIC[op]


def _generic_forward(op, *args, **kwargs):
    """The generic forward, its saved state wrapped so our backward can hand it on."""
    y, saved = _generic(op)[0](*args, **kwargs)
    return y, {"generic": saved}


def _generic_backward(op, saved, dy):
    return _generic(op)[1](saved["generic"], dy)


def _delegate(op):
    """A ``(forward, backward)`` pair that calls the generic one for ``op``."""

    def forward(*args, **kwargs):
        return _generic(op)[0](*args, **kwargs)

    def backward(saved, dy):
        return _generic(op)[1](saved, dy)

    forward.__name__ = f"{op.value}_forward"
    backward.__name__ = f"{op.value}_backward"
    return forward, backward


_OWN_GRADS = {
    Op.CONV2D: (_conv_forward, _conv_backward),
    Op.MAXPOOL2D: (_maxpool_forward, _maxpool_backward),
    Op.AVGPOOL2D: (_avgpool_forward, _avgpool_backward),
    Op.ACTIVATION: (_activation_forward, _activation_backward),
    Op.DENSE: (_dense_forward, _dense_backward),
}

GRADS = {op: _OWN_GRADS.get(op) or _delegate(op) for op in Op}
