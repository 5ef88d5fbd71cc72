"""calibrators.data (sentence files)."""
import pytest

from calibrators.data import SentencePairs, read_sentence_pairs, read_sentences, sample_sentences
from compressor.errors import CompressorError

def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- calibration / evaluation data ------------------------------------------------------------


def test_read_sentences_plain(tmp_path):
    path = write(tmp_path, "s.txt", "First sentence.\n\n  Second one, with spaces.  \r\nThird\n")
    assert read_sentences(path) == ["First sentence.", "Second one, with spaces.", "Third"]


def sts_row(score, a, b, extra=()):
    return "\t".join(["main-captions", "MSRvid", "2012test", "0001", score, a, b, *extra])


def test_read_sentences_sts_tsv(tmp_path):
    path = write(
        tmp_path,
        "sts.tsv",
        "\n".join(
            [
                sts_row("5.000", "A man is dancing.", "A man dances."),
                sts_row("1.25", "A cat sleeps.", "Dogs bark.", extra=("extra", "cols")),
                sts_row("0", "Rain falls.", "It rains."),
            ]
        )
        + "\n",
    )
    assert read_sentences(path) == [
        "A man is dancing.", "A man dances.", "A cat sleeps.", "Dogs bark.", "Rain falls.", "It rains.",
    ]


def test_read_sentences_two_column_tsv(tmp_path):
    path = write(tmp_path, "labelled.tsv", "pos\tGreat film.\nneg\tBoring plot.\npos\tLoved it.\n")
    assert read_sentences(path) == ["Great film.", "Boring plot.", "Loved it."]


def test_empty_and_missing_data_files(tmp_path):
    with pytest.raises(CompressorError, match="data file is empty"):
        read_sentences(write(tmp_path, "empty.txt", ""))
    with pytest.raises(CompressorError, match="data file is empty"):
        read_sentences(write(tmp_path, "blank.txt", "\n   \n\t\n"))
    with pytest.raises(CompressorError, match="data file not found"):
        read_sentences(tmp_path / "missing.txt")
    with pytest.raises(CompressorError, match="data file not found"):
        read_sentence_pairs(tmp_path / "missing.tsv")
    with pytest.raises(CompressorError, match="data file not found"):
        read_sentences(tmp_path)  # a directory is not a data file


def test_read_sentence_pairs_three_columns(tmp_path):
    path = write(tmp_path, "pairs.tsv", "A b c.\tD e f.\t4.5\nG h.\tI j.\t0\nK.\tL.\t2.25\n")
    pairs = read_sentence_pairs(path)
    assert isinstance(pairs, SentencePairs)
    assert pairs.first == ["A b c.", "G h.", "K."]
    assert pairs.second == ["D e f.", "I j.", "L."]
    assert pairs.scores == [4.5, 0.0, 2.25]


def test_read_sentence_pairs_sts_layout(tmp_path):
    path = write(tmp_path, "sts.csv", sts_row("3.8", "One.", "Two.") + "\n" + sts_row("1", "x", "y", ("a", "b")) + "\n")
    pairs = read_sentence_pairs(path)
    assert (pairs.first, pairs.second, pairs.scores) == (["One.", "x"], ["Two.", "y"], [3.8, 1.0])


def test_real_sts_dev(sts_dev):
    pairs = read_sentence_pairs(sts_dev)
    assert len(pairs.first) == len(pairs.second) == len(pairs.scores) == 1500
    assert pairs.first[0] == "A man with a hard hat is dancing."
    assert pairs.second[0] == "A man wearing a hard hat is dancing."
    assert pairs.scores[0] == 5.0
    assert all(0.0 <= s <= 5.0 for s in pairs.scores)
    assert all(pairs.first) and all(pairs.second)
    assert len(read_sentences(sts_dev)) == 3000


def test_non_numeric_score_names_the_line(tmp_path):
    path = write(tmp_path, "pairs.tsv", "A.\tB.\t1.0\nC.\tD.\thigh\n")
    with pytest.raises(CompressorError) as info:
        read_sentence_pairs(path)
    message = str(info.value)
    assert f"{path}:2:" in message and "'high'" in message


def test_wrong_column_count_names_the_line(tmp_path):
    path = write(tmp_path, "pairs.tsv", "A.\tB.\t1.0\nC.\tD.\t2.0\njust one sentence\n")
    with pytest.raises(CompressorError, match=r"pairs\.tsv:3: expected an STS Benchmark row"):
        read_sentence_pairs(path)


def test_line_number_counts_blank_lines(tmp_path):
    path = write(tmp_path, "pairs.tsv", "A.\tB.\t1.0\n\nC.\tD.\thigh\n")
    with pytest.raises(CompressorError, match=rf"{path.name}:3:"):
        read_sentence_pairs(path)


def test_sample_sentences_deterministic_and_distinct():
    sentences = [f"sentence {i % 150}" for i in range(300)]  # every sentence twice
    a = sample_sentences(sentences, 40, seed=0)
    assert a == sample_sentences(sentences, 40, seed=0)
    assert len(a) == 40 and len(set(a)) == 40
    assert a != sample_sentences(sentences, 40, seed=1)
    # in file order
    order = {s: i for i, s in enumerate(dict.fromkeys(sentences))}
    assert [order[s] for s in a] == sorted(order[s] for s in a)


def test_sample_sentences_more_than_available():
    sentences = ["b", "a", "b", "c", "a"]
    assert sample_sentences(sentences, 10) == ["b", "a", "c"]
    assert sample_sentences(sentences, 3) == ["b", "a", "c"]
    assert len(sample_sentences(sentences, 2)) == 2
