"""Framework adapters: where the quantizable blocks are, how to feed a model and how to read its output."""
from compressor.adapters.encoder import EncoderAdapter

ADAPTERS = (EncoderAdapter,)


def adapter_for(config):
    """The adapter for a transformers config, or None when no adapter knows the architecture."""
    for adapter in ADAPTERS:
        if adapter.supports(config):
            return adapter()
    return None
