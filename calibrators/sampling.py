"""The sampling loop with classifier-free guidance, shared by calibration, evaluation and training."""
from __future__ import annotations

from collections.abc import Callable

import torch

# denoiser(latents, timesteps[B], conditioning[B, ...]) -> model output
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def sample(denoiser: Denoiser, scheduler, conditioning: torch.Tensor, *, shape: tuple[int, ...], steps: int,
           guidance: float, seed: int, null_conditioning: torch.Tensor | None = None) -> torch.Tensor:
    """One sample per row of `conditioning` (class labels or text embeddings). The noise comes from
    `seed` alone, so two models given the same arguments start from identical latents and their
    samples can be compared pixel by pixel. Guidance other than 1 needs `null_conditioning`
    (the null class, or the empty prompt's embedding), run in the same batch."""
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn((len(conditioning), *shape), generator=generator)
    scheduler.set_timesteps(steps)
    guided = guidance != 1.0
    if guided and null_conditioning is None:
        raise ValueError("classifier-free guidance needs null_conditioning")
    for t in scheduler.timesteps:
        if guided:
            out = denoiser(torch.cat([latents, latents]), t.expand(2 * len(latents)),
                           torch.cat([conditioning, null_conditioning]))
            cond, uncond = out.chunk(2)
            out = uncond + guidance * (cond - uncond)
        else:
            out = denoiser(latents, t.expand(len(latents)), conditioning)
        latents = scheduler.step(out, t, latents).prev_sample
    return latents.clamp(-1.0, 1.0)
