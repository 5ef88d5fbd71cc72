"""Sparse layers' weights in a checkpoint: 2:4 as the kept values plus 2-bit positions per group of 4
(NVIDIA's compressed layout), unstructured as a bit mask plus the nonzeros where that is smaller.

It works on the state dict: a sparse layer's one-value-per-weight tensor (a float ``weight``, or an
INT8/FP8 layer's ``weight_values``) is replaced by its packed parts under ``<key>.sparse_*`` and the
layout is recorded, so loading expands it back bit for bit before the modules see it. Packed FP4/INT4
codes (two per byte) stay as they are: their pruned weights are zero codes.
"""
from __future__ import annotations

import torch

from compressor.numerics.sparsity import (bitmask_saves_space, is_nm_sparse, pack_24, pack_bitmask, unpack_24,
                                          unpack_bitmask)

WEIGHT_KEYS = ("weight", "weight_values")


def pack_sparse_state(state: dict[str, torch.Tensor], model, sparsity: dict | None) -> dict[str, dict]:
    """Pack, in ``state``, the weights of the layers ``sparsity`` lists; returns {key: layout} to record."""
    if not sparsity:
        return {}
    layouts = {}
    for name in sparsity["layers"]:
        module = model.get_submodule(name)
        shape = (module.out_features, module.in_features)
        for suffix in WEIGHT_KEYS:
            key = f"{name}.{suffix}"
            tensor = state.get(key)
            if tensor is None or tuple(tensor.shape) != shape:
                continue  # absent, or packed codes
            dtype = str(tensor.dtype).removeprefix("torch.")
            if tensor.dtype.is_floating_point and tensor.element_size() == 1:
                tensor = tensor.view(torch.uint8)  # FP8: packed as its bytes (+0.0 is byte 0)
            if sparsity["pattern"] == "2:4" and shape[1] % 8 == 0 and is_nm_sparse(tensor, 2, 4, axis=1):
                values, positions = pack_24(tensor)
                state.pop(key)
                state[f"{key}.sparse_values"], state[f"{key}.sparse_positions"] = values, positions
                layouts[key] = {"layout": "2:4", "shape": list(shape), "dtype": dtype}
            elif bitmask_saves_space(tensor):
                values, mask = pack_bitmask(tensor)
                state.pop(key)
                state[f"{key}.sparse_values"], state[f"{key}.sparse_bitmask"] = values, mask
                layouts[key] = {"layout": "bitmask", "shape": list(shape), "dtype": dtype}
    return layouts


def unpack_sparse_state(state: dict[str, torch.Tensor], layouts: dict[str, dict]) -> None:
    """Expand, in ``state``, every packed tensor back to its dense form."""
    for key, layout in layouts.items():
        values = state.pop(f"{key}.sparse_values")
        if layout["layout"] == "2:4":
            state[key] = unpack_24(values, state.pop(f"{key}.sparse_positions"), layout["shape"][1])
        elif layout["layout"] == "bitmask":
            state[key] = unpack_bitmask(values, state.pop(f"{key}.sparse_bitmask"), tuple(layout["shape"]))
        else:
            raise ValueError(f"unknown sparse layout {layout['layout']!r} for {key}")
        dtype = getattr(torch, layout.get("dtype", ""), None)
        if isinstance(dtype, torch.dtype) and dtype != state[key].dtype:
            state[key] = state[key].view(dtype)
