"""Request and response bodies of the upload API (they are its OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from trapline.pipelines.deployments import Deployment, DeploymentsError, parse_timezone

ID_REGEX = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"  # events.ID_PATTERN, at most 128 characters
UPLOAD_ID_REGEX = r"^[0-9a-f]{32}$"
TEXT = 256  # longest free-text field


class Problem(BaseModel):
    """Every 4xx/5xx answer: what went wrong and what to do about it."""

    detail: str = Field(
        ..., examples=["file 2 ('notes.txt'): not a JPEG, PNG, MP4, MOV or AVI file"]
    )


class DeploymentBody(BaseModel):
    """A camera at one place for one period (Camtrap DP's deployment)."""

    model_config = ConfigDict(extra="forbid")

    deployment_id: str = Field(..., pattern=ID_REGEX, description="Unique across all programs.")
    location_id: str | None = Field(None, max_length=TEXT)
    location_name: str | None = Field(None, max_length=TEXT)
    latitude: float | None = Field(None, ge=-90, le=90, description="WGS84 decimal degrees.")
    longitude: float | None = Field(None, ge=-180, le=180, description="WGS84 decimal degrees.")
    coordinate_uncertainty_m: float | None = Field(None, ge=0, le=20_037_509)
    country: str | None = Field(None, pattern=r"^[A-Za-z]{2}$", description="ISO 3166-1 alpha-2.")
    utc_offset: str | None = Field(
        None,
        max_length=64,
        description="The camera clock's zone: '+01:00' (fixed) or an IANA name ('Europe/Paris').",
        examples=["+01:00"],
    )
    camera_id: str | None = Field(None, max_length=TEXT)
    camera_model: str | None = Field(None, max_length=TEXT)
    camera_height_m: float | None = Field(None, ge=0, le=1000)
    start: AwareDatetime | None = Field(None, description="Set-up time, with a UTC offset.")
    end: AwareDatetime | None = Field(None, description="Take-down time, with a UTC offset.")

    @field_validator("utc_offset")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_timezone(value)
            except DeploymentsError as error:
                raise ValueError(str(error)) from None
        return value

    @field_validator("country")
    @classmethod
    def _upper(cls, value: str | None) -> str | None:
        return value.upper() if value else value

    @model_validator(mode="after")
    def _period(self) -> DeploymentBody:
        for name in ("start", "end"):
            when: datetime | None = getattr(self, name)
            if when is not None and not 1900 <= when.year <= 2200:
                raise ValueError(f"{name} {when.isoformat()} is not a plausible date")
        if self.start and self.end and self.end < self.start:
            raise ValueError("end is before start")
        return self

    def to_deployment(self) -> Deployment:
        return Deployment(**self.model_dump())

    @classmethod
    def of(cls, deployment: Deployment) -> DeploymentBody:
        return cls.model_construct(**deployment.to_record())


class UploadedFile(BaseModel):
    """One file stored and announced on the uploads topic."""

    media_id: str = Field(..., description="sha256 of the bytes: re-uploads are idempotent.")
    sha256: str
    key: str = Field(
        ...,
        description="Where it is stored, relative to the API's upload storage: "
        "DEPLOYMENT/SHA256.ext (content-addressed).",
    )
    size: int
    media_type: str = Field(..., description="From the file's first bytes, not its name.")
    original_name: str
    already_present: bool = Field(..., description="The same bytes were stored before.")
    upload_id: str | None = Field(None, description="Presigned uploads: the id it was sent under.")


class UploadResult(BaseModel):
    deployment_id: str
    files: list[UploadedFile]


class PresignRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: int = Field(..., ge=1, description="URLs wanted (at most api_max_files_per_request).")


class PresignedUpload(BaseModel):
    upload_id: str
    url: str = Field(..., description="PUT the file's bytes here, with no other header needed.")
    method: str = "PUT"


class PresignResult(BaseModel):
    deployment_id: str
    expires_at: datetime
    uploads: list[PresignedUpload]


class CompleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    upload_ids: list[str] = Field(..., min_length=1)

    @field_validator("upload_ids")
    @classmethod
    def _ids(cls, value: list[str]) -> list[str]:
        import re

        for item in value:
            if not re.fullmatch(UPLOAD_ID_REGEX, item):
                raise ValueError(f"{item[:40]!r} is not an upload id (32 hex digits)")
        return list(dict.fromkeys(value))


class RefusedUpload(BaseModel):
    upload_id: str
    status: int = Field(..., description="The HTTP status this file alone would have got.")
    reason: str


class CompleteResult(BaseModel):
    deployment_id: str
    accepted: list[UploadedFile]
    refused: list[RefusedUpload] = Field(..., description="Deleted from storage; not announced.")


class UploadStatus(BaseModel):
    deployment_id: str
    received: int = Field(..., description="Distinct files stored for the deployment.")
    processed: int = Field(..., description="Distinct media rows in the result tables.")
    failed: int = Field(..., description="Distinct files in the failures table (not processed).")
    pending: int = Field(..., description="received - processed - failed, at least 0.")
    failure_kinds: dict[str, int] = Field(default_factory=dict)
