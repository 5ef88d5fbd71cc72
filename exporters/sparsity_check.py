"""Check an ONNX graph's matmul weights for N:M sparsity along the axis TensorRT reads.

Sparse tensor cores need at most N nonzeros in every M consecutive weights along the reduction
(input-channel) axis. That is axis 0 of MatMul's B ([in, out]) but axis 1 of Gemm's B with transB=1
([out, in]): a tensor pruned along the wrong axis looks sparse yet runs dense, so each op's layout
is spelled out in ``WEIGHT_OPERAND``.

The weight is often not an initializer but computed from initializers (int8 → DequantizeLinear →
Transpose → MatMul in Q/DQ graphs), so the constant subgraph feeding B is evaluated with ONNX's
reference evaluator and the pattern checked on the effective tensor. For integer ops a weight is zero
where B equals its zero point. A B that depends on a graph input (activation × activation, as in
attention) is skipped. Nodes inside control-flow subgraphs (If, Loop) are not looked at.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper, version_converter
from onnx.reference import ReferenceEvaluator

from compressor.numerics.sparsity import is_nm_sparse

# (domain, op_type) → (input index of B, input index of B's zero point or None, attribute that
# transposes B or None). Input orders as in the ONNX and ONNX Runtime contrib-op schemas.
WEIGHT_OPERAND = {
    ("", "MatMul"): (1, None, None),
    ("", "Gemm"): (1, None, "transB"),
    ("", "MatMulInteger"): (1, 3, None),  # A, B, a_zero_point, b_zero_point
    ("", "QLinearMatMul"): (3, 5, None),  # a, a_scale, a_zero_point, b, b_scale, b_zero_point, ...
    # A, B, a_scale, b_scale, a_zero_point, b_zero_point, bias
    ("com.microsoft", "MatMulIntegerToFloat"): (1, 5, None),
    ("com.microsoft", "DynamicQuantizeMatMul"): (1, 3, None),  # A, B, b_scale, b_zero_point, bias
    ("com.microsoft", "QGemm"): (3, 5, "transB"),  # A, a_scale, a_zero_point, B, b_scale, b_zero_point, ...
}


def check_nm_sparsity(
    model: str | Path | onnx.ModelProto, n: int = 2, m: int = 4, min_features: int = 0
) -> list[dict]:
    """One row per matmul node with a constant weight operand B, in graph order:
    {"node", "op", "weight", "shape", "input_axis", "sparse"}.

    ``weight`` names the largest initializer feeding B (B itself when it is one); ``shape`` is the
    effective B's. Weights with fewer than ``min_features`` input channels are left out (e.g. small
    layers a recipe keeps dense). A path is loaded with its external data; a ModelProto must already
    hold its tensors.
    """
    proto = onnx.load(str(model)) if isinstance(model, (str, Path)) else model
    graph = proto.graph
    initializers = {init.name: init for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    constant = _constant_values(graph)
    operands = []  # (node, B name, zero point name or "", transposed)
    for node in graph.node:
        layout = WEIGHT_OPERAND.get((_domain(node.domain), node.op_type))
        if layout is None:
            continue
        b_index, zero_index, trans_attr = layout
        b = node.input[b_index] if len(node.input) > b_index else ""
        zero = node.input[zero_index] if zero_index is not None and len(node.input) > zero_index else ""
        if b and b in constant and zero in constant:
            transposed = any(a.name == trans_attr and a.i for a in node.attribute)
            operands.append((node, b, zero, transposed))

    wanted = {name for _, b, zero, _ in operands for name in (b, zero) if name}
    values = _evaluate(proto, initializers, producer, wanted)
    rows = []
    for node, b, zero, transposed in operands:
        tensor = values[b]
        axis = 0 if tensor.ndim == 1 else tensor.ndim - (1 if transposed else 2)
        if tensor.shape[axis] < min_features:
            continue
        nonzero = _nonzero(tensor, values.get(zero), transposed)
        rows.append({
            "node": node.name,
            "op": node.op_type,
            "weight": _source_initializer(initializers, producer, b),
            "shape": list(tensor.shape),
            "input_axis": axis,
            "sparse": is_nm_sparse(torch.from_numpy(nonzero), n, m, axis),
        })
    return rows


def assert_nm_sparse(model: str | Path | onnx.ModelProto, n: int = 2, m: int = 4, min_features: int = 0) -> list[dict]:
    """``check_nm_sparsity``'s rows; ValueError naming the first weight that breaks the pattern, or
    when the graph has no constant matmul weight to check."""
    rows = check_nm_sparsity(model, n, m, min_features)
    if not rows:
        raise ValueError(f"no MatMul/Gemm with a constant weight to check for {n}:{m} sparsity")
    for row in rows:
        if not row["sparse"]:
            raise ValueError(
                f"node '{row['node']}' ({row['op']}): weight '{row['weight']}' {row['shape']} is not "
                f"{n}:{m} sparse along its input axis {row['input_axis']}"
            )
    return rows


def _domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


def _constant_values(graph: onnx.GraphProto) -> set[str]:
    """Names whose value depends on initializers only. ONNX nodes are topologically sorted, so one
    pass suffices. A node with no inputs is constant only if it is ``Constant`` (not RandomNormal);
    one carrying a subgraph may read outer values, so it never is."""
    constant = {init.name for init in graph.initializer} | {""}  # "" = an omitted optional input
    for node in graph.node:
        has_subgraph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        inputs_constant = all(name in constant for name in node.input)
        if inputs_constant and not has_subgraph and (node.input or node.op_type == "Constant"):
            constant.update(node.output)
    return constant


def _evaluate(proto: onnx.ModelProto, initializers: dict, producer: dict, names: set[str]) -> dict[str, np.ndarray]:
    """Values of constant ``names``: initializers read directly, the rest by running only the nodes
    that feed them (in graph order) in ONNX's reference evaluator."""
    graph = proto.graph
    values = {name: numpy_helper.to_array(initializers[name]) for name in names if name in initializers}
    computed = sorted(names - values.keys())
    if not computed:
        return values
    needed, stack = set(), list(computed)
    while stack:
        node = producer.get(stack.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            stack.extend(node.input)
    nodes = [node for node in graph.node if id(node) in needed]
    used = {name for node in nodes for name in node.input if name in initializers}
    sub = helper.make_graph(
        nodes, "constant_weights", inputs=[],
        outputs=[helper.make_empty_tensor_value_info(name) for name in computed],
        initializer=[initializers[name] for name in sorted(used)],
    )
    sub_model = helper.make_model(sub, opset_imports=proto.opset_import, ir_version=proto.ir_version,
                                  functions=proto.functions)
    try:
        results = _run_reference(sub_model)
    except Exception as error:  # e.g. a contrib op the reference evaluator does not implement
        first_line = (str(error).splitlines() or [""])[0]
        message = f"cannot evaluate the constant weight subgraph: {type(error).__name__}: {first_line}"
        raise ValueError(message) from error
    values.update((name, np.asarray(value)) for name, value in zip(computed, results))
    return values


def _run_reference(model: onnx.ModelProto) -> list:
    """Run an input-free model. The reference evaluator implements (De)QuantizeLinear from opset 19
    on only, so an older graph (TensorRT INT8 exports are opset 17) is converted up first."""
    opset = next((o.version for o in model.opset_import if _domain(o.domain) == ""), None)
    if opset is not None and opset < 19:
        model = version_converter.convert_version(model, 19)
    return ReferenceEvaluator(model).run(None, {})


def _nonzero(b: np.ndarray, zero_point: np.ndarray | None, transposed: bool) -> np.ndarray:
    """Where the weight is nonzero: B != 0, or for integer ops B != its zero point (scalar, or one per
    output column, which lies on axis -1, or -2 when B is transposed)."""
    if zero_point is None:
        return np.ascontiguousarray(b != 0)
    if zero_point.ndim == 1 and zero_point.size > 1 and b.ndim >= 2:
        shape = [1] * b.ndim
        shape[-2 if transposed else -1] = -1
        zero_point = zero_point.reshape(shape)
    return np.ascontiguousarray(b.astype(np.int64) != zero_point.astype(np.int64))


def _source_initializer(initializers: dict, producer: dict, name: str) -> str:
    """The largest initializer that ``name`` is computed from (the weight, not its scale)."""
    best, best_size, stack, seen = name, -1, [name], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        if current in initializers:
            size = int(np.prod(initializers[current].dims))
            if size > best_size:
                best, best_size = current, size
        elif current in producer:
            stack.extend(producer[current].input)
    return best
