"""Evaluation of trained runs (`genbench eval`) and the benchmark report.

    run.py          orchestration: load, sample, score, log into the run's MLflow run
    load.py         a model from an MLflow run id or a checkpoint path
    samples.py      batched sampling (labels from class frequencies for conditional models)
    extractors.py   feature extractors for torch-fidelity: `domain` and `inception`
    domain_classifier.py  the `domain` extractor's CNN: trained on the dataset, cached
    fidelity.py     FID, IS, KID, precision/recall on features (torch-fidelity's functions)
    likelihood.py   bits/dim (exact or a bound, as the family declares), reconstruction error
    probe.py        linear-probe accuracy of a frozen encoder
    ood.py          --metrics ood: OOD sets x scores -> AUROC, AUPR, FPR@95 (ood_metrics.py,
                    ood_sets.py, ood_scores.py, background.py, ood_plots.py)
    bayes.py        --metrics bayes: p(y|x) by Bayes' rule on a conditional likelihood model
    baseline.py     the domain classifier as the discriminative baseline (max softmax, ECE)
    report_ood.py   the report's "Can it reject the unseen?" section
    report.py       render the report (Markdown + HTML) of what report_collect.py reads from
                    MLflow; report_tables.py, report_sweeps.py and report_data.py (its types)

eval never imports Ray: `genbench eval --workers N` runs through genbench/eval_workers.py.
"""
