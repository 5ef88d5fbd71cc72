"""Build a TensorRT engine from a ``tensorrt``-target ONNX graph (explicit quantization).

The network is strongly typed and no precision flags are set: the Q/DQ nodes in the graph decide
which layers run in INT8 or a low-bit format. TensorRT is imported lazily; machines without it get a
clear message.

The optimization profile comes from the network's own inputs: static dimensions keep their size and
every dynamic dimension (-1) gets a min/opt/max range. Dynamic dimensions are looked up by the name
the ONNX graph gives them (``batch``, ``sequence``) in the user's shape options, then in
``DEFAULT_RANGES``. A DiT graph therefore gets a 4-D profile for ``hidden_states`` and 1-D profiles
for ``timestep`` and ``class_labels``; a text encoder gets 2-D profiles for its token inputs.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

from compressor.errors import CompressorError
from compressor.atomic import atomic_file, check_can_write

# min / opt / max for the dynamic dimension names the exporters write.
DEFAULT_RANGES: dict[str, tuple[int, int, int]] = {
    "batch": (1, 8, 32),
    "sequence": (1, 128, 512),
}

SHAPE_OPTIONS = ("--min-shapes", "--opt-shapes", "--max-shapes")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]*")


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise CompressorError(
            "TensorRT is not installed: install NVIDIA TensorRT for your CUDA version, or export with "
            "--format onnx --target tensorrt and build the engine with trtexec --stronglyTyped"
        ) from None
    return tensorrt


def parse_shape_option(text: str | None, option: str = "shape option") -> dict[str, int]:
    """``"batch=1,sequence=128"`` → ``{"batch": 1, "sequence": 128}``; ``None`` → ``{}``.

    Names are the ONNX graph's dynamic dimension names; values are positive integers.
    """
    if text is None:
        return {}
    if not text.strip():
        raise CompressorError(f"{option} is empty; expected NAME=SIZE pairs such as batch=8,sequence=128")
    sizes: dict[str, int] = {}
    for item in text.split(","):
        name, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not _NAME.fullmatch(name):
            raise CompressorError(f"{option}: '{item.strip()}' is not NAME=SIZE (e.g. batch=8,sequence=128)")
        if not re.fullmatch(r"[0-9]+", value) or int(value) < 1:
            raise CompressorError(f"{option}: the size of '{name}' must be a positive integer, got '{value}'")
        if name in sizes:
            raise CompressorError(f"{option}: '{name}' is given twice")
        sizes[name] = int(value)
    return sizes


def onnx_dimension_names(onnx_path: str | Path) -> dict[str, list[str | None]]:
    """Per graph input, the name of each dimension (``None`` where the graph gives no name).

    Only the graph structure is read: external weight files are not needed.
    """
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 (protobuf raises several types for a bad file)
        raise CompressorError(f"cannot read the ONNX graph {onnx_path}: {exc}".replace("\n", " ")) from None
    names: dict[str, list[str | None]] = {}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        names[value.name] = [d.dim_param if d.HasField("dim_param") and d.dim_param else None for d in dims]
    return names


def _dimension_range(name: str, given: dict[str, int]) -> tuple[int, int, int] | None:
    """min/opt/max for one named dimension: the user's values, gaps filled from the defaults (kept in
    order around the user's values); ``None`` when neither says anything."""
    default = DEFAULT_RANGES.get(name)
    if default is None:
        if not given:
            return None
        low, high = min(given.values()), max(given.values())
        default = (low, given.get("opt", high), high)
    low = given.get("min", min(default[0], *given.values()) if given else default[0])
    high = given.get("max", max(default[2], *given.values()) if given else default[2])
    opt = given.get("opt", min(max(default[1], low), high))
    return low, opt, high


def profile_shapes(
    inputs: Sequence[tuple[str, Sequence[int]]],
    dimension_names: Mapping[str, Sequence[str | None]],
    min_shapes: Mapping[str, int] | None = None,
    opt_shapes: Mapping[str, int] | None = None,
    max_shapes: Mapping[str, int] | None = None,
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shape per network input.

    ``inputs``: the network's (name, shape) pairs with -1 for a dynamic dimension;
    ``dimension_names``: the ONNX graph's name for each dimension of each input.
    """
    options = {"min": dict(min_shapes or {}), "opt": dict(opt_shapes or {}), "max": dict(max_shapes or {})}
    ranges: dict[str, tuple[int, int, int]] = {}
    shapes = {}
    for input_name, shape in inputs:
        shape = tuple(int(d) for d in shape)
        names = list(dimension_names.get(input_name, ()))
        per_kind: dict[str, list[int]] = {"min": [], "opt": [], "max": []}
        for axis, size in enumerate(shape):
            if size >= 0:
                for kind in per_kind:
                    per_kind[kind].append(size)
                continue
            name = names[axis] if len(names) == len(shape) else None
            if name is None:
                raise CompressorError(
                    f"input '{input_name}' axis {axis} is dynamic but unnamed in the ONNX graph, so no shape "
                    f"option can set its range; export the graph with named dynamic axes")
            if name not in ranges:
                given = {kind: sizes[name] for kind, sizes in options.items() if name in sizes}
                found = _dimension_range(name, given)
                if found is None:
                    raise CompressorError(
                        f"dynamic dimension '{name}' (input '{input_name}', axis {axis}) has no default range; "
                        f"give it with --min-shapes/--opt-shapes/--max-shapes, e.g. {name}=1 / {name}=8 / {name}=32")
                if not found[0] <= found[1] <= found[2]:
                    raise CompressorError(
                        f"dimension '{name}' needs min <= opt <= max, got {found[0]} / {found[1]} / {found[2]}")
                ranges[name] = found
            for kind, size in zip(per_kind, ranges[name]):
                per_kind[kind].append(size)
        shapes[input_name] = (tuple(per_kind["min"]), tuple(per_kind["opt"]), tuple(per_kind["max"]))
    for kind, option in zip(options, SHAPE_OPTIONS):
        unknown = sorted(set(options[kind]) - set(ranges))
        if unknown:
            known = ", ".join(sorted(ranges)) or "none"
            raise CompressorError(
                f"{option} names {', '.join(repr(n) for n in unknown)}, which the graph does not have as a dynamic "
                f"dimension (its dynamic dimensions: {known})")
    return shapes


def _network_inputs(network) -> list[tuple[str, tuple[int, ...]]]:
    inputs = []
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        inputs.append((tensor.name, tuple(int(d) for d in tensor.shape)))
    return inputs


def _parser_errors(parser) -> str:
    messages = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        desc = getattr(error, "desc", None)
        messages.append(str(desc() if callable(desc) else error))
    text = "; ".join(" ".join(m.split()) for m in messages)
    return text or "no error was reported"


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    min_shapes: Mapping[str, int] | None = None,
    opt_shapes: Mapping[str, int] | None = None,
    max_shapes: Mapping[str, int] | None = None,
    sparse_weights: bool = False,
    workspace_gib: float = 4.0,
    overwrite: bool = False,
) -> Path:
    """Parse ``onnx_path`` (external data beside it is found), build strongly typed and write the
    serialized engine to ``engine_path`` atomically. Shape options map dynamic dimension names to sizes."""
    trt = import_tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    check_can_write(engine_path, overwrite)  # refuse before the (long) build
    if not onnx_path.is_file():
        raise CompressorError(f"ONNX file {onnx_path} does not exist")
    dimension_names = onnx_dimension_names(onnx_path)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise CompressorError(f"TensorRT cannot parse {onnx_path}: {_parser_errors(parser)}")

    shapes = profile_shapes(_network_inputs(network), dimension_names, min_shapes, opt_shapes, max_shapes)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if sparse_weights:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    if config.add_optimization_profile(profile) < 0:
        summary = ", ".join(f"{name} {list(low)}..{list(high)}" for name, (low, _, high) in shapes.items())
        raise CompressorError(f"TensorRT rejected the optimization profile ({summary})")

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CompressorError(f"TensorRT failed to build an engine from {onnx_path} (its log above says why)")
    with atomic_file(engine_path, overwrite) as scratch:
        with open(scratch, "wb") as handle:
            handle.write(serialized)
    return engine_path

