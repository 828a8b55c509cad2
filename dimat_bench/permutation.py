"""Channel-permutation structure of a network, derived from its traced graph.

Permuting the hidden channels of a network consistently leaves its function unchanged. Which weight
axes must share one permutation follows from the graph: a conv or linear layer opens a new channel
space on its output (weight axis 0) and reads its input's space (weight axis 1); BatchNorm,
activations, pooling and flatten keep the space; an addition (a residual connection) joins the spaces
of its operands into one. Spaces joined to the network's input or output are fixed (RGB channels and
class logits are never permuted). Each remaining space is a `PermutationGroup`.

Features for activation matching are taken, per group, at its last activation (ReLU) output: for
ResNet-20 the post-ReLU input of each block's inner conv (9) and the residual stream at the end of
each stage (3); for VGG16 after each conv-BN-ReLU unit (13); for ResNet-50, 37 points.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F


class UnsupportedModel(ValueError):
    """The permutation structure of this model cannot be derived (an op we do not know how to permute through)."""


@dataclass
class PermutationGroup:
    """Weight axes sharing one permutation of `size` channels; features taken at fx node `feature_node`."""

    name: str
    size: int
    axes: list[tuple[str, int]] = field(default_factory=list)  # (state-dict key, axis)
    feature_node: str | None = None


@dataclass
class PermutationSpec:
    groups: list[PermutationGroup]

    def axis_groups(self) -> dict[str, dict[int, int]]:
        """state key -> {axis: index of its group}."""
        table: dict[str, dict[int, int]] = {}
        for g, group in enumerate(self.groups):
            for key, axis in group.axes:
                table.setdefault(key, {})[axis] = g
        return table

    def apply(self, state: dict[str, torch.Tensor], perms: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """A copy of `state` with group g's channels reordered so that new channel k = old perms[g][k]."""
        out = dict(state)
        for group, perm in zip(self.groups, perms):
            for key, axis in group.axes:
                out[key] = out[key].index_select(axis, perm.to(out[key].device))
        return out


_KEEP_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.MaxPool2d,
                 nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Dropout, nn.Identity, nn.Flatten)
_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU)
_KEEP_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.max_pool2d, F.avg_pool2d,
                   F.adaptive_avg_pool2d, torch.flatten, F.dropout}
_ACTIVATION_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.gelu, F.silu}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_KEEP_METHODS = {"relu", "relu_", "view", "flatten", "reshape", "contiguous", "clone"}
_BN_KEYS = ("weight", "bias", "running_mean", "running_var")


class _Spaces:
    """Union-find over channel spaces; space 0 is 'fixed' (network input/output)."""

    def __init__(self):
        self.parent = [0]
        self.size = [0]

    def new(self, size: int) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        if self.size[a] and self.size[b] and self.size[a] != self.size[b]:
            raise UnsupportedModel(f"adding tensors of {self.size[a]} and {self.size[b]} channels")
        root, child = (a, b) if a == 0 or (b != 0 and a < b) else (b, a)
        self.parent[child] = root
        return root


def trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as error:  # fx raises many kinds for untraceable control flow
        raise UnsupportedModel(f"{type(model).__name__} cannot be traced by torch.fx: {error}") from error


class _ChannelTrace:
    """Follows channel spaces through a traced graph, node by node: which weight axes share one
    permutation (`entries`), and which nodes produce each space (`producers`, in graph order)."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.spaces = _Spaces()
        self.space_of: dict[fx.Node, int] = {}
        self.entries: list[tuple[int, str, int]] = []  # (space, key, axis)
        self.producers: list[tuple[int, fx.Node, bool]] = []  # (space, node, is activation)

    def input_space(self, node: fx.Node) -> int:
        arg = node.args[0]
        if not isinstance(arg, fx.Node) or arg not in self.space_of:
            raise UnsupportedModel(f"node {node.name}: its input {arg} has no channel space")
        return self.space_of[arg]

    def visit(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            self.space_of[node] = 0
        elif node.op == "get_attr":
            raise UnsupportedModel(f"node {node.name} reads attribute {node.target} directly")
        elif node.op == "call_module":
            self.visit_module(node, self.gm.get_submodule(node.target))
        elif node.op in ("call_function", "call_method"):
            self.visit_function(node)
        elif node.op == "output":
            result = node.args[0]
            if not isinstance(result, fx.Node):
                raise UnsupportedModel("the model must return a single tensor")
            self.spaces.union(self.space_of[result], 0)

    def visit_module(self, node: fx.Node, module: nn.Module) -> None:
        prefix = node.target
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            source = self.input_space(node)
            if isinstance(module, nn.Conv2d) and module.groups != 1:
                raise UnsupportedModel(f"{prefix}: grouped convolution (groups={module.groups})")
            out = self.spaces.new(module.weight.shape[0])
            self.entries.append((out, f"{prefix}.weight", 0))
            if module.bias is not None:
                self.entries.append((out, f"{prefix}.bias", 0))
            self.entries.append((source, f"{prefix}.weight", 1))
            self.space_of[node] = out
            self.producers.append((out, node, False))
        elif isinstance(module, _KEEP_MODULES):
            space = self.input_space(node)
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                self.entries += [(space, f"{prefix}.{key}", 0) for key in _BN_KEYS
                                 if getattr(module, key, None) is not None]
            self.space_of[node] = space
            self.producers.append((space, node, isinstance(module, _ACTIVATION_MODULES)))
        else:
            raise UnsupportedModel(f"{prefix}: no permutation rule for {type(module).__name__}")

    def visit_function(self, node: fx.Node) -> None:
        target = node.target
        if target in _ADD_FUNCTIONS or target in ("add", "add_", "__iadd__"):
            operands = [a for a in node.args if isinstance(a, fx.Node)]
            space = self.space_of[operands[0]]
            for other in operands[1:]:
                space = self.spaces.union(space, self.space_of[other])
            self.space_of[node] = space
            self.producers.append((space, node, False))
        elif target in _KEEP_FUNCTIONS or target in _KEEP_METHODS:
            # flatten/view keep the channel space only after global pooling, as in every model we register
            self.space_of[node] = self.input_space(node)
            self.producers.append((self.space_of[node], node,
                                   target in _ACTIVATION_FUNCTIONS or target in ("relu", "relu_")))
        elif (target is getattr and node.args[1] == "shape") or target == "size":
            return  # shape queries feed view(); they carry no channels
        else:
            raise UnsupportedModel(f"node {node.name}: no permutation rule for {target}")

    def groups(self) -> list[PermutationGroup]:
        """One group per space joined to neither the input nor the output, in graph order of its
        feature node (the last activation producing it, else its last producer)."""
        spaces, groups = self.spaces, {}
        for space, key, axis in self.entries:
            root = spaces.find(space)
            if root == 0:
                continue
            group = groups.setdefault(root, PermutationGroup(name="", size=spaces.size[root]))
            group.axes.append((key, axis))
        last_node: dict[int, fx.Node] = {}
        last_activation: dict[int, fx.Node] = {}
        for space, node, is_activation in self.producers:  # in graph order
            root = spaces.find(space)
            last_node[root] = node
            if is_activation:
                last_activation[root] = node
        order = {node.name: i for i, node in enumerate(self.gm.graph.nodes)}
        for root, group in groups.items():
            group.feature_node = group.name = last_activation.get(root, last_node[root]).name
        return sorted(groups.values(), key=lambda g: order[g.feature_node])


def permutation_spec(model: nn.Module, graph: fx.GraphModule | None = None) -> PermutationSpec:
    """Derive the permutation groups of `model` (see the module docstring)."""
    gm = graph if graph is not None else trace(model)
    channels = _ChannelTrace(gm)
    for node in gm.graph.nodes:
        channels.visit(node)
    return PermutationSpec(channels.groups())


class FeatureExtractor(nn.Module):
    """Runs a model and returns (logits, [features at each group's feature node])."""

    def __init__(self, model: nn.Module, spec: PermutationSpec, graph: fx.GraphModule | None = None):
        super().__init__()
        gm = graph if graph is not None else trace(model)
        # Re-point the traced graph at `model`'s own submodules, so weights are shared, not copied.
        gm = fx.GraphModule(model, gm.graph)
        nodes = {n.name: n for n in gm.graph.nodes}
        output = next(n for n in gm.graph.nodes if n.op == "output")
        features = tuple(nodes[g.feature_node] for g in spec.groups)
        with gm.graph.inserting_before(output):
            gm.graph.output((output.args[0], features))
        gm.graph.erase_node(output)
        gm.recompile()
        self.graph_module = gm

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        return self.graph_module(x)
