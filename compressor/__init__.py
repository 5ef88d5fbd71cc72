"""Post-training compression of transformer checkpoints.

    from compressor import load_model, compress, load_compressed, export_onnx, Recipe
"""
from compressor.errors import CompressorError
from compressor.model import ModelHandle, default_model_dir, load_model
from compressor.recipe import PRESETS, Recipe, load_recipe


def compress(*args, **kwargs):
    from compressor.pipeline import compress as run

    return run(*args, **kwargs)


def load_compressed(path):
    from compressor.checkpoint import load_compressed as run

    return run(path)


def export_onnx(*args, **kwargs):
    from exporters.onnx_export import export_onnx as run

    return run(*args, **kwargs)


__all__ = [
    "CompressorError", "ModelHandle", "PRESETS", "Recipe", "compress", "default_model_dir",
    "export_onnx", "load_compressed", "load_model", "load_recipe",
]
