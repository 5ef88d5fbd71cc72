"""Framework adapters: where the Linear layers, embeddings and blocks are, how to load, feed and score a
model, what it offers (``capabilities``), its default calibration and the layers it keeps in float. The
protocol is ``compressor.adapters.base.ModelAdapter``; ``ADAPTERS`` lists the families, and the first
whose ``for_directory`` recognises a checkpoint directory takes it.

One line per family below: importing its file registers it. Diffusers first: its config.json names a
class, which transformers cannot read.
"""
from compressor.adapters.base import ADAPTERS, Capabilities, ModelAdapter, adapter_for_directory  # noqa: F401
from compressor.adapters import diffusion, encoder, vit  # noqa: F401,E401
from compressor.adapters.diffusion import DiffusionTransformerAdapter  # noqa: F401,E402
from compressor.adapters.encoder import EncoderAdapter  # noqa: F401,E402
from compressor.adapters.vit import VisionTransformerAdapter  # noqa: F401,E402
