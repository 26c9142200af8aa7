"""Coverage-guided fuzzing of upload-event parsing with atheris (libFuzzer), complementing the
hypothesis properties in tests/unit/test_uploads.py with the same invariant: any bytes give valid
events, or failures that become dead letters, or reported ignores; never an exception.

    python tests/reliability/fuzz_uploads.py -max_total_time=10 [libFuzzer flags]

Seeds: a valid v1 event and an S3 notification, so mutations start from deep inside the parser.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: the support package

with atheris.instrument_imports():
    from trapline.pipelines.uploads import Upload, encode_upload, parse_upload

from support.upload_checks import SOURCE, assert_well_formed  # noqa: E402

SEEDS = [
    encode_upload(
        Upload(uri="s3://camtraps/cam-1/IMG_0001.JPG", deployment_id="cam-1", media_id="m-1")
    ),
    b'{"Records": [{"eventName": "ObjectCreated:Put", "eventTime": "2024-05-01T06:30:00.000Z", '
    b'"s3": {"bucket": {"name": "camtraps"}, "object": {"key": "cam-1/IMG_0001.JPG", "size": 1}}}]}',
]


def check(data: bytes) -> None:
    assert_well_formed(parse_upload(data, source=SOURCE), data)


def main() -> None:
    corpus = Path(tempfile.mkdtemp(prefix="trapline-fuzz-events-"))
    for index, seed in enumerate(SEEDS):
        (corpus / f"seed-{index}").write_bytes(seed)
    atheris.Setup([sys.argv[0], *sys.argv[1:], str(corpus)], check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
