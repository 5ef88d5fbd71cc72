"""The adapter protocol: what a model family offers, declared as data, and the methods passes, calibration,
export and compare call. Passes and exporters ask for a capability (``adapter.require("timesteps",
by="step-cache")``) and get one clear error when the model lacks it; they never probe module attributes.

Adding a model family is one adapter file (a ``ModelAdapter`` subclass decorated with
``@ADAPTERS.register(kind)``) plus its import line in ``compressor/adapters/__init__.py``.
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from compressor.errors import CompressorError
from compressor.registry import Registry

# kind → adapter class; ``adapter_for_directory`` asks them in registration order.
ADAPTERS = Registry("model adapter")


@dataclass(frozen=True)
class TokenLayout:
    """How a model's token sequence is laid out: ``protected`` leading tokens that carry the output (CLS),
    ``padded`` inputs (an attention mask marks real tokens), and ``patches`` (image or latent patches)."""

    protected: int = 0
    padded: bool = False
    patches: bool = False


@dataclass(frozen=True)
class AttentionLayout:
    heads: int
    kv_groups: int  # key/value heads (= heads without grouped-query attention)
    head_dim: int


@dataclass(frozen=True)
class TokenMerging:
    """Which ToMe patch rewrites the model's forward (compressor/tokens/: "vit", "bert", "dit") and where
    its modules are: ``encoder`` holds the embeddings and blocks ("" for the model itself), ``head`` reads
    the protected token (a classifier; None: the encoder's output is the model's), ``projection`` maps the
    embeddings to the hidden size (ELECTRA), ``patch_embeddings``: merging may start on the embeddings."""

    patch: str
    encoder: str = ""
    head: str | None = None
    projection: str | None = None
    patch_embeddings: bool = False


@dataclass(frozen=True)
class Capabilities:
    """What a model offers. A field that is None or False is a capability the model lacks."""

    tokens: TokenLayout | None = None
    attention: AttentionLayout | None = None
    prunable: bool = False  # attention heads and FFN channels in unit groups (prunable_groups)
    token_merging: TokenMerging | None = None
    pooling: bool = False  # pool(): one vector per input (a sentence embedding)
    timesteps: bool = False  # a diffusion denoiser: latents, timesteps, a sampling schedule
    guidance: bool = False  # classifier-free guidance (null_conditioning)
    class_conditional: bool = False  # conditioned on class labels
    generation: bool = False  # a causal LM that generates tokens
    extra: dict = field(default_factory=dict)


# What each capability means, for the error a pass gets on a model without it.
CAPABILITY_NAMES = {
    "tokens": "a token sequence",
    "attention": "attention heads",
    "prunable": "prunable attention heads and FFN channels",
    "token_merging": "a token-merging patch for its blocks",
    "pooling": "a pooled output",
    "timesteps": "a diffusion model with timesteps",
    "guidance": "classifier-free guidance",
    "class_conditional": "a class-conditional diffusion model",
    "generation": "a causal language model",
}


class ModelAdapter(ABC):
    """One model family: how to load, feed, score and save it, where its layers are, and what it offers."""

    registered_name: ClassVar[str]  # set by ADAPTERS.register: the family's kind
    description: ClassVar[str] = ""  # for the error on an unsupported directory
    output_names: ClassVar[tuple[str, ...]] = ()
    keep_float: tuple[str, ...] = ()  # module-name patterns kept in float by default

    @property
    def kind(self) -> str:
        return self.registered_name

    @classmethod
    @abstractmethod
    def for_directory(cls, path: Path) -> "ModelAdapter | None":
        """An adapter for a checkpoint directory of this family, or None."""

    @property
    @abstractmethod
    def capabilities(self) -> Capabilities: ...

    def require(self, capability: str, by: str):
        """The capability's value; a one-line error naming ``by`` when the model lacks it."""
        value = getattr(self.capabilities, capability)
        if not value:
            raise CompressorError(f"{by} needs {CAPABILITY_NAMES[capability]}; {self.kind} models have none")
        return value

    # --- loading and saving ------------------------------------------------------------------------
    @abstractmethod
    def load(self) -> nn.Module: ...

    @abstractmethod
    def empty_model(self) -> nn.Module:
        """The architecture with no weights loaded (a compressed checkpoint brings its own)."""

    def load_tokenizer(self):
        return None

    @abstractmethod
    def save_metadata(self, handle, directory: Path) -> None: ...

    # --- where things are --------------------------------------------------------------------------
    @abstractmethod
    def quantizable_layers(self, model: nn.Module) -> list[str]: ...

    def embedding_layers(self, model: nn.Module) -> list[str]:
        return []

    def blocks(self, model: nn.Module) -> list[str]:
        """The transformer blocks in order (module names)."""
        return []

    def prunable_groups(self, model: nn.Module) -> list:
        return []

    # --- inputs and outputs ------------------------------------------------------------------------
    @abstractmethod
    def input_names(self, tokenizer=None) -> tuple[str, ...]: ...

    @abstractmethod
    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def forward_tokens(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> int:
        """Tokens entering the first block."""
        raise CompressorError(f"{self.kind} models do not say how many tokens enter their blocks")

    @abstractmethod
    def token_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Which outputs are real (padding is not calibrated on or scored)."""

    @abstractmethod
    def dummy_inputs(self, handle) -> dict[str, torch.Tensor]: ...

    def dynamic_axes(self, input_names) -> dict[str, dict[int, str]]:
        return {name: {0: "batch"} for name in (*input_names, *self.output_names)}

    def export_attention(self, model: nn.Module):
        """A context in which the model's attention traces to plain MatMul/Softmax ops."""
        return contextlib.nullcontext()

    @abstractmethod
    def calibration(self, handle, calib_data, settings) -> tuple[list[dict], list[dict], dict]:
        """(calibration batches, the batches the output error is measured on, a record of the data)."""


def adapter_for_directory(path: Path) -> ModelAdapter:
    """The adapter for a checkpoint directory; a one-line error when none knows the architecture."""
    for adapter_class in ADAPTERS.values():
        adapter = adapter_class.for_directory(Path(path))
        if adapter is not None:
            return adapter
    from compressor.files import read_config

    supported = ", ".join(a.description for a in ADAPTERS.values() if a.description)
    raise CompressorError(
        f"model type {getattr(read_config(Path(path)), 'model_type', None)!r} in {path} has no adapter yet "
        f"(supported: {supported})"
    )
