"""A Diffusion Transformer exported as three ONNX graphs that a runtime calls separately, for step caching
outside PyTorch (the README shows the sampling loop):

    head.onnx   hidden_states, timestep, class_labels → first_block_output, first_block_residual
    rest.onnx   first_block_output, timestep, class_labels → blocks_residual (what blocks 2..N add)
    final.onnx  hidden (the block stack's output), timestep, class_labels → sample

At each step the runtime runs ``head``; when ``first_block_residual`` changed by more than the threshold
since the last step that ran ``rest`` (relative mean absolute difference, as First Block Cache decides), it
runs ``rest`` and keeps its ``blocks_residual``; otherwise it reuses the kept one. Then
``final(first_block_output + blocks_residual)``. Each graph is lowered for its target like ``export_onnx``.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from compressor.diffusion.step_cache import apply_step_cache, remove_step_cache, step_cache_of
from compressor.model import ModelHandle
from compressor.atomic import atomic_directory

PARTS = {
    "head": (("hidden_states", "timestep", "class_labels"), ("first_block_output", "first_block_residual")),
    "rest": (("first_block_output", "timestep", "class_labels"), ("blocks_residual",)),
    "final": (("hidden", "timestep", "class_labels"), ("sample",)),
}


def _block(block, hidden, batch):
    return block(hidden, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                 timestep=batch["timestep"], class_labels=batch["class_labels"])


def run_part(model, part: str, batch: dict[str, torch.Tensor]):
    """One part of the DiT forward, on the named inputs of ``PARTS[part]``."""
    blocks = model.transformer_blocks
    if part == "head":
        x = model.pos_embed(batch["hidden_states"])
        out = _block(blocks[0], x, batch)
        return out, out - x
    if part == "rest":
        hidden = batch["first_block_output"]
        for block in blocks[1:]:
            hidden = _block(block, hidden, batch)
        return hidden - batch["first_block_output"]
    hidden = batch["hidden"]  # the output layer of DiTTransformer2DModel, then unpatchify
    conditioning = blocks[0].norm1.emb(batch["timestep"], batch["class_labels"], hidden_dtype=hidden.dtype)
    shift, scale = model.proj_out_1(F.silu(conditioning)).chunk(2, dim=1)
    hidden = model.proj_out_2(model.norm_out(hidden) * (1 + scale[:, None]) + shift[:, None])
    side, patch, channels = int(hidden.shape[1] ** 0.5), model.patch_size, model.out_channels
    hidden = hidden.reshape(-1, side, side, patch, patch, channels)
    return torch.einsum("nhwpqc->nchpwq", hidden).reshape(-1, channels, side * patch, side * patch)


class _PartAdapter:
    """The DiT adapter seen through one part: its inputs, outputs and forward (what export_onnx asks for)."""

    def __init__(self, part: str, dummies: dict[str, torch.Tensor], adapter):
        self.part, self.dummies, self.adapter = part, dummies, adapter
        self.inputs, self.output_names = PARTS[part]

    def export_attention(self, model):
        return self.adapter.export_attention(model)

    def input_names(self, tokenizer=None) -> tuple[str, ...]:
        return self.inputs

    def dummy_inputs(self, handle) -> dict[str, torch.Tensor]:
        return {name: self.dummies[name] for name in self.inputs}

    def dynamic_axes(self, input_names) -> dict[str, dict[int, str]]:
        return {name: {0: "batch"} for name in (*input_names, *self.output_names)}

    def forward(self, model, batch):
        return run_part(model, self.part, batch)


def export_dit_split(handle: ModelHandle, directory: str | Path, target: str = "onnxruntime",
                     overwrite: bool = False) -> dict[str, Path]:
    """Write head.onnx, rest.onnx and final.onnx into ``directory`` (atomically); returns their paths."""
    from exporters.onnx_export import export_onnx

    handle.adapter.require("class_conditional", by="a split export (head, rest, final)")
    model = handle.model
    cache = step_cache_of(model)
    if cache is not None:
        remove_step_cache(model)  # the parts call the blocks directly, without the cache's hooks
    try:
        base = handle.adapter.dummy_inputs(handle)
        dummies = dict(base)
        with torch.no_grad():
            dummies["first_block_output"] = run_part(model, "head", base)[0]
            dummies["hidden"] = dummies["first_block_output"] + run_part(model, "rest", dummies)
        with atomic_directory(directory, overwrite) as scratch:
            for part in PARTS:
                view = ModelHandle(model, None, _PartAdapter(part, dummies, handle.adapter), handle.source, handle.info)
                export_onnx(view, scratch / f"{part}.onnx", target)
    finally:
        if cache is not None:
            apply_step_cache(model, cache.blocks, cache.threshold, cache.calibration)
    return {part: Path(directory) / f"{part}.onnx" for part in PARTS}
