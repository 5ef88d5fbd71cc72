"""Diffusion Transformers saved by diffusers (DiT, PixArt): loading, denoiser inputs, and which modules
stay in float by default.

The adaLN modulation, the timestep/label/caption embedders and the final projection condition every
token of every step; quantizing them costs far more quality than they save in size (PTQ4DiT, ViDiT-Q,
Q-DiT all keep them apart), so only the attention and MLP Linears of the blocks are quantized unless a
recipe pins others by name.
"""
from __future__ import annotations

import functools
import json
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from compressor.adapters.base import ADAPTERS, AttentionLayout, Capabilities, ModelAdapter, TokenLayout, TokenMerging
from compressor.errors import CompressorError
from compressor.files import check_safetensors

WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
SCHEDULER_FILE = "scheduler_config.json"

# class name → (conditioning input, module-name patterns kept in float by default)
ARCHITECTURES = {
    "DiTTransformer2DModel": ("class_labels", ("*.norm1.emb.*", "*.norm1.linear", "proj_out_1", "proj_out_2")),
    "PixArtTransformer2DModel": (
        "encoder_hidden_states", ("adaln_single.*", "caption_projection.*", "proj_out", "*.norm*")),
}


def diffusers_class_name(path: Path) -> str | None:
    """The diffusers class a config.json names, or None for a transformers checkpoint."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return config.get("_class_name") if isinstance(config, dict) else None


def _diffusers_class(name: str):
    try:
        import diffusers
    except ImportError:
        raise CompressorError("loading diffusers checkpoints needs the diffusers package (pip install diffusers)") from None
    if name not in ARCHITECTURES:
        raise CompressorError(f"diffusers class {name!r} has no adapter yet (supported: {', '.join(ARCHITECTURES)})")
    return getattr(diffusers, name)


@ADAPTERS.register("diffusion")
class DiffusionTransformerAdapter(ModelAdapter):
    description = "diffusers DiT/PixArt transformers"
    output_names = ("sample",)

    def __init__(self, class_name: str, directory: Path):
        self.class_name, self.directory = class_name, Path(directory)
        self.cls = _diffusers_class(class_name)  # first: it names the unsupported class
        self.conditioning, self.keep_float = ARCHITECTURES[class_name]

    @classmethod
    def for_directory(cls, path: Path) -> "DiffusionTransformerAdapter | None":
        class_name = diffusers_class_name(path)
        return None if class_name is None else cls(class_name, path)

    @functools.cached_property
    def capabilities(self) -> Capabilities:
        config = self.cls.load_config(self.directory)
        heads, head_dim = config.get("num_attention_heads", 1), config.get("attention_head_dim", 1)
        return Capabilities(
            tokens=TokenLayout(patches=True),
            attention=AttentionLayout(heads, heads, head_dim),
            prunable=True, token_merging=TokenMerging("dit"), timesteps=True, guidance=True,
            class_conditional=self.conditioning == "class_labels",
        )

    def load_tokenizer(self):
        return None  # conditioning arrives as labels or embeddings

    def blocks(self, model: nn.Module) -> list[str]:
        """The transformer blocks in order (module names)."""
        return [f"transformer_blocks.{i}" for i in range(len(model.transformer_blocks))]

    # --- loading and saving -------------------------------------------------------------------
    def prunable_groups(self, model: nn.Module) -> list:
        """Each block's self-attention heads and MLP channels (see compressor.structure)."""
        from compressor.structure import UnitGroup

        groups = []
        for block in self.blocks(model):
            attention = model.get_submodule(f"{block}.attn1")
            size = attention.inner_dim // attention.heads
            groups.append(UnitGroup(f"{block}.attn1", "heads", tuple(f"{block}.attn1.{p}" for p in ("to_q", "to_k", "to_v")),
                                    f"{block}.attn1.to_out.0", size, f"{block}.attn1",
                                    (("heads", 1), ("inner_dim", size), ("inner_kv_dim", size))))
            groups.append(UnitGroup(f"{block}.ff", "channels", (f"{block}.ff.net.0.proj",), f"{block}.ff.net.2", 1))
        return groups

    def load(self) -> nn.Module:
        path = self.directory
        if not any((path / name).is_file() for name in WEIGHTS):
            raise CompressorError(f"{path} has no weight file (looked for {', '.join(WEIGHTS)})")
        if (path / WEIGHTS[0]).is_file():
            check_safetensors(path / WEIGHTS[0])  # a truncated file fails here, not mid-run
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = self.cls.from_pretrained(path, local_files_only=True, low_cpu_mem_usage=False)
        except Exception as exc:  # diffusers raises many error types for a bad directory
            raise CompressorError(f"cannot load {self.class_name} from {path}: {str(exc).splitlines()[0]}") from None
        return model.eval()

    def empty_model(self) -> nn.Module:
        config = self.cls.load_config(self.directory)
        return self.cls.from_config(config).eval()

    def save_metadata(self, handle, directory: Path) -> None:
        handle.model.save_config(directory)
        scheduler = self.scheduler_file()
        if scheduler is not None:
            shutil.copyfile(scheduler, directory / SCHEDULER_FILE)

    def scheduler_file(self) -> Path | None:
        """The scheduler the model was trained for: beside config.json, or in a pipeline's scheduler/."""
        for candidate in (self.directory / SCHEDULER_FILE, self.directory.parent / "scheduler" / SCHEDULER_FILE):
            if candidate.is_file():
                return candidate
        return None

    def scheduler(self):
        """A DDIM sampler for the model's noise schedule (a default DDPM schedule when none is saved)."""
        from diffusers import DDIMScheduler

        file = self.scheduler_file()
        if file is None:
            return DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")
        return DDIMScheduler.from_config(DDIMScheduler.load_config(file.parent, config_name=file.name))

    # --- the denoiser ---------------------------------------------------------------------------
    def input_names(self, tokenizer=None) -> tuple[str, ...]:
        return ("hidden_states", "timestep", self.conditioning)

    def latent_shape(self, model: nn.Module) -> tuple[int, int, int]:
        size = model.config.sample_size
        return (model.config.in_channels, size, size)

    def num_classes(self, model: nn.Module) -> int | None:
        return model.config.get("num_embeds_ada_norm") if self.conditioning == "class_labels" else None

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        extra = {"added_cond_kwargs": {"resolution": None, "aspect_ratio": None}} if self.conditioning != "class_labels" else {}
        return model(**batch, **extra, return_dict=False)[0]

    def forward_tokens(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> int:
        """Latent patches entering the first block."""
        height, width = batch["hidden_states"].shape[-2:]
        patch = model.config.patch_size
        return (height // patch) * (width // patch)

    def token_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Every latent patch is real: one flag per sample."""
        return torch.ones(len(batch["hidden_states"]), dtype=torch.bool)

    def quantizable_layers(self, model: nn.Module) -> list[str]:
        return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]

    def embedding_layers(self, model: nn.Module) -> list[str]:
        return []  # the label table is tiny and conditions everything

    def dummy_inputs(self, handle, batch: int = 2) -> dict[str, torch.Tensor]:
        model = handle.model
        generator = torch.Generator().manual_seed(0)
        inputs = {"hidden_states": torch.randn((batch, *self.latent_shape(model)), generator=generator),
                  "timestep": torch.linspace(10, 900, batch).round().long()}
        if self.conditioning == "class_labels":
            inputs["class_labels"] = torch.arange(batch) % self.num_classes(model)
        else:
            inputs["encoder_hidden_states"] = torch.randn(
                (batch, 8, model.config.caption_channels), generator=generator)
        return inputs

    def dynamic_axes(self, input_names) -> dict[str, dict[int, str]]:
        axes = {name: {0: "batch"} for name in (*input_names, *self.output_names)}
        if "encoder_hidden_states" in axes:
            axes["encoder_hidden_states"][1] = "sequence"
        return axes

    def calibration(self, handle, calib_data, recipe) -> tuple[list[dict], list[dict], dict]:
        return calibration_trajectory(self, handle, calib_data, recipe)

    def null_conditioning(self, model: nn.Module, conditioning: torch.Tensor) -> torch.Tensor:
        """What classifier-free guidance's unconditional half is fed: diffusers' DiT keeps the label row
        after the last class for "no class"; for captions, zero embeddings stand in for the empty prompt."""
        if self.conditioning == "class_labels":
            return torch.full_like(conditioning, self.num_classes(model))
        return torch.zeros_like(conditioning)

    def denoiser(self, model: nn.Module):
        """The model as the sampling loop calls it: (latents, timesteps, conditioning) → output."""
        def run(latents, timesteps, conditioning):
            out = self.forward(model, {"hidden_states": latents, "timestep": timesteps, self.conditioning: conditioning})
            return split_prediction(out, latents)

        return run


def split_prediction(output: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """Models that also predict a variance return twice the latent channels; sampling uses the first half."""
    return output[:, : latents.shape[1]] if output.shape[1] != latents.shape[1] else output


def calibration_trajectory(self, handle, calib_data, recipe) -> tuple[list[dict], list[dict], dict]:
    """Denoiser inputs along the float model's own sampling trajectory: one batch per step."""
    from calibrators.trajectory import TrajectorySpec, ranges_per_timestep, record_trajectory

    model, classes = handle.model, self.num_classes(handle.model)
    if calib_data is not None:
        spec = TrajectorySpec.from_file(calib_data, recipe.sampling_steps, recipe.guidance_scale)
    elif classes is not None:
        spec = TrajectorySpec.every_class(classes, recipe.calib_images, recipe.seed, recipe.sampling_steps,
                                          recipe.guidance_scale)
    else:  # text-conditioned: no prompts to encode offline, so Gaussian stand-ins for caption embeddings
        spec = TrajectorySpec(list(range(recipe.calib_images)), recipe.seed, recipe.sampling_steps, 1.0)
    spec.validate(classes if self.conditioning == "class_labels" else None)
    if self.conditioning == "class_labels":
        conditioning = torch.tensor(spec.class_labels)
        what = f"classes {_label_summary(spec.class_labels)}"
    else:
        generator = torch.Generator().manual_seed(spec.seed)
        conditioning = torch.randn((len(spec.class_labels), 8, model.config.caption_channels), generator=generator)
        what = "Gaussian caption embeddings"
    null = self.null_conditioning(model, conditioning) if spec.guidance != 1 else None
    batches = record_trajectory(self, model, spec, conditioning, null)
    source = str(calib_data) if calib_data is not None else "the default trajectory"
    info = {"data": source, "default": calib_data is None, "samples": len(spec.class_labels), "steps": spec.steps,
            "guidance": spec.guidance, "seed": spec.seed,
            "description": f"{len(spec.class_labels)} images ({what}, seed {spec.seed}) sampled over {spec.steps} "
                           f"DDIM steps with guidance {spec.guidance:g}, from {source}"}
    # How far each layer's input range moves along the trajectory (scales are chosen over all of it).
    info["timestep_ranges"] = ranges_per_timestep(model, batches, self.quantizable_layers(model), self)
    # The output error is measured on a spread of steps, early to late.
    stride = max(1, len(batches) // 8)
    return batches, batches[::stride], info


def _label_summary(labels: list[int]) -> str:
    counts = {c: labels.count(c) for c in sorted(set(labels))}
    return ", ".join(f"{c}×{n}" for c, n in counts.items()) if len(counts) <= 12 else f"{len(counts)} classes"

