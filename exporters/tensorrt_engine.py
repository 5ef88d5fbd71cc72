"""Build a TensorRT engine from a ``tensorrt``-target ONNX graph (explicit quantization).

The network is strongly typed and no precision flags are set: the Q/DQ nodes in the graph decide
which layers run in INT8. TensorRT is imported lazily; machines without it get a clear message.
"""
from __future__ import annotations

from pathlib import Path

from compressor.errors import CompressorError
from exporters.atomic import atomic_file


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise CompressorError(
            "TensorRT is not installed: install NVIDIA TensorRT for your CUDA version, or export with "
            "--format onnx --target tensorrt and build the engine with trtexec --stronglyTyped"
        ) from None
    return tensorrt


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    max_batch: int = 32,
    max_length: int = 128,
    workspace_gib: float = 4.0,
    overwrite: bool = False,
) -> Path:
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CompressorError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        profile.set_shape(name, (1, 1), (max_batch, max_length), (max_batch, max_length))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CompressorError(f"TensorRT failed to build an engine from {onnx_path}")
    with atomic_file(engine_path, overwrite) as scratch:
        scratch.write_bytes(bytes(serialized))
    return Path(engine_path)
