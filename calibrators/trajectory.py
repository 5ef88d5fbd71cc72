"""Timestep-aware calibration data for diffusion models: run the model's own sampling loop and keep the
denoiser inputs of every step, so activation statistics cover the whole trajectory (early, noisy steps
and late, detailed ones have very different ranges)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from calibrators.sampling import sample
from compressor.errors import CompressorError


@dataclass
class TrajectorySpec:
    """What to sample during calibration. As a JSON file:
    ``{"class_labels": [0, 1, 2, ...], "seed": 0, "steps": 25, "guidance": 2.0}``
    (``steps`` and ``guidance`` default to the recipe's ``sampling_steps`` and ``guidance_scale``)."""

    class_labels: list[int]
    seed: int = 0
    steps: int = 25
    guidance: float = 1.0

    def validate(self, num_classes: int | None) -> TrajectorySpec:
        if not self.class_labels or not all(isinstance(c, int) and not isinstance(c, bool) for c in self.class_labels):
            raise CompressorError(f"calibration field 'class_labels': expected a non-empty list of integers, "
                                  f"got {self.class_labels!r}")
        if num_classes is not None and not all(0 <= c < num_classes for c in self.class_labels):
            raise CompressorError(f"calibration field 'class_labels': labels must be in [0, {num_classes - 1}]")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise CompressorError(f"calibration field 'seed': expected an integer, got {self.seed!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise CompressorError(f"calibration field 'steps': expected an integer >= 1, got {self.steps!r}")
        if not isinstance(self.guidance, (int, float)) or self.guidance < 1:
            raise CompressorError(f"calibration field 'guidance': expected a number >= 1, got {self.guidance!r}")
        return self

    @classmethod
    def every_class(cls, num_classes: int, images: int, seed: int, steps: int, guidance: float) -> TrajectorySpec:
        """The default: classes in turn, so every class is seen about equally often."""
        return cls([i % num_classes for i in range(images)], seed, steps, float(guidance))

    @classmethod
    def from_file(cls, path: str | Path, steps: int, guidance: float) -> TrajectorySpec:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CompressorError(f"calibration data not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CompressorError(f"{path}: diffusion calibration data must be JSON "
                                  f'like {{"class_labels": [0, 1], "seed": 0}} ({exc})') from None
        if not isinstance(data, dict):
            raise CompressorError(f"{path}: expected a JSON object with 'class_labels' and 'seed'")
        unknown = set(data) - {"class_labels", "seed", "steps", "guidance"}
        if unknown:
            raise CompressorError(f"{path}: unknown calibration field '{min(unknown)}' "
                                  f"(known: class_labels, seed, steps, guidance)")
        if "class_labels" not in data:
            raise CompressorError(f"{path}: missing calibration field 'class_labels'")
        return cls(data["class_labels"], data.get("seed", 0), data.get("steps", steps), data.get("guidance", guidance))


def record_trajectory(adapter, model, spec: TrajectorySpec, conditioning: torch.Tensor,
                      null_conditioning: torch.Tensor | None) -> list[dict[str, torch.Tensor]]:
    """Sample with the float model and return the denoiser's inputs at every step, one batch per step
    (conditional and unconditional halves together when guidance is on)."""
    steps: list[dict[str, torch.Tensor]] = []
    run = adapter.denoiser(model)

    def recording(latents, timesteps, cond):
        steps.append({"hidden_states": latents.clone(), "timestep": timesteps.clone(), adapter.conditioning: cond})
        return run(latents, timesteps, cond)

    sample(recording, adapter.scheduler(), conditioning, shape=adapter.latent_shape(model), steps=spec.steps,
           guidance=spec.guidance, seed=spec.seed, null_conditioning=null_conditioning)
    return steps


@torch.no_grad()
def ranges_per_timestep(model, batches: list[dict], layers: list[str], adapter) -> dict:
    """The max |input| of each layer at each step of the trajectory: how much the ranges move with time."""
    from calibrators.collect import run_with_input_hooks

    per_step = {name: [0.0] * len(batches) for name in layers}
    step = -1

    def forward(model, batch):
        nonlocal step
        step += 1
        return adapter.forward(model, batch)

    def observe(name: str, x: torch.Tensor) -> None:
        # A layer may run twice in a step (DiT reuses block 0's embedder for the output): keep the larger.
        per_step[name][step] = max(per_step[name][step], float(x.abs().max()))

    run_with_input_hooks(model, batches, layers, observe, forward=forward, token_mask=adapter.token_mask,
                         desc="calibration: timesteps")
    return {"timesteps": [int(b["timestep"][0]) for b in batches], "input_amax": per_step}
