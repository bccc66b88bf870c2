"""Which array of a weight file goes to which parameter of a network.

By name when the file's keys are the network's (a file cnnc or ``to_torch`` wrote); else by
structure: the network's layers that have parameters, in order, against the file's groups
of arrays (keys sharing everything before their last dot: ``layer1.0.conv1``), in the file's
order, each pair's shapes checked. That moves a torchvision checkpoint into the matching
`.cnn` model. When the structures disagree, the refusal names the first pair that does not
fit.

    mapping = match(expected, groups, members, network="resnet18")
    mapping.pairs          # [(our key, their key, shape), ...]
    print(mapping.describe())
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..runtime.files import shown, weight_problems

__all__ = ["Mapping", "MappingError", "match"]


class MappingError(ValueError):
    """A weight file that fits the network neither by name nor by structure."""


@dataclass
class Mapping:
    """How a weight file's arrays map onto a network's keys: ``how`` is ``name`` or
    ``structure``; ``pairs`` lists (network key, file key, shape) in the network's order;
    ``ignored`` the file's keys left out (PyTorch's ``num_batches_tracked``)."""

    how: str
    pairs: list = field(default_factory=list)
    ignored: list = field(default_factory=list)

    def describe(self) -> str:
        """One line per parameter: ``stem.conv1.weight <- conv1.weight [64, 3, 7, 7]``."""
        width = max((len(ours) for ours, _, _ in self.pairs), default=0)
        lines = [f"weights matched by {self.how}: {len(self.pairs)} arrays"]
        for ours, theirs, shape in self.pairs:
            lines.append(f"  {ours:<{width}} <- {shown(theirs)} {list(shape)}")
        if self.ignored:
            lines.append(f"  ({len(self.ignored)} num_batches_tracked counters left out)")
        return "\n".join(lines)


def match(expected: dict, groups: list, members: dict, network: str = "network",
          by: str = "auto") -> Mapping:
    """Map a file's ``members`` (key -> anything with ``shape``, in the file's order) onto
    ``expected`` (key -> shape). ``groups``: the network's layers with parameters, in
    order, as ``(layer name, op, {key: shape})``. ``by``: ``name``, ``structure`` or ``auto``
    (by name when every key fits, else by structure). Raises `MappingError` naming the
    problems."""
    if by not in ("auto", "name", "structure"):
        raise ValueError(f"by must be 'auto', 'name' or 'structure', got {by!r}")
    file_keys = [k for k in members if not k.endswith("num_batches_tracked")]
    ignored = [k for k in members if k.endswith("num_batches_tracked")]
    named = {k: members[k] for k in file_keys}
    problems = weight_problems(expected, named)
    if not problems and by != "structure":
        pairs = [(key, key, tuple(expected[key])) for key in expected]
        return Mapping("name", pairs, ignored)
    if by == "name" or (by == "auto" and set(named) & set(expected)):
        # The file speaks the network's names: say what differs rather than guess.
        raise MappingError(f"does not fit network {network}:\n  " + "\n  ".join(problems))
    try:
        pairs = _by_structure(groups, named)
        how = "structure"
    except MappingError as err:
        pairs = _by_shape_in_name_order(groups, named)
        how = "structure (the file's layers in name order, each taken by its shapes)"
        if pairs is None:
            if by == "structure":
                raise MappingError(f"does not fit network {network} {err}") from None
            raise MappingError(f"does not fit network {network} by name:\n  "
                               + "\n  ".join(_first(problems)) + f"\nnor {err}") from None
    return Mapping(how, pairs, ignored)


def _first(problems: list, n: int = 8) -> list:
    if len(problems) <= n + 1:
        return problems
    return problems[:n] + [f"... and {len(problems) - n} more"]


def _file_groups(members: dict) -> list:
    """The file's keys grouped by what comes before their last dot, in first-seen order."""
    groups: dict = {}
    for key in members:
        owner = key.rpartition(".")[0]
        groups.setdefault(owner, []).append(key)
    return list(groups.items())


def _by_structure(groups: list, members: dict) -> list:
    theirs = _file_groups(members)
    pairs = []
    for index, (name, op, shapes) in enumerate(groups):
        if index >= len(theirs):
            raise MappingError(
                f"by structure: the network has "
                f"{len(groups)} layers with parameters, the file {len(theirs)} groups of "
                f"arrays; the first without a partner is layer `{name}` ({op}: "
                f"{_listed(shapes)})")
        owner, their_keys = theirs[index]
        their_shapes = {k: tuple(members[k].shape) for k in their_keys}
        assigned = _pair_up(shapes, their_shapes)
        if assigned is None:
            raise MappingError(
                f"by structure: layer {index + 1} with "
                f"parameters, `{name}` ({op}: {_listed(shapes)}), meets `{shown(owner)}` in "
                f"the file ({_listed(their_shapes)})")
        pairs.extend(assigned)
    if len(theirs) > len(groups):
        owner, their_keys = theirs[len(groups)]
        their_shapes = {k: tuple(members[k].shape) for k in their_keys}
        raise MappingError(
            f"by structure: the file has {len(theirs)} "
            f"groups of arrays, the network {len(groups)} layers with parameters; the first "
            f"left over is `{shown(owner)}` ({_listed(their_shapes)})")
    return pairs


def _natural(key: str) -> tuple:
    """A sort key that orders ``layer10`` after ``layer9`` and ``1`` before ``downsample``."""
    import re

    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.split(r"(\d+)", key) if part)


def _by_shape_in_name_order(groups: list, members: dict):
    """For a file whose order says nothing (safetensors stores its keys sorted by name):
    each of the network's layers, in order, takes the first unused group of the file, in
    natural name order, with the same shapes. None when some layer finds none or groups
    are left over."""
    theirs = sorted(_file_groups(members), key=lambda group: _natural(group[0]))
    if len(theirs) != len(groups):
        return None
    used = [False] * len(theirs)
    pairs = []
    for _, _, shapes in groups:
        for index, (_, their_keys) in enumerate(theirs):
            if used[index]:
                continue
            their_shapes = {k: tuple(members[k].shape) for k in their_keys}
            assigned = _pair_up(shapes, their_shapes)
            if assigned is not None:
                used[index] = True
                pairs.extend(assigned)
                break
        else:
            return None
    return pairs


def _listed(shapes: dict) -> str:
    """``weight [64, 3, 7, 7], bias [64]``"""
    return ", ".join(f"{shown(k.rpartition('.')[2])} {list(s)}" for k, s in shapes.items())


def _pair_up(ours: dict, theirs: dict):
    """(our key, their key, shape) for one layer, by the last part of the key where both
    sides use the same ones (weight, bias, running_mean, ...), else in order; None when the
    counts or the shapes disagree. Both dicts map keys to shapes."""
    if len(ours) != len(theirs):
        return None
    leaf_theirs = {k.rpartition(".")[2]: k for k in theirs}
    if {k.rpartition(".")[2] for k in ours} == set(leaf_theirs):
        order = [leaf_theirs[k.rpartition(".")[2]] for k in ours]
    else:
        order = list(theirs)
    out = []
    for key, other in zip(ours, order):
        if theirs[other] != tuple(ours[key]):
            return None
        out.append((key, other, tuple(ours[key])))
    return out
