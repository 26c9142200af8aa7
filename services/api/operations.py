"""What the upload API's endpoints do, apart from HTTP: store, announce, count.

`Api` holds the registry, the media store, the authenticator, the rate limiters and one Kafka
producer per replica (made at the first upload, not at import, so a replica starts without a
broker). Its methods block: the endpoints call them in the thread pool.

A deployment id belongs to one program, always. An id that already has rows in the result
tables (a folder run, `trapline submit --copy-to`, an S3 notification wrote them) or files in
the upload storage, and that no program holds, is not claimable through the API: its photos
and events are someone's, and the first token holder to ask must not get them. An operator
assigns such an id (`trapline api assign-deployment ID --program P`).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pyarrow.compute as pc
import pyarrow.dataset as ds

from trapline.pipelines.delta import open_table
from trapline.pipelines.deployments import Deployment
from trapline.pipelines.readers import read_table
from trapline.pipelines.tables import TABLES
from trapline.pipelines.uploads import Upload, encode_upload
from trapline.services.adapters import kafka_io
from trapline.services.api.auth import Authenticator, RateLimiter
from trapline.services.api.limits import ApiLimits
from trapline.services.api.registry import Conflict, Registry
from trapline.services.api.schemas import UploadedFile, UploadStatus
from trapline.services.api.storage import MediaStore, Refused, Stored, StreamingUpload
from trapline.services.settings import Settings

CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Api:
    """What the endpoints share: storage, registry, the Kafka producer, limits."""

    def __init__(
        self,
        settings: Settings,
        limits: ApiLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.settings = settings
        self.limits = limits or ApiLimits.from_settings(settings)
        self.registry = Registry(settings.api_registry)
        self.store = MediaStore(settings.api_upload_prefix)
        self.auth = Authenticator(self.registry)
        self.limiter = RateLimiter(settings.api_rate_per_s, settings.api_rate_burst, clock)
        # Wrong tokens per client address: guessing one costs a failure from this bucket.
        self.failed_auth = RateLimiter(
            self.limits.failed_auth_per_s, self.limits.failed_auth_burst, clock
        )
        self._producer: Any = None
        self._lock = threading.Lock()

    def create_deployment(self, program: str, deployment: Deployment) -> None:
        """Register a new id for `program`; 409 if it is taken or already has data (module doc)."""
        deployment_id = deployment.deployment_id
        if self.registry.holder(deployment_id) is None and self.has_data(deployment_id):
            raise Refused(
                409,
                f"deployment id {deployment_id!r} already has photos or results that no program "
                "holds; an operator assigns it to its program (trapline api "
                "assign-deployment), or choose another id",
            )
        try:
            self.registry.create_deployment(program, deployment)
        except Conflict as error:
            raise Refused(409, str(error)) from None

    def has_data(self, deployment_id: str) -> bool:
        """Rows in any result table, or files in the upload storage, for this id.

        Reads the tables' logs only (their files are partitioned by deployment), no data file.
        """
        if self.store.received(deployment_id):
            return True
        partition = [("deployment_id", "=", deployment_id)]
        for name in TABLES:
            table = open_table(self.settings.api_results, name)
            if table is not None and table.file_uris(file_pruning_predicate=partition):
                return True
        return False

    def own_deployment(self, program: str, deployment_id: str) -> Deployment:
        deployment = self.registry.deployment(program, deployment_id)
        if deployment is None:
            raise Refused(404, f"no deployment {deployment_id!r} in program {program!r}")
        return deployment

    def producer(self) -> Any:
        """One idempotent producer per replica, made at the first upload (not at import)."""
        with self._lock:
            if self._producer is None:
                self._producer = kafka_io.make_producer(
                    self.settings.kafka_bootstrap,
                    client_id="trapline-api",
                    bootstrap_timeout_ms=10_000,
                    **self.settings.kafka_security(),
                )
            return self._producer

    def announce(self, program: str, deployment_id: str, items: list[UploadedFile]) -> None:
        """Send one event per stored file and wait until the broker has them all."""
        producer = self.producer()
        futures = []
        for item in items:
            event = Upload(
                uri=self.store.uri_of(item.key),
                deployment_id=deployment_id,
                media_id=item.media_id,
                sha256=item.sha256,
                uploaded_at=datetime.now(timezone.utc),
                attributes={
                    "original_name": item.original_name,
                    "media_type": item.media_type,
                    "program": program,
                    "uploaded_via": "api",
                },
            )
            value = encode_upload(event)
            futures.append(
                producer.send(
                    self.settings.uploads_topic, key=deployment_id.encode("utf-8"), value=value
                )
            )
        errors = kafka_io.wait_delivered(futures, timeout_s=30)
        if errors:
            raise Refused(
                503,
                f"{len(errors)} of {len(items)} files are stored but their events were not "
                f"delivered ({errors[0]}); upload them again (re-uploads are idempotent)",
            )

    def store_uploads(
        self, program: str, deployment_id: str, uploads: list[tuple[str, StreamingUpload]]
    ) -> list[UploadedFile]:
        """Close every streamed file (refusing empty ones), then move them to their names."""
        closed = [(name, upload.close()) for name, upload in uploads]
        items = []
        for (name, (sha256, size, sniffed)), (_, upload) in zip(closed, uploads):
            stored = self.store.finalize(upload.temp, deployment_id, sha256, size, sniffed)
            items.append(uploaded(stored, name))
        self.announce(program, deployment_id, items)
        return items

    def status(self, deployment_id: str) -> UploadStatus:
        where = ds.field("deployment_id") == deployment_id
        results = self.settings.api_results
        media = read_table(results, "media", columns=["media_id"], filter=where)
        processed = set(media.column("media_id").to_pylist())
        failures = read_table(results, "failures", ["media_id", "uri", "kind"], filter=where)
        failures = failures.filter(pc.not_equal(failures.column("kind"), "duplicate"))
        failed: dict[str, str] = {}
        for row in failures.to_pylist():
            key = row["media_id"] or row["uri"]
            if key not in processed:
                failed[key] = row["kind"]
        kinds: dict[str, int] = {}
        for kind in failed.values():
            kinds[kind] = kinds.get(kind, 0) + 1
        received = self.store.received(deployment_id)
        return UploadStatus(
            deployment_id=deployment_id,
            received=received,
            processed=len(processed),
            failed=len(failed),
            pending=max(received - len(processed) - len(failed), 0),
            failure_kinds=kinds,
        )


def uploaded(stored: Stored, name: str, upload_id: str | None = None) -> UploadedFile:
    return UploadedFile(
        media_id=stored.sha256,
        sha256=stored.sha256,
        key=stored.key,
        size=stored.size,
        media_type=stored.media_type,
        original_name=CONTROL.sub("", name)[:1024],
        already_present=stored.already_present,
        upload_id=upload_id,
    )
