"""The compare harness's task evaluators on small inputs with hand-computed answers: image classification
(top-1 accuracy and agreement from logits), reading labelled or plain eval text, IDX image files, and the
report table a kind's columns make."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from calibrators.images import find_idx_files, load_idx_images, read_idx
from conftest import write_idx
from compressor.compare import markdown_table, report_files
from compressor.errors import CompressorError
from compressor.evaluation import evaluator_class
from compressor.evaluation.base import Candidate, CompareOptions
from compressor.evaluation.generated_images import GeneratedImages
from compressor.evaluation.image_classification import ImageClassification, classification_metrics, onnx_logits, top1
from compressor.evaluation.sentence_similarity import SentenceSimilarity, read_eval_data

# --- image classification -------------------------------------------------------------------------------------

LOGITS = torch.tensor([[2.0, 1.0, 0.0],    # class 0
                       [0.1, 0.3, 0.2],    # class 1
                       [5.0, 5.0, 1.0],    # tie between 0 and 1: the first, 0
                       [-1.0, -2.0, -0.5]])  # class 2
LABELS = torch.tensor([0, 2, 1, 2])       # right, wrong, wrong, right: 2 of 4
REFERENCE = torch.tensor([[0.0, 1.0, 0.0],  # class 1: disagrees with row 0
                          [0.0, 1.0, 0.0],  # class 1: agrees
                          [1.0, 0.0, 0.0],  # class 0: agrees
                          [0.0, 0.0, 1.0]])  # class 2: agrees -> 3 of 4


def test_top1_takes_the_first_maximum():
    assert top1(LOGITS).tolist() == [0, 1, 0, 2]
    assert top1(np.array([[1.0, 3.0]])).tolist() == [1]
    with pytest.raises(CompressorError, match="logits"):
        top1(torch.zeros(3))


def test_classification_metrics_by_hand():
    assert classification_metrics(LOGITS, LABELS, REFERENCE) == {"top1_accuracy": 0.5, "top1_agreement": 0.75}
    assert classification_metrics(LOGITS, LABELS) == {"top1_accuracy": 0.5}
    assert classification_metrics(LOGITS, reference_logits=LOGITS * 3 + 1) == {"top1_agreement": 1.0}
    with pytest.raises(CompressorError, match="labels"):
        classification_metrics(LOGITS, LABELS[:3])
    with pytest.raises(CompressorError, match="reference"):
        classification_metrics(LOGITS, reference_logits=REFERENCE[:2])


def test_image_classification_evaluator_compares_each_model_with_the_original():
    images = torch.zeros(4, 1, 2, 2)
    outputs = {"original": REFERENCE, "small": LOGITS}
    seen = []

    def logits(model, batch):
        seen.append((model.name, batch))
        return outputs[model.name]

    evaluator = ImageClassification(images, LABELS, logits=logits)
    # the original: accuracy of REFERENCE's predictions (1, 1, 0, 2) against (0, 2, 1, 2) is 1 of 4
    assert evaluator.evaluate(Candidate("original", None, None)) == {"top1_accuracy": 0.25, "top1_agreement": 1.0}
    assert evaluator.evaluate(Candidate("small", None, None)) == {"top1_accuracy": 0.5, "top1_agreement": 0.75}
    assert [name for name, _ in seen] == ["original", "small"] and all(b is images for _, b in seen)
    unlabelled = ImageClassification(images, logits=logits)
    unlabelled.evaluate(Candidate("original", None, None))
    assert unlabelled.evaluate(Candidate("small", None, None)) == {"top1_agreement": 0.75}


class FakeSession:
    """Records the batches an ONNX Runtime session is fed and returns their pixel sums as 2 logits."""

    def __init__(self):
        self.fed = []

    def get_inputs(self):
        return [SimpleNamespace(name="pixel_values")]

    def run(self, outputs, feeds):
        (name, batch), = feeds.items()
        self.fed.append((name, batch.dtype, len(batch)))
        total = batch.reshape(len(batch), -1).sum(1)
        return [np.stack([total, -total], axis=1)]


def test_default_logits_come_from_the_onnx_session_in_batches():
    images = torch.arange(5, dtype=torch.float64).view(5, 1, 1, 1) - 2  # pixel sums -2 .. 2
    session = FakeSession()
    logits = onnx_logits(Candidate("original", None, session), images, batch_size=2)
    assert session.fed == [("pixel_values", np.float32, 2), ("pixel_values", np.float32, 2), ("pixel_values", np.float32, 1)]
    assert logits.tolist() == [[-2, 2], [-1, 1], [0, 0], [1, -1], [2, -2]]
    evaluator = ImageClassification(images.float(), torch.tensor([1, 1, 0, 0, 0]), latency_batch=7)
    # predictions 1, 1, 0 (tie), 0, 0: all right
    assert evaluator.evaluate(Candidate("original", None, FakeSession())) == {"top1_accuracy": 1.0,
                                                                              "top1_agreement": 1.0}
    feeds = evaluator.latency_feeds(Candidate("original", None, session))
    assert list(feeds) == ["pixel_values"] and feeds["pixel_values"].shape == (7, 1, 1, 1)
    assert feeds["pixel_values"][:, 0, 0, 0].tolist() == [-2, -1, 0, 1, 2, -2, -1]  # images in turn


def test_image_classification_report_columns():
    report = {"kind": "image-classification", "eval_data": "digits", "task": "top-1 accuracy", "eval_images": 4,
              "latency_setup": {"runtime": "onnxruntime CPUExecutionProvider", "batch": 8, "threads": 2,
                                "repeats": 3, "statistic": "median"},
              "models": [{"model": "original", "recipe": "fp32", "bits_per_weight": 32.0, "top1_accuracy": 0.25,
                          "top1_agreement": 1.0, "images_per_second": 4000.0, "latency_ms": 2.0, "latency_ratio": 1.0,
                          "weights_bytes": 4e6, "size_ratio": 1.0},
                         {"model": "int8", "recipe": "int8", "bits_per_weight": 8.0625, "top1_accuracy": 0.5,
                          "top1_agreement": 0.75, "images_per_second": 8000.0, "latency_ms": 1.0, "latency_ratio": 0.5,
                          "weights_bytes": 1e6, "size_ratio": 0.25}]}
    table = markdown_table(report).splitlines()
    assert table[0] == ("| model | recipe | bits/weight | MACs × | sparsity | top-1 % | agreement % | images/s | "
                        "latency ms | latency × | weights MB | size × |")
    assert table[2] == "| original | fp32 | 32.00 | 1.00 | – | 25.00 | 100.00 | 4000 | 2.00 | 1.00 | 4.00 | 1.00 |"
    assert table[3] == "| int8 | int8 | 8.06 | 1.00 | – | 50.00 | 75.00 | 8000 | 1.00 | 0.50 | 1.00 | 0.25 |"
    assert "batch 8, 2 threads" in markdown_table(report)
    assert report_files(report) == ["report.json", "report.md"]


def test_image_classification_from_options_reads_the_evaluation_part(tiny_vit):
    model_dir, data = tiny_vit
    evaluator = ImageClassification.from_options(CompareOptions(eval_data=data, model_dir=model_dir, batch=4))
    raw = read_idx(data / "images-idx3-ubyte")[-1000:].astype(np.float32)
    np.testing.assert_allclose(evaluator.images[:, 0].numpy(), raw / 127.5 - 1, atol=1e-6)
    assert evaluator.labels.tolist() == read_idx(data / "labels-idx1-ubyte")[-1000:].tolist()
    assert evaluator.latency_metrics(0.5) == {"images_per_second": 8.0}
    with pytest.raises(CompressorError, match="--eval-data is required"):
        ImageClassification.from_options(CompareOptions())


# --- the evaluator registry -------------------------------------------------------------------------------

def test_each_kind_has_its_evaluator():
    assert evaluator_class("encoder") is SentenceSimilarity
    assert evaluator_class("diffusion") is GeneratedImages
    assert evaluator_class("image-classification") is ImageClassification
    with pytest.raises(CompressorError, match="no evaluator for 'speech'"):
        evaluator_class("speech")


# --- eval text: labelled or plain, never silently both -------------------------------------------------------

def test_labelled_eval_data(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("a cat\ta dog\t3.5\n\nthe sun\tthe moon\t1\n")
    pairs, sentences = read_eval_data(path)
    assert (pairs.first, pairs.second, pairs.scores) == (["a cat", "the sun"], ["a dog", "the moon"], [3.5, 1.0])
    assert sentences == ["a cat", "the sun", "a dog", "the moon"]


def test_plain_sentences_and_two_column_tsv_are_fidelity_only(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("one sentence\nanother one\n")
    assert read_eval_data(plain) == (None, ["one sentence", "another one"])
    labelled_text = tmp_path / "label_text.tsv"
    labelled_text.write_text("pos\tgood film\nneg\tbad film\n")
    assert read_eval_data(labelled_text) == (None, ["good film", "bad film"])


@pytest.mark.parametrize("bad_line, why", [
    ("a malformed line without tabs", "expected an STS Benchmark row"),
    ("x\ty\tnot-a-score", "is not a number"),
    ("x\ty\t1\textra", "expected an STS Benchmark row"),
])
def test_a_malformed_line_in_a_labelled_file_is_an_error_naming_it(tmp_path, bad_line, why):
    path = tmp_path / "pairs.tsv"
    path.write_text(f"a cat\ta dog\t3.5\nthe sun\tthe moon\t1\n{bad_line}\nrain\tsnow\t2\n")
    with pytest.raises(CompressorError) as info:
        read_eval_data(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: ") and why in message and "other 3 lines are labelled pairs" in message
    assert "\n" not in message
    with pytest.raises(CompressorError, match=":3: "):
        SentenceSimilarity.from_options(CompareOptions(eval_data=path))


def test_sentence_similarity_needs_eval_data():
    with pytest.raises(CompressorError, match="--eval-data is required for text models"):
        SentenceSimilarity.from_options(CompareOptions())


# --- IDX image files ------------------------------------------------------------------------------------------

def test_read_idx_plain_and_gzipped(tmp_path):
    pixels = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) * 10
    write_idx(tmp_path / "a-images-idx3-ubyte", pixels)
    write_idx(tmp_path / "b-images-idx3-ubyte.gz", pixels)
    np.testing.assert_array_equal(read_idx(tmp_path / "a-images-idx3-ubyte"), pixels)
    np.testing.assert_array_equal(read_idx(tmp_path / "b-images-idx3-ubyte.gz"), pixels)
    signed = np.array([[-3, 70000], [5, -1]], dtype=np.int64)
    write_idx(tmp_path / "ints", signed, type_code=0x0C, fmt="i")
    np.testing.assert_array_equal(read_idx(tmp_path / "ints"), signed)


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "text").write_text("hello")
    with pytest.raises(CompressorError, match="not an IDX file"):
        read_idx(tmp_path / "text")
    write_idx(tmp_path / "short", np.zeros((2, 2, 2), dtype=np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(CompressorError, match=r"7 data bytes do not hold an array of shape \(2, 2, 2\)"):
        read_idx(tmp_path / "short")


def test_load_idx_images_scales_to_minus_one_one_and_keeps_the_last(tmp_path):
    pixels = np.array([[[0, 51]], [[102, 153]], [[204, 255]]], dtype=np.uint8)  # 3 images of 1 x 2
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", pixels)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([7, 8, 9], dtype=np.uint8))
    images, labels = load_idx_images(tmp_path)
    assert images.shape == (3, 1, 1, 2) and images.dtype == torch.float32
    np.testing.assert_allclose(images.flatten().numpy(), [-1.0, -0.6, -0.2, 0.2, 0.6, 1.0], atol=1e-6)
    assert labels.tolist() == [7, 8, 9] and labels.dtype == torch.int64
    last, last_labels = load_idx_images(tmp_path, last=2)
    assert torch.equal(last, images[1:]) and last_labels.tolist() == [8, 9]
    only_images, none = load_idx_images(tmp_path / "t10k-images-idx3-ubyte.gz")
    assert torch.equal(only_images, images) and none is None


def test_find_idx_files_errors(tmp_path):
    with pytest.raises(CompressorError, match="image data not found"):
        find_idx_files(tmp_path / "missing")
    with pytest.raises(CompressorError, match="no IDX images file"):
        find_idx_files(tmp_path)
    write_idx(tmp_path / "a-images-idx3-ubyte", np.zeros((2, 1, 1), dtype=np.uint8))
    write_idx(tmp_path / "a-labels-idx1-ubyte", np.zeros(3, dtype=np.uint8))
    with pytest.raises(CompressorError, match="one label per image"):
        load_idx_images(tmp_path)
