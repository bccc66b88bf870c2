"""Shape inference: the checker's sizes against window positions counted one by one.

Each grid case writes a small `.cnn` source with one windowed layer per input size, checks
it, and compares every inferred shape with an independent count of where the windows can
start. Where PyTorch is installed, the same layers are run through torch.nn.functional on
small CPU tensors as a second oracle (CPU rather than meta tensors: PyTorch's meta kernels
take milliseconds to refuse an argument). The last part unit-tests the pure
functions of `compiler/shapes.py`.
"""

import itertools

import pytest

from cnnc.compiler import shapes
from cnnc.compiler.check import check_source

# ---- the independent oracle: walk the windows ------------------------------------------------


def span(k, d):
    """How many input positions a dilated window covers, from first tap to last."""
    taps = [i * d for i in range(k)]
    return taps[-1] - taps[0] + 1


def window_starts(n, k, s, p, d=1, ceil=False):
    """The start of each window along one axis, in padded coordinates (0 is the first padding
    position), found by sliding the window.

    Without `ceil`, a window must lie inside the padded input. With `ceil`, one more window
    may hang over the end when the windows so far leave part of the padded input uncovered,
    unless it would start in the right padding (PyTorch drops that one). Only called when
    at least one whole window fits, or without `ceil`.
    """
    width = span(k, d)
    padded = n + 2 * p
    starts = []
    start = 0
    while start + width <= padded:
        starts.append(start)
        start += s
    if ceil and starts and starts[-1] + width < padded and start < p + n:
        starts.append(start)
    return starts


def unused_rows(n, k, s, p, d=1):
    """Real input rows (not padding) after the end of the last whole window."""
    starts = window_starts(n, k, s, p, d)
    if not starts:
        return 0
    end = starts[-1] + span(k, d)
    return max(p + n - end, 0)


# ---- the grid --------------------------------------------------------------------------------

# One axis of a windowed layer: (kernel, stride, pad, dilation).
AXES = [
    (k, s, p, d)
    for k in (1, 2, 3, 4, 5)
    for s in (1, 2, 3)
    for p in (0, 1, 2)
    for d in (1, 2)
]
# Height and width use different settings, so that a mix-up of the two axes shows.
PAIRS = [(AXES[i], AXES[(7 * i + 11) % len(AXES)]) for i in range(len(AXES))]
# (height, width) of the inputs checked for each pair: small, so that sizes below 1 and the
# last window's rounding both come up often.
SIZES = [(h, 14 - h) for h in range(1, 14)] + [(9, 9), (16, 5)]


def case_id(value):
    """Test ids such as `k3s2p1d1`, for one axis."""
    if isinstance(value, tuple) and len(value) == 4:
        return "k{}s{}p{}d{}".format(*value)
    return None


def pair_text(a, b):
    return str(a) if a == b else f"[{a}, {b}]"


def layer_text(op, hcase, wcase, ceil=False):
    kh, sh, ph, dh = hcase
    kw, sw, pw, dw = wcase
    args = []
    if op == "conv":
        args.append("3")
    args.append(pair_text(kh, kw))
    args.append(f"stride={pair_text(sh, sw)}")
    args.append(f"pad={pair_text(ph, pw)}")
    if op != "avgpool":
        args.append(f"dilation={pair_text(dh, dw)}")
    if ceil:
        args.append("ceil=true")
    return f"{op}({', '.join(args)})"


def check_grid(op, hcase, wcase, ceil=False, channels=2):
    """Check one layer on every input size of SIZES; return {(h, w): (node, codes)}, where
    codes are the diagnostic codes reported on that layer's line."""
    layer = layer_text(op, hcase, wcase, ceil)
    lines = []
    for i, (h, w) in enumerate(SIZES):
        lines.append(f"input x{i}: [{channels}, {h}, {w}]")
    first_output_line = len(lines) + 1
    for i, _ in enumerate(SIZES):
        lines.append(f"output y{i} = x{i} -> {layer}")
    net = check_source("\n".join(lines) + "\n")
    results = {}
    for i, size in enumerate(SIZES):
        node = net.nodes[f"y{i}.{op}1"]
        line = first_output_line + i
        codes = sorted(d.code for d in net.diagnostics if d.span and d.span.line == line)
        results[size] = (node, codes)
    assert not [d for d in net.diagnostics if d.span is None]
    return results


def pool_pad_ok(case):
    """Pooling pad at most half the kernel (spec section 6, and PyTorch's check). With
    dilation the checker allows up to half the dilated span: see the xfail test below."""
    k, _, p, _ = case
    return p <= k // 2


def expected_axis(n, case, ceil, use_dilation=True):
    k, s, p, d = case
    if not use_dilation:
        d = 1
    return len(window_starts(n, k, s, p, d, ceil))


def assert_matches_walk(op, hcase, wcase, ceil, results, use_dilation=True):
    for (h, w), (node, codes) in results.items():
        oh = expected_axis(h, hcase, ceil, use_dilation)
        ow = expected_axis(w, wcase, ceil, use_dilation)
        if oh < 1 or ow < 1:
            assert node.shape is None, (h, w)
            assert codes == ["E301"], (h, w)
            continue
        channels = 3 if op == "conv" else 2
        assert node.shape == (channels, oh, ow), (h, w)
        assert "E301" not in codes
        if ceil:
            continue
        # W401 when real rows or columns are left after the last window, unless the windows
        # have gaps between them anyway (kernel span shorter than the stride)
        warn = False
        for n, (k, s, p, d) in ((h, hcase), (w, wcase)):
            if not use_dilation:
                d = 1
            if span(k, d) >= s and unused_rows(n, k, s, p, d):
                warn = True
        assert codes == (["W401"] if warn else []), (h, w)


def degenerate_ceil(n, case, use_dilation):
    """A ceil-mode case where no whole window fits: PyTorch's formula alone decides it, so
    the walk does not apply (see test_ceil_window_wider_than_input)."""
    k, _, p, d = case
    return n + 2 * p < span(k, d if use_dilation else 1)


@pytest.mark.parametrize("hcase, wcase", PAIRS, ids=case_id)
def test_conv_shapes_count_the_windows(hcase, wcase):
    results = check_grid("conv", hcase, wcase)
    assert_matches_walk("conv", hcase, wcase, False, results)
    for node, _ in results.values():
        if node.shape is not None:
            kh, kw = hcase[0], wcase[0]
            assert node.params == {"weight": (3, 2, kh, kw), "bias": (3,)}
            assert node.macs == node.shape[0] * node.shape[1] * node.shape[2] * 2 * kh * kw


POOL_PAIRS = [pair for pair in PAIRS if pool_pad_ok(pair[0]) and pool_pad_ok(pair[1])]
AVG_PAIRS = sorted({
    ((k1, s1, p1, 1), (k2, s2, p2, 1))
    for (k1, s1, p1, _), (k2, s2, p2, _) in PAIRS
    if p1 <= k1 // 2 and p2 <= k2 // 2
})


@pytest.mark.parametrize("ceil", [False, True])
@pytest.mark.parametrize("hcase, wcase", POOL_PAIRS, ids=case_id)
def test_maxpool_shapes_count_the_windows(hcase, wcase, ceil):
    results = check_grid("maxpool", hcase, wcase, ceil)
    if ceil:
        results = {
            size: result for size, result in results.items()
            if not degenerate_ceil(size[0], hcase, True)
            and not degenerate_ceil(size[1], wcase, True)
        }
    assert_matches_walk("maxpool", hcase, wcase, ceil, results)
    for node, _ in results.values():
        assert node.params == {}
        assert node.macs == 0


@pytest.mark.parametrize("ceil", [False, True])
@pytest.mark.parametrize("hcase, wcase", AVG_PAIRS, ids=case_id)
def test_avgpool_shapes_count_the_windows(hcase, wcase, ceil):
    results = check_grid("avgpool", hcase, wcase, ceil)
    if ceil:
        results = {
            size: result for size, result in results.items()
            if not degenerate_ceil(size[0], hcase, False)
            and not degenerate_ceil(size[1], wcase, False)
        }
    assert_matches_walk("avgpool", hcase, wcase, ceil, results, use_dilation=False)


def test_grid_reaches_the_interesting_cases():
    """The grid must contain ceil windows that PyTorch drops, and ceil windows it keeps."""
    dropped = kept = 0
    for (k, s, p, d), (n, _) in itertools.product(AXES, SIZES):
        if p > span(k, d) // 2 or n + 2 * p < span(k, d):
            continue
        floor_count = len(window_starts(n, k, s, p, d))
        ceil_count = len(window_starts(n, k, s, p, d, ceil=True))
        if shapes.ceil_window_dropped(n, k, s, p, d):
            dropped += 1
            assert ceil_count == floor_count
        elif ceil_count > floor_count:
            kept += 1
    assert dropped >= 10
    assert kept >= 50


@pytest.mark.parametrize("op", ["maxpool", "avgpool"])
def test_pool_pad_over_half_the_window_is_an_error(op):
    net = check_source(f"input x: [2, 9, 9]\noutput y = x -> {op}(3, stride=1, pad=2)\n")
    assert [d.code for d in net.diagnostics] == ["E207"]
    assert net.nodes[f"y.{op}1"].shape is None


def test_maxpool_pad_limit_is_half_the_kernel_not_the_dilated_window():
    # kernel 3 with dilation 2 spans 5 inputs; pad=2 is half the span but more than half of
    # the kernel. torch.nn.functional.max_pool2d(x, 3, 1, 2, dilation=2) raises "pad should be
    # smaller than or equal to half of kernel size".
    net = check_source("input x: [2, 9, 9]\noutput y = x -> maxpool(3, stride=1, pad=2, "
                       "dilation=2)\n")
    assert [d.code for d in net.diagnostics] == ["E207"]


# ---- ceil mode, case by case -------------------------------------------------------------------

# (n, kernel, stride, pad, expected size): the last ceil-mode window of each would start in
# the right padding, so PyTorch drops it and ceil gives no more windows than floor.
DROPPED = [
    (5, 2, 2, 1, 3),    # padded 7: starts 0, 2, 4; a window at 6 would see only padding
    (5, 3, 3, 1, 2),    # padded 7: starts 0, 3; a window at 6 starts in the right padding
    (7, 2, 2, 1, 4),
    (9, 4, 4, 2, 3),
]
# (n, kernel, stride, pad, expected size): ceil adds a last window over real input.
KEPT = [
    (32, 3, 2, 0, 16),  # NiN's pools: floor gives 15
    (16, 3, 2, 0, 8),   # floor gives 7
    (112, 3, 2, 0, 56),  # GoogLeNet's first pool: floor gives 55
    (6, 4, 3, 0, 2),
]


@pytest.mark.parametrize("op", ["maxpool", "avgpool"])
@pytest.mark.parametrize("n, k, s, p, expected", DROPPED)
def test_ceil_drops_a_window_that_starts_in_the_padding(op, n, k, s, p, expected):
    assert shapes.ceil_window_dropped(n, k, s, p)
    assert shapes.pool_out(n, k, s, p, ceil=True) == expected
    assert shapes.pool_out(n, k, s, p, ceil=False) == expected
    net = check_source(f"input x: [4, {n}, {n}]\n"
                       f"output y = x -> {op}({k}, stride={s}, pad={p}, ceil=true)\n")
    assert net.nodes[f"y.{op}1"].shape == (4, expected, expected)
    assert net.diagnostics == []


@pytest.mark.parametrize("op", ["maxpool", "avgpool"])
@pytest.mark.parametrize("n, k, s, p, expected", KEPT)
def test_ceil_keeps_a_window_that_starts_in_the_input(op, n, k, s, p, expected):
    assert not shapes.ceil_window_dropped(n, k, s, p)
    assert shapes.pool_out(n, k, s, p, ceil=True) == expected
    assert shapes.pool_out(n, k, s, p, ceil=False) == expected - 1
    net = check_source(f"input x: [4, {n}, {n}]\n"
                       f"output y = x -> {op}({k}, stride={s}, pad={p}, ceil=true)\n")
    assert net.nodes[f"y.{op}1"].shape == (4, expected, expected)


# (n, kernel, stride, expected size or None): no whole window fits. PyTorch still computes
# ceil((n - k) / s) + 1, which may be 1 (a first window hanging over the end) or 0 (an error).
WIDER = [
    (2, 3, 2, 1),
    (1, 3, 3, 1),
    (2, 3, 1, None),
    (1, 3, 2, None),
]


@pytest.mark.parametrize("n, k, s, expected", WIDER)
def test_ceil_window_wider_than_input(n, k, s, expected):
    net = check_source(f"input x: [1, {n}, {n}]\n"
                       f"output y = x -> maxpool({k}, stride={s}, ceil=true)\n")
    if expected is None:
        assert net.nodes["y.maxpool1"].shape is None
        assert [d.code for d in net.diagnostics] == ["E301"]
    else:
        assert net.nodes["y.maxpool1"].shape == (1, expected, expected)
        assert net.diagnostics == []


# ---- pad=same and pad=valid --------------------------------------------------------------------


@pytest.mark.parametrize("n", range(1, 12))
@pytest.mark.parametrize("k, s, d", [(1, 1, 1), (3, 1, 1), (4, 1, 1), (3, 2, 1), (5, 3, 1),
                                     (3, 1, 2), (2, 2, 3)])
def test_conv_pad_same_gives_ceil_of_size_over_stride(n, k, s, d):
    net = check_source(f"input x: [2, {n}, {n + 1}]\n"
                       f"output y = x -> conv(5, {k}, stride={s}, pad=same, dilation={d})\n")
    expected = (-(-n // s), -(-(n + 1) // s))
    assert net.nodes["y.conv1"].shape == (5,) + expected
    before, after = shapes.same_pads(n, k, s, d)
    assert after - before in (0, 1)  # the odd pixel goes after
    assert shapes.conv_out_asym(n, k, s, before, after, d) == expected[0]


def test_conv_pad_valid_is_no_padding():
    net = check_source("input x: [2, 10, 7]\noutput y = x -> conv(4, 3, pad=valid)\n")
    assert net.nodes["y.conv1"].shape == (4, 8, 5)


# ---- PyTorch as a second oracle ----------------------------------------------------------------


@pytest.fixture(scope="module")
def functional():
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tensors are tiny; worker threads only add overhead
    yield torch, torch.nn.functional
    torch.set_num_threads(threads)


def torch_shape(torch, call):
    """The output shape of a functional call, or None where PyTorch refuses the arguments."""
    try:
        out = call()
    except (RuntimeError, ValueError):
        return None
    return tuple(out.shape[1:])


def torch_pad_ok(case, use_dilation):
    """PyTorch's pooling pad check: pad <= kernel // 2 for max_pool2d with dilation (the
    undilated kernel), and <= the dilated span // 2 otherwise; the stricter one is used here,
    and the one case where they differ is the xfail test above."""
    k, _, p, d = case
    return p <= k // 2 and p <= span(k, d if use_dilation else 1) // 2


TORCH_PAIRS = PAIRS[::2]


@pytest.mark.torch
@pytest.mark.parametrize("hcase, wcase", TORCH_PAIRS, ids=case_id)
def test_conv_shapes_match_torch(functional, hcase, wcase):
    torch, F = functional
    results = check_grid("conv", hcase, wcase)
    weight = torch.empty(3, 2, hcase[0], wcase[0])
    for (h, w), (node, _) in results.items():
        x = torch.empty(1, 2, h, w)
        expected = torch_shape(torch, lambda: F.conv2d(
            x, weight, stride=(hcase[1], wcase[1]), padding=(hcase[2], wcase[2]),
            dilation=(hcase[3], wcase[3])))
        assert node.shape == expected, (h, w)


def torch_pool_cases():
    """(op, hcase, wcase) for the PyTorch comparison: avgpool has no dilation; pads over half
    the kernel are left to the E207 and xfail tests."""
    cases = []
    for op, (hcase, wcase) in itertools.product(["maxpool", "avgpool"], TORCH_PAIRS):
        if op == "avgpool":
            hcase = hcase[:3] + (1,)
            wcase = wcase[:3] + (1,)
        if torch_pad_ok(hcase, op == "maxpool") and torch_pad_ok(wcase, op == "maxpool"):
            cases.append((op, hcase, wcase))
    return cases


@pytest.mark.torch
@pytest.mark.parametrize("ceil", [False, True])
@pytest.mark.parametrize("op, hcase, wcase", torch_pool_cases(), ids=case_id)
def test_pool_shapes_match_torch(functional, op, hcase, wcase, ceil):
    torch, F = functional
    results = check_grid(op, hcase, wcase, ceil)
    kernel = (hcase[0], wcase[0])
    stride = (hcase[1], wcase[1])
    pad = (hcase[2], wcase[2])
    for (h, w), (node, _) in results.items():
        x = torch.empty(1, 2, h, w)
        if op == "maxpool":
            dilation = (hcase[3], wcase[3])
            expected = torch_shape(torch, lambda: F.max_pool2d(
                x, kernel, stride, pad, dilation, ceil_mode=ceil))
        else:
            expected = torch_shape(torch, lambda: F.avg_pool2d(
                x, kernel, stride, pad, ceil_mode=ceil))
        assert node.shape == expected, (h, w)


@pytest.mark.torch
@pytest.mark.parametrize("op", ["maxpool", "avgpool"])
def test_dropped_and_wider_ceil_cases_match_torch(functional, op):
    torch, F = functional
    pool = F.max_pool2d if op == "maxpool" else F.avg_pool2d
    cases = [(n, k, s, p) for n, k, s, p, _ in DROPPED + KEPT]
    cases += [(n, k, s, 0) for n, k, s, _ in WIDER]
    for n, k, s, p in cases:
        net = check_source(f"input x: [1, {n}, {n}]\n"
                           f"output y = x -> {op}({k}, stride={s}, pad={p}, ceil=true)\n")
        x = torch.empty(1, 1, n, n)
        expected = torch_shape(torch, lambda: pool(x, k, s, p, ceil_mode=True))
        assert net.nodes[f"y.{op}1"].shape == expected, (n, k, s, p)


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("n", [5, 6, 7, 12])
@pytest.mark.parametrize("k, d", [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (3, 2), (2, 3)])
def test_conv_pad_same_matches_torch(functional, n, k, d):
    torch, F = functional
    net = check_source(f"input x: [2, {n}, {n + 3}]\n"
                       f"output y = x -> conv(4, {k}, pad=same, dilation={d})\n")
    x = torch.empty(1, 2, n, n + 3)
    weight = torch.empty(4, 2, k, k)
    expected = tuple(F.conv2d(x, weight, padding="same", dilation=d).shape[1:])
    assert net.nodes["y.conv1"].shape == expected


# ---- compiler/shapes.py, function by function --------------------------------------------------


@pytest.mark.parametrize("k, d, expected", [(1, 1, 1), (3, 1, 3), (3, 2, 5), (5, 3, 13),
                                            (1, 4, 1), (2, 2, 3)])
def test_effective_kernel(k, d, expected):
    assert shapes.effective_kernel(k, d) == expected
    assert shapes.effective_kernel(k, d) == span(k, d)


def test_conv_out_on_the_grid():
    for (k, s, p, d), n in itertools.product(AXES, range(1, 20)):
        starts = window_starts(n, k, s, p, d)
        if starts:
            assert shapes.conv_out(n, k, s, p, d) == len(starts)
        else:
            assert shapes.conv_out(n, k, s, p, d) < 1


@pytest.mark.parametrize("n, k, s, p, d, expected", [
    (224, 7, 2, 3, 1, 112),   # ResNet's first convolution
    (224, 11, 4, 2, 1, 55),   # AlexNet's first convolution
    (39, 3, 1, 0, 1, 37),
    (37, 5, 2, 0, 1, 17),
    (17, 5, 2, 0, 1, 7),
    (10, 3, 1, 0, 2, 6),
    (3, 5, 1, 0, 1, -1),      # no clamping: callers report sizes below 1
])
def test_conv_out_examples(n, k, s, p, d, expected):
    assert shapes.conv_out(n, k, s, p, d) == expected


def test_conv_out_asym_matches_symmetric_padding():
    for (k, s, p, d), n in itertools.product(AXES, range(1, 15)):
        assert shapes.conv_out_asym(n, k, s, p, p, d) == shapes.conv_out(n, k, s, p, d)


@pytest.mark.parametrize("n, k, s, before, after, expected", [
    (6, 3, 2, 0, 1, 3),
    (6, 4, 1, 1, 2, 6),
    (7, 2, 2, 0, 0, 3),
    (7, 2, 2, 0, 1, 4),
])
def test_conv_out_asym_examples(n, k, s, before, after, expected):
    assert shapes.conv_out_asym(n, k, s, before, after) == expected
    padded = before + n + after
    assert len(range(0, padded - k + 1, s)) == expected


def test_same_pads_give_ceil_of_size_over_stride():
    for n, k, s, d in itertools.product(range(1, 20), range(1, 7), range(1, 4), range(1, 3)):
        before, after = shapes.same_pads(n, k, s, d)
        assert 0 <= before <= after <= before + 1
        assert shapes.conv_out_asym(n, k, s, before, after, d) == -(-n // s)
        assert shapes.same_out(n, s) == -(-n // s)
        # no more padding than needed: one pixel less would lose the last output
        if before + after:
            assert shapes.conv_out_asym(n, k, s, before, after - 1, d) < -(-n // s)


@pytest.mark.parametrize("n, k, s, expected", [
    (6, 3, 1, (1, 1)),
    (6, 4, 1, (1, 2)),
    (7, 3, 2, (1, 1)),
    (6, 3, 2, (0, 1)),
    (5, 1, 2, (0, 0)),
])
def test_same_pads_examples(n, k, s, expected):
    assert shapes.same_pads(n, k, s) == expected


def test_pool_out_on_the_grid():
    for (k, s, p, d), n in itertools.product(AXES, range(1, 20)):
        if p > span(k, d) // 2:
            continue
        floor_starts = window_starts(n, k, s, p, d)
        if floor_starts:
            assert shapes.pool_out(n, k, s, p, d) == len(floor_starts)
            assert shapes.pool_out(n, k, s, p, d, ceil=True) == len(
                window_starts(n, k, s, p, d, ceil=True))
        else:
            assert shapes.pool_out(n, k, s, p, d) < 1


def test_pool_out_ceil_follows_torch_formula():
    """PyTorch's pooling_output_shape: ceil((n + 2p - span) / s) + 1, less one when the last
    window would start at or past n + p."""
    for (k, s, p, d), n in itertools.product(AXES, range(1, 20)):
        width = span(k, d)
        out = -(-(n + 2 * p - width) // s) + 1
        if (out - 1) * s >= n + p:
            out -= 1
        assert shapes.pool_out(n, k, s, p, d, ceil=True) == out


def test_ceil_window_dropped_agrees_with_the_walk():
    for (k, s, p, d), n in itertools.product(AXES, range(1, 20)):
        if p > span(k, d) // 2 or n + 2 * p < span(k, d):
            continue
        width = span(k, d)
        floor_starts = window_starts(n, k, s, p, d)
        uncovered = floor_starts[-1] + width < n + 2 * p
        next_start = floor_starts[-1] + s
        dropped = uncovered and next_start >= n + p
        assert shapes.ceil_window_dropped(n, k, s, p, d) == dropped, (n, k, s, p, d)


def test_unused_tail_agrees_with_the_walk():
    for (k, s, p, d), n in itertools.product(AXES, range(1, 20)):
        assert shapes.unused_tail(n, k, s, p, d) == unused_rows(n, k, s, p, d), (n, k, s, p, d)


@pytest.mark.parametrize("n, k, s, p, expected", [
    (56, 3, 2, 0, 1),    # floor((56 - 3)/2) + 1 = 27 windows reach row 55 of 56
    (224, 7, 2, 3, 0),   # the odd row left over is padding
    (7, 3, 2, 0, 0),
    (8, 3, 3, 0, 2),
    (8, 3, 3, 1, 0),     # the windows end in the last real row
    (9, 3, 3, 1, 1),
])
def test_unused_tail_examples(n, k, s, p, expected):
    assert shapes.unused_tail(n, k, s, p) == expected


@pytest.mark.parametrize("k, p, d, expected", [(3, 0, 1, 3), (3, 1, 1, 1), (5, 1, 1, 3),
                                               (3, 0, 2, 5), (1, 0, 1, 1), (2, 1, 1, 1)])
def test_min_input(k, p, d, expected):
    assert shapes.min_input(k, p, d) == expected
    assert shapes.conv_out(expected, k, 1, p, d) >= 1
    if expected > 1:
        assert shapes.conv_out(expected - 1, k, 1, p, d) < 1


@pytest.mark.parametrize("args, text", [
    ((56, 3, 2, 0), "floor((56 - 3)/2) + 1 = 27"),
    ((8, 9, 1, 0), "8 - 9 + 1 = 0"),
    ((6, 3, 1, 1), "6 + 2 - 3 + 1 = 6"),
    ((10, 3, 1, 0, 2), "10 - 5 + 1 = 6"),
    ((6, 3, 2, (0, 1)), "floor((6 + 1 - 3)/2) + 1 = 3"),
])
def test_conv_formula_shows_the_numbers(args, text):
    assert shapes.conv_formula(*args) == text


def test_conv_formula_ceil_notes_a_dropped_window():
    text = shapes.conv_formula(5, 2, 2, 1, 1, ceil=True)
    assert text.startswith("ceil((5 + 2 - 2)/2) + 1 - 1")
    assert text.endswith("= 3")
    assert shapes.conv_formula(32, 3, 2, 0, 1, ceil=True) == "ceil((32 - 3)/2) + 1 = 16"
