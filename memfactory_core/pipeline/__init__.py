"""Pipeline specs, their validation, the batched runtime, live sessions and traces."""

from memfactory_core.pipeline.live import READ_QUESTION, LiveResult, LiveSession
from memfactory_core.pipeline.runtime import PipelineRuntime, Progress, RolloutResult
from memfactory_core.pipeline.spec import (
    PipelineSpec,
    ResolvedPipeline,
    SlotSpec,
    component_catalog,
    load_pipeline,
    load_spec,
    validate_spec,
)
from memfactory_core.pipeline.trace import Trace, TraceStep

__all__ = [
    "READ_QUESTION",
    "LiveResult",
    "LiveSession",
    "PipelineRuntime",
    "PipelineSpec",
    "Progress",
    "ResolvedPipeline",
    "RolloutResult",
    "SlotSpec",
    "Trace",
    "TraceStep",
    "component_catalog",
    "load_pipeline",
    "load_spec",
    "validate_spec",
]
