"""Child names and labels: deterministic, short enough for their kind, never colliding.

Covers: the plain <run>-<suffix> names; hash-suffixed truncation for long run names
(Service names <= 63, training names leave room for the pod index); two long names with
a shared prefix stay distinct; labels and selectors.
"""

from __future__ import annotations

import re

import pytest
from qwenft_operator import labels
from qwenft_operator.names import MAX_NAME_LENGTH, MAX_TRAIN_NAME_LENGTH, ChildNames, child_name

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def test_short_run_names_are_used_as_they_are() -> None:
    names = ChildNames.for_run("demo")
    assert names == ChildNames(
        validate_job="demo-validate",
        config_map="demo-config",
        train_service="demo-train",
        train_job="demo-train",
        merge_job="demo-merge",
        serve_deployment="demo-serve",
        serve_service="demo-serve",
    )


@pytest.mark.parametrize("length", [50, 56, 57, 60, 63])
def test_long_run_names_are_cut_with_a_hash(length: int) -> None:
    run = "a" + "b" * (length - 1)
    names = ChildNames.for_run(run)
    for name in vars(names).values():
        assert len(name) <= MAX_NAME_LENGTH and DNS_1035.match(name), name
    assert len(names.train_job) <= MAX_TRAIN_NAME_LENGTH
    assert len(f"{names.train_job}-99999") <= MAX_NAME_LENGTH
    assert ChildNames.for_run(run) == names


def test_long_names_sharing_a_prefix_do_not_collide() -> None:
    a = "team-" + "x" * 56 + "-a"
    b = "team-" + "x" * 56 + "-b"
    assert child_name(a, "validate") != child_name(b, "validate")
    assert child_name(a, "validate").endswith("-validate")


def test_labels_and_selectors() -> None:
    assert labels.build_labels("demo", "train") == {
        "app.kubernetes.io/managed-by": "qwenft-operator",
        "finetune.qwenft.io/name": "demo",
        "finetune.qwenft.io/component": "train",
    }
    assert labels.build_selector("demo", "serve") == {
        "finetune.qwenft.io/name": "demo",
        "finetune.qwenft.io/component": "serve",
    }
    assert labels.MANAGED_SELECTOR == "app.kubernetes.io/managed-by=qwenft-operator"
    assert labels.selector_string({"b": "2", "a": "1"}) == "a=1,b=2"
