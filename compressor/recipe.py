"""Recipes: an ordered list of passes plus calibration settings, from a preset name or a YAML file.

```yaml
name: my-recipe
calibration: {calib_samples: 256}
passes:
  - smoothquant: {alphas: [0.3, 0.5, 0.7]}
  - quantize: {scheme: int8, observer: percentile}
  - fallback: {max_layers: 2}
```

Each pass's fields are validated by its typed config when the recipe is read; errors name the pass
and the field. The flat files of earlier versions (one mapping of ~28 fields, optionally
``preset: NAME``) are still read: ``flat_recipe`` turns them into the same pass list.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field, ValidationError

from compressor.errors import CompressorError
from compressor.numerics.formats import SCHEMES, is_float_scheme
from compressor.passes import PASSES
from compressor.passes.base import STAGES, Pass, PassConfig, missing_results


class CalibrationSettings(PassConfig):
    """How much calibration data is read and how it is batched. Diffusion models calibrate on their own
    sampling trajectory: ``calib_images`` samples over ``sampling_steps`` DDIM steps with guidance
    ``guidance_scale``, unless the calibration file says otherwise."""

    calib_samples: int = Field(256, ge=1)
    calib_images: int = Field(64, ge=1)
    sampling_steps: int = Field(25, ge=1)
    guidance_scale: float = Field(1.5, ge=1)
    sensitivity_samples: int = Field(64, ge=1)  # inputs the model's output error is measured on
    search_tokens: int = Field(4096, ge=1)  # input rows kept per layer for searches
    batch_size: int = Field(32, ge=1)
    max_length: int = Field(128, ge=1)
    seed: int = 0


@dataclass
class Recipe:
    name: str
    passes: list[Pass]
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)

    def __post_init__(self) -> None:
        check_order(self.passes)

    def find(self, name: str) -> Pass | None:
        return next((p for p in self.passes if p.name == name), None)

    def to_dict(self) -> dict:
        return {"name": self.name, "calibration": self.calibration.model_dump(),
                "passes": [{p.name: p.config.model_dump()} for p in self.passes]}

    @classmethod
    def from_dict(cls, data: dict, where: str = "recipe") -> "Recipe":
        """A recipe from its mapping (``passes:`` form); one-line CompressorError for anything wrong."""
        if not isinstance(data, dict):
            raise CompressorError(f"{where} must be a mapping with a 'passes' list")
        unknown = set(data) - {"name", "calibration", "passes"}
        if unknown:
            raise CompressorError(f"{where}: unknown field '{sorted(unknown)[0]}'; a recipe has name, calibration and passes")
        entries = data.get("passes")
        if not isinstance(entries, list) or not entries:
            raise CompressorError(f"{where}: 'passes' must be a non-empty list of {{pass: {{field: value}}}}")
        passes = [make_pass(entry, f"{where}, pass {i + 1}") for i, entry in enumerate(entries)]
        calibration = _validated(CalibrationSettings, data.get("calibration") or {}, f"{where}, calibration")
        return cls(str(data.get("name", "recipe")), passes, calibration)

    def with_calibration(self, **changes) -> "Recipe":
        values = {**self.calibration.model_dump(), **changes}
        return Recipe(self.name, self.passes, _validated(CalibrationSettings, values, "calibration"))


def _validated(config_class: type[PassConfig], values, where: str) -> PassConfig:
    if not isinstance(values, dict):
        raise CompressorError(f"{where}: expected a mapping of field: value, got {values!r}")
    try:
        return config_class(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        location = str(error["loc"][0]) if error["loc"] else ""
        item = "".join(f"[{part!r}]" for part in error["loc"][1:])  # an item of a list or mapping field
        if not location and error["type"] == "value_error":  # a check across fields says "field: problem"
            location, _, message = str(error["ctx"]["error"]).partition(": ")
            raise CompressorError(f"{where}: field '{location}': {message}") from None
        if error["type"] == "extra_forbidden":
            known = ", ".join(config_class.model_fields)
            raise CompressorError(f"{where}: unknown field '{location}'; known fields: {known}") from None
        raise CompressorError(f"{where}: field '{location}'{item}: {error['msg']} (got {error.get('input')!r})") from None


def make_pass(entry, where: str = "recipe") -> Pass:
    """A pass from ``{name: {field: value}}`` (or a bare name for its defaults)."""
    if isinstance(entry, str):
        entry = {entry: {}}
    if not isinstance(entry, dict) or len(entry) != 1:
        raise CompressorError(f"{where}: each pass is written as {{name: {{field: value}}}}, got {entry!r}")
    (name, values), = entry.items()
    pass_class = PASSES.get(name)
    if pass_class is None:
        raise CompressorError(f"{where}: unknown pass '{name}'; known passes: {', '.join(sorted(PASSES))}")
    return pass_class(_validated(pass_class.Config, values or {}, f"{where} ({name})"))


def check_order(passes: list[Pass]) -> None:
    """Stages never go backwards, each pass at most once, each pass's own before/after rules hold, and an
    earlier pass produces every result a pass requires."""
    names = [p.name for p in passes]
    for name in set(names):
        if names.count(name) > 1:
            raise CompressorError(f"recipe lists pass '{name}' {names.count(name)} times; give it once")
    for earlier, later in zip(passes, passes[1:]):
        if STAGES.index(later.stage) < STAGES.index(earlier.stage):
            raise CompressorError(f"recipe order: '{later.name}' ({later.stage}) must come before "
                                  f"'{earlier.name}' ({earlier.stage}); stages run {' → '.join(STAGES)}")
    for i, p in enumerate(passes):
        for other in p.after:
            if other not in names[:i]:
                raise CompressorError(f"recipe order: '{p.name}' needs '{other}' earlier in the recipe")
        for other in p.before:
            if other not in names[i + 1:]:
                raise CompressorError(f"recipe order: '{p.name}' needs '{other}' later in the recipe")
        missing = missing_results(p, {kind for q in passes[:i] for kind in q.produces})
        if missing:
            producers = " or ".join(sorted({kind.produced_by for kind in p.requires if kind.__name__ in missing}))
            raise CompressorError(f"recipe order: '{p.name}' needs '{producers}' earlier in the recipe "
                                  f"(it reads the {', '.join(missing)})")


# --- presets ------------------------------------------------------------------------------------

_W8A8 = [{"smoothquant": {}}, {"quantize": {"scheme": "int8"}}, {"fallback": {}}]

PRESETS: dict[str, list] = {
    # W8A8 with searched SmoothQuant, percentile clipping and at most two float layers.
    "int8": _W8A8,
    # The same without outlier handling: plain max calibration, every eligible layer quantized.
    "int8-minmax": [{"quantize": {"scheme": "int8", "observer": "max"}}],
    # Uniform 4-bit choices: every eligible layer in the named format, none left in float.
    "nvfp4": [{"quantize": {"scheme": "nvfp4", "rounding": "gptq"}}],
    # MXFP4 rotates each 32-value block with a Hadamard matrix before rounding, then GPTQ. Unrotated,
    # its power-of-two scales clip a block's largest values by up to 25% and GPTQ spreads those
    # errors onto the rest of the block (measured: worse than round-to-nearest); rotated, GPTQ is
    # the best setting (benchmarks/fp4_rotation_minilm.py). NVFP4 measured no gain from rotation.
    "mxfp4": [{"quantize": {"scheme": "mxfp4", "rounding": "gptq", "rotation": "hadamard"}}],
    "w4a16-nvfp4": [{"quantize": {"scheme": "w4a16-nvfp4", "rounding": "gptq"}}],
    "int4-awq": [{"awq": {}}, {"quantize": {"scheme": "w4a16-int4"}}],
    "fp8": [{"quantize": {"scheme": "fp8", "observer": "max"}}],
    # NVFP4 weights with static INT8 inputs.
    "w4a8": [{"quantize": {"scheme": "w4a8-nvfp4", "rounding": "gptq"}}],
    # Per layer NVFP4 weights with NVFP4 (W4A4) or INT8 (W4A8) inputs, or INT8 W8A8, chosen from measured
    # sensitivity within 5 bits per weight.
    "fp4-int8": [{"smoothquant": {}}, {"quantize": {"scheme": "nvfp4", "candidates": ["nvfp4", "w4a8-nvfp4", "int8"],
                                                    "max_bits": 5.0, "rounding": "gptq"}}],
    # Structured pruning (heads and FFN channels, 60% of the Linear MACs kept; --keep-macs sets it),
    # in float or followed by W8A8.
    "prune-structured": [{"prune_structured": {}}],
    "prune-structured-int8": [{"prune_structured": {}}, *_W8A8],
    # 2:4 sparsity by SparseGPT on every eligible Linear, in float or followed by a quantization that
    # keeps the zeros.
    "sparse24": [{"sparsify": {"target": "2:4"}}],
    # After 2:4, W8A8 calibrates its inputs with the MSE observer, which the W8A8 ablation measured
    # ahead of percentile clipping on held-out pairs (benchmarks/w8a8_minilm.py).
    "sparse24-int8": [{"sparsify": {"target": "2:4"}}, {"smoothquant": {}}, {"quantize": {"scheme": "int8", "observer": "mse"}},
                      {"fallback": {}}],
    "sparse24-w4a16-nvfp4": [{"sparsify": {"target": "2:4"}}, {"quantize": {"scheme": "w4a16-nvfp4", "rounding": "gptq"}}],
    # Vector quantization: Hessian-weighted k-means codebooks per layer, GPTVQ error feedback. vq3 (2-weight
    # sub-vectors, 64 entries) spends 3 bits per weight on indices alone, so with its codebooks and row scales it
    # is over 3.0 bits; the preset searches within 3.0 bits: vq2 (4-weight sub-vectors, 256 entries) for the
    # layers that pay least for it, and NVFP4 or INT8 weights for the few that VQ hurts most, which lowers the
    # embedding error on unseen sentences at the same bits (benchmarks/vq_minilm.py; see docs/formats.md).
    "vq3": [{"quantize": {"scheme": "vq3", "candidates": ["vq3", "vq2", "w4a16-nvfp4", "w8a16-int8"], "max_bits": 3.0,
                          "rounding": "gptq"}}],
    "vq2": [{"quantize": {"scheme": "vq2", "rounding": "gptq"}}],
    # Per layer VQ or a scalar format (INT3, NVFP4 or INT8 weights), the least output error within --max-bits.
    "vq-mix": [{"quantize": {"scheme": "vq2", "candidates": ["vq2", "vq3", "w3a16-int3", "w4a16-nvfp4", "w8a16-int8"],
                             "max_bits": 2.5, "rounding": "gptq"}}],
    # Token merging (ToMe) for ViTs and BERT-family encoders: the most tokens merged (2r in the first block
    # down to 0 in the last) that keeps the model output error on the calibration inputs within 1.5%.
    "tome": [{"tome": {}}],
    # W8A8, then merging searched against the original's outputs: the INT8 error counts in the 2.5%.
    "tome-int8": [*_W8A8, {"tome": {"max_error": 0.025}}],
    # DiT step caching (First Block Cache): the largest threshold whose calibration samples stay within
    # 27 dB PSNR of the same model's uncached samples; after W8A8 for the int8 variant.
    "step-cache": [{"step_cache": {}}],
    "step-cache-int8": [*_W8A8, {"step_cache": {}}],
}


# Calibration a preset needs beyond the defaults. SparseGPT removes half the weights and moves their
# work onto the rest by the inverse Hessian, which needs more tokens than rounding does: 2:4 loses less
# on held-out pairs calibrated on 1024 sentences than on 256
# (benchmarks/pruning_minilm.py --presets sparse24 [--calib-samples 256]; see docs/results.md).
PRESET_CALIBRATION: dict[str, dict] = {
    **{name: {"calib_samples": 1024} for name in ("sparse24", "sparse24-int8", "sparse24-w4a16-nvfp4")},
    # GPTVQ's error feedback leans on the Hessian the same way: 1024 sentences against 256 lower the
    # embedding error on sentences used for neither (benchmarks/vq_minilm.py [--calib-samples 256]).
    **{name: {"calib_samples": 1024} for name in ("vq3", "vq2", "vq-mix")},
    # ToMe's search measures the output error of each r on every calibration input, not on the first 64:
    # an error budget of 1.5% is too fine for 64 images to resolve.
    **{name: {"sensitivity_samples": 256} for name in ("tome", "tome-int8")},
}


def preset(name: str) -> Recipe:
    if name not in PRESETS:
        raise CompressorError(f"unknown recipe preset '{name}'; choose one of: {', '.join(PRESETS)} or a .yaml file")
    return Recipe.from_dict({"name": name, "passes": PRESETS[name], "calibration": PRESET_CALIBRATION.get(name, {})},
                            where=f"preset {name}")


# --- the flat recipe files of earlier versions -------------------------------------------------

FLAT_DEFAULTS = {
    "name": "int8", "scheme": "int8", "formats": {}, "candidates": [], "max_bits": 0.0, "rounding": "rtn",
    "gptq_damp": 0.01, "rotation": "none", "awq": False, "group_size": 128, "symmetric": True, "embeddings": "float",
    "observer": "percentile", "percentile": 99.99, "smoothquant": True, "alphas": [0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
    "search_tokens": 4096, "fallback_max_layers": 2, "fallback_min_gain": 0.05, "fallback_tolerance": 0.01,
    "sensitivity_samples": 64, "calib_samples": 256, "calib_images": 64, "sampling_steps": 25, "guidance_scale": 1.5,
    "batch_size": 32, "max_length": 128, "exclude": [], "seed": 0,
}
_QUANTIZE_FIELDS = ("scheme", "formats", "candidates", "max_bits", "rounding", "gptq_damp", "rotation", "group_size",
                    "symmetric", "observer", "percentile", "exclude")
_CALIBRATION_FIELDS = tuple(CalibrationSettings.model_fields)
# The passes a flat file can stand for.
_FLAT_PASSES = {"smoothquant", "awq", "quantize", "fallback", "embeddings"}


def _uses_smoothquant(schemes) -> bool:
    """SmoothQuant only ever changes W8A8 INT8 layers."""
    return any(SCHEMES[s].migration == "smoothquant" for s in schemes if s in SCHEMES)


def flat_fields(passes: list) -> dict:
    """The flat-file fields (overrides of FLAT_DEFAULTS) a preset's pass list stands for; the inverse of
    ``flat_recipe`` for presets made only of the passes a flat file can hold."""
    entries = {name: values for entry in passes for name, values in entry.items()}
    quantize = {k: v for k, v in entries.get("quantize", {}).items() if FLAT_DEFAULTS.get(k) != v}
    settings = {**FLAT_DEFAULTS, **entries.get("quantize", {})}
    w8a8 = _uses_smoothquant({settings["scheme"], *settings["candidates"], *settings["formats"].values()})
    # without W8A8 layers the flag changes nothing, and the flat default stays for files that add them
    fields = {**quantize, "smoothquant": "smoothquant" in entries or not w8a8, "awq": "awq" in entries}
    fallback = entries.get("fallback")
    fields["fallback_max_layers"] = FLAT_DEFAULTS["fallback_max_layers"] if fallback == {} else \
        (fallback or {}).get("max_layers", 0)
    return {k: v for k, v in fields.items() if FLAT_DEFAULTS.get(k) != v}


# Flat presets: a flat file's ``preset:`` names its base, one of the presets a flat file can express.
FLAT_PRESET_NAMES = ("int8", "int8-minmax", "nvfp4", "mxfp4", "w4a16-nvfp4", "int4-awq", "fp8", "w4a8", "fp4-int8")
FLAT_PRESETS = {name: flat_fields(PRESETS[name]) for name in FLAT_PRESET_NAMES}


def flat_recipe(fields: dict, where: str = "recipe") -> Recipe:
    """The pass list a flat recipe mapping (earlier versions' format) stands for."""
    unknown = set(fields) - set(FLAT_DEFAULTS)
    if unknown:
        raise CompressorError(f"{where}: unknown field '{sorted(unknown)[0]}'; known fields: {', '.join(sorted(FLAT_DEFAULTS))}")
    f = {**FLAT_DEFAULTS, **fields}
    for flag in ("smoothquant", "awq"):
        if not isinstance(f[flag], bool):
            raise CompressorError(f"{where}: field '{flag}': expected true or false, got {f[flag]!r}")
    passes: list = []
    if f["smoothquant"] and _uses_smoothquant({f["scheme"], *f["candidates"], *f["formats"].values()}):
        passes.append({"smoothquant": {"alphas": f["alphas"]}})
    if f["awq"]:
        passes.append({"awq": {}})
    passes.append({"quantize": {k: f[k] for k in _QUANTIZE_FIELDS}})
    if f["fallback_max_layers"]:
        passes.append({"fallback": {"max_layers": f["fallback_max_layers"], "min_gain": f["fallback_min_gain"],
                                    "tolerance": f["fallback_tolerance"]}})
    if not is_float_scheme(f["embeddings"]):
        passes.append({"embeddings": {"format": f["embeddings"], "group_size": f["group_size"], "symmetric": f["symmetric"]}})
    calibration = {k: f[k] for k in _CALIBRATION_FIELDS}
    try:
        return Recipe.from_dict({"name": f["name"], "calibration": calibration, "passes": passes}, where=where)
    except CompressorError as exc:  # name the field as the flat file wrote it
        message = str(exc)
        for pass_name, field_name, flat_name in _FLAT_RENAMES:
            message = message.replace(f"({pass_name}): field '{field_name}'", f"({pass_name}): field '{flat_name}'")
        raise CompressorError(message) from None


_FLAT_RENAMES = [("fallback", "max_layers", "fallback_max_layers"), ("fallback", "min_gain", "fallback_min_gain"),
                 ("fallback", "tolerance", "fallback_tolerance"), ("embeddings", "format", "embeddings")]


def load_recipe(spec: str) -> Recipe:
    """A preset name, or a YAML file: a ``passes:`` recipe, or a flat one whose optional ``preset`` key
    names the base it overrides."""
    if spec in PRESETS:
        return preset(spec)
    path = Path(spec)
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise CompressorError(f"unknown recipe preset '{spec}'; choose one of: {', '.join(PRESETS)} or a .yaml file")
    if not path.is_file():
        raise CompressorError(f"recipe file not found: {path}")
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise CompressorError(f"recipe file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise CompressorError(f"recipe file {path} must hold a mapping with a 'passes' list")
    data.setdefault("name", path.stem)
    if "passes" in data:
        return Recipe.from_dict(data, where=f"recipe file {path}")
    base = data.pop("preset", "int8")
    if base not in FLAT_PRESETS:
        raise CompressorError(f"recipe file {path}: unknown preset '{base}'; choose one of: {', '.join(FLAT_PRESETS)}")
    return flat_recipe({**FLAT_PRESETS[base], **data}, where=f"recipe file {path}")
