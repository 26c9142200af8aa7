"""Benchmark `trapline run` against its own stage costs and a naive MegaDetector-style loop.

    .venv/bin/python load_tests/bench_pipeline.py --photos 500

All figures come from one run on the same photos (these machines are noisy, so only ratios
between figures of the same run mean anything):
- each stage alone, single-threaded, per photo: read, decode, detect, classify, write;
- the ideal photos/s those costs allow on the cores available (cores / sum of stage costs: every
  worker runs every stage on its own core);
- `trapline run` photos/s, steady state (after Ray start-up) and overall;
- pipeline efficiency = steady photos/s / ideal photos/s (target >= 0.9, DESIGN.md);
- a naive loop: full-size decode, batch 1, one process (ONNX Runtime on all cores), and the
  speed-up of `trapline run` over it.
Writes the figures as JSON (default load_tests/out/bench_pipeline.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from load_tests.photos import ensure_photos
from trapline.models.onnx_backend import OnnxClassifier, OnnxDetector
from trapline.pipelines.classify import classify_frames, square_crop_box
from trapline.pipelines.decode import decode_image
from trapline.pipelines.detect import detect_frames
from trapline.pipelines.flow import assemble
from trapline.pipelines.letterbox import Letterbox
from trapline.pipelines.source import list_media, read_bytes
from trapline.pipelines.tables import ModelNames
from trapline.pipelines.types import Frame, MediaResult
from trapline.services.runner import run_folder, write_tables
from trapline.services.settings import Settings


def stage_costs(settings: Settings, uris: list[str]) -> dict[str, float]:
    """Seconds per photo of each stage alone, one thread, on `uris`."""
    detector = OnnxDetector(settings.detector_model, threads=1)
    classifier = OnnxClassifier(settings.classifier_model, threads=1)
    long_side = max(settings.decode_min_long_side, detector.spec.input_size)
    n = len(uris)
    started = time.perf_counter()
    blobs = [read_bytes(uri, settings.max_file_bytes) for uri in uris]
    read = time.perf_counter() - started
    started = time.perf_counter()
    decoded = [decode_image(b, min_long_side=long_side, max_pixels=settings.max_image_pixels) for b in blobs]
    decode = time.perf_counter() - started
    refs = list_media_refs(uris)
    frames = [
        Frame(ref, d.sha256, d.sha256, d.image, d.width, d.height, d.exif_datetime, d.camera_make, d.camera_model, len(b))
        for ref, d, b in zip(refs, decoded, blobs)
    ]  # fmt: skip
    detections, detect, classify = [], 0.0, 0.0
    for i in range(0, n, settings.batch_size):
        batch = frames[i : i + settings.batch_size]
        started = time.perf_counter()
        found = detect_frames(batch, detector, settings.detection_threshold, settings.nms_iou)
        detect += time.perf_counter() - started
        started = time.perf_counter()
        classify_frames(batch, found, classifier, settings.classification_threshold, settings.max_crops_per_photo)
        classify += time.perf_counter() - started
        detections.extend(found)
    results = [
        MediaResult(f.ref, f.media_id, f.sha256, f.width, f.height, f.exif_datetime, f.camera_make, f.camera_model, f.byte_size, d)
        for f, d in zip(frames, detections)
    ]  # fmt: skip
    out = tempfile.mkdtemp(prefix="trapline-bench-write-")
    started = time.perf_counter()
    models = ModelNames("d", "1", "c", "1")
    write_tables(assemble(results, [], settings, models, classifier.spec.labels), out, settings)
    write = time.perf_counter() - started
    shutil.rmtree(out)
    return {k: v / n for k, v in dict(read=read, decode=decode, detect=detect, classify=classify, write=write).items()}


def list_media_refs(uris: list[str]):
    from trapline.pipelines.types import MediaRef

    return [MediaRef(uri=u, deployment_id=Path(u).parent.name) for u in uris]


def naive_loop(settings: Settings, uris: list[str], threads: int) -> float:
    """MegaDetector's classic loop: full-size decode, batch 1, crops from the full image. photos/s."""
    detector = OnnxDetector(settings.detector_model, threads=threads)
    classifier = OnnxClassifier(settings.classifier_model, threads=threads)
    side, crop_side = detector.spec.input_size, classifier.spec.input_size
    canvas = np.empty((1, side, side, 3), dtype=np.uint8)
    started = time.perf_counter()
    for uri in uris:
        image = ImageOps.exif_transpose(Image.open(uri)).convert("RGB")  # full 12 MP decode
        frame_box = Letterbox.fit(image.width, image.height, side)
        frame_box.draw(image, canvas[0])
        from trapline.models.yolo import postprocess

        (boxes,) = postprocess(detector.detect(canvas), detector.spec.layout, settings.detection_threshold, settings.nms_iou)
        for rel, cls in zip(frame_box.to_relative(boxes.xyxy), boxes.classes):
            if detector.spec.classes[int(cls)] != "animal":
                continue
            crop = image.crop(square_crop_box(tuple(rel), image.width, image.height))
            crop = crop.resize((crop_side, crop_side), Image.Resampling.BICUBIC)
            classifier.classify(np.asarray(crop)[None])
    return len(uris) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=500)
    parser.add_argument("--size", default="4000x3000")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--stage-sample", type=int, default=120, help="photos for the stage-alone costs")
    parser.add_argument("--naive-sample", type=int, default=60, help="photos for the naive loop")
    parser.add_argument("--cache", type=Path, default=Path("load_tests/out/photos"))
    parser.add_argument("--json", type=Path, default=Path("load_tests/out/bench_pipeline.json"))
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    cores = os.cpu_count() or 1

    folder = ensure_photos(args.cache / f"{args.photos}-{args.size}", args.photos, width, height)
    uris = [ref.uri for ref in list_media(str(folder)).refs]
    settings = Settings(workers=args.workers, threads_per_worker=1)

    costs = stage_costs(settings, uris[: args.stage_sample])
    per_photo = sum(costs.values())
    ideal = min(cores, args.workers) / per_photo

    out = tempfile.mkdtemp(prefix="trapline-bench-run-")
    summary = run_folder(str(folder), out, settings)
    shutil.rmtree(out)

    naive = naive_loop(settings, uris[: args.naive_sample], threads=cores)
    report = {
        "photos": args.photos,
        "size": args.size,
        "cores": cores,
        "workers": args.workers,
        "stage_seconds_per_photo": {k: round(v, 5) for k, v in costs.items()},
        "ideal_photos_per_second": round(ideal, 2),
        "run_photos_per_second_steady": round(summary.steady_photos_per_second, 2),
        "run_photos_per_second_overall": round(summary.photos_per_second, 2),
        "run_startup_seconds": round(summary.startup_seconds, 2),
        "pipeline_efficiency": round(summary.steady_photos_per_second / ideal, 3),
        "naive_photos_per_second": round(naive, 2),
        "speedup_over_naive": round(summary.steady_photos_per_second / naive, 2),
        "processed": summary.processed,
        "failed": summary.failed,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
