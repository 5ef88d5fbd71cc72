"""Data that ships with the package: sentences for default calibration and the demo."""
from pathlib import Path


def default_calibration_file() -> Path:
    """600 template-generated English sentences (regenerate with examples/make_sentences.py)."""
    return Path(__file__).parent / "sentences.txt"
