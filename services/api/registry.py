"""The upload API's registry: programs with their token hashes, and each program's deployments.

Plain JSON files on the same storage as everything else (path or s3:// URL), so there is no
database to run:

    REGISTRY/programs/<program>.json                    {"program", "token_sha256": [...], ...}
    REGISTRY/deployments/<program>/<deployment_id>.json  Deployment.to_record() + "program"
    REGISTRY/deployment-ids/<deployment_id>.json        {"program", "claimed_at"}: the claim

`REGISTRY/deployments` is a folder `load_deployments` reads as it is: point the pipeline's
`deployments_file` at it. Only the sha256 of a token is stored; the token itself is shown once
by `add_program`. A deployment id is unique across programs (the result tables are partitioned
by it), so creating one that another program holds is refused like a duplicate of one's own.
Uniqueness is decided by one conditional create (`conditional.create_if_absent`) of the
id's claim, not by looking first: of two programs registering one id at once, exactly one
wins. Programs are created the same way. Ids that have data no program holds are given out by
an operator (`assign_deployment`), never claimed through the API (`operations.Api`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from datetime import datetime, timezone
from typing import Any

import fsspec

from trapline.pipelines.deployments import Deployment, load_deployments
from trapline.services.api.conditional import create_if_absent

PROGRAM_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")  # no '.': it separates a token's parts
_DUMMY_HASH = hashlib.sha256(b"no such program").hexdigest()


class RegistryError(ValueError):
    """A registry operation that cannot be done; the message says why."""


class Conflict(RegistryError):
    """The thing to create exists already."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _uncached(url: str) -> dict[str, Any]:
    """fsspec options without listing caches: the CLI and every replica write the same files,
    and a cached listing (s3fs keeps one per filesystem instance) would hide new ones."""
    protocol = url.split("://", 1)[0].lower() if "://" in url else "file"
    return {"use_listings_cache": False} if protocol in ("s3", "s3a") else {}


class Registry:
    """Programs and deployments under one root; every call reads storage (no stale copies)."""

    def __init__(self, root: str):
        self.root = root.rstrip("/")
        self.options = _uncached(root)
        self.fs, self.path = fsspec.core.url_to_fs(self.root, **self.options)
        self.path = self.path.rstrip("/")

    @property
    def deployments_url(self) -> str:
        """What `deployments_file` should be for the pipeline to know the API's deployments."""
        return f"{self.root}/deployments"

    # -- programs ------------------------------------------------------------------------------

    def add_program(self, program: str) -> str:
        """Create `program` and return its first token (shown once; only its hash is kept)."""
        _check_program(program)
        token = new_token(program)
        record = {
            "program": program,
            "token_sha256": [hash_token(token)],
            "created_at": datetime.now(timezone.utc).isoformat(),
        }
        if not create_if_absent(self.fs, self._program_path(program), _encode(record)):
            raise Conflict(f"program {program!r} exists; use add-token to give it another token")
        return token

    def add_token(self, program: str) -> str:
        """Another token for an existing program (rotation: hand out the new one, then revoke)."""
        record = self.program(program)
        if record is None:
            raise RegistryError(f"no program {program!r}; create it with add-program")
        token = new_token(program)
        record["token_sha256"].append(hash_token(token))
        self._write(self._program_path(program), record)
        return token

    def program(self, program: str) -> dict[str, Any] | None:
        if not PROGRAM_PATTERN.fullmatch(program):
            return None
        return self._read(self._program_path(program))

    def authenticate(self, token: str) -> str | None:
        """The program a token belongs to, or None. Constant-time in the secret's bytes."""
        program, _, _secret = token.partition(".")
        record = self.program(program) if _secret else None
        hashes = (record or {}).get("token_sha256") or [_DUMMY_HASH]
        given = hash_token(token)
        matched = False
        for stored in hashes:  # compare with all, not just until the first match
            matched |= hmac.compare_digest(given, str(stored))
        return program if matched and record is not None else None

    # -- deployments ---------------------------------------------------------------------------

    def create_deployment(self, program: str, deployment: Deployment) -> None:
        """Store a new deployment; `Conflict` if its id exists under any program.

        The claim is created first and only if absent; the record is written by its winner.
        The listing before it catches records from before claims existed.
        """
        deployment_id = deployment.deployment_id
        taken = Conflict(
            f"deployment id {deployment_id!r} is taken; ids are unique across programs, choose "
            "another (e.g. prefix it with your program's name)"
        )
        if self.fs.glob(f"{self.path}/deployments/*/{deployment_id}.json"):
            raise taken
        claim = {"program": program, "claimed_at": datetime.now(timezone.utc).isoformat()}
        if not create_if_absent(self.fs, self._claim_path(deployment_id), _encode(claim)):
            holder = self._read(self._claim_path(deployment_id)) or {}
            if holder.get("program") == program and self.deployment(program, deployment_id) is None:
                raise Conflict(
                    f"deployment id {deployment_id!r} was claimed by your program at "
                    f"{holder.get('claimed_at')} and its record is not there (being written, or "
                    "an interrupted request: an operator can remove its claim, "
                    f"deployment-ids/{deployment_id}.json in the registry)"
                )
            raise taken
        record = {**deployment.to_record(), "program": program}
        self._write(self._deployment_path(program, deployment_id), record)

    def holder(self, deployment_id: str) -> str | None:
        """The program that holds an id (its claim, or a record from before claims), or None."""
        claim = self._read(self._claim_path(deployment_id))
        if claim is not None:
            return claim.get("program")
        records = self.fs.glob(f"{self.path}/deployments/*/{deployment_id}.json")
        return records[0].rsplit("/", 2)[-2] if records else None

    def assign_deployment(
        self, program: str, deployment: Deployment, *, take_from: str | None = None
    ) -> None:
        """An operator gives an id to `program`, whether or not it has data already.

        `take_from` moves an id another program holds (one claimed before ids with data were
        refused to programs): its record there is removed and the claim rewritten.
        """
        if self.program(program) is None:
            raise RegistryError(f"no program {program!r}; create it with add-program")
        deployment_id = deployment.deployment_id
        holder = self.holder(deployment_id)
        if holder is not None and holder != program:
            if holder != take_from:
                raise Conflict(
                    f"deployment id {deployment_id!r} is held by program {holder!r}; to move "
                    f"it, pass --take-from {holder}"
                )
            for path in (
                self._deployment_path(holder, deployment_id),
                self._claim_path(deployment_id),
            ):
                if self.fs.exists(path):
                    self.fs.rm(path)
        if holder != program:
            claim = {
                "program": program,
                "claimed_at": datetime.now(timezone.utc).isoformat(),
                "assigned_by": "operator",
            }
            if not create_if_absent(self.fs, self._claim_path(deployment_id), _encode(claim)):
                raise Conflict(f"deployment id {deployment_id!r} was claimed meanwhile; retry")
        record = {**deployment.to_record(), "program": program}
        self._write(self._deployment_path(program, deployment_id), record)

    def deployment(self, program: str, deployment_id: str) -> Deployment | None:
        """The program's deployment, or None (another program's deployment is None too)."""
        path = self._deployment_path(program, deployment_id)
        if not self.fs.exists(path):
            return None
        return load_deployments(self._url(path), self.options).get(deployment_id)

    def deployments(self, program: str) -> list[Deployment]:
        folder = f"{self.path}/deployments/{program}"
        if not self.fs.exists(folder):
            return []
        return list(load_deployments(self._url(folder), self.options).values())

    # -- files ---------------------------------------------------------------------------------

    def _program_path(self, program: str) -> str:
        return f"{self.path}/programs/{program}.json"

    def _claim_path(self, deployment_id: str) -> str:
        return f"{self.path}/deployment-ids/{deployment_id}.json"

    def _deployment_path(self, program: str, deployment_id: str) -> str:
        return f"{self.path}/deployments/{program}/{deployment_id}.json"

    def _url(self, path: str) -> str:
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return path if protocol in ("file", "local") else f"{protocol}://{path}"

    def _read(self, path: str) -> dict[str, Any] | None:
        try:
            with self.fs.open(path, "rb") as handle:
                return json.loads(handle.read())
        except FileNotFoundError:
            return None

    def _write(self, path: str, record: dict[str, Any]) -> None:
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with self.fs.open(path, "wb") as handle:
            handle.write(_encode(record))


def _encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, indent=2).encode("utf-8")


def new_token(program: str) -> str:
    """`<program>.<43 url-safe characters>`: 32 random bytes, with the program to find the hash."""
    return f"{program}.{secrets.token_urlsafe(32)}"


def _check_program(program: str) -> None:
    if not PROGRAM_PATTERN.fullmatch(program):
        raise RegistryError(
            f"program name {program!r}: use 1-63 lower-case letters, digits and '-', "
            "starting with a letter or digit"
        )
