"""The worker factory: one process's stages with their model backends, for both run modes.

A folder run's Ray actors (`PipelineActor`), a stream worker (services/run/stream.py) and a
process with `workers=0` all get their pipeline from `build_pipeline`, so both modes run the
same stages with the same backends, storage options and readable roots.
"""

from __future__ import annotations

from trapline.models.triton_backend import make_backends
from trapline.pipelines.flow import BatchOutput, PhotoPipeline
from trapline.pipelines.tables import ModelNames
from trapline.pipelines.types import MediaRef
from trapline.pipelines.uri_safety import configure_storage_roots
from trapline.services.adapters.object_store import configure_fsspec
from trapline.services.run import metrics
from trapline.services.settings import Settings


def build_pipeline(settings: Settings) -> PhotoPipeline:
    """The stages with their model backends, for this process (a Ray actor calls it too)."""
    configure_fsspec(settings)  # fsspec's S3 options live per process
    configure_storage_roots(settings.storage_roots)  # so do the readable roots (uri_safety)
    detector, classifier = make_backends(
        settings.model_backend,
        detector_model=settings.detector_model,
        classifier_model=settings.classifier_model,
        threads=settings.threads_per_worker,
        triton_url=settings.triton_url,
        triton_timeout_s=settings.triton_timeout_s,
        triton_detector_model=settings.triton_detector_model,
        triton_classifier_model=settings.triton_classifier_model,
        triton_max_in_flight=settings.triton_max_in_flight,
        triton_retries=settings.triton_retries,
    )
    return PhotoPipeline(settings.stage_options(), detector, classifier, metrics.count_stage_error)


class PipelineActor:
    """A Ray actor holding one PhotoPipeline (and its model sessions) for its lifetime."""

    def __init__(self, settings: Settings):
        self.pipeline = build_pipeline(settings)

    def describe(self) -> tuple[ModelNames, tuple[str, ...]]:
        return self.pipeline.model_names, self.pipeline.classifier.spec.labels

    def process(self, refs: list[MediaRef]) -> BatchOutput:
        return self.pipeline.process(refs)

    def node(self) -> str:
        """The Ray node this actor runs on (its id), so a run can say how work spread."""
        import ray

        return ray.get_runtime_context().get_node_id()
