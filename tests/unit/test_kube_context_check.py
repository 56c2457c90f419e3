"""The kube context check of validate and of a destroy's first step."""

from __future__ import annotations

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
    assert raised.value.type == contracts.KUBECONFIG_UNREADABLE
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
