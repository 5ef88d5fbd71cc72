"""compressor.recipe: pass-list recipes, presets, order rules, the flat files of earlier versions, and
one-line errors that name the field."""
import pytest

from compressor.cli import main
from compressor.errors import CompressorError
from compressor.passes import PASSES
from compressor.recipe import FLAT_PRESETS, PRESETS, Recipe, flat_recipe, load_recipe


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def names(recipe):
    return [p.name for p in recipe.passes]


def test_presets_are_pass_lists():
    flat = {"int8", "int8-minmax", "nvfp4", "mxfp4", "w4a16-nvfp4", "int4-awq", "fp8", "fp4-int8", "w4a8"}
    pruning = {"prune-structured", "prune-structured-int8", "sparse24", "sparse24-int8", "sparse24-w4a16-nvfp4"}
    tokens = {"tome", "tome-int8", "step-cache", "step-cache-int8"}
    vq = {"vq3", "vq2", "vq-mix"}
    assert set(PRESETS) == flat | pruning | tokens | vq
    assert set(FLAT_PRESETS) == flat  # flat recipe files predate pruning
    assert names(load_recipe("int8")) == ["smoothquant", "quantize", "fallback"]
    assert names(load_recipe("int8-minmax")) == ["quantize"]
    assert names(load_recipe("int4-awq")) == ["awq", "quantize"]
    assert names(load_recipe("tome-int8")) == ["smoothquant", "quantize", "fallback", "tome"]
    fp4 = load_recipe("fp4-int8").find("quantize").config
    assert fp4.candidates == ["nvfp4", "w4a8-nvfp4", "int8"] and fp4.max_bits == 5.0 and fp4.rounding == "gptq"
    assert load_recipe("int8-minmax").find("quantize").config.observer == "max"


@pytest.mark.parametrize("preset", sorted(FLAT_PRESETS))
def test_flat_preset_means_the_same_passes(preset):
    """A flat file naming a preset and nothing else is that preset (except where a preset gained an
    option the flat form spells differently, which the flat table must then carry too)."""
    flat, current = flat_recipe({**FLAT_PRESETS[preset], "name": preset}), load_recipe(preset)
    assert flat.to_dict()["passes"] == current.to_dict()["passes"]


def test_passes_yaml(tmp_path):
    path = write(tmp_path, "mine.yaml", """
name: mine
calibration: {calib_samples: 32}
passes:
  - smoothquant: {alphas: [0.5]}
  - quantize: {scheme: int8, observer: mse, exclude: ["*.output.dense"]}
  - fallback: {max_layers: 1}
  - embeddings: {format: int8}
""")
    recipe = load_recipe(str(path))
    assert recipe.name == "mine" and recipe.calibration.calib_samples == 32
    assert names(recipe) == ["smoothquant", "quantize", "fallback", "embeddings"]
    assert recipe.find("quantize").config.exclude == ["*.output.dense"]
    assert recipe.find("fallback").config.max_layers == 1 and recipe.find("fallback").config.tolerance == 0.01
    assert Recipe.from_dict(recipe.to_dict()).to_dict() == recipe.to_dict()  # round trip through the record


@pytest.mark.parametrize("text, message", [
    ("passes:\n  - quantise: {}\n", "unknown pass 'quantise'"),
    ("passes:\n  - quantize: {sceme: int8}\n", "unknown field 'sceme'"),
    ("passes:\n  - quantize: {scheme: int3}\n", "field 'scheme'"),
    ("passes:\n  - quantize: {candidates: [nvfp4, int8]}\n", "field 'max_bits'"),
    ("passes:\n  - quantize: {group_size: 7}\n", "field 'group_size'"),
    ("passes:\n  - quantize: {symmetric: 'yes'}\n", "field 'symmetric'"),
    ("passes:\n  - smoothquant: {alphas: [0.5, 1.5]}\n  - quantize: {}\n", "alphas"),
    ("passes:\n  - quantize: {}\ncalibration: {calib_samples: 0}\n", "field 'calib_samples'"),
    ("passes:\n  - quantize: {}\nextras: 1\n", "unknown field 'extras'"),
    ("passes: []\n", "non-empty list"),
    ("passes:\n  - quantize: {}\n  - smoothquant: {}\n", r"'smoothquant' \(migrate\) must come before 'quantize'"),
    ("passes:\n  - fallback: {}\n", "'fallback' needs 'quantize' earlier"),
    ("passes:\n  - smoothquant: {}\n", "'smoothquant' needs 'quantize' later"),
    ("passes:\n  - quantize: {}\n  - quantize: {}\n", "lists pass 'quantize' 2 times"),
])
def test_bad_passes_yaml_one_line_error(tmp_path, text, message):
    with pytest.raises(CompressorError, match=message) as info:
        load_recipe(str(write(tmp_path, "bad.yaml", text)))
    assert "\n" not in str(info.value)


def test_cli_unknown_pass_or_field_exits_2(tmp_path, capsys):
    for text, message in [("passes:\n  - prune_everything: {}\n", "unknown pass 'prune_everything'"),
                          ("passes:\n  - quantize: {bits: 3}\n", "unknown field 'bits'")]:
        path = write(tmp_path, "bad.yaml", text)
        assert main(["compress", "default", "--recipe", str(path), "--output", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
        assert not (tmp_path / "out").exists()


# --- the flat files of earlier versions -------------------------------------------------------


def test_flat_yaml_overrides_its_preset(tmp_path):
    recipe = load_recipe(str(write(tmp_path, "fast.yml", "preset: int8-minmax\ncalib_samples: 100\nexclude: ['*.output.dense']\n")))
    assert recipe.name == "fast" and names(recipe) == ["quantize"] and recipe.calibration.calib_samples == 100
    quantize = recipe.find("quantize").config
    assert quantize.observer == "max" and quantize.exclude == ["*.output.dense"]
    mine = load_recipe(str(write(tmp_path, "mine.yaml", "percentile: 99.9\nalphas: [0.5]\nembeddings: nvfp4\n")))
    assert names(mine) == ["smoothquant", "quantize", "fallback", "embeddings"]  # the int8 preset, plus tables
    assert mine.find("smoothquant").config.alphas == [0.5] and mine.find("quantize").config.percentile == 99.9
    assert mine.find("embeddings").config.format == "nvfp4"


def test_empty_yaml_is_the_default_preset(tmp_path):
    recipe = load_recipe(str(write(tmp_path, "empty.yaml", "")))
    assert recipe.to_dict() == {**load_recipe("int8").to_dict(), "name": "empty"}


@pytest.mark.parametrize("text, field", [
    ("calib_samlpes: 10\n", "calib_samlpes"),  # unknown field
    ("observer: minmax\n", "observer"),
    ("calib_samples: many\n", "calib_samples"),
    ("calib_samples: 1.5\n", "calib_samples"),
    ("smoothquant: 'yes'\n", "smoothquant"),
    ("batch_size: true\n", "batch_size"),
    ("percentile: 0\n", "percentile"),
    ("percentile: 100.5\n", "percentile"),
    ("alphas: [0.5, 1.5]\n", "alphas"),
    ("alphas: 0.5\n", "alphas"),
    ("exclude: 'encoder.*'\n", "exclude"),
    ("max_length: 0\n", "max_length"),
    ("fallback_min_gain: 2\n", "fallback_min_gain"),
    ("fallback_max_layers: -1\n", "fallback_max_layers"),
    ("embeddings: int2\n", "embeddings"),
])
def test_bad_flat_field_named(tmp_path, text, field):
    with pytest.raises(CompressorError) as info:
        load_recipe(str(write(tmp_path, "bad.yaml", text)))
    assert f"'{field}'" in str(info.value) and "\n" not in str(info.value)


def test_unknown_preset_and_files(tmp_path):
    with pytest.raises(CompressorError, match="unknown recipe preset 'int4-magic'.*int8-minmax"):
        load_recipe("int4-magic")
    with pytest.raises(CompressorError, match="recipe file not found"):
        load_recipe(str(tmp_path / "nope.yaml"))
    with pytest.raises(CompressorError, match="unknown preset 'int2'"):
        load_recipe(str(write(tmp_path, "p.yaml", "preset: int2\n")))
    with pytest.raises(CompressorError, match="mapping"):
        load_recipe(str(write(tmp_path, "list.yaml", "- a\n- b\n")))
    with pytest.raises(CompressorError, match="not valid YAML"):
        load_recipe(str(write(tmp_path, "broken.yaml", "calib_samples: [1, 2\n")))


def test_every_registered_pass_has_a_config_and_a_stage():
    from compressor.passes.base import STAGES, PassConfig

    assert {"smoothquant", "awq", "quantize", "fallback", "embeddings"} <= set(PASSES)
    for name, pass_class in PASSES.items():
        assert issubclass(pass_class.Config, PassConfig) and pass_class.stage in STAGES, name
