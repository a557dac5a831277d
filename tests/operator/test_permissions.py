"""The start-up permission check's questions and its report (no cluster)."""

from __future__ import annotations

from qwenft_operator.permissions import Access, report, required


def test_required_per_namespace_or_cluster_wide() -> None:
    accesses = required(["team-a", "team-b"])
    assert len(accesses) == 2 * 7 * 2
    assert Access("team-a", "", "persistentvolumeclaims", "watch") in accesses
    assert Access("team-a", "", "configmaps", "list") in accesses
    assert not any(a.resource == "secrets" for a in accesses)  # looked up, never listed
    assert Access("team-b", "", "pods", "watch") in accesses
    assert Access("team-a", "finetune.qwenft.io", "qwenfinetunes", "list") in accesses
    assert Access("team-b", "finetune.qwenft.io", "qwenmodelservers", "watch") in accesses
    assert {a.namespace for a in required([])} == {""}


def test_report_names_every_refusal_and_the_fix() -> None:
    assert report([]) is None
    refused = [Access("team-b", "", "pods", "list"), Access("team-b", "batch", "jobs", "watch")]
    assert report(refused) == (
        "the operator may not list pods in namespace team-b; watch jobs.batch in namespace "
        "team-b: grant the chart's Role in team-b or remove it from QWENFT_NAMESPACES"
    )
    cluster_wide = report([Access("", "apps", "deployments", "watch")])
    assert cluster_wide is not None
    assert "watch deployments.apps in all namespaces" in cluster_wide
    assert "set QWENFT_NAMESPACES" in cluster_wide
