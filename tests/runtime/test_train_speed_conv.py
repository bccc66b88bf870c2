"""The convolution's training gradients by their defining identity, whatever path computes
them (the column GEMM with col2im, or at stride 1 on wide maps the convolution of dy by the
flipped weights): a convolution is linear in ``x`` and in ``w``, so for any ``v`` and ``u``

    <gx, v> = <dy, conv(v, w)>        <gW, u> = <dy, conv(x, u)>

checked in float64 on maps narrow and wide, with padding on one side or wider than the
kernel, dilation, groups and strides."""

import itertools

import numpy as np
import pytest

from cnnc.ops.conv import conv2d, conv2d_backward, conv2d_forward

# (channels, out, groups), kernel, pad (top, bottom, left, right), dilation, stride
CASES = list(itertools.product(
    [(4, 6, 1), (4, 6, 2), (3, 3, 3)],
    [(3, 3), (2, 3), (5, 5)],
    [(1, 1, 1, 1), (0, 0, 0, 0), (2, 0, 1, 3), (5, 5, 5, 5)],
    [(1, 1), (2, 1)],
    [(1, 1), (2, 2)],
))


@pytest.mark.parametrize("hw", [(7, 9), (6, 44)])
@pytest.mark.parametrize("groups_case, kernel, pad, dilation, stride", CASES)
def test_conv_gradients_are_the_adjoints(groups_case, kernel, pad, dilation, stride, hw):
    c, o, groups = groups_case
    rng = np.random.default_rng(sum(kernel) + sum(pad) + hw[1])
    x = rng.standard_normal((2, c) + hw)
    w = rng.standard_normal((o, c // groups) + kernel)
    attrs = dict(stride=stride, pad=pad, dilation=dilation, groups=groups)
    try:
        y, saved = conv2d_forward(x, w, None, **attrs)
    except ValueError:  # the window does not fit the padded map
        pytest.skip("no output")
    dy = rng.standard_normal(y.shape)
    (gx,), (gW,) = conv2d_backward(saved, dy)
    assert gx.shape == x.shape and gW.shape == w.shape
    v = rng.standard_normal(x.shape)
    u = rng.standard_normal(w.shape)
    np.testing.assert_allclose(np.vdot(gx, v), np.vdot(dy, conv2d(v, w, **attrs)),
                               rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(np.vdot(gW, u), np.vdot(dy, conv2d(x, u, **attrs)),
                               rtol=1e-10, atol=1e-9)
