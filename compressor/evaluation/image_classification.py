"""Image classifiers (adapter kind "image-classification"): top-1 accuracy against the labels, and top-1
agreement with the original (how often a compressed model predicts the original's class), from the logits
each model computes on the same images.

The images are the model's ``pixel_values``: an ImageFolder directory or IDX data run through the original
checkpoint's image processor (IDX data: its last 1,000 images, the part calibration never reads). The logits
are the first output of each model's ONNX export. Latency is also given as images per second."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from compressor.errors import CompressorError
from compressor.evaluation.base import Candidate, Column, CompareOptions, TaskEvaluator

# (model, images) -> logits (N, classes)
LogitsFn = Callable[[Candidate, torch.Tensor], torch.Tensor]


def top1(logits) -> torch.Tensor:
    """Predicted class of each row of (N, classes) logits (the first one on ties)."""
    logits = torch.as_tensor(logits)
    if logits.dim() != 2 or len(logits) == 0:
        raise CompressorError(f"expected (N, classes) logits with N >= 1, got shape {tuple(logits.shape)}")
    return logits.argmax(1)


def classification_metrics(logits, labels=None, reference_logits=None) -> dict:
    """{"top1_accuracy": fraction of argmax predictions equal to ``labels``,
    "top1_agreement": fraction equal to the argmax of ``reference_logits``}, each only when given."""
    predicted = top1(logits)
    metrics = {}
    if labels is not None:
        labels = torch.as_tensor(labels)
        if labels.shape != predicted.shape:
            raise CompressorError(f"expected {len(predicted)} labels, got shape {tuple(labels.shape)}")
        metrics["top1_accuracy"] = (predicted == labels).double().mean().item()
    if reference_logits is not None:
        reference = top1(reference_logits)
        if reference.shape != predicted.shape:
            raise CompressorError(f"reference logits cover {len(reference)} images, these {len(predicted)}")
        metrics["top1_agreement"] = (predicted == reference).double().mean().item()
    return metrics


def onnx_logits(model: Candidate, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The first output of the ONNX export for the images, fed to its first input in batches."""
    name = model.session.get_inputs()[0].name
    out = [model.session.run(None, {name: images[start:start + batch_size].numpy().astype(np.float32)})[0]
           for start in range(0, len(images), batch_size)]
    return torch.from_numpy(np.concatenate(out))


class ImageClassification(TaskEvaluator):
    kind = "image-classification"

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None, logits: LogitsFn | None = None,
                 eval_data: str | Path | None = None, latency_batch: int = 32):
        if len(images) == 0:
            raise CompressorError("image classification needs at least one evaluation image")
        if labels is not None and len(labels) != len(images):
            raise CompressorError(f"expected one label per image, got {len(labels)} labels for {len(images)} images")
        self.images, self.labels = images, labels
        self.logits = logits or onnx_logits
        self.eval_data, self.latency_batch = eval_data, latency_batch
        self._reference = None  # the original's logits

    @classmethod
    def from_options(cls, options: CompareOptions) -> ImageClassification:
        from compressor.adapters import adapter_for_directory

        if options.eval_data is None:
            raise CompressorError("--eval-data is required for image classifiers (an ImageFolder directory or IDX "
                                  "images, with labels for accuracy)")
        if options.model_dir is None:
            raise CompressorError("image classification needs the original checkpoint for its image processor")
        adapter = adapter_for_directory(Path(options.model_dir))
        images, labels = adapter.images(adapter.load_tokenizer(), options.eval_data, "evaluation")
        return cls(images, labels, eval_data=options.eval_data, latency_batch=options.batch)

    def evaluate(self, model: Candidate) -> dict:
        logits = self.logits(model, self.images)
        if model.is_original:
            self._reference = logits
        return classification_metrics(logits, self.labels, self._reference)

    def latency_feeds(self, model: Candidate) -> dict:
        index = torch.arange(self.latency_batch) % len(self.images)
        return {model.session.get_inputs()[0].name: self.images[index].numpy().astype(np.float32)}

    def latency_setup(self) -> dict:
        return {"batch": self.latency_batch}

    def latency_metrics(self, seconds: float) -> dict:
        return {"images_per_second": self.latency_batch / seconds}

    def describe(self) -> dict:
        return {"eval_data": str(self.eval_data) if self.eval_data is not None else None,
                "task": "top-1 accuracy" if self.labels is not None else None, "eval_images": len(self.images)}

    @classmethod
    def columns(cls, report: dict) -> list[Column]:
        accuracy = [Column("top-1 %", "top1_accuracy", lambda v: f"{100 * v:.2f}")] if report["task"] else []
        return accuracy + [Column("agreement %", "top1_agreement", lambda v: f"{100 * v:.2f}"),
                           Column("images/s", "images_per_second", lambda v: f"{v:.0f}")]

    @classmethod
    def notes(cls, report: dict) -> list[str]:
        accuracy = "top-1 accuracy against the labels and " if report["task"] else ""
        return [f"Accuracy: {accuracy}top-1 agreement with the original's predictions on {report['eval_images']} "
                f"images" + (f" of `{report['eval_data']}`." if report["eval_data"] else ".")]
