"""Imports every domain's models so that Alembic and relationship resolution see the whole schema."""

from app.audit.models import AuditLog
from app.auth.models import ApiToken, User
from app.base import Base
from app.datasets.models import Dataset
from app.evaluation.models import (
    Evaluation,
    EvaluationAnswer,
    EvaluationPrompt,
    EvaluationSystem,
    EvaluationVerdict,
)
from app.generation.models import LlmCacheEntry, LlmCall
from app.jobs.models import Job
from app.preferences.models import Candidate, PreferenceJudgment
from app.projects.models import Project, ProjectMember
from app.records.models import Record, RecordAssignment, RecordRevision, RecordTag, ReviewEvent
from app.snapshots.models import Snapshot, SnapshotItem
from app.training.models import TrainingMetric, TrainingRun

__all__ = [
    "ApiToken",
    "AuditLog",
    "Base",
    "Candidate",
    "Dataset",
    "Evaluation",
    "EvaluationAnswer",
    "EvaluationPrompt",
    "EvaluationSystem",
    "EvaluationVerdict",
    "Job",
    "LlmCacheEntry",
    "LlmCall",
    "PreferenceJudgment",
    "Project",
    "ProjectMember",
    "Record",
    "RecordAssignment",
    "RecordRevision",
    "RecordTag",
    "ReviewEvent",
    "Snapshot",
    "SnapshotItem",
    "TrainingMetric",
    "TrainingRun",
    "User",
]
