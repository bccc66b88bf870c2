"""Property tests: random window geometries, fast kernels against the reference.

The grids in test_conv.py and test_pool.py pin known corners; these draw sizes, odd
shapes and asymmetric paddings at random to find the corners nobody listed.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cnnc.runtime import reference
from cnnc.runtime.numpy_backend import KERNELS
from cnnc.runtime.ops import Op
from cnnc.runtime.shapes import pool_out

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    channels = groups * draw(st.integers(1, 2))
    out_channels = groups * draw(st.integers(1, 2))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pad = tuple(draw(st.integers(0, 2)) for _ in range(4))
    height = draw(st.integers(1, 8))
    width = draw(st.integers(1, 8))
    span_h = dilation[0] * (kernel[0] - 1) + 1
    span_w = dilation[1] * (kernel[1] - 1) + 1
    assume(height + pad[0] + pad[1] >= span_h and width + pad[2] + pad[3] >= span_w)
    args = dict(stride=stride, pad=pad, dilation=dilation, groups=groups)
    shapes = ((2, channels, height, width), (out_channels, channels // groups) + kernel)
    return shapes, args


@SETTINGS
@given(case=conv_cases(), dtype=st.sampled_from([np.float32, np.float64]),
       with_bias=st.booleans())
def test_conv2d_random_geometry(rng, assert_close, case, dtype, with_bias):
    (x_shape, w_shape), args = case
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype) if with_bias else None
    assert_close(KERNELS[Op.CONV2D](x, w, b, **args), reference.conv2d(x, w, b, **args))


@st.composite
def pool_cases(draw, dilated):
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if dilated else (1, 1)
    spans = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    # per side at most half the window, as PyTorch requires: no window is all padding
    pad = tuple(draw(st.integers(0, spans[i // 2] // 2)) for i in range(4))
    stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    ceil = draw(st.booleans())
    height = draw(st.integers(1, 9))
    width = draw(st.integers(1, 9))
    assume(pool_out(height, kernel[0], stride[0], pad[:2], dilation[0], ceil) >= 1)
    assume(pool_out(width, kernel[1], stride[1], pad[2:], dilation[1], ceil) >= 1)
    args = dict(kernel=kernel, stride=stride, pad=pad, ceil=ceil)
    if dilated:
        args["dilation"] = dilation
    return (2, 3, height, width), args


@SETTINGS
@given(case=pool_cases(dilated=True))
def test_maxpool2d_random_geometry(rng, assert_close, case):
    shape, args = case
    x = rng.standard_normal(shape)
    assert_close(KERNELS[Op.MAXPOOL2D](x, **args), reference.maxpool2d(x, **args))


@SETTINGS
@given(case=pool_cases(dilated=False), count_pad=st.booleans())
def test_avgpool2d_random_geometry(rng, assert_close, case, count_pad):
    shape, args = case
    x = rng.standard_normal(shape)
    fast = KERNELS[Op.AVGPOOL2D](x, count_pad=count_pad, **args)
    assert_close(fast, reference.avgpool2d(x, count_pad=count_pad, **args))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@SETTINGS
@given(data=st.data())
def test_lrn_random(rng, assert_close, dtype, data):
    size = data.draw(st.integers(1, 8))
    channels = data.draw(st.integers(1, 7))
    x = (3 * rng.standard_normal((2, channels, 3, 2))).astype(dtype)
    params = dict(size=size, alpha=data.draw(st.floats(1e-4, 1.0)),
                  beta=data.draw(st.floats(0.25, 1.0)), k=data.draw(st.floats(0.5, 2.0)))
    assert_close(KERNELS[Op.LRN](x, **params), reference.lrn(x, **params))
