"""compressor.model.load_model: one-line errors for broken checkpoints, and the real MiniLM."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from calibrators.data import read_sentence_pairs
from compressor.errors import CompressorError
from compressor.evaluation.metrics import sts_spearman
from compressor.model import default_model_dir, load_model, resolve_model_dir


def assert_one_line(info, *fragments):
    message = str(info.value)
    assert message and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


def copy_checkpoint(src, dst, skip=()):
    dst.mkdir()
    for path in src.iterdir():
        if path.is_file() and path.name not in skip:
            shutil.copy(path, dst / path.name)
    return dst


def test_nonexistent_path(tmp_path):
    with pytest.raises(CompressorError) as info:
        load_model(tmp_path / "no-such-model")
    assert_one_line(info, "checkpoint not found", "no-such-model")


def test_directory_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CompressorError) as info:
        load_model(tmp_path)
    assert_one_line(info, "no config.json", str(tmp_path))


def test_file_instead_of_directory(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{}")
    with pytest.raises(CompressorError) as info:
        load_model(path)
    assert_one_line(info, "is not a checkpoint directory")


def test_truncated_safetensors(minilm_dir, tmp_path):
    ckpt = copy_checkpoint(minilm_dir, tmp_path / "ckpt", skip=("model.safetensors",))
    data = (minilm_dir / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CompressorError) as info:
        load_model(ckpt)
    assert_one_line(info, "truncated or corrupt", "model.safetensors")


def test_truncated_safetensors_by_a_few_bytes(minilm_dir, tmp_path):
    ckpt = copy_checkpoint(minilm_dir, tmp_path / "ckpt", skip=("model.safetensors",))
    data = (minilm_dir / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[:-4])
    with pytest.raises(CompressorError) as info:
        load_model(ckpt)
    assert_one_line(info, "truncated or corrupt")


def test_missing_weight_file(minilm_dir, tmp_path):
    ckpt = copy_checkpoint(minilm_dir, tmp_path / "ckpt", skip=("model.safetensors",))
    with pytest.raises(CompressorError) as info:
        load_model(ckpt)
    assert_one_line(info, "has no weight file")


def test_unknown_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "frobnicator-9000", "hidden_size": 8}))
    with pytest.raises(CompressorError) as info:
        load_model(tmp_path)
    assert_one_line(info, "cannot build the architecture", str(tmp_path))


def test_known_architecture_without_adapter(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(CompressorError) as info:
        load_model(tmp_path)
    assert_one_line(info, "'gpt2'", "no adapter")


def test_invalid_json_config(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert",\n  "hidden_size": }')
    with pytest.raises(CompressorError) as info:
        load_model(tmp_path)
    assert_one_line(info, "is not valid JSON", "config.json")


def test_resolve_model_dir(tmp_path, monkeypatch):
    assert resolve_model_dir("default") == default_model_dir()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").mkdir()
    assert resolve_model_dir("default").resolve() == (tmp_path / "default").resolve()
    assert resolve_model_dir("some/dir") == Path("some/dir")


def test_real_minilm_loads_and_embeds_deterministically(fp32_handle, minilm_dir):
    assert fp32_handle.source == minilm_dir
    assert fp32_handle.info == {}
    assert fp32_handle.model.config.model_type == "bert"
    assert len(fp32_handle.adapter.quantizable_layers(fp32_handle.model)) == 36
    sentences = ["A man is playing a guitar.", "The weather is lovely today, isn't it?"]
    first = fp32_handle.embed(sentences)
    second = fp32_handle.embed(list(sentences))
    assert first.shape == (2, 384)
    assert torch.equal(first, second)
    assert torch.allclose(first.norm(dim=1), torch.ones(2), atol=1e-5)
    # batching does not change an embedding beyond float noise (padding is masked out)
    alone = fp32_handle.embed(sentences[:1])
    assert torch.allclose(alone[0], first[0], atol=1e-5)
    # different sentences give clearly different embeddings
    assert float(first[0] @ first[1]) < 0.5


def model_card_embeddings(model_dir, sentences: list[str]) -> np.ndarray:
    """all-MiniLM-L6-v2 embeddings the way its model card computes them, with plain transformers: the mean of
    the last hidden states over the attention mask, L2-normalised."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()
    out = []
    for start in range(0, len(sentences), 64):
        encoded = tokenizer(sentences[start:start + 64], padding=True, truncation=True, max_length=128,
                            return_tensors="pt")
        with torch.no_grad():
            hidden = model(**encoded).last_hidden_state
        mask = encoded["attention_mask"][..., None].float()
        out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1))
    return torch.cat(out).numpy()


def test_fp32_sts_dev_spearman(fp32_handle, minilm_dir, sts_dev):
    from scipy.stats import rankdata

    pairs = read_sentence_pairs(sts_dev)
    # Embed each distinct sentence once, shortest first, so batches carry little padding (speed only:
    # padded positions are masked, so an embedding does not depend on its batch beyond float noise).
    unique = sorted(set(pairs.first + pairs.second), key=len)
    table = dict(zip(unique, fp32_handle.embed(unique).numpy()))
    first = np.stack([table[s] for s in pairs.first])
    second = np.stack([table[s] for s in pairs.second])
    # the reference: the model card's embeddings (on every tenth sentence, short to long: the rest cost time and
    # add nothing), and Spearman as the Pearson correlation of the ranks (ties get their mean rank)
    sample = unique[::10]
    np.testing.assert_allclose(np.stack([table[s] for s in sample]), model_card_embeddings(minilm_dir, sample),
                               atol=1e-5)
    expected = 100 * np.corrcoef(rankdata((first * second).sum(1)), rankdata(pairs.scores))[0, 1]
    assert sts_spearman(first, second, pairs.scores) == pytest.approx(expected, abs=1e-9)
    assert expected > 80  # a working sentence encoder, not an untrained one
