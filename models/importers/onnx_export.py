"""Export a torch module to ONNX with the pipeline's contract, and check it against torch.

The contract (docs/models.md): one input `(B, 3, S, S)` float32 with a dynamic batch axis, one
output whose non-batch axes are static (the Triton repository builder and the backends read
them). Parity is measured, not assumed: the same seeded random batches go through torch and
ONNX Runtime and the largest absolute differences are reported (and bound the import).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

OPSET = 17


@dataclass(frozen=True)
class Parity:
    samples: int  # random batches compared
    batch: int  # images per batch
    max_abs_diff: float  # over every output value
    max_abs_diff_scores: float | None  # detectors: objectness/class columns only
    max_abs_diff_boxes_px: float | None  # detectors: cx, cy, w, h in input pixels
    tolerance: float  # what the relevant figure had to stay under

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def export_onnx(
    module: torch.nn.Module,
    path: Path,
    input_name: str,
    output_name: str,
    side: int,
    *,
    dynamic_hw: bool = False,
) -> None:
    """`dynamic_hw`: height and width axes left symbolic too (YOLOv5 `export.py --dynamic`), so
    the detector takes the rectangle letterbox's canvases; the output's row count then follows
    the input and stays symbolic, its other axes static."""
    import onnx

    dummy = torch.zeros(1, 3, side, side)
    with torch.no_grad():
        out_shape = tuple(module(dummy).shape[1:])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        module, (dummy,), str(path), dynamo=False,  # the TorchScript exporter: stable graphs, no onnxscript
        input_names=[input_name], output_names=[output_name],
        dynamic_axes=_dynamic_axes(input_name, output_name, out_shape, dynamic_hw),
        opset_version=OPSET, do_constant_folding=True,
    )  # fmt: skip
    graph = onnx.load(str(path))
    for axis, (dim, size) in enumerate(
        zip(graph.graph.output[0].type.tensor_type.shape.dim[1:], out_shape), start=1
    ):
        if dynamic_hw and axis == _rows_axis(out_shape):
            continue
        dim.ClearField("dim_param")
        dim.dim_value = int(size)
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))


def _rows_axis(out_shape: tuple[int, ...]) -> int:
    """The output axis whose length is the number of predictions (grows with H x W): the
    longest one (YOLOv5 (B, N, 5 + nc), ultralytics (B, 4 + nc, N))."""
    return 1 + max(range(len(out_shape)), key=lambda i: out_shape[i])


def _dynamic_axes(input_name: str, output_name: str, out_shape, dynamic_hw: bool) -> dict:
    if not dynamic_hw:
        return {input_name: {0: "batch"}, output_name: {0: "batch"}}
    return {
        input_name: {0: "batch", 2: "height", 3: "width"},
        output_name: {0: "batch", _rows_axis(out_shape): "predictions"},
    }


def check_parity(
    reference: Callable[[torch.Tensor], torch.Tensor],
    path: Path,
    side: int,
    *,
    samples: int,
    batch: int,
    tolerance: float,
    layout: str | None,
    seed: int = 0,
) -> Parity:
    """Seeded uniform [0, 1) inputs (what /255 images look like) through torch and ONNX Runtime.

    For a detector the bound applies to the score columns (probabilities, the figure that decides
    what is kept); box coordinates are reported in pixels. For a classifier it applies to the
    logits. Inputs for a classifier are ImageNet-normalised like real crops. `layout`: the
    detector's output layout (`yolov5` rows or `ultralytics` columns), None for a classifier.
    """
    detector = layout is not None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    gen = torch.Generator().manual_seed(seed)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    worst = worst_scores = worst_boxes = 0.0
    for _ in range(samples):
        x = torch.rand(batch, 3, side, side, generator=gen)
        if not detector:
            x = (x - mean) / std
        with torch.no_grad():
            expected = reference(x).float().numpy()
        got = session.run(None, {name: x.numpy()})[0]
        if got.shape != expected.shape:
            raise ValueError(f"{path}: ONNX output {got.shape} but torch gives {expected.shape}")
        diff = np.abs(got - expected)
        worst = max(worst, float(diff.max()))
        if layout == "ultralytics":  # (B, 4 + nc, N) -> rows
            diff = diff.transpose(0, 2, 1)
        if detector:
            worst_boxes = max(worst_boxes, float(diff[..., :4].max()))
            worst_scores = max(worst_scores, float(diff[..., 4:].max()))
    return Parity(
        samples, batch, worst,
        worst_scores if detector else None, worst_boxes if detector else None, tolerance,
    )  # fmt: skip
