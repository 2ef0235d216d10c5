"""`genbench report`: an experiment's MLflow runs (training, eval, sweeps, scaling) as one
Markdown + HTML report. It sits above tune/ in the layer order: it reads sweep parents by the
artifact names tune/summary.py gives them.

    render.py       write report.md + report.html (templates/*.j2: the HTML results as one
                    table per sample-quality protocol) and log them as a run
    collect.py      MLflow -> ReportData: one row per family, sweeps, OOD and scaling sections
    records.py      evaluation records: each number with the stamps of the evaluation that
                    made it (the newest record that logged it)
    data.py         the report's types and number formatting; labels and directions come
                    from the metric registry (eval/metrics/)
    tables.py       columns (one group per protocol), cells, seeds, the real-vs-real floor
    sweeps.py       a sweep's parent run: results table, best config, plots
    ood.py          the "Can it reject the unseen?" section (eval/ood's metrics)
    scaling.py      the bench's scaling runs: images/s and time to target per worker count
    plots.py        training curves (matplotlib)
    references.py   published numbers, shown only under the same protocol
"""
