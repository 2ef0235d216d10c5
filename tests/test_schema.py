"""pipeline/schema.py owns the MLflow record: key builders and their parsers agree, and no other
module spells a genbench.* tag."""
import ast
from pathlib import Path

import pytest

from pipeline import schema

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "eval", "tune", "report", "genbench")
# not tags: the entry-point group families are installed under (pipeline/models, which may import
# torch and the standard library only)
NOT_TAGS = {"genbench.families", "genbench.metrics"}  # entry-point groups


@pytest.mark.parametrize("metric", schema.FIDELITY)
def test_fidelity_keys_parse_back(metric):
    key = schema.fidelity_key(metric, "inception")
    assert schema.parse_fidelity_key(key) == (metric, "inception")
    assert schema.extractor_of(key) == "inception"
    for other in (schema.std_key(key), *schema.ci_keys(key),
                  schema.fidelity_key(metric, "inception", schema.FLOOR_PREFIX)):
        assert schema.parse_fidelity_key(other) is None, other


def test_ood_keys_parse_back_and_other_keys_do_not():
    for metric in schema.OOD_METRICS:
        assert schema.parse_ood_key(schema.ood_key(metric, "noise", "bpd")) == (metric, "noise",
                                                                               "bpd")
    for key in ("ood_auroc_noise", "ood_f1_noise_bpd", "fid_domain", schema.BPD_TEST):
        assert schema.parse_ood_key(key) is None, key


def test_bpd_keys_and_eval_tags():
    assert (schema.bpd_key(8), schema.bpd_key(1), schema.bpd_key(5)) == \
        ("bpd_test", "bpd_binarized_test", "bpd_5bit_test")
    assert schema.extractor_tag("domain", "n_fake") == "eval.domain.n_fake"
    assert schema.figure_tag("ood") == "eval.ood.figure"
    assert schema.ood_set_tag("mnist").startswith(schema.OOD_TAG_PREFIXES)
    assert all(k.startswith(schema.OOD_TAG_PREFIXES) for k in schema.OOD_STAMPS)


@pytest.mark.parametrize("params, conditional, excluded", [
    ({}, False, False),
    ({"train.conditional": "True", "data.exclude_classes": "[]"}, True, False),
    ({"train.conditional": "False", "data.exclude_classes": "[3]"}, False, True),
    ({"train.conditional": "true", "data.exclude_classes": "(3, 4)"}, True, True),
])
def test_the_one_ood_variant_test(params, conditional, excluded):
    assert schema.is_conditional(params) == conditional
    assert schema.excludes_classes(params) == excluded
    assert schema.is_ood_variant(params) == (conditional or excluded)


def string_parts(tree: ast.AST):
    """(text, line) of every string literal, f-strings' literal parts included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value, node.lineno


def test_genbench_tags_are_spelled_only_in_the_schema():
    found = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path == ROOT / "pipeline" / "schema.py":
                continue
            for text, line in string_parts(ast.parse(path.read_text(), str(path))):
                if text.startswith("genbench.") and text not in NOT_TAGS:
                    found.append(f"{path.relative_to(ROOT)}:{line}: {text!r}")
    assert not found, "tag names belong in pipeline/schema.py:\n" + "\n".join(found)


def test_an_evaluation_record_is_a_child_of_the_run_it_evaluated():
    parent_tags = {schema.KIND: schema.TRAIN, schema.MODEL: "vae", schema.DATASET: "mnist",
                   schema.RAY_RUN_DIR: "/somewhere"}
    tags = schema.record_tags("abc", parent_tags)
    assert tags == {schema.KIND: schema.EVALUATION, schema.PARENT_RUN: "abc",
                    schema.MODEL: "vae", schema.DATASET: "mnist"}
    assert schema.kind(tags) == schema.EVALUATION in schema.KINDS
    assert schema.parent_of(tags) == "abc" and schema.parent_of(parent_tags) == ""
