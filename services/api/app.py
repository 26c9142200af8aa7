"""The self-service upload API: programs create deployments and upload photos and videos.

`build_app(settings)` makes the FastAPI app; `trapline api` serves it on Ray Serve
(`services/api/ray_serve.py`), and tests can also drive it in-process. Each stored file becomes one
`trapline.upload/1` event on the uploads topic, sent only once its bytes sit at their
content-addressed name, so the workers never read a half-written object. docs/api.md has the
endpoints, limits and curl examples.
"""

# No `from __future__ import annotations`: FastAPI resolves the endpoints' annotations, and
# `Program` is local to build_app (it closes over the app's authenticator).

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from trapline.services.adapters import kafka_io
from trapline.services.adapters.object_store import configure_fsspec
from trapline.services.api.limits import ApiLimits, BodyLimit
from trapline.services.api.multipart import FIELD, MultipartFiles
from trapline.services.api.operations import CONTROL, Api, uploaded
from trapline.services.api.presigned import complete_presigned, presigned_path
from trapline.services.api.review import mount_review
from trapline.services.api.schemas import (
    ID_REGEX,
    CompleteRequest,
    CompleteResult,
    DeploymentBody,
    PresignedUpload,
    PresignRequest,
    PresignResult,
    Problem,
    RefusedUpload,
    UploadResult,
    UploadStatus,
)
from trapline.services.api.storage import Refused, StreamingUpload
from trapline.services.settings import Settings

log = logging.getLogger(__name__)

DeploymentId = Annotated[str, Path(pattern=ID_REGEX, description="A deployment of your program.")]
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "description": text}
    for code, text in {
        401: "Missing or unknown bearer token.",
        404: "No such deployment in your program.",
        413: "A body over its cap (JSON bodies: 1 MB), refused before it is read.",
        429: "Too many requests for this token, or wrong tokens from this address; see "
        "Retry-After.",
    }.items()
}
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FIELD],
                    "properties": {
                        FIELD: {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "One part per photo or video (JPEG, PNG, MP4, MOV, AVI).",
                        }
                    },
                }
            }
        },
    }
}


def build_app(
    settings: Settings,
    limits: ApiLimits | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The FastAPI app; configures fsspec for S3 in this process (a Ray Serve replica).

    `limits` and `clock` default to the settings' and the monotonic clock (tests inject both).
    """
    configure_fsspec(settings)
    api = Api(settings, limits, clock)
    app = FastAPI(
        title="Trapline upload API",
        version="1",
        description="Create deployments, upload camera-trap photos and videos, follow their "
        "processing. Authenticate with `Authorization: Bearer <program token>`.",
    )
    app.state.api = api
    # Outermost of our layers: a body over its cap is refused before parsing and before auth.
    app.add_middleware(BodyLimit, limits=api.limits)
    bearer = HTTPBearer(
        auto_error=False, description="The token `trapline api add-program` printed."
    )

    @app.exception_handler(Refused)
    async def _refused(request: Request, error: Refused) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        return JSONResponse({"detail": error.reason}, error.status, headers=headers)

    @app.exception_handler(kafka_io.KafkaUnavailable)
    async def _no_kafka(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"uploads topic unavailable: {error}"}, 503)

    def caller(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> str:
        """The calling program; 401 without a valid token, 429 over its rate.

        Wrong tokens are counted per client address: past `failed_auth_burst` of them, that
        address gets 429 before its token is even looked at, so guessing is slowed to
        `failed_auth_per_s` whatever the guesses are.
        """
        if credentials is None:
            raise Refused(401, "missing bearer token: send 'Authorization: Bearer <token>'")
        address = request.client.host if request.client else "unknown"
        wait = api.failed_auth.wait(address)
        if wait > 0:
            raise _TooMany(wait, "too many wrong tokens from your address")
        program = api.auth.program(credentials.credentials)
        if program is None:
            api.failed_auth.take(address)
            raise Refused(401, "invalid token (ask your operator for a new one)")
        wait = api.limiter.take(credentials.credentials)
        if wait > 0:
            raise _TooMany(wait, f"rate limit of {settings.api_rate_per_s:g} requests/s per token")
        return program

    @app.exception_handler(_TooMany)
    async def _too_many(request: Request, error: _TooMany) -> JSONResponse:
        seconds = max(int(error.wait + 0.999), 1)
        detail = f"{error.reason}; retry in {seconds} s"
        return JSONResponse({"detail": detail}, 429, headers={"Retry-After": str(seconds)})

    Program = Annotated[str, Depends(caller)]

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/deployments", status_code=201, responses={**_ERRORS, 409: {"model": Problem}})
    def create_deployment(body: DeploymentBody, program: Program) -> DeploymentBody:
        """Register a deployment (a camera at a place for a period) in your program."""
        api.create_deployment(program, body.to_deployment())
        return body

    @app.get("/v1/deployments", responses=_ERRORS)
    def list_deployments(program: Program) -> list[DeploymentBody]:
        """Your program's deployments."""
        return [
            DeploymentBody.model_validate(d.to_record()) for d in api.registry.deployments(program)
        ]

    @app.get("/v1/deployments/{deployment_id}", responses=_ERRORS)
    def get_deployment(deployment_id: DeploymentId, program: Program) -> DeploymentBody:
        return DeploymentBody.model_validate(api.own_deployment(program, deployment_id).to_record())

    @app.post(
        "/v1/deployments/{deployment_id}/media",
        status_code=201,
        openapi_extra=_UPLOAD_BODY,
        responses={
            **_ERRORS,
            400: {"model": Problem, "description": "Malformed body, empty file."},
            413: {"model": Problem, "description": "A file or the request is too large."},
            415: {"model": Problem, "description": "A file is not a JPEG, PNG, MP4, MOV or AVI."},
        },
    )
    async def upload(
        request: Request, deployment_id: DeploymentId, program: Program
    ) -> UploadResult:
        """Upload photos or videos (multipart, many `files` parts); all or nothing.

        Streamed to storage as they arrive. If any file is refused, nothing of the request is
        kept and no event is sent; the reason names the file.
        """
        await run_in_threadpool(api.own_deployment, program, deployment_id)
        # The request's size cap (api_max_request_bytes) is BodyLimit's, before this runs.
        uploads: list[tuple[str, StreamingUpload]] = []

        def open_file(name: str) -> StreamingUpload:
            label = f"file {len(uploads) + 1} ({CONTROL.sub('', name)[:100]!r})"
            writer = api.store.writer(settings.max_file_bytes, label)
            uploads.append((name, writer))
            return writer

        try:
            form = MultipartFiles(
                request.headers.get("content-type"), open_file, settings.api_max_files_per_request
            )
            async for chunk in request.stream():
                if chunk:
                    await run_in_threadpool(form.feed, chunk)
            await run_in_threadpool(form.finish)
            files = await run_in_threadpool(api.store_uploads, program, deployment_id, uploads)
        except BaseException:
            await run_in_threadpool(_discard_all, uploads)
            raise
        return UploadResult(deployment_id=deployment_id, files=files)

    @app.post(
        "/v1/deployments/{deployment_id}/presigned-uploads",
        status_code=201,
        responses={**_ERRORS, 409: {"model": Problem}, 413: {"model": Problem}},
    )
    def presign(
        deployment_id: DeploymentId, body: PresignRequest, program: Program
    ) -> PresignResult:
        """Presigned S3 PUT URLs for a large batch; then call `.../complete` with their ids."""
        api.own_deployment(program, deployment_id)
        if body.count > settings.api_max_files_per_request:
            raise Refused(413, f"at most {settings.api_max_files_per_request} URLs per request")
        expiry = settings.api_presign_expiry_s
        expires_at = datetime.now(timezone.utc) + timedelta(seconds=expiry)
        uploads = []
        for _ in range(body.count):
            upload_id = _new_upload_id()
            path = presigned_path(api.store, deployment_id, upload_id)
            uploads.append(
                PresignedUpload(upload_id=upload_id, url=api.store.presign_put(path, expiry))
            )
        return PresignResult(deployment_id=deployment_id, expires_at=expires_at, uploads=uploads)

    @app.post(
        "/v1/deployments/{deployment_id}/presigned-uploads/complete",
        responses={**_ERRORS, 413: {"model": Problem}},
    )
    def complete(
        deployment_id: DeploymentId, body: CompleteRequest, program: Program
    ) -> CompleteResult:
        """Check each presigned upload (exists, size, type by its bytes), store it, announce it.

        Each file is judged alone: refused ones are deleted and listed with their reason. What
        is stored is a private copy of the object, taken before the check: a later PUT with
        the same URL changes nothing, and an upload id completes once (409 after).
        """
        api.own_deployment(program, deployment_id)
        if len(body.upload_ids) > settings.api_max_files_per_request:
            raise Refused(413, f"at most {settings.api_max_files_per_request} ids per request")
        accepted, refused = [], []
        for upload_id in body.upload_ids:
            try:
                stored = complete_presigned(
                    api.store, deployment_id, upload_id, settings.max_file_bytes
                )
            except Refused as error:
                refused.append(
                    RefusedUpload(upload_id=upload_id, status=error.status, reason=error.reason)
                )
                continue
            accepted.append(uploaded(stored, f"presigned:{upload_id}", upload_id))
        if accepted:
            api.announce(program, deployment_id, accepted)
        return CompleteResult(deployment_id=deployment_id, accepted=accepted, refused=refused)

    @app.get("/v1/deployments/{deployment_id}/status", responses=_ERRORS)
    def status(deployment_id: DeploymentId, program: Program) -> UploadStatus:
        """Files received for the deployment, and how many the pipeline processed or failed."""
        api.own_deployment(program, deployment_id)
        return api.status(deployment_id)

    # The review screen for the program's own deployments (services/api/review.py).
    mount_review(
        app,
        settings.api_results,
        lambda program: [d.deployment_id for d in api.registry.deployments(program)],
        caller,
    )
    return app


class _TooMany(Exception):
    def __init__(self, wait: float, reason: str):
        super().__init__(f"{reason}; retry in {wait:.1f} s")
        self.wait = wait
        self.reason = reason


def _new_upload_id() -> str:
    import uuid

    return uuid.uuid4().hex


def _discard_all(uploads: list[tuple[str, StreamingUpload]]) -> None:
    for _, upload in uploads:
        upload.discard()
