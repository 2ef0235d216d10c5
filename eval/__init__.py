"""Evaluation of trained runs (`genbench eval`): the metrics, and the generative-vs-discriminative
study in eval/ood/. The report that reads them is the top-level package report/.

    run.py          orchestration: load, run the selected metrics, log one evaluation record
                    (a nested MLflow run of the evaluated run) and the numbers into the run
    metrics/        the metric registry (__init__.py: name, label, direction, needs, stamps,
                    compute; register(); the genbench.metrics entry points) and the built-ins'
                    computes: fidelity, likelihood, probe, study (ood, bayes); context.py is
                    what a compute gets
    load.py         a model from an MLflow run id or a checkpoint path
    samples.py      batched sampling (labels from class frequencies for conditional models)
    extractors.py   feature extractors for torch-fidelity: `domain` and `inception`
    domain_classifier.py  the `domain` extractor's CNN: trained on the dataset, cached
    fidelity.py     FID, IS, KID, precision/recall on features (torch-fidelity's functions)
    likelihood.py   bits/dim (exact or a bound, as the family declares), reconstruction error
    probe.py        linear-probe accuracy of a frozen encoder
    ood/            --metrics ood and bayes:
        __init__.py     OOD sets x scores -> AUROC, AUPR, FPR@95 (metrics.py, sets.py,
                        scores.py, background.py, plots.py)
        bayes.py        --metrics bayes: p(y|x) by Bayes' rule on a conditional likelihood model
        baseline.py     the domain classifier as the discriminative baseline (max softmax, ECE)

eval never imports Ray: `genbench eval --workers N` runs through genbench/eval_workers.py.
"""
