"""Baselines measured in the same run as the pipeline: each stage alone, decode variants, and a
naive MegaDetector-style loop.

- `stage_costs`: seconds per photo of read, decode, detect (letterbox + model + NMS), classify
  (crops + model) and write (assemble + Parquet), each alone, one thread, on the same photos;
- `decode_variants`: the decode stage's before/after figures (full-size decode, the pipeline's
  reduced-scale DCT decode, simplejpeg's scaled decode);
- `naive_loop`: MegaDetector's classic loop: full-size decode, batch 1, one process.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image, ImageOps

from trapline.models.onnx_backend import OnnxClassifier, OnnxDetector
from trapline.models.yolo import postprocess
from trapline.pipelines.classify import classify_frames, square_crop_box
from trapline.pipelines.decode import decode_image
from trapline.pipelines.detect import detect_frames
from trapline.pipelines.flow import assemble
from trapline.pipelines.letterbox import Letterbox
from trapline.pipelines.source import read_bytes
from trapline.pipelines.tables import ModelNames
from trapline.pipelines.types import Frame, MediaRef, MediaResult
from trapline.services.run.folder import write_tables
from trapline.services.settings import Settings

STAGES = ("read", "decode", "detect", "classify", "write")


def stage_costs(settings: Settings, uris: list[str]) -> dict[str, float]:
    """CPU seconds per photo of each stage alone, one thread, on `uris`.

    CPU time, not wall time: on a shared machine other users' processes stretch wall time at
    random, while the CPU a stage needs is what the cores must supply (the ideal's numerator).
    """
    detector = OnnxDetector(settings.detector_model, threads=1)
    classifier = OnnxClassifier(settings.classifier_model, threads=1)
    long_side = max(settings.decode_min_long_side, detector.spec.input_size)
    n = len(uris)
    started = time.process_time()
    blobs = [read_bytes(uri, settings.max_file_bytes) for uri in uris]
    read = time.process_time() - started
    started = time.process_time()
    decoded = [
        decode_image(b, min_long_side=long_side, max_pixels=settings.max_image_pixels)
        for b in blobs
    ]
    decode = time.process_time() - started
    refs = [MediaRef(uri=u, deployment_id=Path(u).parent.name) for u in uris]
    frames = [
        Frame(ref, d.sha256, d.sha256, d.image, d.width, d.height, d.exif_datetime, d.camera_make, d.camera_model, len(b))
        for ref, d, b in zip(refs, decoded, blobs)
    ]  # fmt: skip
    detections, detect, classify = [], 0.0, 0.0
    for i in range(0, n, settings.batch_size):
        batch = frames[i : i + settings.batch_size]
        started = time.process_time()
        found = detect_frames(batch, detector, settings.detection_threshold, settings.nms_iou)
        detect += time.process_time() - started
        started = time.process_time()
        classify_frames(
            batch,
            found,
            classifier,
            settings.classification_threshold,
            settings.max_crops_per_photo,
        )
        classify += time.process_time() - started
        detections.extend(found)
    results = [
        MediaResult(f.ref, f.media_id, f.sha256, f.width, f.height, f.exif_datetime, f.camera_make, f.camera_model, f.byte_size, d)
        for f, d in zip(frames, detections)
    ]  # fmt: skip
    out = tempfile.mkdtemp(prefix="trapline-bench-write-")
    started = time.process_time()
    models = ModelNames("d", "1", "c", "1")
    write_tables(assemble(results, [], settings.stage_options(), models, classifier.spec.labels), out, settings)
    write = time.process_time() - started
    shutil.rmtree(out)
    totals = dict(read=read, decode=decode, detect=detect, classify=classify, write=write)
    return {k: v / n for k, v in totals.items()}


def decode_variants(settings: Settings, uris: list[str]) -> dict[str, float]:
    """CPU seconds per photo of ways to decode the same JPEGs (one thread): the before/after of the
    reduced-scale decode, and the alternatives we measured against it."""
    detector_side = OnnxDetector(settings.detector_model, threads=1).spec.input_size
    long_side = max(settings.decode_min_long_side, detector_side)
    blobs = [read_bytes(uri, settings.max_file_bytes) for uri in uris]

    def full(data: bytes) -> object:
        return Image.open(_io(data)).convert("RGB")

    def pipeline(data: bytes) -> object:
        return decode_image(data, min_long_side=long_side, max_pixels=settings.max_image_pixels)

    def simple_scaled(data: bytes, side: int) -> object:
        return simplejpeg.decode_jpeg(data, min_width=side, min_height=side * 3 // 4, fastdct=True)

    variants = {
        "full_size_pillow": full,
        "pipeline_draft": pipeline,
        "simplejpeg_scaled": lambda d: simple_scaled(d, long_side),
        "simplejpeg_detector_size": lambda d: simple_scaled(d, detector_side),
    }
    costs = {}
    for name, function in variants.items():
        started = time.process_time()
        for data in blobs:
            function(data)
        costs[name] = (time.process_time() - started) / len(blobs)
    return costs


def _io(data: bytes):
    import io

    return io.BytesIO(data)


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
        (boxes,) = postprocess(
            detector.detect(canvas),
            detector.spec.layout,
            settings.detection_threshold,
            settings.nms_iou,
        )
        for rel, cls in zip(frame_box.to_relative(boxes.xyxy), boxes.classes):
            if detector.spec.classes[int(cls)] != "animal":
                continue
            crop = image.crop(square_crop_box(tuple(rel), image.width, image.height))
            crop = crop.resize((crop_side, crop_side), Image.Resampling.BICUBIC)
            classifier.classify(np.asarray(crop)[None])
    return len(uris) / (time.perf_counter() - started)
