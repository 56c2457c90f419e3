"""The kube context check of validate and of a destroy's first step."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError

from activities.deploy import DeployActivities
from deployer import contracts
from deployer.settings import WorkerSettings


def activities_with(kubeconfig: Path) -> DeployActivities:
    return DeployActivities(
        WorkerSettings(kubeconfig=kubeconfig, helm="helm", chart_root=Path.cwd())
    )


def test_unreadable_kubeconfig_not_request_error(tmp_path: Path) -> None:
    """A kubeconfig the worker cannot read is the worker's problem: its type is
    not one that marks the request invalid, so a destroy waits for a retry."""
    missing = tmp_path / "missing"
    with pytest.raises(ApplicationError) as raised:
        activities_with(missing)._check_kube_context("prod")
    assert raised.value.type == contracts.KUBECONFIG_INVALID
    assert raised.value.type not in contracts.REJECTED_REQUEST_TYPES
    assert raised.value.type not in contracts.DESTROY_REJECTED_TYPES
    assert f"cannot read the worker's kubeconfig {missing}" in raised.value.message
    assert "VENTROS_DEPLOY_KUBECONFIG" in raised.value.message


def test_unknown_context_rejects_request(tmp_path: Path) -> None:
    """A context that the readable kubeconfig lacks is the request's error."""
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text("contexts:\n- name: staging\n")
    with pytest.raises(ApplicationError) as raised:
        activities_with(kubeconfig)._check_kube_context("prod")
    assert raised.value.type == contracts.KUBE_CONTEXT_NOT_FOUND
    assert raised.value.type in contracts.DESTROY_REJECTED_TYPES
    assert "it has: staging" in raised.value.message


def test_no_kubeconfig_rejects_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker without any kubeconfig file (one in the cluster uses its
    service account) has no contexts, so a request that names one is
    invalid."""
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    activities = DeployActivities(
        WorkerSettings(kubeconfig=None, helm="helm", chart_root=Path.cwd())
    )
    with pytest.raises(ApplicationError) as raised:
        activities._check_kube_context("prod")
    assert raised.value.type == contracts.KUBE_CONTEXT_NOT_FOUND
    assert "the worker has no kubeconfig" in raised.value.message
    assert "Leave kube_context out" in raised.value.message


def test_context_from_kubeconfig_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the worker's setting, every file of $KUBECONFIG counts, as for
    the Kubernetes client; a missing one among them is skipped."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_text("contexts:\n- name: staging\n")
    second.write_text("contexts:\n- name: prod\n")
    listed = [str(first), str(tmp_path / "gone"), str(second)]
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join(listed))
    activities = DeployActivities(
        WorkerSettings(kubeconfig=None, helm="helm", chart_root=Path.cwd())
    )
    activities._check_kube_context("prod")
    with pytest.raises(ApplicationError) as raised:
        activities._check_kube_context("dev")
    assert raised.value.type == contracts.KUBE_CONTEXT_NOT_FOUND
    assert "it has: staging, prod" in raised.value.message


def test_invalid_kubeconfig_yaml_quotes_nothing(tmp_path: Path) -> None:
    """A kubeconfig that is not YAML is the worker's problem, and the error
    quotes none of the file, whose lines can hold keys."""
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text("token: s3cr3t-value\n  bad: [indent\n")
    with pytest.raises(ApplicationError) as raised:
        activities_with(kubeconfig)._check_kube_context("prod")
    assert raised.value.type == contracts.KUBECONFIG_INVALID
    assert "is not valid YAML" in raised.value.message
    assert "s3cr3t" not in raised.value.message
