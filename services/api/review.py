"""The review screen in the upload API: `/v1/review/`, a program's own deployments only.

The same page and routes as `trapline review` (services/tools/review.py), behind the API's bearer
token: every data route resolves the calling program (401 without a token, 429 over its rate)
and reviews only the events of the deployments that program registered, read from the results
`trapline serve` writes (`api_results`). The page asks for the token once (kept in the
browser tab's sessionStorage) and for the reviewer's name, sent as `X-Reviewer` and recorded
as `<program>/<name>`. Photos with people are always blurred here: the API has no per-person
permission to show them (review on a trusted machine with `trapline review --show-people`).
The routes stay out of the OpenAPI document, which describes the upload contract.
No answer names a server path: `ProgramReviewStore` leaves the results root out of `meta` and
out of its not-found messages.
"""

# No `from __future__ import annotations`: FastAPI resolves the dependencies' annotations.

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header

from trapline.services.tools.review import review_router
from trapline.services.tools.review_data import NotFound, ReviewStore

PREFIX = "/v1/review"
DEPLOYMENTS_TTL_S = 30.0  # a deployment registered meanwhile shows up within this time


class ProgramReviewStore(ReviewStore):
    """A ReviewStore whose answers never name where the results are (programs see ids only)."""

    def meta(self) -> dict[str, Any]:
        return {k: v for k, v in super().meta().items() if k != "root"}

    def event(self, event_id: str) -> dict[str, Any]:
        with self._no_paths():
            return super().event(event_id)

    def photo(self, event_id: str, media_id: str) -> tuple[bytes, str]:
        with self._no_paths():
            return super().photo(event_id, media_id)

    def save(self, event_id: str, label: str, **fields: Any) -> dict[str, Any]:
        with self._no_paths():
            return super().save(event_id, label, **fields)

    @contextmanager
    def _no_paths(self) -> Iterator[None]:
        """Not-found errors with the server's paths left out: the id is what the caller gave."""
        try:
            yield
        except NotFound as error:
            message = str(error).replace(f" in {self.root}", "").replace(self.root, "<results>")
            raise NotFound(message) from None
        except FileNotFoundError:
            raise NotFound("the photo's file is missing (moved or deleted since the run)") from None


class ProgramStores:
    """One ReviewStore per program, rebuilt when the program's deployments change."""

    def __init__(self, results: str, deployments_of: Callable[[str], list[str]]):
        self.results = results
        self.deployments_of = deployments_of
        self._stores: dict[str, tuple[float, frozenset[str], ReviewStore]] = {}
        self._lock = threading.Lock()

    def get(self, program: str) -> ReviewStore:
        now = time.monotonic()
        with self._lock:
            hit = self._stores.get(program)
        if hit is not None and now - hit[0] < DEPLOYMENTS_TTL_S:
            return hit[2]
        owned = frozenset(self.deployments_of(program))
        if hit is not None and hit[1] == owned:
            store = hit[2]
        else:
            store = ProgramReviewStore(self.results, None, deployment_ids=sorted(owned))
        with self._lock:
            self._stores[program] = (now, owned, store)
        return store


def mount_review(app: FastAPI, results: str, deployments_of, caller) -> ProgramStores:
    """Add the review page and routes under /v1/review/ to the upload API's `app`."""
    stores = ProgramStores(results, deployments_of)

    def store_of(program: Annotated[str, Depends(caller)]) -> ReviewStore:
        return stores.get(program)

    def reviewer_of(
        program: Annotated[str, Depends(caller)],
        name: Annotated[str | None, Header(alias="X-Reviewer", max_length=100)] = None,
    ) -> str:
        name = " ".join((name or "").split())
        return f"{program}/{name}" if name else program

    app.include_router(review_router(store_of, reviewer_of), prefix=PREFIX, include_in_schema=False)
    return stores
