"""Optional OpenTelemetry tracing through the SDK's interceptor."""

from __future__ import annotations

import uuid

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from deployer.connect import interceptors
from deployer.settings import TemporalSettings
from tests.workflow.standins import StandIns
from workflows.deploy import VentrosDeploy


def test_tracing_off_adds_no_interceptor() -> None:
    """With tracing off (the default) no interceptor is installed."""
    assert interceptors(TemporalSettings()) == []


async def test_tracing_records_workflow_and_activity_spans(
    temporal_env: WorkflowEnvironment,
) -> None:
    """With tracing on, starting a deploy and running its activities make spans."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    settings = TemporalSettings(tracing="console")
    config = temporal_env.client.config()
    config["interceptors"] = interceptors(settings)
    client = Client(**config)
    queue = f"tq-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=queue,
        workflows=[VentrosDeploy],
        activities=StandIns().activities(),
    ):
        await client.execute_workflow(
            "VentrosDeploy",
            {"namespace": "traced"},
            id=f"wf-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
        )
    names = {span.name for span in exporter.get_finished_spans()}
    assert "StartWorkflow:VentrosDeploy" in names
    assert "RunActivity:apply_phase" in names
    assert "RunActivity:wait_ready" in names
