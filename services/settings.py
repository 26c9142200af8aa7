"""All of Trapline's knobs in one documented object.

Values come from, in order of precedence: CLI flags, `TRAPLINE_*` environment variables
(e.g. `TRAPLINE_DETECTION_THRESHOLD=0.3`), a YAML file (`--config FILE` or `TRAPLINE_CONFIG`),
then the defaults below, which work on a laptop with the bundled demo models.

Over 400 lines on purpose: every knob in one documented object, the operator's one reference (each
field is a TRAPLINE_* variable and a Helm value; docs/operations.md points here).
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from trapline.pipelines.events import SequenceOptions
from trapline.pipelines.fidelity import (
    PROFILES,
    CropRounding,
    LetterboxMode,
    ProfileName,
    ResizeFilter,
)
from trapline.pipelines.options import (
    ClassifyOptions,
    DetectOptions,
    PlaceOptions,
    ReadOptions,
    StageOptions,
    VideoOptions,
)
from trapline.pipelines.postprocess.options import PostprocessOptions

_config_file: ContextVar[str | None] = ContextVar("trapline_config_file", default=None)
DEMO_MODELS = Path(__file__).resolve().parent.parent / "models" / "demo"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRAPLINE_", extra="forbid")

    # Models
    detector_model: Path = Field(
        DEMO_MODELS / "detector.onnx", description="Detector ONNX file; its .json sidecar names it."
    )
    classifier_model: Path = Field(
        DEMO_MODELS / "classifier.onnx",
        description="Classifier ONNX file; its .json sidecar names it.",
    )
    model_backend: Literal["onnx", "triton"] = Field(
        "onnx",
        description="onnx: ONNX Runtime in each worker (the model files above); triton: a Triton server (its models' sidecars name them).",
    )
    triton_url: str = Field(
        "grpc://127.0.0.1:8001",
        description="Triton endpoint; http(s):// switches to the HTTP protocol.",
    )
    triton_timeout_s: float = Field(30.0, gt=0, description="Per-request timeout.")
    triton_detector_model: str = Field(
        "trapline_detector", description="Detector's model name in the Triton repository."
    )
    triton_classifier_model: str = Field(
        "trapline_classifier", description="Classifier's model name in the Triton repository."
    )
    triton_max_in_flight: int = Field(
        4, ge=1, description="Requests in flight per worker (keeps a GPU busy)."
    )
    triton_retries: int = Field(
        3, ge=0, description="Retries with backoff when Triton is unavailable."
    )
    detection_threshold: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Detections below this score are not kept (MegaDetector's typical 0.2).",
    )
    nms_iou: float = Field(
        0.45,
        gt=0,
        le=1,
        description="IoU above which a lower-scoring box of the same class is suppressed.",
    )
    classification_threshold: float = Field(
        0.8,
        ge=0,
        le=1,
        description="Per-box labels below this probability become 'undefined' (DeepFaune: 0.8).",
    )
    max_crops_per_photo: int = Field(
        10, ge=0, description="Animal boxes classified per photo, most confident first."
    )
    top_k: int = Field(3, ge=1, description="Labels and probabilities kept per observation.")
    profile: ProfileName = Field(
        "fast",
        description="Pre-processing profile (docs/models.md, 'Reference behaviour'): fast (the default: square letterbox, rounded crops, reduced-scale decode; throughput, and any exported detector) or reference (the same pixels into the models as MegaDetector and DeepFaune: needs a detector exported with dynamic H/W, costs the full decode and needs OpenCV). The four switches below override it one by one.",
    )
    letterbox: LetterboxMode | None = Field(
        None,
        description="Detector canvas: square (S x S) or rectangle (the photo padded to the next stride multiple, as MegaDetector and ultralytics do: 1280 x 960 for a 4:3 photo; needs dynamic H/W); unset: the profile's.",
    )
    crop_rounding: CropRounding | None = Field(
        None,
        description="Classifier crop edges: round (nearest pixel) or truncate (DeepFaune's int()); unset: the profile's.",
    )
    full_resolution: bool | None = Field(
        None,
        description="Decode every pixel and resize from there, as upstream does (costs the full JPEG decode), instead of the smallest DCT scale the models need; unset: the profile's.",
    )
    resize: ResizeFilter | None = Field(
        None,
        description="Detector canvas resize: pillow (bilinear, antialiased when shrinking) or opencv (cv2 INTER_LINEAR, as MegaDetector and ultralytics; needs the reference extra); unset: the profile's.",
    )

    # Throughput
    workers: int = Field(
        2, ge=0, description="Ray actors running the stages; 0 runs in-process without Ray."
    )
    threads_per_worker: int = Field(1, ge=1, description="ONNX Runtime threads in each worker.")
    ray_dashboard: bool = Field(
        False,
        description="Start Ray's dashboard (on 127.0.0.1:8265) with the local Ray; off: a reachable Ray runs code for anyone.",
    )
    batch_size: int = Field(8, ge=1, description="Photos per detector batch.")
    batch_max_wait_s: float = Field(
        0.5, ge=0, description="Service mode: longest wait to fill a batch, seconds."
    )
    decode_min_long_side: int = Field(
        640,
        ge=64,
        description="JPEGs are decoded at the smallest DCT scale whose long side is at least this (and the detector's input size); crops come from that image.",
    )

    # Videos (.mp4, .avi, .mov): one media row each, frames sampled (pipelines/video.py)
    video_fps: float = Field(
        1.0,
        gt=0,
        le=60,
        description="Video frames sampled per second of clip, each detected and classified.",
    )
    video_max_frames: int = Field(
        120,
        ge=1,
        description="At most this many frames per video; longer clips are sampled more sparsely.",
    )
    video_max_duration_s: float = Field(
        900.0,
        gt=0,
        description="Videos longer than this are refused (a failures row), before decoding.",
    )

    # Limits: refuse before spending memory
    max_image_pixels: int = Field(
        80_000_000,
        ge=1,
        description="Photos that would hold more pixels in memory are refused from their header, before decoding (bombs): a PNG or a progressive JPEG at full size, a baseline JPEG at the reduced DCT scale it is decoded at. 80 MP is above every camera trap: trail cameras' sensors are 2-20 MP, interpolated to at most 64 MP advertised (9216x6912 = 63.7 MP), and mirrorless camera-trap builds top out with the Sony a7R V (61 MP, 9504x6336 = 60.2 MP); a 144 MP RGBA PNG took a worker from 585 to 1,820 MB.",
    )
    max_file_bytes: int = Field(
        100_000_000, ge=1, description="Files larger than this are refused before reading."
    )

    # Sequences and time
    sequence_gap_s: float = Field(
        10.0,
        ge=0,
        description="Frames of one deployment at most this far apart are one event (DeepFaune: 10 s).",
    )
    sequence_threshold: float = Field(
        0.8, ge=0, le=1, description="Event labels below this probability become 'undefined'."
    )
    sequence_hold_s: float = Field(
        5.0,
        ge=0,
        description="Service mode: a deployment's last event is held out of a commit until no photo joined it for this long, so a burst is one event whatever the commit boundaries; 0 = off.",
    )
    utc_offset: str = Field(
        "+00:00",
        description="UTC offset of naive EXIF timestamps, '+HH:MM', for deployments the deployments file does not place.",
    )
    deployments_file: str | None = Field(
        None,
        description="Deployments (CSV, YAML, JSON or a folder of them; path or URL): each camera's UTC offset or IANA zone, coordinates, country, period. See pipelines/deployments.py.",
    )

    # Post-processing (docs/postprocessing.md); per program: one YAML settings file each
    postprocess_enabled: bool = Field(
        True,
        description="Master switch: false keeps every label as the classifier gave it (no static flags, roll-up, geofence or smoothing).",
    )
    static_enabled: bool = Field(
        True,
        description="Flag repeat detections (a box at one place in many photos over a long span) as static: kept in observations, left out of labels, counts and the event vote.",
    )
    static_iou: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Boxes overlapping this much are the same place (MegaDetector RDE iouThreshold).",
    )
    static_min_count: int = Field(
        20,
        ge=2,
        description="Photos of one deployment with a box at one place before it is static (RDE occurrenceThreshold).",
    )
    static_min_span_h: float = Field(
        24.0,
        ge=0,
        description="... and hours between the first and last of them (an animal moves on, a rock does not).",
    )
    static_max_area: float = Field(
        0.2,
        gt=0,
        le=1,
        description="Boxes larger than this fraction of the photo are never static (RDE maxSuspiciousDetectionSize).",
    )
    static_min_confidence: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Boxes below this detector score are not considered static (RDE confidenceMin).",
    )
    rollup_enabled: bool = Field(
        True,
        description="Roll 'undefined' predictions up to a common ancestor (red deer 0.45 + roe deer 0.40 -> Cervidae).",
    )
    rollup_threshold: float = Field(
        0.8, ge=0, le=1, description="Summed probability an ancestor needs to be the label."
    )
    rollup_ranks: list[Literal["genus", "family", "order", "class"]] = Field(
        ["genus", "family", "order", "class"], description="Ranks tried for the roll-up, in order."
    )
    geofence_enabled: bool = Field(
        True,
        description="Species blocked in the deployment's country roll up to their nearest allowed ancestor.",
    )
    geofence_file: str | None = Field(
        None,
        description="Allow/block rules per taxon and country (CSV, see pipelines/postprocess/geofence.csv, the default).",
    )
    geofence_from_coordinates: bool = Field(
        True,
        description="Deployments without a country get the one at their coordinates (offline, coarse near borders).",
    )
    postprocess_smooth_image: bool = Field(
        True,
        description="Relabel a photo's odd boxes with its dominant class (MegaDetector image-level smoothing).",
    )
    postprocess_smooth_sequence: bool = Field(
        True,
        description="Give the event vote's label to its boxes (DeepFaune), keeping second animals.",
    )
    postprocess_min_dominant: int = Field(
        2, ge=1, description="Confident boxes a photo's dominant class needs to relabel the others."
    )
    postprocess_max_nondominant: int = Field(
        1,
        ge=0,
        description="A class with more confident boxes than this in a photo or event is a second animal and is kept.",
    )

    # Output
    output_compression: str = Field("zstd", description="Parquet compression codec.")

    # Object storage (s3://); unset fields fall back to the usual AWS variables, profile or role
    s3_endpoint_url: str | None = Field(
        None,
        description="Endpoint of an S3-compatible store (Ceph RGW, MinIO); unset: AWS S3 or AWS_ENDPOINT_URL.",
    )
    s3_region: str | None = Field(
        None,
        description="S3 region; on Ceph RGW the zonegroup's api_name ('default' out of the box); unset: AWS_REGION.",
    )
    s3_access_key_id: SecretStr | None = Field(
        None, description="Access key; unset: AWS variables, profile or web identity."
    )
    s3_secret_access_key: SecretStr | None = Field(
        None, description="Secret key (masked everywhere)."
    )
    s3_verify: bool | str = Field(True, description="Verify TLS: true, false, or a CA bundle file.")
    s3_addressing_style: Literal["path", "virtual", "auto"] | None = Field(
        None, description="Unset: path for a custom endpoint, virtual on AWS."
    )
    storage_roots: list[str] = Field(
        default_factory=list,
        description='Only photos below these are read, e.g. ["s3://camtraps/uploads/", "/data/cards"] (JSON list in TRAPLINE_STORAGE_ROOTS); empty: any local file or bucket, never http(s). See docs/security.md.',
    )

    # Service mode: Kafka in (`trapline serve`)
    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,host:port]."
    )
    uploads_topic: str = Field("trapline.uploads", description="Topic of upload messages.")
    dlq_topic: str = Field(
        "trapline.uploads.dlq",
        description="Dead-letter topic: refused events and photos, original bytes + reason headers.",
    )
    consumer_group: str = Field("trapline", description="Consumer group shared by all workers.")
    kafka_security_protocol: str | None = Field(
        None, description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_mechanism: str | None = Field(
        None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(
        None, description="SASL password (masked in every echo and log)."
    )
    kafka_ssl_cafile: str | None = Field(
        None, description="CA bundle that signed the brokers' certificates."
    )
    session_timeout_ms: int = Field(
        45_000,
        ge=1000,
        description="Consumer group session timeout: a worker silent this long is removed from the group and its partitions reassigned (with group_instance_id: also how long a restart may take and keep its partitions).",
    )
    group_instance_id: str | None = Field(
        None,
        min_length=1,
        description="Static group membership (KIP-345): worker i of this process joins as '<id>-<i>', so a restart within session_timeout_ms gets its partitions back without a rebalance. Stable across restarts, unique per process (the chart uses the pod name); unset: dynamic membership. See docs/operations.md.",
    )
    poll_max_records: int = Field(500, ge=1, description="Records fetched per poll.")
    partition_assignment: Literal["group", "ordinal"] = Field(
        "group",
        description="Who consumes which partition. group: the Kafka consumer group assigns and rebalances (a dead worker's partitions move to the others). ordinal: fixed ownership without a group protocol, partition p to worker slot p % (worker_replicas x workers), so a restarted worker reads its partitions at once and nothing rebalances, but a worker that stays down stops its partitions until it is back (Kubernetes restarts it). See docs/operations.md, 'Fixed partition ownership'.",
    )
    worker_ordinal: int | None = Field(
        None,
        ge=0,
        description="partition_assignment=ordinal: this process's number among worker_replicas (0-based); unset: the number at the end of the host name (a StatefulSet pod's trapline-worker-3 is 3).",
    )
    worker_replicas: int = Field(
        1,
        ge=1,
        description="partition_assignment=ordinal: processes (pods) sharing the uploads topic; each runs `workers` consumers (at least one).",
    )
    folder_commit_every: int = Field(
        500,  # the driver holds up to this many results per deployment: 433 MB at 2000, 358 at 500 (10k photos)
        ge=1,
        description="Folder runs: a deployment is committed when all its photos are done, and a long one every this many photos (at an event boundary; a burst this long, a time-lapse, is cut), so a killed run keeps its work and memory stays bounded.",
    )
    dedupe_memory_mb: int = Field(
        64,
        ge=1,
        description="Memory a worker or folder run keeps for duplicate checks (a deployment's media ids and sha256s, 16 bytes each: 64 MB ~ 2 million photos); past it the deployments used least lately are let go and read again from the media table when they next send.",
    )
    batch_max_records: int = Field(
        500,
        ge=1,
        description="Service mode: a checkpoint (one Delta commit per table) is made once a partition holds this many unwritten records...",
    )
    commit_interval_s: float = Field(
        5.0,
        ge=0,
        description="... or once the oldest unwritten record waited this long: latency against commits (each table gets at most one commit per interval per worker; 5 s = 17,280 a day per table; the log is checkpointed every 10 and keeps 7 days).",
    )
    metrics_port: int = Field(
        9400,
        ge=0,
        le=65535,
        description="Service mode: /metrics, /healthz, /readyz on this port (+ worker index for Ray actors); 0 = off.",
    )
    deployment_pattern: str | None = Field(
        None,
        description="S3 notifications: regex with a named group `deployment` applied to the object key (default: first path segment).",
    )

    # Upload API (`trapline api`, docs/api.md)
    api_host: str = Field("127.0.0.1", description="Upload API: address to listen on.")
    api_port: int = Field(8000, ge=1, le=65535, description="Upload API: port to listen on.")
    api_registry: str = Field(
        "registry",
        description="Upload API: programs (token hashes) and deployments, path or URL; pipelines read REGISTRY/deployments as their deployments_file.",
    )
    api_upload_prefix: str = Field(
        "uploads",
        description="Upload API: uploaded bytes go to PREFIX/DEPLOYMENT/SHA256.ext (path or s3:// URL the workers can read).",
    )
    api_results: str = Field(
        "results", description="Upload API: the tables `serve` writes, read for upload status."
    )
    api_max_request_bytes: int = Field(
        1_000_000_000,
        ge=1,
        description="Upload API: largest request body (files per file: max_file_bytes).",
    )
    api_max_json_bytes: int = Field(
        1_000_000,
        ge=1,
        description="Upload API: largest body of any request but an upload, refused (413) "
        "before it is read or authenticated.",
    )
    api_failed_auth_burst: int = Field(
        10, ge=1, description="Upload API: wrong tokens one client address may send at once..."
    )
    api_failed_auth_per_s: float = Field(
        10 / 60, gt=0, description="...then this many a second (429 with Retry-After beyond)."
    )
    api_max_files_per_request: int = Field(
        500, ge=1, description="Upload API: files in one upload or presign request."
    )
    api_rate_per_s: float = Field(
        20.0, gt=0, description="Upload API: requests per second per token (token bucket refill)."
    )
    api_rate_burst: int = Field(
        100, ge=1, description="Upload API: requests a token may make at once (bucket size)."
    )
    api_presign_expiry_s: int = Field(
        3600, ge=60, le=604_800, description="Upload API: lifetime of presigned PUT URLs."
    )
    api_replicas: int = Field(1, ge=1, description="Upload API: Ray Serve replicas.")

    @model_validator(mode="after")
    def _apply_profile(self) -> Settings:
        """Switches left unset take the profile's value (pipelines/fidelity.py)."""
        chosen = PROFILES[self.profile]
        for name in ("letterbox", "crop_rounding", "full_resolution", "resize"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(chosen, name))
        return self

    @field_validator("utc_offset")
    @classmethod
    def _check_offset(cls, value: str) -> str:
        if not re.fullmatch(r"[+-]\d{2}:\d{2}", value):
            raise ValueError("utc_offset must look like +02:00 or -05:30")
        return value

    def stage_options(self) -> StageOptions:
        """The stages' options (pipelines/options.py), nested by concern: built here, once."""
        return StageOptions(
            read=ReadOptions(
                max_file_bytes=self.max_file_bytes,
                max_image_pixels=self.max_image_pixels,
                decode_min_long_side=self.decode_min_long_side,
                full_resolution=bool(self.full_resolution),
            ),
            video=VideoOptions(
                fps=self.video_fps,
                max_frames=self.video_max_frames,
                max_duration_s=self.video_max_duration_s,
            ),
            detect=DetectOptions(
                threshold=self.detection_threshold,
                nms_iou=self.nms_iou,
                batch_size=self.batch_size,
                letterbox=self.letterbox,
                resize=self.resize,
            ),
            classify=ClassifyOptions(
                threshold=self.classification_threshold,
                max_crops_per_photo=self.max_crops_per_photo,
                top_k=self.top_k,
                crop_rounding=self.crop_rounding,
            ),
            place=PlaceOptions(deployments_file=self.deployments_file, tz=self.tzinfo()),
            events=SequenceOptions(
                gap_seconds=self.sequence_gap_s, threshold=self.sequence_threshold
            ),
            postprocess=PostprocessOptions(
                enabled=self.postprocess_enabled,
                static=self.static_enabled,
                static_iou=self.static_iou,
                static_min_count=self.static_min_count,
                static_min_span_h=self.static_min_span_h,
                static_max_area=self.static_max_area,
                static_min_confidence=self.static_min_confidence,
                rollup=self.rollup_enabled,
                rollup_threshold=self.rollup_threshold,
                rollup_ranks=tuple(self.rollup_ranks),
                geofence=self.geofence_enabled,
                geofence_file=self.geofence_file,
                geofence_from_coordinates=self.geofence_from_coordinates,
                smooth_image=self.postprocess_smooth_image,
                smooth_sequence=self.postprocess_smooth_sequence,
                min_dominant=self.postprocess_min_dominant,
                max_nondominant=self.postprocess_max_nondominant,
            ),
        )

    def tzinfo(self) -> timezone:
        sign = 1 if self.utc_offset[0] == "+" else -1
        hours, minutes = int(self.utc_offset[1:3]), int(self.utc_offset[4:6])
        return timezone(sign * timedelta(hours=hours, minutes=minutes))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file.get() or os.environ.get("TRAPLINE_CONFIG")
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    def echo(self) -> dict[str, Any]:
        """Settings as shown at start-up."""
        return {
            name: str(value) for name, value in self.model_dump().items()
        }  # SecretStr prints ******

    def kafka_security(self) -> dict[str, str]:
        """kafka-python security keywords for the options that are set."""
        given = {
            "security_protocol": self.kafka_security_protocol,
            "sasl_mechanism": self.kafka_sasl_mechanism,
            "sasl_plain_username": self.kafka_sasl_username,
            "sasl_plain_password": self.kafka_sasl_password.get_secret_value()
            if self.kafka_sasl_password
            else None,
            "ssl_cafile": self.kafka_ssl_cafile,
        }
        return {key: value for key, value in given.items() if value}


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from the YAML file (if any), the environment and explicit overrides."""
    if config_file is not None and not config_file.exists():
        raise FileNotFoundError(f"config file not found: {config_file}")
    token = _config_file.set(str(config_file) if config_file else None)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    finally:
        _config_file.reset(token)
