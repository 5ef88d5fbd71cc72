"""Recipes: small typed configs, named presets or YAML files, validated at the edge."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from compressor.errors import CompressorError

OBSERVER_NAMES = ("entropy", "max", "mse", "percentile")
ROUNDINGS = ("rtn", "gptq")
EMBEDDING_FORMATS = ("float", "int8", "int4", "nvfp4", "mxfp4")


def _scheme_names() -> tuple[str, ...]:
    from compressor.numerics.formats import SCHEMES

    return tuple(SCHEMES)


@dataclass
class Recipe:
    """Post-training quantization of the eligible Linear layers (and optionally the embeddings).

    ``scheme`` is what every layer becomes (see ``compressor.numerics.formats.SCHEMES``: ``int8``
    is W8A8, ``nvfp4`` W4A4, ``w4a16-nvfp4`` weight-only, ...). ``formats`` pins schemes per module
    with wildcard name patterns (first match wins). With ``candidates`` and ``max_bits`` set, each
    layer's scheme is searched instead: every candidate's effect on the model output is measured
    layer by layer, and the plan with the least total error whose effective bits per weight stay
    within ``max_bits`` is chosen.

    Static input scales come from calibration with ``observer``. ``smoothquant`` searches a
    migration strength per W8A8 layer over ``alphas``; ``awq`` searches an activation-aware weight
    scaling for the other quantized layers. ``rounding`` is round-to-nearest (``rtn``) or the
    error-compensating ``gptq``. The fallback keeps at most ``fallback_max_layers`` layers in
    float, only those whose float copy removes at least ``fallback_min_gain`` of the model's output
    error, and none when the relative output error is within ``fallback_tolerance``.

    Diffusion models calibrate on their own sampling trajectory: ``calib_images`` samples (every class
    in turn) over ``sampling_steps`` DDIM steps with classifier-free guidance ``guidance_scale``, unless
    the calibration file says otherwise.
    """

    name: str = "int8"
    scheme: str = "int8"
    formats: dict[str, str] = field(default_factory=dict)
    candidates: list[str] = field(default_factory=list)
    max_bits: float = 0.0  # 0: no budget (needed only with candidates)
    rounding: str = "rtn"
    gptq_damp: float = 0.01
    awq: bool = False
    group_size: int = 128
    symmetric: bool = True
    embeddings: str = "float"
    observer: str = "percentile"
    percentile: float = 99.99
    smoothquant: bool = True
    alphas: list[float] = field(default_factory=lambda: [0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    search_tokens: int = 4096
    fallback_max_layers: int = 2
    fallback_min_gain: float = 0.05
    fallback_tolerance: float = 0.01
    sensitivity_samples: int = 64
    calib_samples: int = 256
    calib_images: int = 64
    sampling_steps: int = 25
    guidance_scale: float = 1.5
    batch_size: int = 32
    max_length: int = 128
    exclude: list[str] = field(default_factory=list)  # wildcard module names kept in float
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = {"str": str, "float": (int, float), "int": int, "bool": bool}.get(str(f.type))
            if expected and (not isinstance(value, expected) or (expected is not bool and isinstance(value, bool))):
                raise CompressorError(f"recipe field '{f.name}': expected {f.type}, got {value!r}")
        if self.observer not in OBSERVER_NAMES:
            raise CompressorError(
                f"recipe field 'observer': unknown value {self.observer!r}; choose one of: {', '.join(OBSERVER_NAMES)}"
            )
        schemes = _scheme_names()
        if self.scheme not in schemes:
            raise CompressorError(f"recipe field 'scheme': unknown value {self.scheme!r}; choose one of: {', '.join(schemes)}")
        if not isinstance(self.formats, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.formats.items()
        ):
            raise CompressorError(f"recipe field 'formats': expected a mapping of module pattern: scheme, got {self.formats!r}")
        for pattern, scheme in self.formats.items():
            if scheme not in schemes:
                raise CompressorError(f"recipe field 'formats': pattern {pattern!r} names unknown scheme {scheme!r}")
        if not isinstance(self.candidates, list) or not all(c in schemes for c in self.candidates):
            raise CompressorError(f"recipe field 'candidates': expected a list of schemes ({', '.join(schemes)}), "
                                  f"got {self.candidates!r}")
        if self.candidates and self.max_bits <= 0:
            raise CompressorError("recipe field 'max_bits': a per-layer search over candidates needs a budget > 0")
        if self.max_bits < 0:
            raise CompressorError(f"recipe field 'max_bits': must be >= 0, got {self.max_bits}")
        if self.rounding not in ROUNDINGS:
            raise CompressorError(f"recipe field 'rounding': unknown value {self.rounding!r}; choose one of: {', '.join(ROUNDINGS)}")
        if not 0 < self.gptq_damp < 1:
            raise CompressorError(f"recipe field 'gptq_damp': {self.gptq_damp} is not in (0, 1)")
        if self.group_size < 2 or self.group_size % 2:
            raise CompressorError(f"recipe field 'group_size': must be an even number >= 2, got {self.group_size}")
        if self.embeddings not in EMBEDDING_FORMATS:
            raise CompressorError(f"recipe field 'embeddings': unknown value {self.embeddings!r}; "
                                  f"choose one of: {', '.join(EMBEDDING_FORMATS)}")
        if not 0 < self.percentile <= 100:
            raise CompressorError(f"recipe field 'percentile': {self.percentile} is not in (0, 100]")
        if not isinstance(self.alphas, list) or not all(
            isinstance(a, (int, float)) and not isinstance(a, bool) and 0 <= a <= 1 for a in self.alphas
        ):
            raise CompressorError(f"recipe field 'alphas': expected a list of numbers in [0, 1], got {self.alphas!r}")
        if not isinstance(self.exclude, list) or not all(isinstance(p, str) for p in self.exclude):
            raise CompressorError(f"recipe field 'exclude': expected a list of module-name patterns, got {self.exclude!r}")
        if self.guidance_scale < 1:
            raise CompressorError(f"recipe field 'guidance_scale': must be >= 1, got {self.guidance_scale}")
        for name in ("calib_samples", "calib_images", "sampling_steps", "batch_size", "max_length", "search_tokens", "sensitivity_samples"):
            if getattr(self, name) < 1:
                raise CompressorError(f"recipe field '{name}': must be at least 1, got {getattr(self, name)}")
        if self.fallback_max_layers < 0:
            raise CompressorError(f"recipe field 'fallback_max_layers': must be >= 0, got {self.fallback_max_layers}")
        if self.fallback_tolerance < 0:
            raise CompressorError(f"recipe field 'fallback_tolerance': must be >= 0, got {self.fallback_tolerance}")
        if not 0 <= self.fallback_min_gain <= 1:
            raise CompressorError(f"recipe field 'fallback_min_gain': {self.fallback_min_gain} is not in [0, 1]")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, base: "Recipe | None" = None) -> "Recipe":
        if not isinstance(data, dict):
            raise CompressorError("a recipe must be a mapping of field: value")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise CompressorError(f"unknown recipe field '{key}'; known fields: {', '.join(sorted(known))}")
        values = (base or cls()).to_dict()
        values.update(data)
        return cls(**values)


PRESETS: dict[str, dict] = {
    # W8A8 with searched SmoothQuant, percentile clipping and at most two float layers.
    "int8": {},
    # The same without outlier handling: plain max calibration, every eligible layer quantized.
    "int8-minmax": {"name": "int8-minmax", "observer": "max", "smoothquant": False, "fallback_max_layers": 0},
    # Uniform 4-bit choices: every eligible layer in the named format, none left in float.
    "nvfp4": {"name": "nvfp4", "scheme": "nvfp4", "rounding": "gptq", "fallback_max_layers": 0},
    # MXFP4 keeps round-to-nearest: its power-of-two scales clip a block's largest values by up
    # to 25%, and GPTQ spreads those clipping errors onto the rest of the block (measured: worse).
    "mxfp4": {"name": "mxfp4", "scheme": "mxfp4", "fallback_max_layers": 0},
    "w4a16-nvfp4": {"name": "w4a16-nvfp4", "scheme": "w4a16-nvfp4", "rounding": "gptq", "fallback_max_layers": 0},
    "int4-awq": {"name": "int4-awq", "scheme": "w4a16-int4", "awq": True, "fallback_max_layers": 0},
    "fp8": {"name": "fp8", "scheme": "fp8", "observer": "max", "fallback_max_layers": 0},
    # NVFP4 weights with static INT8 inputs.
    "w4a8": {"name": "w4a8", "scheme": "w4a8-nvfp4", "rounding": "gptq", "fallback_max_layers": 0},
    # Per layer NVFP4 weights with NVFP4 (W4A4) or INT8 (W4A8) inputs, or INT8 W8A8, chosen from measured
    # sensitivity within 5 bits per weight.
    "fp4-int8": {"name": "fp4-int8", "scheme": "nvfp4", "candidates": ["nvfp4", "w4a8-nvfp4", "int8"], "max_bits": 5.0,
                 "rounding": "gptq", "fallback_max_layers": 0},
}


def load_recipe(spec: str) -> Recipe:
    """A preset name, or a YAML file whose optional ``preset`` key names the base it overrides."""
    if spec in PRESETS:
        return Recipe.from_dict(PRESETS[spec])
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
        raise CompressorError(f"recipe file {path} must hold a mapping of field: value")
    preset = data.pop("preset", "int8")
    if preset not in PRESETS:
        raise CompressorError(f"recipe file {path}: unknown preset '{preset}'; choose one of: {', '.join(PRESETS)}")
    data.setdefault("name", path.stem)
    return Recipe.from_dict(data, base=Recipe.from_dict(PRESETS[preset]))
