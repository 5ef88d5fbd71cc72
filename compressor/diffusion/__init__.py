"""Diffusion Transformers: sampling loops, calibration across timesteps and image-quality metrics."""
