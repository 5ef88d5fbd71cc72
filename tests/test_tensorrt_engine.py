"""TensorRT engine export, checked without TensorRT.

These tests check the calls made to TensorRT's Python API (network creation flags, builder flags,
the parsed file, the optimization profile per input, and how failures are reported) against a
recording stand-in for the ``tensorrt`` module. They do not build an engine: nothing here runs
TensorRT or checks that an engine is valid or fast.
"""
from __future__ import annotations

import enum
import importlib.machinery
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compressor.cli import main
from compressor.errors import CompressorError
from exporters.tensorrt_engine import build_engine, parse_shape_option, profile_shapes


# --- recording stand-in for the tensorrt module -------------------------------------------------


class CreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


class BuilderFlag(enum.Enum):
    FP16 = "FP16"
    BF16 = "BF16"
    INT8 = "INT8"
    FP8 = "FP8"
    SPARSE_WEIGHTS = "SPARSE_WEIGHTS"


class ParserError:
    def __init__(self, text):
        self.text = text

    def desc(self):
        return self.text


class FakeTensorRT:
    """Stands in for ``tensorrt``; ``calls`` lists what the code asked for, in order.

    The parser reads the ONNX graph's inputs as TensorRT does: a named or unnamed symbolic
    dimension becomes -1, a fixed one keeps its size.
    """

    def __init__(self, *, parse_ok=True, parser_errors=(), profile_index=0, engine=b"serialized engine"):
        self.calls: list[tuple] = []
        self.parse_ok, self.parser_errors = parse_ok, list(parser_errors)
        self.profile_index, self.engine = profile_index, engine
        self.flags: list = []
        self.profile: dict[str, tuple] = {}
        self.module = self._module()

    def _module(self):
        fake = self
        module = types.ModuleType("tensorrt")
        module.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # libraries probe find_spec()

        class Logger:
            WARNING = "WARNING"

            def __init__(self, severity):
                fake.calls.append(("Logger", severity))

        class Network:
            def __init__(self):
                self.inputs = []

            @property
            def num_inputs(self):
                return len(self.inputs)

            def get_input(self, i):
                name, shape = self.inputs[i]
                return types.SimpleNamespace(name=name, shape=shape)

        class Parser:
            def __init__(self, network, logger):
                self.network, self.num_errors = network, 0
                fake.calls.append(("OnnxParser",))

            def parse_from_file(self, path):
                fake.calls.append(("parse_from_file", path))
                if not fake.parse_ok:
                    self.num_errors = len(fake.parser_errors)
                    return False
                graph = onnx.load(path, load_external_data=False).graph
                initializers = {init.name for init in graph.initializer}
                for value in graph.input:
                    if value.name in initializers:
                        continue
                    dims = value.type.tensor_type.shape.dim
                    shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
                    self.network.inputs.append((value.name, shape))
                return True

            def get_error(self, i):
                return ParserError(fake.parser_errors[i])

        class Profile:
            def set_shape(self, name, low, opt, high):
                fake.calls.append(("set_shape", name))
                fake.profile[name] = (tuple(low), tuple(opt), tuple(high))

        class Config:
            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("set_memory_pool_limit", pool, size))

            def set_flag(self, flag):
                fake.calls.append(("set_flag", flag))
                fake.flags.append(flag)

            def add_optimization_profile(self, profile):
                fake.calls.append(("add_optimization_profile",))
                return fake.profile_index

        class Builder:
            def __init__(self, logger):
                fake.calls.append(("Builder",))

            def create_network(self, flags):
                fake.calls.append(("create_network", flags))
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                fake.calls.append(("build_serialized_network",))
                return fake.engine

        module.Logger, module.Builder, module.OnnxParser = Logger, Builder, Parser
        module.NetworkDefinitionCreationFlag = CreationFlag
        module.BuilderFlag = BuilderFlag
        module.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        return module

    def called(self, name):
        return [call for call in self.calls if call[0] == name]


@pytest.fixture
def fake_trt(monkeypatch):
    def install(**kwargs):
        fake = FakeTensorRT(**kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
        return fake

    return install


# --- small ONNX graphs with the inputs the exporters write ----------------------------------------


def write_graph(path: Path, inputs: list[tuple[str, int, list]], external_weight: bool = False) -> Path:
    """A graph of Identity nodes over ``inputs`` (name, element type, dims: int or symbolic name or None)."""
    values, nodes, outputs = [], [], []
    for name, elem, dims in inputs:
        values.append(helper.make_tensor_value_info(name, elem, dims))
        nodes.append(helper.make_node("Identity", [name], [f"{name}_out"]))
        outputs.append(helper.make_tensor_value_info(f"{name}_out", elem, dims))
    initializers = []
    if external_weight:
        weight = numpy_helper.from_array(np.ones((64, 64), dtype=np.float32), "weight")
        initializers.append(weight)
        nodes.append(helper.make_node("Identity", ["weight"], ["weight_out"]))
        outputs.append(helper.make_tensor_value_info("weight_out", TensorProto.FLOAT, [64, 64]))
    model = helper.make_model(helper.make_graph(nodes, "g", values, outputs, initializers))
    if external_weight:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data", size_threshold=0)
    else:
        onnx.save(model, str(path))
    return path


DIT_CLASS = [("hidden_states", TensorProto.FLOAT, ["batch", 4, 32, 32]),
             ("timestep", TensorProto.INT64, ["batch"]),
             ("class_labels", TensorProto.INT64, ["batch"])]
DIT_TEXT = [("hidden_states", TensorProto.FLOAT, ["batch", 4, 16, 16]),
            ("timestep", TensorProto.INT64, ["batch"]),
            ("encoder_hidden_states", TensorProto.FLOAT, ["batch", "sequence", 64])]
ENCODER = [("input_ids", TensorProto.INT64, ["batch", "sequence"]),
           ("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
           ("token_type_ids", TensorProto.INT64, ["batch", "sequence"])]


# --- build_engine: the calls made -------------------------------------------------------------


def test_dit_profiles_follow_each_input_rank(fake_trt, tmp_path):
    fake = fake_trt()
    onnx_path = write_graph(tmp_path / "dit.onnx", DIT_CLASS)
    out = build_engine(onnx_path, tmp_path / "dit.engine")
    assert out == tmp_path / "dit.engine" and out.read_bytes() == b"serialized engine"
    assert fake.profile == {
        "hidden_states": ((1, 4, 32, 32), (8, 4, 32, 32), (32, 4, 32, 32)),
        "timestep": ((1,), (8,), (32,)),
        "class_labels": ((1,), (8,), (32,)),
    }
    # strongly typed network, parsed from the file, no precision flags
    assert fake.called("create_network") == [("create_network", 1 << int(CreationFlag.STRONGLY_TYPED))]
    assert fake.called("parse_from_file") == [("parse_from_file", str(onnx_path))]
    assert fake.flags == []
    assert len(fake.called("add_optimization_profile")) == 1
    names = [call[0] for call in fake.calls]
    assert names.index("add_optimization_profile") < names.index("build_serialized_network")


def test_dit_with_text_conditioning_and_user_shapes(fake_trt, tmp_path):
    fake = fake_trt()
    onnx_path = write_graph(tmp_path / "pixart.onnx", DIT_TEXT)
    build_engine(onnx_path, tmp_path / "pixart.engine", min_shapes={"batch": 2}, opt_shapes={"batch": 4, "sequence": 77},
                 max_shapes={"batch": 16, "sequence": 120})
    assert fake.profile == {
        "hidden_states": ((2, 4, 16, 16), (4, 4, 16, 16), (16, 4, 16, 16)),
        "timestep": ((2,), (4,), (16,)),
        "encoder_hidden_states": ((2, 1, 64), (4, 77, 64), (16, 120, 64)),
    }


def test_text_encoder_gets_two_dimensional_profiles(fake_trt, tmp_path):
    fake = fake_trt()
    onnx_path = write_graph(tmp_path / "encoder.onnx", ENCODER)
    build_engine(onnx_path, tmp_path / "encoder.engine", max_shapes={"batch": 64, "sequence": 256})
    expected = ((1, 1), (8, 128), (64, 256))
    assert fake.profile == {name: expected for name, _, _ in ENCODER}


def test_sparse_weights_is_the_only_flag(fake_trt, tmp_path):
    fake = fake_trt()
    build_engine(write_graph(tmp_path / "m.onnx", ENCODER), tmp_path / "m.engine", sparse_weights=True)
    assert fake.flags == [BuilderFlag.SPARSE_WEIGHTS]


def test_external_data_graph_is_parsed_from_its_path(fake_trt, tmp_path):
    fake = fake_trt()
    onnx_path = write_graph(tmp_path / "big.onnx", ENCODER, external_weight=True)
    assert (tmp_path / "big.onnx.data").exists()
    build_engine(onnx_path, tmp_path / "big.engine")
    assert fake.called("parse_from_file") == [("parse_from_file", str(onnx_path))]
    assert set(fake.profile) == {name for name, _, _ in ENCODER}


def test_rejected_profile_is_an_error(fake_trt, tmp_path):
    fake = fake_trt(profile_index=-1)
    with pytest.raises(CompressorError, match="rejected the optimization profile") as info:
        build_engine(write_graph(tmp_path / "m.onnx", DIT_CLASS), tmp_path / "m.engine")
    assert "\n" not in str(info.value)
    assert fake.called("build_serialized_network") == []
    assert not (tmp_path / "m.engine").exists()


def test_failed_build_is_an_error(fake_trt, tmp_path):
    fake_trt(engine=None)
    with pytest.raises(CompressorError, match="failed to build an engine") as info:
        build_engine(write_graph(tmp_path / "m.onnx", ENCODER), tmp_path / "m.engine")
    assert "\n" not in str(info.value)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no engine, no scratch file


def test_parser_errors_are_one_line(fake_trt, tmp_path):
    fake = fake_trt(parse_ok=False, parser_errors=["node 3 (Foo): unsupported\noperator", "second problem"])
    with pytest.raises(CompressorError, match="cannot parse") as info:
        build_engine(write_graph(tmp_path / "m.onnx", ENCODER), tmp_path / "m.engine")
    message = str(info.value)
    assert "\n" not in message
    assert "node 3 (Foo): unsupported operator" in message and "second problem" in message
    assert fake.called("build_serialized_network") == []


def test_missing_tensorrt_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(CompressorError, match="TensorRT is not installed") as info:
        build_engine(write_graph(tmp_path / "m.onnx", ENCODER), tmp_path / "m.engine")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "m.engine").exists()


def test_existing_engine_is_kept_without_overwrite(fake_trt, tmp_path):
    fake = fake_trt()
    onnx_path = write_graph(tmp_path / "m.onnx", ENCODER)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"old")
    with pytest.raises(CompressorError, match="already exists"):
        build_engine(onnx_path, engine)
    assert engine.read_bytes() == b"old"
    assert fake.called("Builder") == []  # refused before building
    build_engine(onnx_path, engine, overwrite=True)
    assert engine.read_bytes() == b"serialized engine"


def test_unknown_dynamic_dimension_needs_options(fake_trt, tmp_path):
    fake_trt()
    onnx_path = write_graph(tmp_path / "m.onnx", [("latents", TensorProto.FLOAT, ["batch", "frames", 8])])
    with pytest.raises(CompressorError, match="'frames'.*no default range") as info:
        build_engine(onnx_path, tmp_path / "m.engine")
    assert "\n" not in str(info.value)
    fake = fake_trt()
    build_engine(onnx_path, tmp_path / "m.engine", min_shapes={"frames": 2}, max_shapes={"frames": 16})
    assert fake.profile["latents"] == ((1, 2, 8), (8, 16, 8), (32, 16, 8))


def test_unnamed_dynamic_dimension_is_an_error(fake_trt, tmp_path):
    fake_trt()
    onnx_path = write_graph(tmp_path / "m.onnx", [("x", TensorProto.FLOAT, ["batch", None])])
    with pytest.raises(CompressorError, match="axis 1 is dynamic but unnamed"):
        build_engine(onnx_path, tmp_path / "m.engine")


# --- profile_shapes: the pure part ----------------------------------------------------------------


def test_profile_shapes_fill_gaps_in_order():
    inputs = [("ids", (-1, -1))]
    names = {"ids": ["batch", "sequence"]}
    # only a max below the default opt: opt follows it down
    assert profile_shapes(inputs, names, max_shapes={"batch": 4}) == {"ids": ((1, 1), (4, 128), (4, 512))}
    # only a min above the default opt: opt follows it up
    assert profile_shapes(inputs, names, min_shapes={"sequence": 256}) == {"ids": ((1, 256), (8, 256), (32, 512))}
    # an opt above the default max raises the max
    assert profile_shapes(inputs, names, opt_shapes={"batch": 64}) == {"ids": ((1, 1), (64, 128), (64, 512))}
    # static dimensions keep their size
    assert profile_shapes([("t", (3, -1))], {"t": [None, "batch"]}) == {"t": ((3, 1), (3, 8), (3, 32))}


@pytest.mark.parametrize("options, message", [
    (dict(min_shapes={"batch": 8}, max_shapes={"batch": 4}), "needs min <= opt <= max, got 8 / 4 / 4"),
    (dict(opt_shapes={"seq": 128}), "--opt-shapes names 'seq'.*dynamic dimensions: batch, sequence"),
    (dict(max_shapes={"width": 64}), "--max-shapes names 'width'"),
])
def test_profile_shapes_errors(options, message):
    with pytest.raises(CompressorError, match=message) as info:
        profile_shapes([("ids", (-1, -1))], {"ids": ["batch", "sequence"]}, **options)
    assert "\n" not in str(info.value)


# --- shape option syntax --------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("batch=1,sequence=1", {"batch": 1, "sequence": 1}),
    ("batch=8", {"batch": 8}),
    (" batch = 32 , sequence= 512 ", {"batch": 32, "sequence": 512}),
    ("num_tokens=77", {"num_tokens": 77}),
    (None, {}),
])
def test_parse_shape_option(text, expected):
    assert parse_shape_option(text, "--opt-shapes") == expected


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("   ", "is empty"),
    ("batch", "'batch' is not NAME=SIZE"),
    ("=8", "'=8' is not NAME=SIZE"),
    ("batch=1,,sequence=2", "'' is not NAME=SIZE"),
    ("batch=1;sequence=2", "size of 'batch' must be a positive integer"),
    ("batch=", "size of 'batch' must be a positive integer, got ''"),
    ("batch=x", "got 'x'"),
    ("batch=0", "got '0'"),
    ("batch=-1", "got '-1'"),
    ("batch=1.5", "got '1.5'"),
    ("batch=1,batch=2", "'batch' is given twice"),
    ("8=batch", "'8=batch' is not NAME=SIZE"),
])
def test_parse_shape_option_errors(text, message):
    with pytest.raises(CompressorError, match=message) as info:
        parse_shape_option(text, "--min-shapes")
    assert str(info.value).startswith("--min-shapes")
    assert "\n" not in str(info.value)


# --- the export command ---------------------------------------------------------------------------


def one_line_error(capsys, fragment):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("compressor: error:"), err
    assert fragment in err, err


@pytest.mark.parametrize("extra, fragment", [
    (["--format", "tensorrt", "--target", "onnxruntime"], "drop --target onnxruntime"),
    (["--format", "tensorrt", "--max-shapes", "batch:32"], "--max-shapes: 'batch:32' is not NAME=SIZE"),
    (["--min-shapes", "batch=1"], "--min-shapes applies only to --format tensorrt"),
    (["--format", "onnx", "--sparse-weights", "--opt-shapes", "batch=2"],
     "--opt-shapes, --sparse-weights apply only to --format tensorrt"),
])
def test_export_argument_errors_come_before_loading(capsys, tmp_path, extra, fragment):
    # the model directory does not exist: the argument check must fail first
    out = tmp_path / "model.engine"
    assert main(["export", str(tmp_path / "no-such-model"), *extra, "--output", str(out)]) == 2
    one_line_error(capsys, fragment)
    assert not out.exists()


def test_export_tensorrt_passes_options_to_the_builder(capsys, fake_trt, minilm_dir, tmp_path):
    fake = fake_trt()
    out = tmp_path / "model.engine"
    code = main(["export", str(minilm_dir), "--format", "tensorrt", "--target", "tensorrt", "--output", str(out),
                 "--opt-shapes", "batch=4,sequence=64", "--max-shapes", "batch=16,sequence=256", "--sparse-weights"])
    assert code == 0, capsys.readouterr().err
    assert f"wrote {out}" in capsys.readouterr().out
    assert out.read_bytes() == b"serialized engine"
    assert fake.flags == [BuilderFlag.SPARSE_WEIGHTS]
    assert fake.profile and all(shapes == ((1, 1), (4, 64), (16, 256)) for shapes in fake.profile.values())
    assert "input_ids" in fake.profile
