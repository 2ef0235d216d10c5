"""The MLflow record: run kinds, tag names, metric keys and the params the report reads.

genbench writes a run's record in several places (train, eval, tune, the bench's scaling runs, the
report's own run) and reads it in others (the report, --resume, sweep resume). Both sides spell a
tag, build a metric key or parse one only through this module, so what is written and what is
read cannot drift apart. Standard library only: every package may import it.
"""
from __future__ import annotations

import re

# --- run kinds: the value of the KIND tag --------------------------------------------------------
KIND = "genbench.kind"
TRAIN = "train"            # `genbench train`
EVAL = "eval"              # `genbench eval --checkpoint` of a run not in this store: its own run
EXTERNAL = "external"      # `genbench eval --samples DIR`: anyone's samples, no model
TUNE = "tune"              # a sweep's parent run
TUNE_TRIAL = "tune-trial"  # one trial of a sweep, a child of the parent
SCALING = "scaling"        # the bench's scaling runs (one family, 1, 2, ... workers)
REPORT = "report"          # `genbench report`'s own run
EVALUATION = "evaluation"  # one `genbench eval`'s immutable record, nested under the run it read
KINDS = (TRAIN, EVAL, EXTERNAL, TUNE, TUNE_TRIAL, SCALING, REPORT, EVALUATION)


def kind(tags: dict) -> str:
    """A run's kind from its tags; "" for a run genbench did not start."""
    return tags.get(KIND, "")


# --- tags on every run genbench starts ------------------------------------------------------------
MODEL = "genbench.model"        # the family, or external:<name> for a folder of samples
DATASET = "genbench.dataset"


def external_model(name: str) -> str:
    """The MODEL tag of `genbench eval --samples DIR --name NAME`: one report row per name."""
    return f"{EXTERNAL}:{name}"


# Where and with what a run was made (pipeline/tracking.versions_and_hardware writes them).
VERSION = "genbench.version"
GIT_COMMIT = "git.commit"
TORCH_VERSION, RAY_VERSION = "torch.version", "ray.version"
MLFLOW_VERSION, PYTHON_VERSION = "mlflow.version", "python.version"
HARDWARE_CPU, HARDWARE_CPUS, HARDWARE_GPU = "hardware.cpu", "hardware.cpus", "hardware.gpu"
VERSION_TAGS = (VERSION, GIT_COMMIT, TORCH_VERSION, RAY_VERSION, MLFLOW_VERSION, PYTHON_VERSION,
                HARDWARE_CPU, HARDWARE_CPUS, HARDWARE_GPU)

# --- training runs --------------------------------------------------------------------------------
RAY_RUN_DIR = "genbench.ray_run_dir"              # the run's Ray directory: its checkpoints
FAULT_FIRED = "genbench.fault_fired"              # an injected fault (GENBENCH_FAULT) fired
RESUMED_FROM_STEP = "genbench.resumed_from_step"  # the step the latest worker group began at
EXECUTOR = "genbench.executor"    # "warm slot" (pipeline/warm.py); absent: Ray Train throughout
WARM_SLOT = "warm slot"


def node_tag(rank: int) -> str:
    """The Ray node a rank ran on (placement, set by rank 0)."""
    return f"genbench.node.rank{rank}"


# --- eval into a run of its own (a checkpoint from elsewhere) -------------------------------------
CHECKPOINT = "genbench.checkpoint"
CHECKPOINT_RUN_ID = "genbench.checkpoint_run_id"

# --- sweeps: the parent run and its trials --------------------------------------------------------
TUNE_PATH = "genbench.tune_path"          # on the parent: its sweep directory
SWEEP_ID = "genbench.sweep_id"            # on the parent: the id in the directory's marker
BEST_TRIAL = "genbench.best_trial"        # on the parent, once the sweep ends
BEST_RUN_ID = "genbench.best_run_id"
TRIAL_ID = "genbench.trial_id"            # on a trial
# running | completed | early_stopped | failed | interrupted
TRIAL_STATUS = "genbench.trial_status"
TRIAL_STARTS = "genbench.trial_starts"    # how often the trial function began (1 unless resumed)
SAMPLED = "genbench.sampled"              # the trial's sampled hyperparameters (JSON)

# --- the bench's scaling runs ---------------------------------------------------------------------
SCALING_DEVICE = "genbench.scaling.device"   # cpu | gpu
SCALING_TARGET = "genbench.scaling.target"   # the preset's target validation metric, if any

# --- the report's own run -------------------------------------------------------------------------
REPORT_OF = "genbench.report_of"   # comma list of the runs in the report's main table

# --- evaluation records ---------------------------------------------------------------------------
# Each `genbench eval` is a run of its own (kind EVALUATION), a child of the evaluated run: its
# protocol stamps (below) are its params, which MLflow never lets change, its numbers its
# metrics. The evaluated run gets the same numbers and, as tags, the latest evaluation's stamps
# and the id of its record (EVAL_RECORD): a convenience the next evaluation overwrites.
PARENT_RUN = "mlflow.parentRunId"   # MLflow's own nesting tag (the UI shows children under it)
EVAL_RECORD = "genbench.eval_record"


def record_tags(parent_run_id: str, parent_tags: dict) -> dict:
    """The tags of an evaluation record of the run parent_run_id."""
    tags = {KIND: EVALUATION, PARENT_RUN: parent_run_id}
    tags.update({k: parent_tags[k] for k in (MODEL, DATASET) if k in parent_tags})
    return tags


def parent_of(tags: dict) -> str:
    return tags.get(PARENT_RUN, "")


# --- eval's protocol stamps (params of the record; tags of the evaluated run) ---------------------
EVAL_PREFIX = "eval."
# params and tags that stamp how a metric was measured: the report's protocol table
PROTOCOL_PREFIXES = (EVAL_PREFIX, "protocol.", "fidelity.", "likelihood.", "probe.", "floor.")


def eval_tag(*parts) -> str:
    """eval_tag("bpd", "k") -> "eval.bpd.k"; eval_tag("ood") -> "eval.ood"."""
    return EVAL_PREFIX + ".".join(map(str, parts))


def extractor_tag(extractor: str, name: str) -> str:
    """A sample-quality stamp of one extractor: extractor_tag("domain", "n_fake")."""
    return eval_tag(extractor, name)


# what makes two sample-quality numbers comparable: the report's one-protocol-per-column key
FIDELITY_PROTOCOL = ("n_fake", "n_real", "reference_split", "weights_sha256")


def figure_tag(group: str) -> str:
    """Where an eval figure of a metric group went: figure_tag("ood") -> "eval.ood.figure"."""
    return eval_tag(group, "figure")


def ood_set_tag(name: str) -> str:
    """How an OOD set was built, or why it was skipped ("skipped: ...")."""
    return eval_tag("ood", "set", name)


def ood_score_tag(score: str) -> str:
    return eval_tag("ood", "score", score)


OOD_STAMPS = {  # stamps the report's OOD section summarises, with what it calls them
    eval_tag("ood", "images_per_set"): "images per OOD set",
    eval_tag("ood", "background"): "likelihood-ratio background model",
    eval_tag("ood", "exclude_classes"): "unseen class(es)",
    eval_tag("ood", "classifier"): "classifier",
}
OOD_TAG_PREFIXES = (eval_tag("ood"), eval_tag("bayes"))  # the OOD section's, not the main table's

# --- metric keys ----------------------------------------------------------------------------------
# Sample quality: <metric>_<extractor>, e.g. fid_domain. --metrics prc logs precision and recall,
# --metrics dc density and coverage (Naeem et al. 2020). The order is the report's column order.
FIDELITY = ("fid", "kid", "is", "precision", "recall", "density", "coverage",
            "intra_fid")  # intra_fid: per class
FIDELITY_RE = re.compile(rf"^(?P<metric>{'|'.join(FIDELITY)})_(?P<ext>[a-z0-9]+)$")
FLOOR_PREFIX = "floor_"          # the same metric on real train vs real test images
CI_SUFFIXES = ("_ci_low", "_ci_high")   # eval --bootstrap
STD = "_std"


def fidelity_key(metric: str, extractor: str, prefix: str = "") -> str:
    """fidelity_key("fid", "domain") -> "fid_domain"; prefix=FLOOR_PREFIX -> "floor_fid_domain"."""
    return f"{prefix}{metric}_{extractor}"


def parse_fidelity_key(key: str) -> tuple[str, str] | None:
    """"fid_domain" -> ("fid", "domain"); None for any other key (std, interval, floor)."""
    m = FIDELITY_RE.match(key)
    return (m["metric"], m["ext"]) if m else None


def extractor_of(key: str) -> str | None:
    """"fid_inception" -> "inception"; None for a key that is not a sample-quality metric."""
    parsed = parse_fidelity_key(key)
    return parsed[1] if parsed else None


def std_key(key: str) -> str:
    """The spread of a metric over IS splits / KID subsets: is_domain -> is_domain_std."""
    return key + STD


def ci_keys(key: str) -> tuple[str, str]:
    """The bootstrap interval of a metric: (fid_domain_ci_low, fid_domain_ci_high)."""
    return key + CI_SUFFIXES[0], key + CI_SUFFIXES[1]


def floor_key(key: str) -> str:
    return FLOOR_PREFIX + key


def bpd_key(bits: int, split: str = "test") -> str:
    """Bits/dim over `bits`-bit data: bpd_test for 8-bit pixels (comparable with the literature),
    bpd_binarized_test for 1-bit data, where a uniform model scores 1."""
    return {8: f"bpd_{split}", 1: f"bpd_binarized_{split}"}.get(bits, f"bpd_{bits}bit_{split}")


BPD_TEST, BPD_BINARIZED_TEST = bpd_key(8), bpd_key(1)
NLL_TEST, MSE_TEST, PSNR_TEST = "nll_test", "mse_test", "psnr_test"
PROBE_ACCURACY = "probe_accuracy"

# OOD detection: ood_<metric>_<set>_<score>, e.g. ood_auroc_noise_bpd
OOD_PREFIX = "ood_"
OOD_METRICS = ("auroc", "aupr", "fpr95")


def ood_key(metric: str, set_name: str, score: str) -> str:
    return f"{OOD_PREFIX}{metric}_{set_name}_{score}"


def parse_ood_key(key: str) -> tuple[str, str, str] | None:
    """"ood_auroc_noise_bpd" -> ("auroc", "noise", "bpd"); None for other keys."""
    parts = key.split("_")
    if len(parts) != 4 or parts[0] + "_" != OOD_PREFIX or parts[1] not in OOD_METRICS:
        return None
    return parts[1], parts[2], parts[3]


# --metrics bayes: <who>_<metric> for the Bayes classifier on p(x|y) and the domain classifier
BAYES, CLASSIFIER = "bayes", "classifier"
CLASSIFICATION_METRICS = ("accuracy", "nll", "ece")


def classification_key(who: str, metric: str) -> str:
    """classification_key(BAYES, "accuracy") -> "bayes_accuracy"."""
    return f"{who}_{metric}"


# eval metrics that are no training curve (the report leaves them out of the curves)
SANITY_PREFIX = "sanity_"   # the metric sanity panel: sanity_<set>_<metric>_<extractor>
NOT_TRAINING = (FLOOR_PREFIX, OOD_PREFIX, BAYES + "_", CLASSIFIER + "_", SANITY_PREFIX)

# --- params (the training config, as Config.flat logs it) that the report reads -------------------
SEED_PARAM = "train.seed"
CONDITIONAL_PARAM = "train.conditional"
EXCLUDE_CLASSES_PARAM = "data.exclude_classes"


def is_conditional(params: dict) -> bool:
    return params.get(CONDITIONAL_PARAM, "False").lower() == "true"


def excludes_classes(params: dict) -> bool:
    """Trained without some classes (data.exclude_classes): its OOD set `unseen` is those."""
    return params.get(EXCLUDE_CLASSES_PARAM, "[]") not in ("[]", "()", "")


def is_ood_variant(params: dict) -> bool:
    """A run made for the OOD study (conditional, or without some classes), not for the main
    table: the report shows it there only when a family has no other run."""
    return is_conditional(params) or excludes_classes(params)
