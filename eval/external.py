"""`genbench eval --samples DIR`: anyone's samples, scored under a genbench protocol.

A folder of PNG/JPEG images from any model, trained anywhere, gets the same extractor, reference
set (n_real test images drawn with the same seed), floor and protocol stamps as a genbench run,
so its numbers can sit in the same report column. The images must already have the dataset's
shape and mode (e.g. 28x28 grey for Fashion-MNIST): they are never resized or converted, since
either would change what is measured. Results go into a new MLflow run tagged
genbench.kind=external (pass --experiment to put it beside a benchmark's runs).
"""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import torch

from eval.extractors import get_extractor
from eval.fidelity import FIDELITY_METRICS
from eval.run import (GRID_IMAGES, EvalOptions, EvalResult, library_versions, plan_fidelity,
                      resolve_device, score_fidelity)
from pipeline import schema, tracking
from pipeline.config import DataConfig
from pipeline.data import image_files, load_config_split, read_images
from pipeline.errors import ConfigError
from pipeline.grids import grid_png

KIND = schema.EXTERNAL


def load_samples(folder: Path, image_shape: tuple[int, int, int]) -> tuple[torch.Tensor, str]:
    """uint8 (N, C, H, W) of every image under folder, in file-name order, and a sha256 over the
    files; any image of another size or mode than image_shape is a one-line error."""
    if not folder.is_dir():
        raise ConfigError(f"--samples {folder} is not a directory; pass a folder of PNG/JPEG "
                          f"images")
    files = image_files(folder)
    if not files:
        raise ConfigError(f"no PNG/JPEG images under {folder}; write your samples there as "
                          f"image files")
    return read_images(folder, files, image_shape)


def evaluate_samples(opts: EvalOptions) -> EvalResult:
    """Score opts.samples (a folder) against opts.dataset's test split; log a new MLflow run."""
    opts.validate()
    t0 = time.time()
    folder = Path(opts.samples).absolute()
    fidelity = [m for m in FIDELITY_METRICS if m in opts.metrics]
    other = [m for m in opts.metrics if m not in FIDELITY_METRICS]
    if other:
        raise ConfigError(f"--samples has only sample-quality metrics ({','.join(FIDELITY_METRICS)}"
                          f"), not {','.join(other)}; drop them from --metrics")
    d = DataConfig(dataset=opts.dataset, root=opts.root, image_size=opts.image_size)
    test, train = load_config_split(d, "test"), load_config_split(d, "train")
    fake_all, sha = load_samples(folder, test.image_shape)
    notes: list[str] = []
    n_fake = opts.n_fake or len(fake_all)
    if n_fake > len(fake_all):
        raise ConfigError(f"--n-fake {n_fake} exceeds the {len(fake_all)} images in {folder}; "
                          f"lower it or add samples")
    plan = plan_fidelity(opts, n_fake, test, train, fidelity, notes)
    fake = fake_all
    if n_fake < len(fake_all):  # a seeded subset, in file order
        gen = torch.Generator().manual_seed(opts.seed)
        fake = fake_all[torch.randperm(len(fake_all), generator=gen)[:n_fake].sort().values]
    device = resolve_device(opts.device)
    extractors = [get_extractor(name, d.dataset, d.root, d.image_size, device,
                                opts.inception_weights, opts.quiet) for name in opts.extractors]
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {schema.eval_tag("seed"): str(opts.seed),
                            schema.eval_tag("device"): str(device),
                            schema.eval_tag("image_shape"): "x".join(map(str, test.image_shape)),
                            schema.eval_tag("samples"): f"{n_fake} of the {len(fake_all)} images "
                            f"in {folder} (sha256 {sha[:16]})"}
    tags.update({schema.eval_tag("versions", k): v for k, v in library_versions().items()})
    score_fidelity(opts, d, test, train, fake, extractors, fidelity, plan,
                   "as in the folder (not known to genbench)", metrics, tags, notes)

    name = opts.name or folder.name
    run_tags = {schema.KIND: KIND, schema.MODEL: schema.external_model(name),
                schema.DATASET: d.dataset, **tags}
    params = {"samples.dir": str(folder), "samples.images": len(fake_all),
              "samples.sha256": sha, "samples.name": name, "data.dataset": d.dataset,
              "data.root": d.root, "data.image_size": d.image_size}
    run_id = tracking.start_run(opts.experiment, f"{KIND}-{name}", params, run_tags)
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{uuid.uuid4().hex[:6]}"
    artifact_dir = f"eval/{stamp}"
    logger = tracking.RunLogger(run_id, tracking.tracking_uri())
    try:
        logger.metrics(metrics, 0)
        logger.figure_png(grid_png(fake[:GRID_IMAGES]), "samples/external.png")  # the report's grid
        record = {"run_id": run_id, "source": str(folder), "metrics": metrics, "protocol": tags,
                  "notes": notes}
        logger.figure_png(json.dumps(record, indent=2).encode(), f"{artifact_dir}/eval.json")
        logger.close()
    except BaseException:
        tracking.end_run(run_id, "FAILED")
        raise
    tracking.end_run(run_id)
    return EvalResult(run_id, schema.external_model(name), 0, metrics, tags, notes, artifact_dir,
                      time.time() - t0)
