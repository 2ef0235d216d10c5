"""Bench presets read by the training config's machinery (genbench/preset_schema.py): a bad
section, key, type or value is one line naming the preset and the key, in the words a bad
`--config` gets; a good preset keeps exactly the keys it gave, typed."""
from __future__ import annotations

import pytest

from genbench.bench import load_preset
from pipeline.errors import ConfigError

GOOD = """
every_family: {config: {train: {steps: 30}}, n_fake: 100}
families: {vae: {n_fake: 200}}
eval: {n_real: 300, extractors: [domain], domain_epochs: 2, bootstrap: 20,
       bootstrap_metrics: [fid]}
sweep: {model: vae, samples: 2, steps: 10}
ood: {sets: [noise], images: 50, unseen_classes: [3]}
"""


def test_a_good_preset_keeps_its_keys_typed(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(GOOD)
    preset = load_preset(str(path))
    assert preset.every_family == {"config": {"train": {"steps": 30}}, "n_fake": 100}
    assert preset.families == {"vae": {"n_fake": 200}}
    assert preset.eval == {"n_real": 300, "extractors": ("domain",), "domain_epochs": 2.0,
                           "bootstrap": 20, "bootstrap_metrics": ("fid",)}
    assert preset.sweep == {"model": "vae", "samples": 2, "steps": 10}
    assert preset.ood == {"sets": ("noise",), "images": 50, "unseen_classes": (3,)}
    assert preset.n_fake("vae") == 200 and preset.n_fake("gan") == 100


@pytest.mark.parametrize("text, words", [
    ("eval: {n_real: many}", "eval.n_real must be int, got 'many'"),
    ("eval: {nreal: 3}", "unknown config key eval.nreal; known keys: n_real, extractors"),
    ("eval: 5", "config section 'eval' must be a mapping"),
    ("eval: {k: -1}", "eval.k must be positive, got -1"),
    ("eval: {domain_epochs: .inf}", "eval.domain_epochs must be a finite number"),
    ("eval: {extractors: [1, 2]}", "eval.extractors must be a list of names"),
    ("sweep: {model: vae, steps: 10}", "sweep.samples is required (sweep takes model, samples"),
    ("every_family: {n_fake: 10, config: 3}", "every_family.config must be a mapping"),
    ("families: {vae: {steps: 3}}", "unknown config key families.vae.steps; known keys: config, "
                                    "n_fake"),
    ("ood: {unseen_classes: [x]}", "ood.unseen_classes must be a list of integers"),
    ("eval: {}\ncolour: red", "unknown section(s) colour"),
])
def test_a_bad_preset_is_one_line_naming_the_key(tmp_path, text, words):
    path = tmp_path / "p.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load_preset(str(path))
    message = str(info.value)
    assert words in message and message.startswith(f"preset {path}") and "\n" not in message
