"""compressor.recipe: pass-list recipes, presets, order rules, the flat files of earlier versions, and
one-line errors that name the field."""
import pytest

from compressor.cli import main
from compressor.errors import CompressorError
from compressor.numerics.formats import SCHEMES, scheme_bits
from compressor.passes import PASSES
from compressor.recipe import FLAT_PRESETS, PRESETS, Recipe, flat_recipe, load_recipe


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def names(recipe):
    return [p.name for p in recipe.passes]


# A preset's name is its contract: a leading family names a pass, what follows names the quantization
# ("tome-int8" = token merging after W8A8; "sparse24" alone stays in float).
FAMILIES = {"prune-structured": "prune_structured", "sparse24": "sparsify", "tome": "tome", "step-cache": "step_cache"}
# MiniLM's Linear shapes per block (out, in): query/key/value/output, then the two FFN layers.
MINILM_LINEARS = [(384, 384)] * 4 + [(1536, 384), (384, 1536)]


def split_name(name: str) -> tuple[str | None, str]:
    """("tome", "int8") for "tome-int8", ("tome", "") for "tome", (None, "nvfp4") for "nvfp4"."""
    for family in FAMILIES:
        if name == family or name.startswith(family + "-"):
            return family, name[len(family) + 1:]
    return None, name


def minilm_bits(scheme: str, config) -> float:
    """Weight-count-weighted bits per weight of one scheme on every MiniLM Linear."""
    total = sum(o * i for o, i in MINILM_LINEARS)
    return sum(scheme_bits(SCHEMES[scheme], i, config.group_size, config.symmetric, out_features=o) * o * i
               for o, i in MINILM_LINEARS) / total


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_runs_what_its_name_says(preset):
    recipe = load_recipe(preset)
    assert recipe.name == preset and set(names(recipe)) <= set(PASSES)
    assert Recipe.from_dict(recipe.to_dict()).to_dict() == recipe.to_dict()
    family, quantization = split_name(preset)
    assert set(names(recipe)) & set(FAMILIES.values()) == ({FAMILIES[family]} if family else set())
    assert (recipe.find("quantize") is not None) == bool(quantization)
    if family == "sparse24":
        assert recipe.find("sparsify").config.target == "2:4"
    if quantization in SCHEMES:
        assert recipe.find("quantize").config.scheme == quantization
    if family and quantization:  # a combination runs both presets' passes, the quantization's scheme unchanged
        alone = load_recipe(quantization)
        assert sorted(names(recipe)) == sorted(names(load_recipe(family)) + names(alone))
        assert recipe.find("quantize").config.scheme == alone.find("quantize").config.scheme


def test_quantization_preset_names():
    # int8 is W8A8 with outlier handling (SmoothQuant) and the float fallback; -minmax drops both for max ranges
    assert names(load_recipe("int8")) == ["smoothquant", "quantize", "fallback"]
    minmax = load_recipe("int8-minmax")
    assert names(minmax) == ["quantize"] and minmax.find("quantize").config.observer == "max"
    # int4-awq: AWQ's scaling, then 4-bit INT weights; w4a8: 4-bit (NVFP4) weights with 8-bit inputs
    assert names(load_recipe("int4-awq")) == ["awq", "quantize"]
    assert SCHEMES[load_recipe("int4-awq").find("quantize").config.scheme].weight == "int4"
    assert load_recipe("w4a8").find("quantize").config.scheme == "w4a8-nvfp4"
    # fp4-int8 chooses per layer between FP4 and INT8 weights
    fp4 = load_recipe("fp4-int8").find("quantize").config
    assert {SCHEMES[c].weight for c in fp4.candidates} == {"nvfp4", "int8"}


@pytest.mark.parametrize("preset", [p for p in sorted(PRESETS)
                                    if (q := load_recipe(p).find("quantize")) and q.config.candidates])
def test_searching_preset_budget_leaves_a_choice_on_minilm(preset):
    """Below the cheapest candidate no plan fits the budget; at or above the dearest there is nothing to
    search. The preset's own scheme is among the candidates."""
    config = load_recipe(preset).find("quantize").config
    costs = [minilm_bits(c, config) for c in config.candidates]
    assert config.scheme in config.candidates
    assert min(costs) <= config.max_bits < max(costs)


def test_flat_presets_are_current_presets_without_a_family():
    assert set(FLAT_PRESETS) <= set(PRESETS)
    assert all(split_name(name)[0] is None for name in FLAT_PRESETS)  # flat recipe files predate pruning


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
