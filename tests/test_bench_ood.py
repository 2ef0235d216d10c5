"""The bench presets' OOD section: parsed and checked when the preset loads, and turned into the
extra runs and the evaluation options the OOD section of the report needs."""
import pytest

from genbench.bench import eval_options, load_preset, ood_runs
from pipeline.errors import ConfigError

FAMILIES = ["ae", "vae", "gan", "pixelcnn", "transformer"]


def test_quick_scores_synthetic_sets_and_digits_and_trains_a_conditional_vae():
    preset = load_preset("quick")
    assert ood_runs(preset, FAMILIES) == [("vae conditional", "vae",
                                           {"train": {"conditional": True}})]
    main = eval_options("RUN", "vae", preset)
    assert "ood" in main.metrics and "fid" in main.metrics
    assert set(main.ood_sets) == {"digits", "mnist", "noise", "constant", "flipped", "inverted"}
    bayes = eval_options("RUN", "vae", preset, {"train": {"conditional": True}})
    assert bayes.metrics == ("bayes", "ood", "cas", "intra_fid") and bayes.ood_background_steps == 0


def test_full_adds_an_unseen_class_run_per_family_and_every_likelihood_family():
    preset = load_preset("full")
    runs = ood_runs(preset, FAMILIES)
    unseen = [r for r in runs if "exclude_classes" in r[2].get("data", {})]
    assert [r[1] for r in unseen] == FAMILIES
    # Bayes' rule needs a likelihood: asked of each family module, never of its name
    assert {r[1] for r in runs if r not in unseen} == {"vae", "pixelcnn", "transformer"}
    opts = eval_options("RUN", "gan", preset, unseen[2][2])
    assert opts.metrics == ("ood",) and opts.ood_sets == ("unseen",)


def test_a_bad_ood_section_stops_before_anything_trains(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("ood: {sets: [noise, cats]}\n")
    with pytest.raises(ConfigError, match="cats"):
        load_preset(str(bad))
    bad.write_text("ood: {images: 10, colour: red}\n")
    with pytest.raises(ConfigError, match="unknown config key ood.colour; known keys: sets, "):
        load_preset(str(bad))
