"""The worked examples of the lecture notes in shared/seeds/, checked by the compiler.

The notes (Chinese translations of Andrew Ng's deeplearning.ai CNN course, of the FAU deep
learning lectures, and of an introduction to convolution and pooling) work through small
cases by hand: output sizes, parameter counts, the effect of 1x1 convolutions and pooling.
Each test states one of those facts and has the checker confirm it.
"""

import pytest

from cnnc.compiler.check import check_source


def net_for(shape, chain, sizes=None):
    """Check `input x: shape` with `output y = x -> chain`; return the checked network."""
    dims = ", ".join(str(d) for d in shape)
    return check_source(f"input x: [{dims}]\noutput y = x -> {chain}\n", sizes=sizes)


def out_shape(shape, chain):
    net = net_for(shape, chain)
    assert net.ok, [d.message for d in net.diagnostics]
    return net.nodes[net.outputs["y"]].shape


def only_layer(net):
    (layer,) = net.layers
    return layer


# ---- output sizes of a convolution -----------------------------------------------------------


def test_6x6_image_and_3x3_filter_give_4x4():
    # a 3x3 filter fits in 4 x 4 places on a 6x6 grey image
    assert out_shape([1, 6, 6], "conv(1, 3)") == (1, 4, 4)


def test_pad_1_keeps_6x6():
    # padding by one pixel makes the image 8x8; a 3x3 filter then fits 6 x 6 times
    assert out_shape([1, 6, 6], "conv(1, 3, pad=1)") == (1, 6, 6)
    assert out_shape([1, 6, 6], "conv(1, 3, pad=same)") == (1, 6, 6)


def test_valid_convolution_shrinks_and_same_keeps():
    # valid: no padding, n - f + 1; same: p = (f - 1) / 2 for an odd filter
    for f in (1, 3, 5, 7):
        assert out_shape([1, 9, 9], f"conv(1, {f}, pad=valid)") == (1, 10 - f, 10 - f)
        assert out_shape([1, 9, 9], f"conv(1, {f}, pad={(f - 1) // 2})") == (1, 9, 9)


def test_repeated_valid_convolutions_shrink_the_image_away():
    # without padding each 3x3 convolution takes 2 off each side's length
    assert out_shape([1, 6, 6], "conv(1, 3) -> conv(1, 3)") == (1, 2, 2)
    net = net_for([1, 6, 6], "conv(1, 3) -> conv(1, 3) -> conv(1, 3)")
    assert [d.code for d in net.diagnostics] == ["E301"]


def test_stride_2_on_7x7_gives_3x3():
    # floor((7 + 0 - 3) / 2) + 1 = 3
    assert out_shape([1, 7, 7], "conv(1, 3, stride=2)") == (1, 3, 3)


def test_stride_that_does_not_divide_rounds_down():
    # the quotient is rounded down: the window never hangs past the (padded) image
    assert out_shape([1, 8, 8], "conv(1, 3, stride=2)") == (1, 3, 3)
    assert out_shape([1, 9, 9], "conv(1, 3, stride=2)") == (1, 4, 4)


def test_256_with_3x3_kernel_and_stride_3_gives_85():
    # the introduction's example: a 3x3 kernel stepping by 3 cuts 256 to 85, about a third
    assert out_shape([3, 256, 256], "conv(8, 3, stride=3)") == (8, 85, 85)


# ---- convolution over volumes -----------------------------------------------------------------


def test_6x6x3_with_one_3x3x3_filter_gives_4x4x1():
    net = net_for([3, 6, 6], "conv(1, 3)")
    layer = only_layer(net)
    assert layer.shape == (1, 4, 4)
    # the filter has as many channels as the image: 3 x 3 x 3 = 27 weights, and a bias
    assert layer.params == {"weight": (1, 3, 3, 3), "bias": (1,)}
    assert layer.param_count == 28


def test_each_filter_adds_one_output_channel():
    assert out_shape([3, 6, 6], "conv(2, 3)") == (2, 4, 4)
    assert out_shape([3, 6, 6], "conv(10, 3)") == (10, 4, 4)


def test_10_filters_of_3x3x3_have_280_parameters():
    # (27 weights + 1 bias) x 10 filters
    layer = only_layer(net_for([3, 6, 6], "conv(10, 3)"))
    assert layer.param_count == 280


@pytest.mark.parametrize("size", [6, 64, 1000, 5000])
def test_280_parameters_whatever_the_image_size(size):
    layer = only_layer(net_for([3, size, size], "conv(10, 3)"))
    assert layer.param_count == 280


def test_280_parameters_for_a_symbolic_image():
    net = net_for(["3", "H", "W"], "conv(10, 3)")
    assert net.ok
    assert only_layer(net).param_count == 280


def test_a_convolution_is_a_dense_layer_with_shared_sparse_weights():
    # 16 outputs from a 6x6 image: a dense layer needs 36 weights (and a bias) per output,
    # the 3x3 filter shares 9 weights among all 16
    conv = only_layer(net_for([1, 6, 6], "conv(1, 3, bias=false)"))
    assert conv.shape == (1, 4, 4)
    assert conv.param_count == 9
    dense = net_for([1, 6, 6], "flatten -> dense(16, bias=false)")
    assert dense.nodes["y.dense1"].param_count == 36 * 16
    # and each output still costs 9 multiply-accumulates
    assert conv.macs == 16 * 9


def test_image_sizes_as_feature_vectors():
    # why dense layers do not scale to images: 64x64x3 is 12,288 features,
    # 1000x1000x3 three million
    assert out_shape([3, 64, 64], "flatten") == (12_288,)
    assert out_shape([3, 1000, 1000], "flatten") == (3_000_000,)


# ---- the course's 39x39 network ---------------------------------------------------------------


def test_39x39_course_network():
    src = (
        "input x: [3, 39, 39]\n"
        "a = x -> conv(10, 3)\n"                  # 37 x 37 x 10
        "b = a -> conv(20, 5, stride=2)\n"        # 17 x 17 x 20
        "c = b -> conv(40, 5, stride=2)\n"        # 7 x 7 x 40
        "output y = c -> flatten\n"               # 1960 features
    )
    net = check_source(src)
    assert net.diagnostics == []
    assert net.nodes["a.conv1"].shape == (10, 37, 37)
    assert net.nodes["b.conv1"].shape == (20, 17, 17)
    assert net.nodes["c.conv1"].shape == (40, 7, 7)
    assert net.nodes["y.flatten1"].shape == (1960,)
    assert 7 * 7 * 40 == 1960


def test_39x39_example_file_matches_the_course():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "ng_39x39.cnn"
    net = check_source(path.read_text(encoding="utf-8"), str(path))
    shapes = [node.shape for node in net.layers if node.op in ("conv", "flatten")]
    assert shapes == [(10, 37, 37), (20, 17, 17), (40, 7, 7), (1960,)]


# ---- pooling ---------------------------------------------------------------------------------


def test_max_pool_2x2_stride_2_on_4x4_gives_2x2():
    assert out_shape([1, 4, 4], "maxpool(2, stride=2)") == (1, 2, 2)
    # the stride defaults to the window size
    assert out_shape([1, 4, 4], "maxpool(2)") == (1, 2, 2)


def test_max_pool_3x3_stride_1_on_5x5_gives_3x3():
    assert out_shape([1, 5, 5], "maxpool(3, stride=1)") == (1, 3, 3)


def test_pooling_keeps_the_channels():
    # each channel is pooled on its own: 5x5x2 gives 3x3x2
    assert out_shape([2, 5, 5], "maxpool(3, stride=1)") == (2, 3, 3)
    assert out_shape([2, 4, 4], "avgpool(2)") == (2, 2, 2)


def test_pooling_uses_the_convolution_size_formula():
    # floor((n + 2p - f) / s) + 1, as for a convolution
    for n, f, s, p in [(4, 2, 2, 0), (5, 3, 1, 0), (7, 3, 2, 1), (9, 2, 2, 0), (28, 3, 2, 1)]:
        expected = (n + 2 * p - f) // s + 1
        assert out_shape([1, n, n], f"maxpool({f}, stride={s}, pad={p})") == (1, expected,
                                                                               expected)
        assert out_shape([1, n, n], f"conv(1, {f}, stride={s}, pad={p})") == (1, expected,
                                                                               expected)


def test_pooling_has_no_parameters():
    for chain in ["maxpool(2)", "avgpool(2)", "maxpool(3, stride=1)", "global_avgpool"]:
        layer = only_layer(net_for([4, 6, 6], chain))
        assert layer.params == {}
        assert layer.macs == 0


def test_global_average_pooling_of_7x7x1000_gives_1x1x1000():
    assert out_shape([1000, 7, 7], "global_avgpool") == (1000, 1, 1)
    assert out_shape([1000, 7, 7], "avgpool(7)") == (1000, 1, 1)


# ---- 1x1 convolutions -------------------------------------------------------------------------


def test_1x1_convolution_changes_only_the_channels():
    assert out_shape([192, 28, 28], "conv(32, 1)") == (32, 28, 28)
    assert out_shape([32, 28, 28], "conv(192, 1)") == (192, 28, 28)


def test_1x1_convolution_is_a_dense_layer_applied_at_every_pixel():
    conv = only_layer(net_for([192, 28, 28], "conv(32, 1)"))
    dense = only_layer(net_for([192], "dense(32)"))
    assert conv.param_count == dense.param_count == 192 * 32 + 32
    assert conv.macs == 28 * 28 * dense.macs


def test_1x1_convolution_on_a_1x1_map_replaces_a_dense_layer():
    conv_net = net_for([512, 1, 1], "conv(10, 1) -> flatten")
    dense_net = net_for([512, 1, 1], "flatten -> dense(10)")
    assert conv_net.nodes["y.flatten1"].shape == dense_net.nodes["y.dense1"].shape == (10,)
    assert conv_net.nodes["y.conv1"].param_count == dense_net.nodes["y.dense1"].param_count


@pytest.mark.parametrize("size", [32, 57, 224, 301])
def test_1x1_classifier_with_global_pooling_takes_any_image_size(size):
    # all-convolutional: map to class channels with a 1x1 convolution, then average
    chain = "conv(16, 3, pad=1) -> relu -> conv(10, 1) -> global_avgpool -> flatten"
    assert out_shape([3, size, size], chain) == (10,)
    assert out_shape([3, size, size + 5], chain) == (10,)


def test_1x1_classifier_with_global_pooling_for_a_symbolic_image():
    chain = "conv(16, 3, pad=1) -> relu -> conv(10, 1) -> global_avgpool -> flatten"
    net = net_for(["3", "H", "W"], chain)
    assert net.ok
    assert net.nodes["y.flatten1"].shape == (10,)


# ---- inception modules ------------------------------------------------------------------------

INCEPTION = """
input x: [{cin}, 28, 28]
block inception(c1, c3r, c3, c5r, c5, pp) {{
    b1 = in -> conv(c1, 1) -> relu
    b2 = in -> conv(c3r, 1) -> relu -> conv(c3, 3, pad=1) -> relu
    b3 = in -> conv(c5r, 1) -> relu -> conv(c5, 5, pad=2) -> relu
    b4 = in -> maxpool(3, stride=1, pad=1) -> conv(pp, 1) -> relu
    return concat(b1, b2, b3, b4)
}}
output y = x -> inception({args})
"""


@pytest.mark.parametrize("cin, args, channels", [
    (192, (64, 96, 128, 16, 32, 32), 256),     # GoogLeNet's inception (3a)
    (256, (128, 128, 192, 32, 96, 64), 480),   # inception (3b)
    (8, (1, 2, 3, 4, 5, 6), 15),
])
def test_inception_output_channels_are_the_sum_of_the_branches(cin, args, channels):
    net = check_source(INCEPTION.format(cin=cin, args=", ".join(map(str, args))))
    assert net.diagnostics == []
    c1, _, c3, _, c5, pp = args
    assert c1 + c3 + c5 + pp == channels
    # each branch keeps the 28x28 map, so the branches can be stacked along channels
    assert net.nodes["y.inception1.concat1"].shape == (channels, 28, 28)
    assert net.nodes["y.inception1.b1.relu1"].shape == (c1, 28, 28)
    assert net.nodes["y.inception1.b2.relu2"].shape == (c3, 28, 28)
    assert net.nodes["y.inception1.b3.relu2"].shape == (c5, 28, 28)
    assert net.nodes["y.inception1.b4.maxpool1"].shape == (cin, 28, 28)
    assert net.nodes["y.inception1.b4.relu1"].shape == (pp, 28, 28)


def test_inception_branches_must_agree_in_size():
    # without padding the 3x3 and 5x5 branches shrink the map, and the concat fails
    src = (
        "input x: [16, 28, 28]\n"
        "a = x -> conv(8, 1)\n"
        "b = x -> conv(8, 3)\n"
        "output y = concat(a, b)\n"
    )
    net = check_source(src)
    assert [d.code for d in net.diagnostics] == ["E302"]


def test_1x1_reduction_cuts_the_cost_of_a_5x5_branch():
    # 28x28x192 to 28x28x32 with 5x5 filters, directly or through 16 channels of 1x1 first
    direct = net_for([192, 28, 28], "conv(32, 5, pad=2)")
    reduced = net_for([192, 28, 28], "conv(16, 1) -> conv(32, 5, pad=2)")
    direct_macs = sum(node.macs for node in direct.layers)
    reduced_macs = sum(node.macs for node in reduced.layers)
    assert direct.nodes["y.conv1"].shape == reduced.nodes["y.conv2"].shape == (32, 28, 28)
    assert direct_macs == 28 * 28 * 32 * 192 * 5 * 5 == 120_422_400
    assert reduced_macs == 28 * 28 * 16 * 192 + 28 * 28 * 32 * 16 * 5 * 5 == 12_443_648
    assert reduced_macs * 9 < direct_macs
