"""The Python API and the networkx graph it exposes."""

import networkx as nx
import pytest

import cnnc


def test_compile_returns_a_checked_graph():
    net = cnnc.compile("examples/googlenet.cnn")
    g = net.graph
    assert isinstance(g, nx.DiGraph)
    assert nx.is_directed_acyclic_graph(g)
    assert g.nodes["stem.conv1"]["op"] == "conv"
    assert g.nodes["stem.conv1"]["shape"] == (64, 112, 112)
    assert g.nodes["stem.conv1"]["span"].line == 15
    # the four inception branches feed the block's concat, in order
    concat = "i3.inception1.concat1"
    preds = sorted(g.predecessors(concat), key=lambda p: g.edges[p, concat]["slots"])
    assert [p.split(".")[2] for p in preds] == ["b1", "b2", "b3", "b4"]
    assert list(nx.topological_sort(g))[0] == "image"


def test_block_nodes_keep_their_instantiation_trace():
    net = cnnc.compile("examples/googlenet.cnn")
    node = net.nodes["i4.inception3.b2.conv2"]
    assert [block for block, _ in node.trace] == ["inception"]
    assert node.trace[0][1].line == 21


def test_compile_error_holds_every_diagnostic():
    src = "input x: [3, 8, 8]\na = x -> conv(3, 9)\noutput y = a -> dense(2, bias=1)\n"
    with pytest.raises(cnnc.CompileError) as info:
        cnnc.compile(src)
    codes = [d.code for d in info.value.diagnostics]
    assert codes == ["E301", "E206"]
    assert "8 - 9 + 1 = 0" in str(info.value)


def test_check_never_raises_for_model_problems():
    net = cnnc.check("input x: [3, 8, 8]\noutput y = x -> nope\n")
    assert not net.ok
    assert net.errors[0].code == "E203"


def test_concat_of_one_tensor_twice_keeps_both_slots():
    net = cnnc.compile("input x: [3, 8, 8]\noutput y = concat(x, x)\n")
    assert net.nodes["y.concat1"].shape == (6, 8, 8)
    assert net.graph.edges["x", "y.concat1"]["slots"] == [0, 1]


def test_a_checked_network_renders_its_own_diagnostics():
    source = "network t\ninput x: [3, 8, 8]\noutput y = x -> conv(4, 9)\n"
    net = cnnc.check(source)
    assert not net.ok
    text = net.render()
    assert "error[E301]" in text
    assert "output y = x -> conv(4, 9)" in text  # the source line, without re-reading a file
    with pytest.raises(cnnc.api.CompileError) as err:
        cnnc.compile(source)
    assert err.value.network.source == source
    assert text in str(err.value)
