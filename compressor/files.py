"""Checks of checkpoint files shared by loading and the adapters: a config transformers can read, a
weight file that is whole."""
from __future__ import annotations

import json
from pathlib import Path

from compressor.errors import CompressorError


def raw_config(path: Path) -> dict:
    """config.json as written (no architecture built), so an adapter can tell whether a checkpoint is its
    family before any library has to understand the file."""
    try:
        with open(path / "config.json", encoding="utf-8") as f:
            config = json.load(f)
    except json.JSONDecodeError as exc:
        raise CompressorError(f"{path / 'config.json'} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise CompressorError(f"cannot read {path / 'config.json'}: {first_line(exc)}") from None
    return config if isinstance(config, dict) else {}


def read_config(path: Path):
    from transformers import AutoConfig

    try:
        with open(path / "config.json", encoding="utf-8") as f:
            json.load(f)
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except json.JSONDecodeError as exc:
        raise CompressorError(f"{path / 'config.json'} is not valid JSON: {exc}") from None
    except (ValueError, KeyError, OSError) as exc:
        raise CompressorError(f"transformers cannot build the architecture in {path}: {first_line(exc)}") from None


def check_checkpoint_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise CompressorError(f"checkpoint not found: {path}")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise CompressorError(f"{path} is not a checkpoint directory (no config.json)")
    return path


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def check_safetensors(path: Path) -> None:
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
        raise CompressorError(f"weight file {path} is truncated or corrupt: {first_line(exc)}") from None


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise CompressorError(f"cannot load the tokenizer in {path}: {first_line(exc)}") from None
