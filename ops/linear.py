"""Fully connected layers: the ``dense`` layer and the DENSE primitive it lowers to.

=========  ======================  ============================================
layer      arguments               primitive
=========  ======================  ============================================
dense      out, bias=true          DENSE ``(x, w, b=None, *, act)``
=========  ======================  ============================================

``y = x @ w.T + b`` with ``x (N, F)``, ``w (O, F)``, ``b (O,)``. ``act`` is a fused
activation epilogue (None, a name, or ``(name, params)``), set by the memory plan's fusion,
never by the lowering; the kernels also take ``scale=``, a folded batchnorm's per-output
factor.

Training keeps ``x``:

    gx = dy @ W      # (N, O) @ (O, F)
    gW = dy.T @ x    # (O, N) @ (N, F)
    gb = sum(dy, axis=0)
"""

from __future__ import annotations


from . import gpu
from .activation import act_backward, act_spec, apply_act_, bias_act, emit_fused
from .activation import reference_act, refuse_fused_prelu
from .base import ArgSpec, Example, Layer, Primitive, keeps_input
from .xp import as_grad, float_dtype, get_array_module, no_act, numpy


# ---- the layer --------------------------------------------------------------------------------


def _infer(shape, a, ctx):
    return (a["out"],)


def _params(shape, a):
    out = {"weight": (a["out"], shape[0])}
    if a["bias"]:
        out["bias"] = (a["out"],)
    return out


def _macs(shape_in, shape_out, a):
    return shape_in[0] * a["out"]


def _rank_help(shape):
    if len(shape) == 3:
        return "insert `flatten` (or `global_avgpool -> flatten`) before `dense`"
    return None


def _lower(node, in_shapes):
    return "dense", dict(act=None)


DENSE_LAYER = Layer(
    "dense",
    [ArgSpec("out", "count"), ArgSpec("bias", "bool", True)],
    (1,),
    _infer,
    _lower,
    params=_params,
    macs=_macs,
    rank_help=_rank_help,
    field="whole",
    doc="fully connected",
)


# ---- DENSE: the kernel ------------------------------------------------------------------------


def _check_shapes(x, w, b):
    if x.ndim != 2 or w.ndim != 2 or w.shape[1] != x.shape[1]:
        raise ValueError(
            f"dense: input must be [N, F] and weight [O, F]; got input {tuple(x.shape)}, "
            f"weight {tuple(w.shape)}"
        )
    if b is not None and tuple(b.shape) != (w.shape[0],):
        raise ValueError(f"dense: bias must be [{w.shape[0]}], got {tuple(b.shape)}")


def _check_scale(scale, outputs):
    if tuple(scale.shape) != (outputs,):
        raise ValueError(f"dense: scale must be [{outputs}], got {tuple(scale.shape)}")


def dense(x, w, b=None, *, act=None, out=None, scale=None):
    """``x (N, F) @ w.T + b`` with ``w (O, F)``, ``b (O,)``; returns ``(N, O)``.

    ``act`` is a fused activation applied in place: None, a name, or ``(name, params)``.
    ``out`` is an ``(N, O)`` array to write into; ``scale`` (``(O,)``) multiplies each output
    before the bias is added (a folded batchnorm).
    """
    xp = get_array_module(x, w)
    dtype = float_dtype(xp, x, w)
    x = xp.asarray(x, dtype=dtype)
    w = xp.asarray(w, dtype=dtype)
    _check_shapes(x, w, b)
    if scale is not None:
        _check_scale(scale, w.shape[0])
    y = xp.matmul(x, w.T, out=out)  # (N, O)
    if scale is not None:
        y *= xp.asarray(scale, dtype=dtype)
    if b is not None:
        y += xp.asarray(b, dtype=dtype)
    return apply_act_(y, act)


# ---- DENSE: training --------------------------------------------------------------------------


def dense_forward(x, w, b=None, *, act=None, train=True, rng=None):
    no_act(act, "dense")
    xp = get_array_module(x, w)
    dtype = float_dtype(xp, x, w)
    x = xp.asarray(x, dtype=dtype)
    w = xp.asarray(w, dtype=dtype)
    y = dense(x, w, b)
    return y, (x, w, b is not None)


def dense_backward(saved, dy):
    x, w, has_bias = saved
    xp = get_array_module(x, w)
    dy = as_grad(dy, (x.shape[0], w.shape[0]), x.dtype, xp, "dense")
    gx = xp.matmul(dy, w)  # (N, F)
    gW = xp.matmul(dy.T, x)  # (O, F)
    if not has_bias:
        return (gx,), (gW,)
    return (gx,), (gW, dy.sum(axis=0))


# ---- DENSE: the CUDA kernels ------------------------------------------------------------------
# cuBLAS through ``matmul``, then one fused bias + activation kernel (``cnnc_bias_act``).


def _gpu_inputs(x, w, b, xp):
    dtype = gpu.compute_dtype(x.dtype, w.dtype)
    x = gpu.contiguous(x, dtype, xp)
    w = gpu.contiguous(w, dtype, xp)
    _check_shapes(x, w, b)
    if b is not None:
        b = gpu.contiguous(b, dtype, xp)
    return x, w, b


def gpu_dense(x, w, b=None, *, act=None, out=None, scale=None):
    """DENSE: ``x (N, F) @ w.T + b`` with ``w (O, F)``, then the fused activation; written
    into ``out`` when given; ``scale`` as the NumPy kernel's."""
    xp = gpu.cupy()
    x, w, b = _gpu_inputs(x, w, b, xp)
    y = gpu.target(out, (x.shape[0], w.shape[0]), x.dtype, xp, "dense")
    xp.matmul(x, w.T, out=y)  # (N, O)
    if scale is not None:
        _check_scale(scale, w.shape[0])
        y *= gpu.contiguous(scale, x.dtype, xp)
    return gpu.deliver(bias_act(y, y, b, act_spec(act), xp), out)


def gpu_dense_forward(x, w, b=None, *, train=True, rng=None, act=None):
    xp = gpu.cupy()
    x, w, b = _gpu_inputs(x, w, b, xp)
    spec = act_spec(act)
    refuse_fused_prelu(spec, "dense")
    z = xp.ascontiguousarray(xp.matmul(x, w.T))  # (N, O)
    if b is not None:
        bias_act(z, z, b, act_spec(None), xp)
    if spec.identity:
        return z, dict(x=x, w=w, has_bias=b is not None, spec=spec, z=None)
    y = bias_act(z, xp.empty_like(z), None, spec, xp)
    return y, dict(x=x, w=w, has_bias=b is not None, spec=spec, z=z)


def gpu_dense_backward(saved, dy):
    xp = gpu.cupy()
    x, w = saved["x"], saved["w"]
    gz = gpu.grad_input(dy, (x.shape[0], w.shape[0]), x.dtype, xp, "dense")
    if saved["z"] is not None:
        gz = act_backward(gz, saved["z"], saved["spec"], xp)
    gx = xp.matmul(gz, w)  # (N, F)
    gW = xp.matmul(gz.T, x)  # (O, F)
    grads = (gW,)
    if saved["has_bias"]:
        grads += (gz.sum(axis=0),)
    return (gx,), grads


# ---- DENSE: reference, ONNX, PyTorch, examples ------------------------------------------------


def reference_dense(x, w, b=None, *, act=None):
    """A loop over outputs and features; float64."""
    x = numpy.asarray(x, dtype=numpy.float64)
    w = numpy.asarray(w, dtype=numpy.float64)
    y = numpy.zeros((x.shape[0], w.shape[0]))
    for n in range(x.shape[0]):
        for o in range(w.shape[0]):
            total = 0.0 if b is None else float(b[o])
            for f in range(x.shape[1]):
                total += x[n, f] * w[o, f]
            y[n, o] = total
    return reference_act(y, act)


def _emit_dense(g, step, xs, ws, out, in_shapes):
    act = step.attrs.get("act")
    target = out if act is None else g.temp("gemm")
    g.node("Gemm", xs + ws, target, None if target == out else "gemm", transB=1)
    if target != out:
        emit_fused(g, act, target, out, step.shape)


def _torch_dense(step, xs, ws, training):
    """``F.linear``. (No fused activation: the plans the oracle runs are not fused.)"""
    import torch

    return torch.nn.functional.linear(xs[0], ws[0], ws[1] if len(ws) > 1 else None)


def _examples_dense(rng):
    x = rng.standard_normal((2, 5))
    w = rng.standard_normal((3, 5))
    b = rng.standard_normal(3)
    return [
        Example([x], [w, b], dict(act=None), note="with bias"),
        Example([x], [w], dict(act=None), note="without bias"),
        Example([rng.standard_normal((2, 1))], [rng.standard_normal((4, 1))], dict(act=None),
                note="one feature"),
    ]





DENSE = Primitive(
    "dense",
    "(x, w, b=None, *, act)",
    kernel=dense,
    forward=dense_forward,
    backward=dense_backward,
    reference=reference_dense,
    onnx=_emit_dense,
    torch=_torch_dense,
    examples=_examples_dense,
    gpu_kernel=gpu_dense,
    gpu_forward=gpu_dense_forward,
    gpu_backward=gpu_dense_backward,
    accepts_out=True,
    accepts_scale=True,
    gemm=True,
    doc="fully connected, with an optional fused scale, bias and activation epilogue",
    keeps=keeps_input,
)

LAYERS = [DENSE_LAYER]
PRIMITIVES = [DENSE]


# What other frameworks (PyTorch, Keras, Caffe, ONNX) call this family's layers, lower-cased:
# the "did you mean" of an unknown layer (E203). A value is the cnnc layer, or
# ``(layer, help)`` where the spelling takes more than a name.
FOREIGN_NAMES = {
    "linear": "dense",
    "fc": "dense",
    "fully_connected": "dense",
    "fullyconnected": "dense",
    "innerproduct": "dense",
    "inner_product": "dense",
}
