"""2-D convolution, training: the inference kernel forward, keeping ``x``; GEMM backward.

The backward pass walks the batch in the same cache-sized chunks as the forward. For each
chunk it builds the column matrix from the window view of the padded input (as the forward
does), then

    gW += gy @ col.T          # (G, O/G, nb*Ho*Wo) @ (G, nb*Ho*Wo, C/G*kh*kw)
    gcol = W.T @ gy           # (G, C/G*kh*kw, nb*Ho*Wo)

and scatters ``gcol`` back onto the padded input: one strided-slice add per tap (col2im),
never a loop over pixels. The column matrix is rebuilt rather than kept, so the forward
holds only ``x``.
"""

from ..kernels.conv import WORKSPACE_BYTES, _padded, window_view
from ..kernels.conv import conv2d as conv2d_inference
from ..shapes import pads4, pair
from ..xp import float_dtype, get_array_module
from ._util import as_grad, no_act, prod


def conv2d_forward(x, w, b=None, *, stride=1, pad=0, dilation=1, groups=1, act=None,
                   train=True, rng=None):
    """``y = conv2d(x, w, b)``; keeps ``x`` and ``w`` (a reference to the parameter)."""
    no_act(act, "conv2d")
    xp = get_array_module(x, w)
    dtype = float_dtype(xp, x, w)
    x = xp.asarray(x, dtype=dtype)
    w = xp.asarray(w, dtype=dtype)
    y = conv2d_inference(x, w, b, stride=stride, pad=pad, dilation=dilation, groups=groups)
    geometry = (pair(stride, "stride"), pair(dilation, "dilation"), pads4(pad), groups)
    return y, (x, w, b is not None, geometry, tuple(y.shape))


def _columns(x, n0, n1, geometry, out_hw, kernel, xp):
    """Column matrix of images ``n0:n1``: ``(G, C/G*kh*kw, nb*Ho*Wo)``, a fresh array."""
    stride, dilation, pads, groups = geometry
    nb = n1 - n0
    c = x.shape[1]
    cg = c // groups
    kh, kw = kernel
    ho, wo = out_hw
    view = window_view(_padded(x[n0:n1], pads, xp), kernel, stride, dilation, out_hw, xp)
    win = view.reshape(nb, groups, cg, kh, kw, ho, wo)
    win = win.transpose(1, 2, 3, 4, 0, 5, 6)  # (G, C/G, kh, kw, nb, Ho, Wo)
    return win.reshape(groups, cg * kh * kw, nb * ho * wo)


def _col2im(gcol, nb, x_shape, geometry, out_hw, kernel, xp):
    """Sum the column gradient ``(G, C/G*kh*kw, nb*Ho*Wo)`` back onto ``(nb, C, H, W)``."""
    stride, dilation, pads, groups = geometry
    _, c, h, w = x_shape
    kh, kw = kernel
    ho, wo = out_hw
    sh, sw = stride
    dh, dw = dilation
    top, bottom, left, right = pads
    gcol = gcol.reshape(groups, c // groups, kh, kw, nb, ho, wo)
    gcol = gcol.transpose(4, 0, 1, 2, 3, 5, 6).reshape(nb, c, kh, kw, ho, wo)
    gpad = xp.zeros((nb, c, h + top + bottom, w + left + right), dtype=gcol.dtype)
    for i in range(kh):
        rows = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
        for j in range(kw):
            cols = slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
            gpad[:, :, rows, cols] += gcol[:, :, i, j]
    return gpad[:, :, top:top + h, left:left + w]


def conv2d_backward(saved, dy):
    x, w, has_bias, geometry, y_shape = saved
    stride, dilation, pads, groups = geometry
    xp = get_array_module(x, w)
    dy = as_grad(dy, y_shape, x.dtype, xp, "conv2d")
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    ho, wo = y_shape[2:]
    og = o // groups
    spatial = ho * wo
    ck = cg * kh * kw
    wg = w.reshape(groups, og, ck)  # (G, O/G, C/G*kh*kw)
    wg_t = wg.transpose(0, 2, 1)  # (G, C/G*kh*kw, O/G)
    gy = dy.reshape(n, groups, og, spatial)  # (N, G, O/G, Ho*Wo)
    gx = xp.empty(x.shape, dtype=x.dtype)
    gW = xp.zeros((groups, og, ck), dtype=x.dtype)

    pointwise = kh == kw == 1 and stride == (1, 1) and max(pads) == 0
    chunk = max(1, WORKSPACE_BYTES // (c * kh * kw * spatial * x.itemsize))
    for n0 in range(0, n, chunk):
        n1 = min(n, n0 + chunk)
        nb = n1 - n0
        gyc = gy[n0:n1].transpose(1, 2, 0, 3).reshape(groups, og, nb * spatial)
        if pointwise:
            col = x[n0:n1].reshape(nb, groups, cg, spatial).transpose(1, 2, 0, 3)
            col = col.reshape(groups, cg, nb * spatial)  # (G, C/G, nb*H*W)
        else:
            col = _columns(x, n0, n1, geometry, (ho, wo), (kh, kw), xp)
        gW += xp.matmul(gyc, col.transpose(0, 2, 1))
        del col
        gcol = xp.matmul(wg_t, gyc)  # (G, C/G*kh*kw, nb*Ho*Wo)
        if pointwise:
            gcol = gcol.reshape(groups, cg, nb, spatial).transpose(2, 0, 1, 3)
            gx[n0:n1] = gcol.reshape(nb, c, h, wd)
        else:
            gx[n0:n1] = _col2im(gcol, nb, x.shape, geometry, (ho, wo), (kh, kw), xp)
    gW = gW.reshape(w.shape)
    if not has_bias:
        return (gx,), (gW,)
    gb = dy.sum(axis=(0, 2, 3))
    return (gx,), (gW, gb)


def conv2d_saved(step, input_shapes):
    return prod(input_shapes[0])  # x
