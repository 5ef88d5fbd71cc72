"""Scoring for `compressor compare`: one task evaluator per model kind (see base.TaskEvaluator), plus the
metrics and ONNX Runtime helpers they share.

    encoder               sentence_similarity.SentenceSimilarity   STS Spearman, embedding fidelity
    diffusion             generated_images.GeneratedImages         PSNR/SSIM to the original's samples, judge
    image-classification  image_classification.ImageClassification top-1 accuracy and agreement
"""
from __future__ import annotations

import importlib

from compressor.errors import CompressorError

# adapter kind -> (module, class)
EVALUATORS = {
    "encoder": ("compressor.evaluation.sentence_similarity", "SentenceSimilarity"),
    "diffusion": ("compressor.evaluation.generated_images", "GeneratedImages"),
    "image-classification": ("compressor.evaluation.image_classification", "ImageClassification"),
}


def evaluator_class(kind: str):
    if kind not in EVALUATORS:
        raise CompressorError(f"compare has no evaluator for {kind!r} models (known: {', '.join(EVALUATORS)})")
    module, name = EVALUATORS[kind]
    return getattr(importlib.import_module(module), name)


def evaluator_for(kind: str, options):
    """The evaluator for a model kind, set up from the compare options (reads and checks its data now)."""
    return evaluator_class(kind).from_options(options)
