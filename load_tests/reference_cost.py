"""Throughput cost of `profile: reference` against the default `fast`, measured in one run.

    .venv/bin/python -m load_tests.reference_cost [PHOTO_DIR] [--photos 12]

Two pairs, each run alternately on the same photos, one thread, best of three passes:
- the demo models (detector fixed at 320 x 320, so `letterbox` stays square): fast against
  full_resolution + truncate: the full decode's cost, what reference adds on any detector;
- a MegaDetector v5 architecture (YOLOv5 P6, tiny widths, untrained) exported at 640 twice,
  fixed and with dynamic H/W: fast (square) against the whole reference profile (rectangle).
A real MDv5 at 1280 spends seconds per photo in the model on a CPU, so there the ratio moves
towards 1 (and the rectangle's 25% fewer pixels on 4:3 photos pay back some of the decode).
Needs the [import] extra (torch) for the second pair.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from trapline.models.onnx_backend import OnnxClassifier, OnnxDetector
from trapline.pipelines.flow import PhotoPipeline
from trapline.pipelines.types import MediaRef
from trapline.services.settings import Settings


def _tiny_mdv5(folder: Path, side: int, dynamic: bool) -> Path:
    import torch

    from trapline.models.importers.megadetector import _FirstOutput
    from trapline.models.importers.yolov5_arch import TINY_P6, build_yolov5

    torch.manual_seed(0)
    model = _FirstOutput(build_yolov5(TINY_P6).float().eval())
    path = folder / f"mdv5_{'dynamic' if dynamic else 'fixed'}.onnx"
    axes = {"images": {0: "batch"}, "output": {0: "batch"}}
    if dynamic:
        axes = {"images": {0: "batch", 2: "h", 3: "w"}, "output": {0: "batch", 1: "rows"}}
    torch.onnx.export(model, (torch.zeros(1, 3, side, side),), str(path), dynamo=False,
                      input_names=["images"], output_names=["output"], opset_version=17,
                      dynamic_axes=axes)  # fmt: skip
    sidecar = {"name": "mdv5-tiny", "version": "0", "input_size": side, "stride": 64}
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    return path


def _best_of(pipelines: dict[str, PhotoPipeline], refs: list[MediaRef], passes: int):
    best = {name: float("inf") for name in pipelines}
    for _ in range(passes):
        for name, pipeline in pipelines.items():  # alternate: drifts hit both alike
            started = time.perf_counter()
            for start in range(0, len(refs), 8):
                out = pipeline.process(refs[start : start + 8])
                assert not out.failures, out.failures[:1]
            best[name] = min(best[name], time.perf_counter() - started)
    return {name: len(refs) / seconds for name, seconds in best.items()}  # photos per second


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("photos", nargs="?", default="load_tests/out/photos")
    parser.add_argument("--photos", dest="count", type=int, default=12)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    files = sorted(p for p in Path(args.photos).rglob("*") if p.suffix.lower() == ".jpg")
    files = files[: args.count]
    refs = [MediaRef(uri=str(f.resolve()), deployment_id="bench") for f in files]
    base = Settings(workers=0)
    classifier = OnnxClassifier(base.classifier_model)
    demo = OnnxDetector(base.detector_model)
    rows = {}
    rates = _best_of(
        {
            "fast": PhotoPipeline(base.stage_options(), demo, classifier),
            "reference": PhotoPipeline(
                Settings(profile="reference", letterbox="square").stage_options(), demo, classifier
            ),
        },
        refs,
        args.passes,
    )
    rows["demo models (square kept)"] = rates
    with tempfile.TemporaryDirectory() as tmp:
        fixed = OnnxDetector(_tiny_mdv5(Path(tmp), 640, dynamic=False))
        dynamic = OnnxDetector(_tiny_mdv5(Path(tmp), 640, dynamic=True))
        rows["MDv5 architecture at 640"] = _best_of(
            {
                "fast": PhotoPipeline(base.stage_options(), fixed, classifier),
                "reference": PhotoPipeline(Settings(profile="reference").stage_options(), dynamic, classifier),
            },
            refs,
            args.passes,
        )
    print(f"{len(refs)} photos from {args.photos}, best of {args.passes} passes, one thread")
    for name, rate in rows.items():
        ratio = rate["reference"] / rate["fast"]
        print(
            f"{name}: fast {rate['fast']:.2f} photos/s, reference {rate['reference']:.2f} "
            f"photos/s, reference/fast = {ratio:.2f}"
        )


if __name__ == "__main__":
    main()
