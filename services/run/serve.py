"""`trapline serve`: `workers` stream workers in one process (Ray actors), until SIGTERM.

Each actor holds one `StreamWorker` (services/run/stream.py) with its own pipeline from the
worker factory (services/run/workers.py) and its own metrics endpoint.
"""

from __future__ import annotations

import logging
from typing import Any

from trapline.services.run import metrics
from trapline.services.run.local_ray import start_local_ray
from trapline.services.run.stream import StreamWorker, WorkerStats
from trapline.services.run.workers import build_pipeline
from trapline.services.settings import Settings

log = logging.getLogger(__name__)


class StreamActor:
    """A Ray actor around one StreamWorker. Threaded (max_concurrency=2) so that `stop` can
    reach it while `run` loops."""

    def __init__(self, settings: Settings, out: str, index: int):
        import ray

        from trapline.services.run.log_format import configure_json_logging

        configure_json_logging(worker=index)  # forwarded to the driver's stdout (local_ray.py)
        log.info("worker %d runs on Ray node %s", index, ray.get_runtime_context().get_node_id())
        self.worker = StreamWorker(settings, out, build_pipeline(settings), index=index)
        if settings.metrics_port:
            metrics.HealthServer(settings.metrics_port + index, self.worker.readiness).start()

    def run(self) -> WorkerStats:
        return self.worker.run()

    def stop(self) -> None:
        self.worker.stop()


def serve(settings: Settings, out: str) -> list[WorkerStats]:
    """`trapline serve`: `workers` consumers (Ray actors; 0 = one in this process) until SIGTERM.

    SIGTERM or SIGINT asks every worker to drain: finish and write its segments, commit, leave
    the group. Give the pod a termination grace period longer than one segment's processing.
    """
    import signal

    from trapline.services.adapters.object_store import configure_fsspec

    configure_fsspec(settings)
    if settings.workers == 0:
        worker = StreamWorker(settings, out, build_pipeline(settings))
        if settings.metrics_port:
            metrics.HealthServer(settings.metrics_port, worker.readiness).start()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: worker.stop())
        return [worker.run()]

    import ray

    start_local_ray(settings, forward_logs=True)  # the actors' log lines reach our stdout
    actor_class = ray.remote(num_cpus=settings.threads_per_worker, max_concurrency=2)(StreamActor)
    actors = [actor_class.remote(settings, out, index) for index in range(settings.workers)]
    running = [actor.run.remote() for actor in actors]

    def drain(*_: Any) -> None:
        log.info("draining %d workers", len(actors))
        for actor in actors:
            actor.stop.remote()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, drain)
    return ray.get(running)
