"""Framework adapters: where the Linear layers, embeddings and blocks are, how to load, feed and score a
model, its default calibration and the layers it keeps in float. One registry serves transformers
and diffusers checkpoints; the first adapter that recognises a directory takes it.

The protocol (what passes, calibration, export and compare rely on):
  for_directory(path) -> adapter | None; load(); empty_model(); load_tokenizer()
  quantizable_layers(model); embedding_layers(model); blocks(model); keep_float (patterns)
  input_names(tokenizer); dummy_inputs(handle); dynamic_axes(names); output_names
  forward(model, batch); token_mask(batch); calibration(handle, data, settings); save_metadata(handle, dir)
A decoder (causal LM) adapter would implement the same methods; nothing else changes.
"""
from pathlib import Path

from compressor.adapters.diffusion import DiffusionTransformerAdapter
from compressor.adapters.encoder import EncoderAdapter
from compressor.adapters.vit import VisionTransformerAdapter
from compressor.errors import CompressorError

# Diffusers first: its config.json names a class, which transformers cannot read.
ADAPTERS = (DiffusionTransformerAdapter, EncoderAdapter, VisionTransformerAdapter)


def adapter_for_directory(path: Path):
    """The adapter for a checkpoint directory; a one-line error when none knows the architecture."""
    for adapter_class in ADAPTERS:
        adapter = adapter_class.for_directory(Path(path))
        if adapter is not None:
            return adapter
    from compressor.files import read_config

    raise CompressorError(
        f"model type {getattr(read_config(Path(path)), 'model_type', None)!r} in {path} has no adapter yet "
        "(supported: bert-family encoders, ViT image classifiers, and diffusers DiT/PixArt transformers)"
    )
