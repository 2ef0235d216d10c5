"""Significance wired end to end: `eval --bootstrap` saves paired FID (and KID) replicates in each
evaluation record, and the report ranks the families of a column with ties.

Three tiny VAE checkpoints (no Ray: trained in this process for a few steps), each evaluated
into its own MLflow run, one report row each: two of one config that differ only in the seed,
and an untrained one. The two seeds come out tied (#1 (tied), an interval holding 0); the
untrained one is separated from both."""
from __future__ import annotations

import json
import re
import tempfile

import pytest
import torch

from eval.fidelity import percentile_interval
from eval.run import EvalOptions, evaluate, flat_config
from pipeline import schema, tracking
from pipeline.data import load_split
from pipeline.errors import ConfigError
from pipeline.models import FAMILIES
from testing.evalkit import save_checkpoint, tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N, RESAMPLES, STEPS = 200, 50, 150
EXPERIMENT = "significance"


def trained_vae(seed: int, steps: int):
    """The tiny VAE after `steps` Adam steps of 64 train images (the pipeline's loss)."""
    cfg, nets, opts = tiny_model("vae", seed=seed)
    family, gen = FAMILIES["vae"], torch.Generator().manual_seed(seed)
    train = load_split("fashion-mnist", "train", None, 0.1, 0, 32)
    for _ in range(steps):
        x = train.images[torch.randint(len(train), (64,), generator=gen)]
        for phase in family.PHASES:
            opts[phase].zero_grad()
            family.loss(cfg.family, nets, x, None, phase)["loss"].backward()
            opts[phase].step()
    return cfg, nets, opts


@pytest.fixture(scope="module")
def evaluated(domain_classifier, tmp_path_factory):
    """{row name: EvalResult}, the MLflow uri, and the report's HTML and Markdown."""
    base = tmp_path_factory.mktemp("significance")
    with pytest.MonkeyPatch.context() as mp:
        uri = f"sqlite:///{base / 'm.db'}"
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("GENBENCH_CACHE", str(domain_classifier))
        results = {}
        for name, seed, steps in (("vae-seed0", 0, STEPS), ("vae-seed1", 1, STEPS),
                                  ("vae-untrained", 2, 0)):
            cfg, nets, opts = trained_vae(seed, steps)
            # a run of its own (the checkpoint's config as params): one report row per name
            run_id = tracking.start_run(EXPERIMENT, name, flat_config(cfg.to_dict()),
                                        {schema.KIND: schema.EVAL, schema.MODEL: name,
                                         schema.DATASET: "fashion-mnist"})
            path = save_checkpoint(base / name, cfg, nets, opts, run_id=run_id)
            results[name] = evaluate(EvalOptions(
                checkpoint=str(path), metrics=("fid",), n_fake=N, n_real=N,  # KID's bootstrap costs
                bootstrap=RESAMPLES, experiment=EXPERIMENT, quiet=True))
            assert results[name].run_id == run_id
            tracking.end_run(run_id)
        from report.render import write_report
        html = write_report(EXPERIMENT, base / "report", quiet=True)
        yield results, uri, html.read_text(), (base / "report" / "report.md").read_text()


def replicates_of(result) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        record = json.loads(tracking.download_artifact(
            result.run_id, f"{result.artifact_dir}/eval.json", tmp).read_text())
    return {r["key"]: r for r in record["bootstrap_replicates"]}


def test_eval_saves_paired_replicates_with_their_protocol_and_stamps_them(evaluated):
    results, uri, _, _ = evaluated
    seed0 = replicates_of(results["vae-seed0"])
    untrained = replicates_of(results["vae-untrained"])
    assert set(seed0) == {"fid_domain"}
    fid = seed0["fid_domain"]
    assert (fid["metric"], fid["extractor"], fid["n_real"], fid["n_fake"], fid["seed"],
            fid["resamples"]) == ("fid", "domain", N, N, 0, RESAMPLES)
    assert len(fid["values"]) == RESAMPLES and fid["weights"] == untrained["fid_domain"]["weights"]
    # the replicates straddle the estimate (bias aside): they are of this model, not another
    estimate = results["vae-seed0"].metrics["fid_domain"]
    assert min(fid["values"]) < estimate * 1.5 and max(fid["values"]) > estimate * 0.5
    stamp = results["vae-seed0"].tags[schema.extractor_tag("domain", "replicates")]
    assert f"{RESAMPLES} resamples" in stamp and "seed 0" in stamp
    # the run's interval comes from these same resamples (one bootstrap, not two)
    low, high = (results["vae-seed0"].metrics[k] for k in schema.ci_keys("fid_domain"))
    assert (low, high) == pytest.approx(percentile_interval(torch.tensor(fid["values"]), estimate))


def test_bootstrap_metrics_choose_which_are_resampled(domain_classifier, tmp_path, monkeypatch):
    """--bootstrap-metrics fid: KID is measured but not resampled (its resamples cost ~100x)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    monkeypatch.setenv("GENBENCH_CACHE", str(domain_classifier))
    cfg, nets, opts = tiny_model("vae", seed=0)
    path = save_checkpoint(tmp_path / "vae", cfg, nets, opts)
    result = evaluate(EvalOptions(checkpoint=str(path), metrics=("fid", "kid"), n_fake=N,
                                  n_real=N, kid_subset_size=50, bootstrap=10,
                                  bootstrap_metrics=("fid",), quiet=True))
    assert set(replicates_of(result)) == {"fid_domain"} and "kid_domain" in result.metrics
    assert all(k in result.metrics for k in schema.ci_keys("fid_domain"))
    assert not any(k in result.metrics for k in schema.ci_keys("kid_domain"))
    with pytest.raises(ConfigError, match="--bootstrap-metrics takes fid, kid"):
        EvalOptions(checkpoint=str(path), bootstrap=10, bootstrap_metrics=("is",)).validate()


def test_two_seeds_of_one_config_tie_and_an_untrained_model_does_not(evaluated):
    from report.collect import collect

    results, uri, _, _ = evaluated
    data = collect(EXPERIMENT, uri, with_images=False)
    by_column = {t.column: t for t in data.significance}
    assert set(by_column) == {"fid_domain"}
    fid = by_column["fid_domain"].ranking
    assert fid.ranks["vae-seed0"] == fid.ranks["vae-seed1"] == 1
    assert fid.tied("vae-seed0") and not fid.tied("vae-untrained")
    assert fid.ranks["vae-untrained"] == 3
    assert not fid.difference("vae-seed0", "vae-seed1").separated
    for trained in ("vae-seed0", "vae-seed1"):
        d = fid.difference(trained, "vae-untrained")
        assert d.separated and d.high < 0 and d.low <= d.estimate <= d.high
    assert "paired bootstrap" in fid.note and "tied" in fid.note
    cells = {row.family: row.cells["fid_domain"].text for row in data.rows}
    assert cells["vae-seed0"].endswith("#1 (tied)") and cells["vae-untrained"].endswith("#3")


def test_the_report_shows_the_intervals_the_tie_marks_and_the_method(evaluated):
    _, _, html, md = evaluated
    assert 'id="significance"' in html and "Significance: pairwise differences" in md
    for text in (html, md):
        assert "#1 (tied)" in text and "tied (holds 0)" in text and "separated" in text
        assert "paired bootstrap over the generated and real features (50 resamples" in text
    # an interval: "difference [low, high]" of the tied pair, low < 0 < high
    row = re.search(r"\| vae-seed[01] − vae-seed[01] \| (\S+) \[(\S+), (\S+)\] \| tied", md)
    assert row and float(row.group(2)) < 0 < float(row.group(3))


# --- the section's paths on rows made here (no MLflow): seeds, and protocols never paired ---
def _rows(values: dict, protocol=("200", "200", "test", "abc")):
    """{family: [value per seed]} -> report rows measured under one FID protocol."""
    from report.data import Cell, FamilyRow, SeedRun
    from report.tables import discover_columns

    stamps = {schema.extractor_tag("domain", name): value
              for name, value in zip(schema.FIDELITY_PROTOCOL, protocol)}
    rows = []
    for fam, per_seed in values.items():
        seeds = [SeedRun(str(s), f"{fam}-{s}", {"fid_domain": v}, {}, dict(stamps))
                 for s, v in enumerate(per_seed)]
        rows.append(FamilyRow(fam, f"{fam}-0", fam, "FINISHED", "fashion-mnist",
                              {"fid_domain": per_seed[0]}, {}, dict(stamps), seeds=seeds))
    columns = discover_columns(rows)
    for row in rows:
        row.cells = {c.id: Cell(str(row.metrics.get(c.key)), c.key) for c in columns}
    return rows, columns


def test_three_seeds_rank_over_seeds_with_the_spreads_apart():
    from report.significance_section import significance_tables

    rows, columns = _rows({"good": [10.0, 11.0, 10.5], "close": [10.8, 11.6, 10.2],
                           "bad": [30.0, 31.0, 29.0]})
    replicates = {f"{f}-{s}": [v - 1, v + 1, v] for f, vs in
                  (("good", [10.0, 11.0, 10.5]), ("close", [10.8, 11.6, 10.2]),
                   ("bad", [30.0, 31.0, 29.0])) for s, v in enumerate(vs)}
    [table] = significance_tables(rows, columns,
                                  read=lambda run, key: {"values": replicates[run.run_id]})
    assert table.ranking.ranks == {"good": 1, "close": 1, "bad": 3}
    assert "Welch t over 3 seeds" in table.note
    spreads = {f: (n, seed_sd, sample_sd) for f, n, _, seed_sd, sample_sd in table.spreads}
    assert spreads["bad"] == (3, "1", "1")     # sd of 30, 31, 29; replicates' sd 1
    cells = {row.family: row.cells["fid_domain"].text for row in rows}
    assert cells["good"].endswith("#1 (tied)") and cells["bad"].endswith("#3")


def test_replicates_of_another_reference_seed_are_never_paired():
    from report.significance_section import significance_tables

    rows, columns = _rows({"a": [10.0], "b": [12.0], "c": [50.0]})

    def read(run, key):
        seed = 1 if run.run_id.startswith("c") else 0
        base = run.metrics["fid_domain"]
        return {"values": [base + i / 10 for i in range(20)], "seed": seed, "resamples": 20,
                "n_fake": 200, "n_real": 200, "weights": "abc", "kid_subset_size": None}

    [table] = significance_tables(rows, columns, read=read)
    assert set(table.ranking.ranks) == {"a", "b"}
    assert any("c left out" in n and "seed" in n and "never paired" in n for n in table.notes)
    assert "#" not in rows[2].cells["fid_domain"].text
