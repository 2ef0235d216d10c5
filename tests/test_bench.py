"""`genbench bench --seeds N`: each family trained N times, the report shows mean ± std over the
seeds and each seed's value. The quick preset is shrunk to two tiny families so this runs in
minutes on 2 cores; everything else (Ray Train, eval, MLflow, the report) is the real thing."""
import re
import statistics

import pytest

from genbench.cli import main
from pipeline import tracking
from testing.evalkit import TINY, domain_cache

pytestmark = pytest.mark.slow

FAMILIES = ("vae", "gan")


@pytest.fixture
def tiny_quick_preset(tmp_path):
    """The quick preset's shape, with tiny nets, a few steps and small n."""
    import yaml

    preset = {
        "every_family": {"config": {"train": {"steps": 4, "batch_size": 16, "log_every": 2,
                                              "checkpoint_every": 4}}, "n_fake": 100},
        "families": {f: {"config": {f: TINY[f]}} for f in FAMILIES},
        "eval": {"n_real": 100, "extractors": ["domain"], "k": 1, "bpd_images": 100,
                 "probe_images": 500}}
    path = tmp_path / "tiny-quick.yaml"
    path.write_text(yaml.safe_dump(preset))
    return path


def test_bench_with_two_seeds_reports_mean_and_std_per_family(
        tiny_quick_preset, ray_local, workdir, mlflow_uri, monkeypatch, tmp_path_factory,
        capsys):
    monkeypatch.setenv("GENBENCH_CACHE", str(domain_cache(tmp_path_factory.getbasetemp())))
    assert main(["bench", "--preset", str(tiny_quick_preset), "--families", ",".join(FAMILIES),
                 "--seeds", "2", "--experiment", "seeds"]) == 0

    runs = [r for r in tracking.search_runs(tracking.find_experiment("seeds"))
            if r.data.tags.get("genbench.kind") == "train"]
    by_family = {f: sorted((r for r in runs if r.data.tags["genbench.model"] == f),
                           key=lambda r: r.data.params["train.seed"]) for f in FAMILIES}
    for family, family_runs in by_family.items():
        assert [r.data.params["train.seed"] for r in family_runs] == ["0", "1"]
        assert [r.info.run_name for r in family_runs] == [
            f"{family}-fashion-mnist-seed0", f"{family}-fashion-mnist-seed1"]

    html = (workdir / "reports" / "seeds" / "report.html").read_text()
    results = html.split('id="results-table"', 1)[1].split("</table>", 1)[0]
    for family, family_runs in by_family.items():
        row = re.search(rf'<tr data-family="{family}"[^>]*>(.*?)</tr>', results, re.S).group(1)
        for key in ("fid_domain", "kid_domain") + (("bpd_test",) if family == "vae" else ()):
            values = [r.data.metrics[key] for r in family_runs]
            cell = re.search(rf'data-key="{key}"[^>]*data-value="([^"]+)"[^>]*>([^<]*)<',
                             row).groups()
            assert float(cell[0]) == pytest.approx(statistics.fmean(values)), (family, key)
            assert cell[1].endswith("(2 seeds)") and " ± " in cell[1], (family, key, cell)
            assert f"{statistics.stdev(values):.2g}" in cell[1]
    # each seed's own value, in the seeds table
    seeds_table = html.split('id="seeds-table"', 1)[1].split("</table>", 1)[0]
    for family, family_runs in by_family.items():
        for r in family_runs:
            row = re.search(rf'<tr data-family="{family}" data-seed="{r.data.params["train.seed"]}"'
                            rf'[^>]*>(.*?)</tr>', seeds_table, re.S).group(1)
            value = re.search(r'data-key="fid_domain"[^>]*data-value="([^"]+)"', row).group(1)
            assert float(value) == r.data.metrics["fid_domain"]
    md = (workdir / "reports" / "seeds" / "report.md").read_text()
    assert "### Each seed" in md and "(2 seeds)" in md
