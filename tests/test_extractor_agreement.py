"""Extractor agreement: the families' rank correlation between two extractors' values of one
metric, and every pair whose order flips; the report shows both and says a flip at the top."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from scipy.stats import spearmanr

from report.data import ReportData
from report.extractor_agreement import agreements
from report.render import render_html


def row(family: str, **metrics) -> SimpleNamespace:
    return SimpleNamespace(family=family, metrics=metrics)


ROWS = [row("vae", fid_domain=120.0, fid_inception=60.0, kid_domain=0.1),
        row("gan", fid_domain=100.0, fid_inception=70.0, kid_domain=0.2),
        row("flow", fid_domain=140.0, fid_inception=90.0),
        row("ae", bpd_test=4.0)]


def test_rank_correlation_and_flips_by_hand():
    [fid] = agreements(ROWS)      # kid has one extractor only; ae has no sample quality
    assert fid.metric == "fid" and fid.extractors == ("domain", "inception")
    assert fid.families == ["flow", "gan", "vae"]
    # domain ranks gan < vae < flow, inception vae < gan < flow: one flip, rho = 1 - 6*2/(3*8)
    assert fid.flips == [("gan", "vae")]
    assert fid.rho == pytest.approx(0.5)
    assert fid.rho == pytest.approx(spearmanr([140, 100, 120], [90, 70, 60]).statistic)


def test_same_order_has_no_flip_and_two_families_are_plus_or_minus_one():
    same = agreements([row("a", fid_domain=1.0, fid_inception=10.0),
                       row("b", fid_domain=2.0, fid_inception=20.0)])
    flipped = agreements([row("a", fid_domain=1.0, fid_inception=20.0),
                          row("b", fid_domain=2.0, fid_inception=10.0)])
    assert (same[0].rho, same[0].flips) == (1.0, [])
    assert (flipped[0].rho, flipped[0].flips) == (-1.0, [("a", "b")])


def test_the_report_shows_the_table_and_the_flip():
    data = ReportData(experiment="e", experiment_id="1", tracking_uri="sqlite://", generated="now",
                      datasets=[], columns=[], rows=[], floor_columns=[], floor_rows=[],
                      protocol=[], versions=[], sweeps=[], runs=[], missing=[],
                      agreement=agreements(ROWS))
    table = render_html(data).split('id="agreement-table"', 1)[1].split("</table>", 1)[0]
    assert "domain vs inception" in table and "flow, gan, vae" in table and "+0.50" in table
    assert "<strong>flip:</strong> gan/vae" in table
