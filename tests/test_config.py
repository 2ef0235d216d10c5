"""Typed config: layering, coercion, and a ConfigError for every bad key or value."""
import pytest

from pipeline.config import Config, load_yaml, merge, parse_overrides
from pipeline.errors import ConfigError


def test_defaults_and_round_trip():
    cfg = Config.from_dict({"model": "gan"})
    assert cfg.model == "gan" and cfg.data.dataset == "fashion-mnist"
    assert cfg.train.workers == 1 and not cfg.train.gpu
    assert Config.from_dict(cfg.to_dict()) == cfg
    flat = cfg.flat()
    assert flat["model"] == "gan" and flat["gan.g_loss"] == "non-saturating"
    assert "train.batch_size" in flat and not any(isinstance(v, dict) for v in flat.values())


def test_overrides_are_parsed_and_coerced():
    raw = parse_overrides(["vae.beta=4", "train.steps=10", "vae.lr=1e-3", "train.gpu=false",
                           "model=vae"])
    # YAML 1.1 reads '1e-3' as a string: the typed config converts it.
    assert raw == {"vae": {"beta": 4, "lr": "1e-3"}, "train": {"steps": 10, "gpu": False},
                   "model": "vae"}
    cfg = Config.from_dict(raw)
    assert isinstance(cfg.family.beta, float) and cfg.family.beta == 4.0
    assert cfg.train.steps == 10 and cfg.family.lr == 1e-3


def test_yaml_strings_are_coerced(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: vae\nvae:\n  lr: 1e-3\n  beta: 2\ntrain:\n  batch_size: '64'\n"
                    "tune:\n  space: {}\n")
    raw = load_yaml(str(path))
    assert "tune" not in raw  # the sweep's section is read by `genbench tune`
    cfg = Config.from_dict(raw)
    assert cfg.family.lr == 1e-3 and cfg.family.beta == 2.0 and cfg.train.batch_size == 64


def test_merge_layers_nested_sections():
    assert merge({"train": {"steps": 1, "seed": 2}}, {"train": {"steps": 3}}) == \
        {"train": {"steps": 3, "seed": 2}}


@pytest.mark.parametrize("raw, message", [
    ({"model": "score-sde"}, "unknown model 'score-sde'"),
    ({"train": {"stepz": 3}}, "unknown config key train.stepz"),
    ({"model": "ae", "vae": {"beta": 2}}, "unknown config section 'vae'"),
    ({"model": "vae", "vae": {"lr": 0}}, "vae.lr must be positive"),
    ({"model": "gan", "gan": {"lr_d": -1}}, "gan.lr_d must be positive"),
    ({"train": {"steps": 0}}, "train.steps must be positive"),
    ({"train": {"workers": 0}}, "train.workers must be positive"),
    ({"train": {"epochs": -1.0}}, "train.epochs must be positive"),
    ({"train": {"steps": 5, "epochs": 1}}, "not both"),
    ({"vae": {"beta": -0.5}}, "vae.beta must be >= 0"),
    ({"train": {"batch_size": 10, "workers": 3}}, "does not divide across 3 workers"),
    ({"train": {"steps": 2.5}}, "train.steps must be int"),
    ({"train": {"gpu": "maybe"}}, "train.gpu must be bool"),
    ({"data": {"dataset": "imagenet"}}, "unknown dataset 'imagenet'"),
    ({"data": {"val_fraction": 1.0}}, "data.val_fraction must lie in"),
    ({"model": "pixelcnn", "pixelcnn": {"kernel": 4}}, "pixelcnn.kernel must be odd"),
    ({"model": "gan", "gan": {"g_loss": "wgan"}}, "gan.g_loss must be one of"),
    # a section that is not a mapping (YAML `train: 5`, `data: [1]`, `vae: "x"`)
    ({"train": 5}, "config section 'train' must be a mapping"),
    ({"train": 0}, "config section 'train' must be a mapping"),   # falsy, still not a mapping
    ({"data": [1]}, "config section 'data' must be a mapping"),
    ({"model": "vae", "vae": "x"}, "config section 'vae' must be a mapping"),
    ({"model": ["vae"]}, r"unknown model \['vae'\]"),
    # NaN and infinity pass `<= 0` checks and overflow int(): refused where they are read
    ({"train": {"epochs": float("inf")}}, "train.epochs must be a finite number, got inf"),
    ({"vae": {"lr": "nan"}}, "vae.lr must be a finite number, got 'nan'"),
    ({"vae": {"beta": float("nan")}}, "vae.beta must be a finite number"),
    ({"train": {"checkpoint_min_interval_s": "inf"}},
     "train.checkpoint_min_interval_s must be a finite number"),
    ({"train": {"steps": float("inf")}}, "train.steps must be int, got inf"),
    ({"data": {"exclude_classes": [float("inf")]}}, "data.exclude_classes must be a list"),
])
def test_bad_values_raise_one_line(raw, message):
    with pytest.raises(ConfigError, match=message) as err:
        Config.from_dict(raw)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("pairs, message", [
    (["beta=4"], "needs a section"),
    (["train.steps"], "expects section.key=value"),
])
def test_bad_overrides(pairs, message):
    with pytest.raises(ConfigError, match=message):
        parse_overrides(pairs)


def test_bad_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(str(bad))
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(str(bad))


def test_a_config_that_is_not_a_mapping_is_one_line():
    with pytest.raises(ConfigError, match="a config must be a mapping of sections"):
        Config.from_dict([1, 2])


def test_yaml_infinity_and_overrides_reach_the_checks(tmp_path):
    """What the YAML parser and --set give for `.inf` and `nan` is refused by name."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: .inf\n")
    with pytest.raises(ConfigError, match="train.epochs must be a finite number, got inf"):
        Config.from_dict(load_yaml(str(path)))
    with pytest.raises(ConfigError, match="vae.lr must be a finite number"):
        Config.from_dict(parse_overrides(["vae.lr=nan"]))
    with pytest.raises(ConfigError, match="checkpoint_min_interval_s must be a finite number"):
        Config.from_dict(parse_overrides(["train.checkpoint_min_interval_s=inf"]))
