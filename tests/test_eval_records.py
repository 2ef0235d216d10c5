"""Each `genbench eval` is an immutable record, and the report pairs every number with the stamps
of the evaluation that made it. One run evaluated four times with different protocols:

    A  --metrics ood --ood-sets noise,constant --ood-images 40
    B  --metrics ood --ood-sets noise          --ood-images 60    (constant stays A's)
    C  --metrics fid --n-fake 120 --n-real 120
    D  --metrics kid --n-fake 100 --n-real 100                    (fid stays C's)

The run's own tags end up saying 60 images per OOD set and n = 100 (the last evaluations'),
which would put A's constant AUROC and C's FID under the wrong protocol; the report must not.
"""
from __future__ import annotations

import re

import pytest

from genbench.cli import main
from pipeline import tracking

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.uses_family("vae")]

OOD = ["--metrics", "ood", "--ood-background-steps", "0", "--k", "1", "--batch-size", "100",
       "--quiet"]


@pytest.fixture(scope="module")
def evaluated(family_run, domain_classifier, tmp_path_factory):
    run = family_run("vae")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", run.uri)
        mp.setenv("GENBENCH_CACHE", str(domain_classifier))
        records = {}
        for name, argv in (("A", OOD + ["--ood-sets", "noise,constant", "--ood-images", "40"]),
                           ("B", OOD + ["--ood-sets", "noise", "--ood-images", "60"]),
                           ("C", ["--metrics", "fid", "--n-fake", "120", "--n-real", "120",
                                  "--quiet"]),
                           ("D", ["--metrics", "kid", "--n-fake", "100", "--n-real", "100",
                                  "--quiet"])):
            assert main(["eval", "--run-id", run.run_id, *argv]) == 0, name
            records[name] = tracking.get_run(tracking.run_tags(run.run_id)[
                "genbench.eval_record"])
        from report.render import write_report
        out = tmp_path_factory.mktemp("records-report")
        html = write_report(run.experiment, out / "report", quiet=True).read_text()
        yield run, records, html, tracking.get_run(run.run_id)


def test_every_evaluation_is_its_own_record(evaluated):
    run, records, _, parent = evaluated
    ids = {r.info.run_id for r in records.values()}
    assert len(ids) == 4 and run.run_id not in ids
    for name, record in records.items():
        assert record.data.tags["mlflow.parentRunId"] == run.run_id, name
        assert record.data.tags["genbench.kind"] == "evaluation"
        assert record.info.status == "FINISHED"
    a, b, c, d = (records[x].data for x in "ABCD")
    assert a.params["eval.ood.images_per_set"] == "40" and a.params["eval.selected"] == "ood"
    assert b.params["eval.ood.images_per_set"] == "60"
    assert "ood_auroc_constant_bpd" in a.metrics and "ood_auroc_constant_bpd" not in b.metrics
    assert c.params["eval.domain.n_fake"] == "120" and "fid_domain" in c.metrics
    assert d.params["eval.domain.n_fake"] == "100" and "fid_domain" not in d.metrics
    # the evaluated run: every number (the latest of each) and only the latest stamps, as before
    assert parent.data.metrics["ood_auroc_constant_bpd"] == a.metrics["ood_auroc_constant_bpd"]
    assert parent.data.metrics["fid_domain"] == c.metrics["fid_domain"]
    assert parent.data.tags["eval.ood.images_per_set"] == "60"      # B's, though constant is A's
    assert parent.data.tags["eval.domain.n_fake"] == "100"          # D's, though FID is C's
    # a record's protocol cannot be rewritten: params are write-once in MLflow
    with pytest.raises(Exception):
        tracking.log_params(records["C"].info.run_id, {"eval.domain.n_fake": "999"})


def cells_with_records(html: str) -> list[dict]:
    """Every <td> that names the evaluation its number came from, with its attributes."""
    out = []
    for m in re.finditer(r"<tr([^>]*)>(.*?)</tr>", html, re.S):
        row = dict(re.findall(r'([\w-]+)="([^"]*)"', m.group(1)))
        for td in re.finditer(r"<td ([^>]*)>([^<]*)</td>", m.group(2), re.S):
            attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', td.group(1)))
            if "data-eval" in attrs:
                out.append({**row, **attrs, "text": td.group(2).strip()})
    return out


def test_the_report_pairs_every_number_with_its_own_evaluation(evaluated):
    import html as htmllib

    run, records, html, _ = evaluated
    # other tests may have evaluated this session's runs of the experiment before: their numbers
    # must carry their own records too, so every evaluation record of the experiment is known
    every = tracking.search_runs(tracking.find_experiment(run.experiment, run.uri),
                                 "tags.`genbench.kind` = 'evaluation'", uri=run.uri)
    by_id = {r.info.run_id: ("earlier", r) for r in every}
    by_id.update({r.info.run_id: (name, r) for name, r in records.items()})
    cells = cells_with_records(html)
    seen = set()
    for cell in cells:
        name, record = by_id[cell["data-eval"]]
        title = htmllib.unescape(cell.get("title", ""))
        if "data-score" in cell:   # the OOD table: a row per score, a column per set
            key = f"{cell['data-key']}_{cell['data-score']}"
            images = record.data.params["eval.ood.images_per_set"]
            assert f"images per OOD set: {images}" in title, (key, name, title)
        else:
            key = cell["data-key"]
            if "data-column" in cell and "_domain" in key:   # its column's protocol is its own
                n = record.data.params["eval.domain.n_fake"]
                assert cell["data-column"] == key or f"@{n}-" in cell["data-column"], cell
                if not key.startswith("floor_"):
                    assert f"n_fake={n}" in title, (key, name, title)
        assert float(cell["data-value"]) == record.data.metrics[key], (key, name)
        assert f"evaluation {record.info.run_id[:8]}" in title or key.startswith("floor_")
        seen.add((name, key))
    # the numbers that outlived a newer evaluation come from the older one, with its stamps
    assert ("A", "ood_auroc_constant_bpd") in seen and ("B", "ood_auroc_noise_bpd") in seen
    assert ("A", "ood_auroc_noise_bpd") not in seen            # B replaced it
    assert ("C", "fid_domain") in seen and ("D", "kid_domain") in seen
    assert ("C", "floor_fid_domain") in seen and ("D", "floor_kid_domain") in seen
    # FID and KID measured with different n: two column groups, each named with its n
    assert "domain features: 120 generated vs 120 test images" in html
    assert "domain features: 100 generated vs 100 test images" in html
    # the protocol table shows the n of both evaluations, each with its evaluation
    protocol = html.split('id="protocol"', 1)[1]
    for name in "CD":
        assert f"(evaluation {records[name].info.run_id[:8]})" in protocol


def test_a_spread_or_interval_never_outlives_its_metric(mlflow_uri, workdir):
    """Two records of one run: the first with a bootstrap interval, the newer without. The run
    itself still holds the old interval (MLflow keeps a metric's latest value); the report's
    view takes FID and everything derived from it from the newer record only. A record that did
    not finish counts for nothing."""
    from report import records

    parent = tracking.start_run("spread", "train", {}, {"genbench.kind": "train",
                                                        "genbench.model": "gan"})
    older = {"fid_domain": 10.0, "fid_domain_ci_low": 8.0, "fid_domain_ci_high": 12.0,
             "is_domain": 3.0, "is_domain_std": 0.1}
    for name, values, status in (("old", older, "FINISHED"),
                                 ("new", {"fid_domain": 20.0}, "FINISHED"),
                                 ("cut", {"fid_domain": 99.0}, "KILLED")):
        rid = tracking.client().create_run(
            tracking.find_experiment("spread"), run_name=name,
            tags={"genbench.kind": "evaluation", "mlflow.parentRunId": parent}).info.run_id
        tracking.log_params(rid, {"eval.domain.n_fake": name})
        logger = tracking.RunLogger(rid, tracking.tracking_uri())
        logger.metrics(values, 5)
        if status == "FINISHED":   # the parent gets what a finished evaluation logged
            run_logger = tracking.RunLogger(parent, tracking.tracking_uri())
            run_logger.metrics(values, 5)
            run_logger.close()
        logger.close()
        tracking.end_run(rid, status)
    tracking.end_run(parent)
    runs = tracking.search_runs(tracking.find_experiment("spread"))
    by_parent = records.records_by_parent(runs)
    assert [r.info.run_name for r in by_parent[parent]] == ["new", "old"]
    run = next(r for r in runs if r.info.run_id == parent)
    assert run.data.metrics["fid_domain_ci_low"] == 8.0          # the run's stale interval
    view = records.evaluated(run, by_parent[parent])
    m = view.data.metrics
    assert m["fid_domain"] == 20.0 and "fid_domain_ci_low" not in m
    assert view.stamps("fid_domain")["eval.domain.n_fake"] == "new"
    assert m["is_domain"] == 3.0 and m["is_domain_std"] == 0.1    # IS only in the old one
    assert view.stamps("is_domain_std")["eval.domain.n_fake"] == "old"
    assert records.stamps_of(run, "fid_domain") == {**run.data.params, **run.data.tags}
