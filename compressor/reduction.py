"""Token-reduction settings that travel with a compressed checkpoint: a ``tokens``-stage pass (ToMe, DiT step
caching, ...) records ``{"method": NAME, ...settings}`` as ``record["token_reduction"]`` and patches the model;
loading the checkpoint applies the same settings again through ``REDUCTIONS[NAME]``, so ``compress``, ``export``
and ``compare`` all see the reduced model."""
from __future__ import annotations

from compressor.registry import Registry

# method name → apply(handle, settings: dict) -> None (patches handle.model in place)
REDUCTIONS = Registry("token reduction method")


def apply_reduction(handle, settings: dict | None) -> None:
    """Patch ``handle``'s model with recorded settings (nothing when there are none)."""
    if settings:
        REDUCTIONS.lookup(settings["method"])(handle, settings)
