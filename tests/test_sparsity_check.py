"""The ONNX N:M checker reads each op's input-channel axis, sees through constant subgraphs (Q/DQ),
honours integer zero points and skips activation × activation matmuls."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from exporters.sparsity_check import assert_nm_sparse, check_nm_sparsity

# [in=8, out=4]: down each column (axis 0), every group of 4 has 2 nonzeros; along a row (axis 1) the
# first row [1, 2, 3, 4] is dense.
SPARSE_AXIS0 = np.array(
    [
        [1, 2, 3, 4],
        [0, 5, 0, 6],
        [7, 0, 0, 0],
        [0, 0, 8, 0],
        [0, 0, 0, 0],
        [9, 1, 2, 3],
        [0, 0, 0, 0],
        [4, 5, 6, 7],
    ],
    dtype=np.float32,
)


def model(nodes, initializers, inputs=("x",), domains=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(array, name) for name, array in initializers.items()],
    )
    opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=opsets)


def only_row(proto) -> dict:
    rows = check_nm_sparsity(proto)
    assert len(rows) == 1
    return rows[0]


def test_matmul_reads_axis_0():
    row = only_row(model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], {"w": SPARSE_AXIS0}))
    assert row == {"node": "mm", "op": "MatMul", "weight": "w", "shape": [8, 4], "input_axis": 0, "sparse": True}


def test_wrong_axis_is_rejected():
    # The transpose is 2:4 along its axis 1 only; as MatMul's B that is the output axis.
    wrong = model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], {"w": SPARSE_AXIS0.T.copy()})
    row = only_row(wrong)
    assert row["input_axis"] == 0 and row["shape"] == [4, 8] and not row["sparse"]


def test_gemm_trans_b_reads_axis_1():
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)
    row = only_row(model([node], {"w": SPARSE_AXIS0.T.copy(), "b": np.zeros(4, np.float32)}))
    assert row["input_axis"] == 1 and row["sparse"]
    plain = helper.make_node("Gemm", ["x", "w"], ["y"], name="fc")  # transB=0: [in, out], axis 0
    assert only_row(model([plain], {"w": SPARSE_AXIS0.T.copy()}))["input_axis"] == 0
    assert not only_row(model([plain], {"w": SPARSE_AXIS0.T.copy()}))["sparse"]


def test_dequantize_transpose_matmul():
    # The TensorRT Q/DQ layout: int8 [out, in] → DequantizeLinear (per output channel) → Transpose → MatMul.
    q = SPARSE_AXIS0.T.astype(np.int8)
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w_dq"], axis=0),
        helper.make_node("Transpose", ["w_dq"], ["w_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "w_t"], ["y"], name="mm"),
    ]
    inits = {"w_q": q, "w_scale": np.full(4, 0.1, np.float32), "w_zero": np.zeros(4, np.int8)}
    row = only_row(model(nodes, inits))
    assert row == {"node": "mm", "op": "MatMul", "weight": "w_q", "shape": [8, 4], "input_axis": 0, "sparse": True}

    dense = dict(inits, w_q=np.ones_like(q))
    assert not only_row(model(nodes, dense))["sparse"]


def integer_matmul(b: np.ndarray, zero: np.ndarray) -> onnx.ModelProto:
    inputs = ["x_q", "b", "a_scale", "b_scale", "a_zero", "b_zero"]  # A, B, a_scale, b_scale, a_zp, b_zp
    node = helper.make_node("MatMulIntegerToFloat", inputs, ["y"], name="mmi", domain="com.microsoft")
    inits = {"b": b, "a_scale": np.float32(0.1), "b_scale": np.full(4, 0.1, np.float32),
             "a_zero": np.uint8(128), "b_zero": zero}
    return model([node], inits, inputs=("x_q",), domains=("com.microsoft",))


def test_integer_op_zero_is_the_zero_point():
    b = (SPARSE_AXIS0.astype(np.int16) + 128).astype(np.uint8)  # pruned entries hold 128
    row = only_row(integer_matmul(b, np.uint8(128)))
    assert row["op"] == "MatMulIntegerToFloat" and row["input_axis"] == 0 and row["sparse"]
    # Read against zero point 0, every 128 counts as a nonzero.
    assert not only_row(integer_matmul(b, np.uint8(0)))["sparse"]
    # One zero point per output column (axis 1 of B).
    per_column = np.array([128, 128, 128, 100], np.uint8)
    shifted = b.copy()
    shifted[:, 3] = (SPARSE_AXIS0[:, 3] + 100).astype(np.uint8)
    assert only_row(integer_matmul(shifted, per_column))["sparse"]


def test_matmul_integer_zero_point_is_input_3():
    b = (SPARSE_AXIS0.astype(np.int16) + 128).astype(np.uint8)
    node = helper.make_node("MatMulInteger", ["x_q", "b", "a_zero", "b_zero"], ["y"], name="mi")
    inits = {"b": b, "a_zero": np.uint8(128), "b_zero": np.uint8(128)}
    assert only_row(model([node], inits, inputs=("x_q",)))["sparse"]


def test_activation_times_activation_is_skipped():
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "x_t"], ["scores"], name="attention"),
        helper.make_node("MatMul", ["scores", "w"], ["y"], name="mm"),
    ]
    rows = check_nm_sparsity(model(nodes, {"w": SPARSE_AXIS0}))
    assert [row["node"] for row in rows] == ["mm"]


def test_min_features_leaves_narrow_weights_out():
    proto = model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], {"w": SPARSE_AXIS0})
    assert check_nm_sparsity(proto, min_features=16) == []
    assert len(check_nm_sparsity(proto, min_features=8)) == 1


def test_assert_nm_sparse_names_the_node(tmp_path):
    nodes = [
        helper.make_node("MatMul", ["x", "good"], ["h"], name="first"),
        helper.make_node("MatMul", ["h", "bad"], ["y"], name="second"),
    ]
    proto = model(nodes, {"good": SPARSE_AXIS0, "bad": np.ones((4, 4), np.float32)})
    path = tmp_path / "m.onnx"
    onnx.save(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="m.onnx.data",
              size_threshold=0)
    assert (tmp_path / "m.onnx.data").exists()  # the weights live outside the graph file
    with pytest.raises(ValueError) as info:
        assert_nm_sparse(path)
    message = str(info.value)
    assert "'second'" in message and "'bad'" in message and "2:4" in message and "\n" not in message
    assert len(assert_nm_sparse(path, n=4, m=4)) == 2
    with pytest.raises(ValueError, match="no MatMul/Gemm"):
        assert_nm_sparse(model([helper.make_node("Relu", ["x"], ["y"])], {}))


@pytest.mark.parametrize("batch_shape, op", [((2, 16), "Gemm"), ((2, 3, 16), "MatMul")])
def test_exported_linear(tmp_path, batch_shape, op):
    # A Linear traced with a 2-D input becomes Gemm(transB=1) on the [out, in] weight; with a 3-D
    # input, MatMul on the constant-folded [in, out] transpose. Both must read the input axis.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 8)).eval()
    with torch.no_grad():
        w = net[0].weight
        keep = torch.zeros_like(w, dtype=torch.bool)
        keep.view(8, 4, 4)[..., :2] = True  # the first 2 of every 4 inputs, along dim 1 (in)
        w.mul_(keep)
    path = tmp_path / "linear.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(*batch_shape),), str(path), input_names=["x"], output_names=["y"],
                          opset_version=17, do_constant_folding=True, dynamo=False)
    rows = assert_nm_sparse(path)
    assert len(rows) == 1 and rows[0]["op"] == op and rows[0]["sparse"]
    expected_axis = {"Gemm": 1, "MatMul": 0}[op]
    assert rows[0]["input_axis"] == expected_axis and rows[0]["shape"][expected_axis] == 16


def test_qgemm_trans_b_zero_point_per_output_row():
    # QGemm(transB=1): B is [out, in], so per-output zero points run down axis 0 and sparsity along axis 1.
    zero = np.array([128, 128, 128, 100], np.uint8)
    b = (SPARSE_AXIS0.T.astype(np.int16) + zero[:, None]).astype(np.uint8)
    inputs = ["x_q", "a_scale", "a_zero", "b", "b_scale", "b_zero"]
    node = helper.make_node("QGemm", inputs, ["y"], name="qg", domain="com.microsoft", transB=1)
    inits = {"a_scale": np.float32(0.1), "a_zero": np.uint8(128), "b": b, "b_scale": np.full(4, 0.1, np.float32),
             "b_zero": zero}
    row = only_row(model([node], inits, inputs=("x_q",), domains=("com.microsoft",)))
    assert row["input_axis"] == 1 and row["sparse"]
