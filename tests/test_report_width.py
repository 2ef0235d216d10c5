"""The report's results fit a 1400-px browser window: a quick-preset-shaped experiment (every
family, bits/dim, the probe and its stand-ins, sample quality under four protocols: n = 2000,
1000, 300 and 100 generated images) rendered and measured in headless Chromium."""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pytest

from report.render import write_report
from test_report import DOMAIN_TAGS, chromium_or_skip, domain_metrics, gan_history, logged_run

WIDTH = 1400
# the quick preset's n_fake per family (genbench/presets/quick.yaml), where the family exists
QUICK_N = {"ae": None, "vae": 2000, "gan": 2000, "pixelcnn": 300, "transformer": 100,
           "flow": 2000, "diffusion": 1000}
MEASURE = """JSON.stringify({
  page: document.documentElement.scrollWidth, window: window.innerWidth,
  tables: [...document.querySelectorAll('table')].map(t => ({
    id: t.id || t.className, width: t.scrollWidth,
    room: t.parentElement.clientWidth, scrolls: t.parentElement.scrollWidth >
      t.parentElement.clientWidth}))})"""


def measure(html: Path, width: int = WIDTH, height: int = 1000) -> dict:
    """Load the page at width x height and return MEASURE's answer."""
    from testing.chromium_check import Pipe

    with tempfile.TemporaryDirectory(prefix="genbench-width-") as profile:
        pipe = Pipe(chromium_or_skip(), profile, width, height)
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target,
                                                          "flatten": True})["sessionId"]
            pipe.send("Page.enable", session=session)
            pipe.send("Emulation.setDeviceMetricsOverride", {
                "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                session=session)
            pipe.send("Page.navigate", {"url": html.absolute().as_uri()}, session=session)
            deadline = time.time() + 30
            while time.time() < deadline and not any(
                    e.get("method") == "Page.loadEventFired" for e in pipe.events):
                pipe.drain(0.2)
            value = pipe.send("Runtime.evaluate", {"expression": MEASURE, "returnByValue": True},
                              session=session)["result"]["value"]
        finally:
            pipe.close()
    return json.loads(value)


def quick_shaped(experiment: str) -> None:
    from pipeline.models import FAMILIES

    for family, n in QUICK_N.items():
        if family not in FAMILIES:
            continue
        tags = {**DOMAIN_TAGS, "eval.bpd": "a bound", "eval.bpd.k": "8",
                "eval.domain.floor": f"{n} real train images vs the reference"}
        if n is None:   # the AE: reconstruction error and the probe, no sampler
            logged_run(experiment, family, {5: {"mse": 0.1, "images_per_s": 500.0}},
                       {"mse_test": 0.0123, "psnr_test": 24.9, "probe_accuracy": 0.8}, tags,
                       grid="reconstructions")
            continue
        tags.update({"eval.domain.n_fake": str(n)})
        found = {**domain_metrics(30.0 + n / 100), "kid_domain_std": 0.00123}
        if family != "gan":
            found.update({"bpd_test": 4.123456, "probe_accuracy": 0.7712})
        logged_run(experiment, family, gan_history((10,)), found, tags)


@pytest.mark.slow
def test_results_fit_a_1400_px_window(mlflow_uri, workdir):
    chromium_or_skip()
    quick_shaped("quick-shaped")
    html = write_report("quick-shaped", workdir / "out", quiet=True)
    text = html.read_text()
    assert text.count('class="results"') >= 4        # the first table + one per protocol
    for n in (2000, 300, 100):
        assert f"domain features: {n} generated vs 2000 test images" in text
    found = measure(html)
    assert found["window"] == WIDTH
    assert found["page"] <= WIDTH, found
    results = [t for t in found["tables"] if t["id"] == "results" or
               t["id"].startswith("results-table")]
    assert len(results) >= 4, found
    for table in results:
        assert table["width"] <= table["room"] and not table["scrolls"], table
    # the check can fail: the same page in a 700-px window does not fit
    narrow = measure(html, width=700)
    assert any(t["scrolls"] for t in narrow["tables"] if t["id"].startswith("results-table"))
