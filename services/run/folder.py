"""The embedded runner behind `trapline run`: a folder or bucket prefix in, tables out.

Batches of photos go to a pool of Ray actors (a local Ray is started for you), each holding its
own ONNX Runtime sessions, so the same stages that serve Kafka scale across cores here.
`workers=0` runs the stages in this process (tests, debugging, tiny folders).
At most two batches per worker are in flight: memory stays bounded whatever the folder size.
An outage (storage or models unreachable: `trapline/errors.py`) makes the run wait and send
the same batch again with capped backoff, saying so on the log; it never becomes failure rows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trapline.errors import OUTAGES, StorageUnavailable
from trapline.pipelines import delta
from trapline.pipelines.deployments import cached_deployments
from trapline.pipelines.events import SequenceItem, last_sequences
from trapline.pipelines.flow import (
    BatchOutput,
    Tables,
    resolve_timestamp,
)
from trapline.pipelines.readers import CommittedInputs
from trapline.pipelines.source import list_deployments
from trapline.pipelines.tables import ModelNames
from trapline.pipelines.types import Failure, MediaRef, MediaResult
from trapline.services.adapters.object_store import configure_fsspec
from trapline.services.run import metrics
from trapline.services.run.delta_sink import Batch, DeltaSink, SinkOptions, deployment_app_id
from trapline.services.run.folder_tables import pending_refs, refuse_stream_tables
from trapline.services.run.local_ray import start_local_ray
from trapline.services.run.workers import PipelineActor, build_pipeline
from trapline.services.settings import Settings

log = logging.getLogger(__name__)
FIRST_RETRY_DELAY_S = 1.0  # an outage: first wait before a batch is sent again
MAX_RETRY_DELAY_S = 60.0


@dataclass
class RunSummary:
    files: int = 0  # files found under the input (dotfiles excluded)
    processed: int = 0  # rows in media
    failed: int = 0  # rows in failures
    hidden_skipped: int = 0
    already_done: int = 0  # inputs a previous run of this folder committed: skipped
    observation_types: Counter = field(default_factory=Counter)
    detections: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)
    photos_per_node: Counter = field(default_factory=Counter)  # Ray node id -> photos sent there
    event_labels: Counter = field(default_factory=Counter)
    failure_kinds: Counter = field(default_factory=Counter)
    events: int = 0
    stage_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    bytes_read: int = 0
    wall_seconds: float = 0.0
    startup_seconds: float = 0.0  # Ray start and model loading, included in wall_seconds
    shutdown_seconds: float = 0.0  # stopping the local Ray (~1.4 s), included in wall_seconds
    ray_started_here: bool = False
    models: ModelNames | None = None  # as the workers' backends report them
    classifier_labels: tuple[str, ...] = ()  # in logit order

    @property
    def photos_per_second(self) -> float:
        return self.files / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def steady_photos_per_second(self) -> float:
        """Throughput once workers are up and before they are stopped: what a long run converges
        to (Ray's start and stop are fixed costs, not per photo)."""
        busy = self.wall_seconds - self.startup_seconds - self.shutdown_seconds
        return self.files / busy if busy > 0 else 0.0


def _in_process(
    settings: Settings, work: Iterable[list[MediaRef]], summary: RunSummary
) -> Iterator[BatchOutput]:
    started = time.perf_counter()
    pipeline = build_pipeline(settings)
    summary.startup_seconds = time.perf_counter() - started
    summary.models, summary.classifier_labels = (
        pipeline.model_names,
        pipeline.classifier.spec.labels,
    )
    backoff = _Backoff()
    for batch in work:
        while True:
            try:
                output = pipeline.process(batch)
            except OUTAGES as error:  # storage or models away: wait, then the same batch again
                backoff.wait(error, len(batch))
                continue
            backoff.reset()
            yield output
            break


def _on_ray(
    settings: Settings, work: Iterable[list[MediaRef]], summary: RunSummary
) -> Iterator[BatchOutput]:
    import ray  # imported here: `workers=0` and the tests of single stages never pay for Ray

    started = time.perf_counter()
    summary.ray_started_here = start_local_ray(settings)  # stopped by run_folder, after writing
    worker_class = ray.remote(num_cpus=settings.threads_per_worker)(PipelineActor)
    actors = [worker_class.remote(settings) for _ in range(settings.workers)]
    # Models loaded: start-up ends here. Every actor reports the same models.
    summary.models, summary.classifier_labels = ray.get(
        [actor.describe.remote() for actor in actors]
    )[0]
    node_of = dict(zip(actors, ray.get([actor.node.remote() for actor in actors])))
    summary.startup_seconds = time.perf_counter() - started
    idle = list(actors) * 2  # two batches in flight per actor: one running, one queued
    pending: dict = {}  # object ref -> (actor, batch): a batch met by an outage is sent again
    queue = iter(work)
    backoff = _Backoff()
    while True:
        while idle:
            batch = next(queue, None)
            if batch is None:
                break
            actor = idle.pop()
            pending[actor.process.remote(batch)] = (actor, batch)
        if not pending:
            break
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            actor, batch = pending.pop(ref)
            try:
                output = ray.get(ref)
            except ray.exceptions.RayTaskError as error:
                cause = error.cause if isinstance(error.cause, BaseException) else error
                if not isinstance(cause, OUTAGES):
                    raise
                backoff.wait(cause, len(batch))  # the other actors' batches wait in Ray meanwhile
                pending[actor.process.remote(batch)] = (actor, batch)
                continue
            backoff.reset()
            summary.photos_per_node[node_of[actor]] += len(batch)  # a cluster: work spreads?
            idle.append(actor)
            yield owned_arrays(output)


def owned_arrays(output: BatchOutput) -> BatchOutput:
    """`output` with copies of the arrays Ray hands back as read-only views of the buffer it
    deserialised: one such view (a box's logits) keeps its whole batch's buffer alive for as
    long as the result waits for its deployment's commit (up to `folder_commit_every` photos)."""
    for result in output.results:
        for detection in result.detections:
            if detection.logits is not None and not detection.logits.flags.owndata:
                detection.logits = np.array(detection.logits)
    return output


class _Backoff:
    """Capped exponential waits between retries of a batch after an outage, said on the log.

    A folder run waits out an outage however long it lasts (Ctrl-C stops it; a later run
    resumes): its photos are fine, and a failures row for each would lose them.
    """

    def __init__(self) -> None:
        self.delay_s = FIRST_RETRY_DELAY_S
        self.since: float | None = None  # the outage's first failure (monotonic)
        self.retries = 0

    def wait(self, error: BaseException, photos: int) -> None:
        what = "storage" if isinstance(error, StorageUnavailable) else "model backend"
        self.since = self.since if self.since is not None else time.monotonic()
        self.retries += 1
        log.warning(
            "%s unavailable (%s); retrying batch of %d in %.0f s (retry %d, failing for %.0f s)",
            what, error, photos, self.delay_s, self.retries, time.monotonic() - self.since,
        )  # fmt: skip
        time.sleep(self.delay_s)
        self.delay_s = min(self.delay_s * 2, MAX_RETRY_DELAY_S)

    def reset(self) -> None:
        if self.since is not None:
            log.info(
                "batches succeed again after %.0f s and %d retries",
                time.monotonic() - self.since, self.retries,
            )  # fmt: skip
        self.delay_s = FIRST_RETRY_DELAY_S
        self.since, self.retries = None, 0


def run_folder(
    source: str,
    out: str,
    settings: Settings,
    on_progress: Callable[[int, int], None] = lambda done, total: None,
) -> RunSummary:
    """Process every photo under `source` and write the tables under `out`.

    `on_progress(done, total)`: `total` counts the files listed so far; it grows as each
    deployment is listed (one at a time: `FolderWork`)."""
    started = time.perf_counter()
    configure_fsspec(settings)
    refuse_stream_tables(out)
    summary = RunSummary()
    work = FolderWork(source, out, settings.batch_size, summary)
    pending = work.batches()
    first = next(pending, None)  # nothing to do (a finished folder run again): no Ray, no models
    execute = _on_ray if settings.workers > 0 else _in_process
    threading.Thread(target=_warm_imports, daemon=True, name="warm-imports").start()
    try:
        _process_and_write(
            source,
            out,
            settings,
            summary,
            execute(settings, chain([first], pending), summary) if first else iter(()),
            work,
            on_progress,
        )
    finally:
        if summary.ray_started_here:  # after the tables are written: stopping Ray is no work
            import ray

            stopping = time.perf_counter()
            ray.shutdown()
            summary.shutdown_seconds = time.perf_counter() - stopping
    summary.wall_seconds = time.perf_counter() - started
    return summary


class FolderWork:
    """The folder's batches, listed and checked against `out` one deployment at a time, and
    what the writer needs to know of them: photos still to come back per deployment
    (`remaining`, counted before a deployment's first batch goes out, so a deployment whose
    count reaches 0 is whole) and its unsupported files, which go with its commit.

    The run holds one deployment's listing, not the folder's (`list_deployments`)."""

    def __init__(self, source: str, out: str, batch_size: int, summary: RunSummary) -> None:
        self.source, self.out, self.batch_size, self.summary = source, out, batch_size, summary
        self.remaining: Counter = Counter()
        self.unsupported: dict[str, list[Failure]] = defaultdict(list)
        self.settled = 0  # files listed that need no processing: done before, unsupported

    def batches(self) -> Iterator[list[MediaRef]]:
        committed = CommittedInputs(self.out)  # the output as this run finds it
        for listing in list_deployments(self.source):
            self.summary.files += len(listing.refs) + len(listing.unsupported)
            self.summary.hidden_skipped += listing.hidden
            refs, unsupported, done = pending_refs(committed, listing.refs, listing.unsupported)
            del listing  # only what is left to do stays
            self.summary.already_done += done
            self.settled += done + len(unsupported)
            for failure in unsupported:
                self.unsupported[failure.deployment_id or ""].append(failure)
            self.remaining.update(ref.deployment_id for ref in refs)
            for start in range(0, len(refs), self.batch_size):
                yield refs[start : start + self.batch_size]
            del refs


def _warm_imports() -> None:
    """pyarrow imports pandas, when installed, on its first conversion of Python rows (~0.5 s):
    let that happen while the workers decode, not in the serial table-writing step at the end."""
    try:
        import pandas  # noqa: F401
    except ImportError:
        pass


def _process_and_write(
    source: str,
    out: str,
    settings: Settings,
    summary: RunSummary,
    outputs: Iterator[BatchOutput],
    work: FolderWork,
    on_progress: Callable[[int, int], None],
) -> None:
    """Gather the batches' outputs per deployment and commit each deployment once all its
    photos are back (a long one every `folder_commit_every` photos, at an event boundary)."""
    results: dict[str, list[MediaResult]] = defaultdict(list)
    failures = work.unsupported  # a deployment's unsupported files go with its commit
    remaining = work.remaining  # photos still to come back, per deployment
    done = 0
    sink = DeltaSink(out, SinkOptions.from_settings(settings), summary.models, ())
    for output in outputs:
        for stage, seconds in output.stage_seconds.items():
            summary.stage_seconds[stage] += seconds
        metrics.observe_batch(output.stage_seconds, len(output.results), output.bytes_read)
        summary.bytes_read += output.bytes_read
        touched = set()
        for result in output.results:
            results[result.ref.deployment_id].append(result)
            touched.add(result.ref.deployment_id)
        for failure in output.failures:
            failures[failure.deployment_id or ""].append(failure)
            touched.add(failure.deployment_id or "")
        for deployment in touched:
            remaining[deployment] -= sum(
                1 for r in output.results if r.ref.deployment_id == deployment
            ) + sum(1 for f in output.failures if (f.deployment_id or "") == deployment)
            finished = remaining[deployment] <= 0
            if finished or len(results[deployment]) >= settings.folder_commit_every:
                _commit(settings, summary, sink, deployment, results, failures, finished)
        done += len(output.results) + len(output.failures)
        on_progress(work.settled + done, summary.files)
    for deployment in sorted(set(results) | set(failures)):  # nothing left out (e.g. no photos)
        _commit(settings, summary, sink, deployment, results, failures, True)
    on_progress(work.settled + done, summary.files)
    started = time.perf_counter()
    delta.checkpoint_heads(out)  # readers after the run open one checkpoint per table
    summary.stage_seconds["write"] += time.perf_counter() - started


def _commit(
    settings: Settings,
    summary: RunSummary,
    sink: DeltaSink,
    deployment: str,
    results: dict[str, list[MediaResult]],
    failures: dict[str, list[Failure]],
    finished: bool,
) -> None:
    """Commit what one deployment has; unless `finished`, keep its last burst for later."""
    held: list[MediaResult] = []
    ready = results.pop(deployment, [])
    if not finished:
        ready, held = _split_last_burst(ready, settings)
        if len(held) >= settings.folder_commit_every:
            # One burst as long as a commit (a time-lapse, photos closer than sequence_gap_s
            # for hours): cut it here, as the stream does (stream_buffer.ready_end). Held, it
            # would keep the deployment in memory and be split again at every later batch.
            ready, held = ready + held, []
    ready_failures = failures.pop(deployment, [])
    if held:
        results[deployment] = held
    if not ready and not ready_failures:
        return
    if summary.models is None:  # nothing processed: name the configured models anyway
        pipeline = build_pipeline(settings)
        summary.models, summary.classifier_labels = (
            pipeline.model_names,
            pipeline.classifier.spec.labels,
        )
    started = time.perf_counter()
    sink.models, sink.labels = summary.models, summary.classifier_labels
    batch = Batch(deployment_app_id(deployment), ready, ready_failures)
    added = sink.commit([batch]).tables[batch.app]
    if finished:  # all its photos are back: its ids would only take memory until the run ends
        sink.release([deployment])
    summary.stage_seconds["write"] += time.perf_counter() - started
    _summarise(added, summary)


def _split_last_burst(
    results: list[MediaResult], settings: Settings
) -> tuple[list[MediaResult], list[MediaResult]]:
    """(all but the deployment's last event so far, that event): a later photo may join it."""
    deployments = cached_deployments(settings.deployments_file)
    tz = settings.tzinfo()
    items = [
        SequenceItem(r.media_id, r.ref.deployment_id, resolve_timestamp(r, deployments, tz)[0], [])
        for r in results
    ]
    tail = {item.media_id for item in last_sequences(items, settings.sequence_gap_s)}
    return [r for r in results if r.media_id not in tail], [
        r for r in results if r.media_id in tail
    ]


def write_tables(tables: Tables, out: str, settings: Settings) -> Tables:
    """Append ready-made tables to `out` through the sink, a keyed batch per deployment (rows
    whose key is there already are left out); returns what was added."""
    parts = by_deployment(tables)
    batches = [Batch(deployment_app_id(deployment), [], []) for deployment in parts]
    sink = DeltaSink(out, SinkOptions.from_settings(settings), None, ())
    outcome = sink.write(batches, {b.app: parts[d] for b, d in zip(batches, parts)})
    added = [outcome.tables[b.app] for b in batches]
    if not added:
        return tables
    return Tables(
        *(pa.concat_tables([getattr(t, name) for t in added]) for name in TABLE_FIELDS),
        failed=[f for t in added for f in t.failed],
    )


TABLE_FIELDS = ("media", "observations", "events", "failures")


def by_deployment(tables: Tables) -> dict[str, Tables]:
    """`tables` split by deployment ("" for rows without one)."""
    deployments = set()
    for name in TABLE_FIELDS:
        deployments.update(
            d or "" for d in getattr(tables, name).column("deployment_id").to_pylist()
        )
    parts = {}
    for deployment in sorted(deployments):
        rows = {
            name: getattr(tables, name).filter(
                pc.equal(
                    pc.fill_null(getattr(tables, name).column("deployment_id"), ""), deployment
                )
            )
            for name in TABLE_FIELDS
        }
        failed = [f for f in tables.failed if (f.deployment_id or "") == deployment]
        parts[deployment] = Tables(**rows, failed=failed)
    return parts


def _summarise(tables: Tables, summary: RunSummary) -> None:
    """Add one commit's rows to the run's summary."""
    summary.processed += tables.media.num_rows
    summary.failed += tables.failures.num_rows
    summary.events += tables.events.num_rows
    summary.observation_types.update(tables.media.column("observation_type").to_pylist())
    summary.detections.update(tables.observations.column("category").to_pylist())
    summary.labels.update(x for x in tables.observations.column("label").to_pylist() if x)
    summary.event_labels.update(x for x in tables.events.column("label").to_pylist() if x)
    summary.failure_kinds.update(tables.failures.column("kind").to_pylist())
