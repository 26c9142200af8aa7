"""Event parsing under coverage-guided fuzzing (atheris) for a bounded time: no input crashes it.
The hypothesis properties of the same parser are in tests/unit/test_uploads.py (not repeated here)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

FUZZER = Path(__file__).resolve().parent / "fuzz_uploads.py"


@pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is not installed (the [dev] extra installs it on Linux x86_64)",
)
def test_atheris_finds_no_input_that_breaks_event_parsing(tmp_path, scoreboard):
    result = subprocess.run(
        [sys.executable, str(FUZZER), "-max_total_time=8", "-rss_limit_mb=1024", f"-artifact_prefix={tmp_path}/"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    crashes = list(tmp_path.glob("crash-*")) + list(tmp_path.glob("oom-*"))
    assert result.returncode == 0 and not crashes, f"{crashes}\n{result.stderr[-3000:]}"
    runs = int(result.stderr.rsplit("Done ", 1)[1].split(" runs", 1)[0])
    assert runs > 1000, "the fuzzer barely ran"
    from support.harness import Score

    scoreboard.record(
        Score(
            "event parsing fuzzed (atheris, 8 s)", runs, runs, 0, 0, f"{runs:,} inputs, 0 crashes"
        )
    )
