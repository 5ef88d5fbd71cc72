"""Shared fixtures: the real all-MiniLM-L6-v2 checkpoint, the packaged calibration sentences and one
compressed checkpoint built once per test session (the slow part of the suite)."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

from compressor.data import default_calibration_file  # noqa: E402
from compressor.model import default_model_dir, load_model  # noqa: E402
from compressor.recipe import Recipe, load_recipe  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
STS_DEV = SHARED_DATA / "stsb" / "sts-dev.csv"
MNIST = SHARED_DATA / "mnist"

# Small enough to keep the session fast, large enough to exercise every pass (smoothing search,
# percentile calibration, sensitivity fallback).
TEST_RECIPE = dict(calib_samples=48, sensitivity_samples=16, search_tokens=1024)


def pytest_configure(config):
    # registered here because the pytest section of pyproject.toml lists no markers
    config.addinivalue_line("markers", "slow: a test that runs for over a minute (select or skip with -m)")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread: more only adds synchronisation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_recipe() -> Recipe:
    return load_recipe("int8").with_calibration(**TEST_RECIPE)


@pytest.fixture(scope="session")
def recipe() -> Recipe:
    """The recipe the session's compressed checkpoint was made with."""
    return make_recipe()


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return default_model_dir()


@pytest.fixture(scope="session")
def calib_file() -> Path:
    return default_calibration_file()


@pytest.fixture(scope="session")
def packaged_sentences(calib_file) -> list[str]:
    return [line.strip() for line in calib_file.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="session")
def sts_dev() -> Path:
    if not STS_DEV.is_file():
        pytest.skip(f"shared STS-B dev data not found at {STS_DEV}")
    return STS_DEV


@pytest.fixture(scope="session")
def mnist() -> Path:
    """The shared MNIST IDX files (the examples' data), or a skip."""
    if not any(MNIST.glob("*images-idx3-ubyte*")):
        pytest.skip(f"shared MNIST data not found at {MNIST}")
    return MNIST


@pytest.fixture(scope="session")
def _compressed(minilm_dir, calib_file, tmp_path_factory):
    """Run the whole pipeline once: (output directory, the handle compress() returned)."""
    from compressor.pipeline import compress

    output = tmp_path_factory.mktemp("compressed") / "minilm-int8"
    handle = compress(minilm_dir, make_recipe(), calib_file, output)
    return output, handle


@pytest.fixture(scope="session")
def compressed_dir(_compressed) -> Path:
    return _compressed[0]


@pytest.fixture(scope="session")
def compressed_handle(_compressed):
    """The in-memory W8A8 model compress() produced (do not mutate)."""
    return _compressed[1]


@pytest.fixture(scope="session")
def fp32_handle(minilm_dir):
    """The original FP32 model, loaded once (do not mutate)."""
    return load_model(minilm_dir)


@pytest.fixture(scope="session")
def tiny_bert_dir(minilm_dir, tmp_path_factory) -> Path:
    """A small randomly initialised BERT (hidden 64, 2 layers) with MiniLM's tokenizer: fast passes."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                        max_position_embeddings=128)
    path = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).eval().save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(path)
    return path


TINY_STS_PAIRS = 20


@pytest.fixture(scope="session")
def tiny_sts(packaged_sentences, tmp_path_factory):
    """20 labelled pairs of distinct sentences in the 'sentence1<TAB>sentence2<TAB>score' layout (no two
    pairs with the same cosine, so rank ties cannot make runtimes disagree)."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("eval") / "tiny-sts.tsv"
    rows = []
    for i in range(TINY_STS_PAIRS):
        a, b = packaged_sentences[2 * i], packaged_sentences[2 * i + 1]
        rows.append(f"{a}\t{b}\t{rng.uniform(0, 5):.2f}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def onnx_export_cache(tmp_path_factory):
    """``onnx_export_cache(prefix, build)`` → ``get(case, target)`` → (handle, ModelProto, path), building the
    handle with ``build(case)`` and exporting each (case, target) once."""
    import onnx

    from exporters.onnx_export import export_onnx

    def make(prefix, build):
        root, cache = tmp_path_factory.mktemp(prefix), {}

        def get(case, target):
            if (case, target) not in cache:
                handle = build(case)
                path = export_onnx(handle, root / f"{case}-{target}.onnx", target)
                cache[case, target] = handle, onnx.load(str(path)), path
            return cache[case, target]

        return get

    return make


TINY_VIT_IMAGES = 1100  # IDX data: the first 100 calibrate, the last 1000 are the evaluation part


def write_idx(path, array, type_code: int = 0x08, fmt: str = "B") -> None:
    """The IDX layout written out by hand: 0, 0, type, ndim, then big-endian uint32 sizes and the values
    (gzipped when the name ends in .gz)."""
    import gzip
    import struct

    import numpy as np

    array = np.asarray(array)
    body = struct.pack(f">{array.size}{fmt}", *array.ravel().tolist())
    data = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + body
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as f:
        f.write(data)


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory):
    """(checkpoint dir, IDX data dir): a random ViT classifier on 8×8 grey images (2×2 patches: 16 tokens +
    CLS), its image processor, and 1,100 labelled images whose class is the brighter half of the image."""
    import numpy as np
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64, num_labels=2, id2label={0: "top", 1: "bottom"},
                       label2id={"top": 0, "bottom": 1})
    path = tmp_path_factory.mktemp("tiny-vit")
    ViTForImageClassification(config).eval().save_pretrained(path)
    ViTImageProcessor(size={"height": 8, "width": 8}, image_mean=[0.5], image_std=[0.5]).save_pretrained(path)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 120, (TINY_VIT_IMAGES, 8, 8))
    labels = rng.integers(0, 2, TINY_VIT_IMAGES)
    for image, label in zip(images, labels):
        image[4 * label: 4 * label + 4] += 130
    data = tmp_path_factory.mktemp("tiny-vit-data")
    write_idx(data / "images-idx3-ubyte", images)
    write_idx(data / "labels-idx1-ubyte", labels)
    return path, data


@pytest.fixture(scope="session")
def tiny_dit_dir(tmp_path_factory) -> Path:
    """A random class-conditional DiT (3 blocks, 36 latent tokens of a 1×12×12 latent, 4 classes) with its
    DDIM scheduler."""
    from diffusers import DDIMScheduler, DiTTransformer2DModel

    torch.manual_seed(0)
    model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=1, out_channels=1,
                                  num_layers=3, sample_size=12, patch_size=2, num_embeds_ada_norm=4,
                                  norm_type="ada_norm_zero")
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    path = tmp_path_factory.mktemp("tiny-dit")
    model.eval().save_pretrained(path)
    DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                  timestep_spacing="trailing").save_pretrained(path)
    return path
