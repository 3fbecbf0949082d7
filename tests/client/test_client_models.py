"""The client's models are copies of the API's response schemas (the client cannot import the service):
every field they declare must be one the API documents, so a rename in the API fails here, not in a
user's script."""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest

from app.main import create_app
from instructforge import client

PAIRS = {
    client.User: "UserRead",
    client.Project: "ProjectRead",
    client.Dataset: "DatasetRead",
    client.DatasetStats: "DatasetStats",
    client.Record: "RecordRead",
    client.BadLine: "BadLineRead",
    client.ImportResult: "ImportResult",
    client.Job: "JobRead",
    client.JobKind: "JobKindRead",
    client.Teacher: "TeacherRead",
    client.Estimate: "EstimateRead",
    client.Snapshot: "SnapshotRead",
    client.SnapshotDiff: "SnapshotDiff",
    client.Metric: "MetricRead",
    client.TrainingRun: "TrainingRunDetail",
    client.Artifact: "ArtifactRead",
    client.EvaluationSystem: "SystemRead",
    client.Evaluation: "EvaluationDetail",
}


@cache
def _schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = create_app().openapi()["components"]["schemas"]
    return schemas


@pytest.mark.parametrize("model", list(PAIRS), ids=lambda m: m.__name__)
def test_every_client_field_is_a_field_the_api_documents(model: type[client.Model]) -> None:
    documented = set(_schemas()[PAIRS[model]]["properties"])
    assert set(model.model_fields) <= documented, set(model.model_fields) - documented
