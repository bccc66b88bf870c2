"""Model diffs: matching by name, by structure and by order; per-layer and total deltas."""

from __future__ import annotations

from pathlib import Path

import cnnc
from cnnc.compiler.diff import diff, render

ROOT = Path(__file__).resolve().parents[2]
ALEXNET = (ROOT / "examples" / "alexnet.cnn").read_text()

# AlexNet with a 96-filter first convolution (Krizhevsky et al.'s original width) and a
# batch normalisation after it
WIDER = ALEXNET.replace("conv(64, 11, stride=4, pad=2) -> relu",
                        "conv(96, 11, stride=4, pad=2) -> batchnorm -> relu")


def test_a_model_equals_itself():
    net = cnnc.check(ALEXNET)
    d = diff(net, cnnc.check(ALEXNET))
    assert d.same and d.matched == len(net.nodes)
    assert d.first_shape_change is None
    assert "same:" in render(d, "a", "b")


def test_comments_and_layout_do_not_count():
    text = "# another comment\n" + ALEXNET.replace("-> relu", "->   relu")
    assert diff(cnnc.check(ALEXNET), cnnc.check(text)).same


def test_added_and_changed_layers_with_their_deltas():
    old, new = cnnc.check(ALEXNET), cnnc.check(WIDER)
    assert WIDER != ALEXNET and new.ok
    d = diff(old, new)
    assert not d.same
    assert [n.name for n in d.added] == ["features.batchnorm1"]
    assert d.removed == []
    by_name = {c.new.name: c for c in d.changed}
    conv1 = by_name["features.conv1"]
    assert conv1.fields["layer"] == ("conv(64, 11, stride=4, pad=2)",
                                     "conv(96, 11, stride=4, pad=2)")
    assert conv1.fields["output_shape"] == ((64, 55, 55), (96, 55, 55))
    assert conv1.params_delta == 32 * (3 * 11 * 11 + 1)
    assert conv1.macs_delta == 32 * 55 * 55 * 3 * 11 * 11
    assert conv1.activation_delta == 32 * 55 * 55 * 4
    # the relu now reads the batchnorm; the second conv sees 96 channels instead of 64
    assert by_name["features.relu1"].fields["inputs"] == (["features.conv1"],
                                                          ["features.batchnorm1"])
    assert by_name["features.conv2"].params_delta == 32 * 192 * 5 * 5
    assert "output_shape" not in by_name["features.conv2"].fields
    assert d.first_shape_change is conv1
    old_params, new_params = d.totals.params
    assert new_params - old_params == sum(c.params_delta for c in d.changed) + 2 * 96
    assert d.totals.params[0] == sum(n.param_count for n in old.layers)


def test_renamed_layers_are_matched_by_structure():
    renamed = ALEXNET.replace("features = image", "trunk = image").replace(
        "output logits = features", "output logits = trunk")
    d = diff(cnnc.check(ALEXNET), cnnc.check(renamed))
    assert d.added == [] and d.removed == []
    assert {c.how for c in d.changed} == {"structure"}
    assert all(set(c.fields) == {"name"} for c in d.changed)
    assert any(c.fields["name"] == ("features.conv1", "trunk.conv1") for c in d.changed)


def test_removed_layers_and_outputs():
    fewer = ALEXNET.replace("    -> dropout(0.5) -> dense(4096) -> relu\n", "", 1)
    d = diff(cnnc.check(ALEXNET), cnnc.check(fewer))
    removed = [n.op for n in d.removed]
    assert sorted(removed) == ["dense", "dropout", "relu"]
    text = render(d, "alexnet.cnn", "fewer.cnn")
    assert "- logits." in text and "3 removed" in text


def test_json_has_every_layer_and_total():
    d = diff(cnnc.check(ALEXNET), cnnc.check(WIDER)).to_json()
    assert d["same"] is False
    assert d["added"][0]["name"] == "features.batchnorm1"
    assert d["added"][0]["output_shape"] == [96, 55, 55]
    change = next(c for c in d["changed"] if c["new_name"] == "features.conv1")
    assert change["changes"]["output_shape"] == {"old": [64, 55, 55], "new": [96, 55, 55]}
    assert d["totals"]["params"]["delta"] == d["totals"]["params"]["new"] - \
        d["totals"]["params"]["old"]
    assert d["first_shape_change"]["new_name"] == "features.conv1"
