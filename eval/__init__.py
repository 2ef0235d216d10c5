"""Evaluation of trained runs (`genbench eval`) and the benchmark report.

    run.py          orchestration: load, sample, score, log into the run's MLflow run
    load.py         a model from an MLflow run id or a checkpoint path
    samples.py      batched sampling (labels from class frequencies for conditional models)
    extractors.py   feature extractors: `domain` (trained here) and `inception` (torch-fidelity)
    fidelity.py     FID, IS, KID, precision/recall on features (torch-fidelity's functions)
    likelihood.py   bits/dim (PixelCNN exact, VAE IWAE bound), AE reconstruction error
    probe.py        linear-probe accuracy of a frozen encoder

eval never imports Ray: `genbench eval --workers N` runs through genbench/eval_workers.py.
"""
