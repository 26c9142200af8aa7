"""What the chaos trial submits (load_tests/chaos.py): a plan of upload records and the thread
that trickles them into the topic, noting where each one landed.

Each planned record says where it must end, so the end check is exact per record, not a count:
- `photo`: a small whole JPEG (Pillow, as tests/support/stream_workers.make_photos) -> media;
- `corrupt`: a JPEG cut after 150 bytes -> a failures row (not a duplicate);
- `resent`: an earlier photo's upload event, the same bytes sent again -> a `duplicate` row;
- `copied`: an earlier photo's bytes under a new file name, a new event -> a `duplicate` row;
- `malformed`: a message that is not an upload event -> a failures row of stage `event`.
A record's identity is where the broker put it (partition, offset): the tables' `source` column.
Camera k is on partition k % partitions (as the stream bench's "even" placement), so a photo's
repeats reach the partition, and the worker, of its original.
"""

from __future__ import annotations

import io
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from trapline.pipelines.uploads import Upload, encode_upload
from trapline.services.adapters import kafka_io

# Where each kind of record must end: the table, and the failures row's kind or stage.
EXPECTED = {
    "photo": "media",
    "corrupt": "failure",
    "resent": "duplicate",
    "copied": "duplicate",
    "malformed": "event",
}


@dataclass(frozen=True)
class Planned:
    kind: str  # a key of EXPECTED
    deployment: str
    partition: int
    value: bytes  # the message as sent
    uri: str | None  # the photo (None for a malformed message)


@dataclass(frozen=True)
class Mix:
    """How many of each kind one trial submits (`photos` includes the corrupt ones)."""

    photos: int = 300
    corrupt: int = 6
    resent: int = 6
    copied: int = 6
    malformed: int = 6
    deployments: int = 8


def _jpeg(rng: np.random.Generator) -> bytes:
    buffer = io.BytesIO()
    pixels = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "JPEG", quality=70)
    return buffer.getvalue()


def build_plan(folder: Path, mix: Mix, partitions: int, seed: int) -> list[Planned]:
    """The records of one trial in sending order; the photos are written under `folder`.
    A repeat of photo i is placed at a random point after it, malformed ones anywhere."""
    rng, chance = np.random.default_rng(seed), random.Random(seed)
    corrupt = set(chance.sample(range(mix.photos), mix.corrupt))
    keyed: list[tuple[float, Planned]] = []
    originals: list[tuple[int, Planned, bytes]] = []
    start = datetime(2024, 5, 1, 6, 0, tzinfo=timezone.utc)
    for index in range(mix.photos):
        camera = index % mix.deployments
        data = _jpeg(rng)
        if index in corrupt:
            data = data[:150]
        path = folder / f"dep-{camera}" / f"IMG_{index:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        # Bursts of three photos 2 s apart, an hour between bursts: events of several photos.
        shot = index // mix.deployments
        taken = start + timedelta(hours=shot // 3, seconds=2 * (shot % 3))
        event = Upload(path.as_uri(), f"dep-{camera}", timestamp=taken)
        item = Planned(
            "corrupt" if index in corrupt else "photo", event.deployment_id,
            camera % partitions, encode_upload(event), event.uri,
        )  # fmt: skip
        keyed.append((float(index), item))
        if index not in corrupt:
            originals.append((index, item, data))
    early = originals[: max(len(originals) * 2 // 3, 1)]
    for number, (index, item, data) in enumerate(chance.sample(early, mix.resent + mix.copied)):
        if number < mix.resent:
            repeat = Planned("resent", item.deployment, item.partition, item.value, item.uri)
        else:
            copy = Path(item.uri.removeprefix("file://")).with_name(f"COPY_{index:05d}.jpg")
            copy.write_bytes(data)
            event = Upload(copy.as_uri(), item.deployment)
            repeat = Planned(
                "copied", item.deployment, item.partition, encode_upload(event), event.uri
            )
        keyed.append((chance.uniform(index + 1, mix.photos), repeat))
    for number in range(mix.malformed):
        camera = chance.randrange(mix.deployments)
        value = b'{"schema": "trapline.upload/1", broken %d' % number
        bad = Planned("malformed", f"dep-{camera}", camera % partitions, value, None)
        keyed.append((chance.uniform(0, mix.photos), bad))
    return [item for _, item in sorted(keyed, key=lambda pair: pair[0])]


@dataclass
class Trickle:
    """Sends the plan at a steady rate over `duration_s`, one record at a time, and keeps
    where each landed: `landed[(partition, offset)] = planned record`."""

    bootstrap: str
    topic: str
    plan: list[Planned]
    duration_s: float
    landed: dict[tuple[int, int], Planned] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        producer = kafka_io.make_producer(self.bootstrap, client_id="trapline-chaos")
        interval = self.duration_s / max(len(self.plan), 1)
        started = time.monotonic()
        try:
            for number, item in enumerate(self.plan):
                time.sleep(max(0.0, started + number * interval - time.monotonic()))
                if self.stop.is_set():
                    break
                future = producer.send(
                    self.topic, key=item.deployment.encode(), value=item.value,
                    partition=item.partition,
                )  # fmt: skip
                try:
                    meta = future.get(timeout=60)
                except Exception as error:  # noqa: BLE001 - not delivered: reported
                    self.failed.append(f"{item.kind} {item.uri}: {error}")
                    continue
                self.landed[(meta.partition, meta.offset)] = item
        finally:
            producer.close(timeout=10)
            self.done.set()

    def produced(self) -> dict[int, int]:
        """Records produced per partition (what its committed offset must reach)."""
        counts: dict[int, int] = {}
        for partition, _ in self.landed:
            counts[partition] = counts.get(partition, 0) + 1
        return counts
