"""Build a Triton model repository from a detector and a classifier ONNX file.

    build_repository(Path("md_v5a.onnx"), Path("deepfaune.onnx"), Path("repo"),
                     backend="onnxruntime", gpu=True)

writes `repo/trapline_detector/{config.pbtxt,1/model.onnx,1/model.json}` and the same for
`trapline_classifier`. Each served graph is the original graph with a uint8 NHWC input: requests
carry bytes (a 1280 letterbox is 4.9 MB as uint8, 19.6 MB as float32) and the server's device
does Cast, Transpose and normalisation. The detector's graph also runs NMS (ONNX
`NonMaxSuppression`) and answers its best `max_det` raw rows per image, zero-padded, in the
model's own layout: the client's post-processing is unchanged and a response is a few KB.

Two flavours, same graphs:
- `onnxruntime`: the official Triton image's ONNX Runtime backend (production; GPU instances,
  optionally TensorRT fp16).
- `python`: a `model.py` that runs the graph with ONNX Runtime inside Triton's python backend
  (the only backend in the `nvidia-pytriton` wheel that tests and the local stack use).

The sidecar is copied next to the graph (`1/model.json`) and into the config as the
`trapline_spec` parameter, which clients read to learn the model's name, version and labels.
Needs the `onnx` package (build time only).

Over 400 lines because it writes both backends' repositories (onnxruntime for the official image,
python for the local server) and the graphs around the models, which must agree with each other.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Literal

import numpy as np

from trapline.models.contracts import (
    ClassifierSpec,
    DetectorSpec,
    ModelContractError,
    load_classifier_spec,
    load_detector_spec,
    sidecar_path,
)

if TYPE_CHECKING:
    import onnx

TEMPLATE_DIR = Path(__file__).resolve().parent / "triton_template"
DETECTOR_MODEL = "trapline_detector"
CLASSIFIER_MODEL = "trapline_classifier"
IMAGES = "images"  # the uint8 (B, S, S, 3) input of both served graphs
DETECTIONS = "detections"  # detector output: raw rows in the model's layout, best first
LOGITS = "logits"  # classifier output: (B, len(labels)) float32
SPEC_PARAMETER = "trapline_spec"  # config parameter holding the sidecar JSON
LARGE_MODEL_BYTES = 1 << 30  # weights above this are saved as external data
MIN_OPSET = 12  # GatherND with batch_dims, TopK with a K input
_SITE_MARKER = (
    "_SITE_PACKAGES = None  # build_repository writes the Triton venv's site-packages here"
)

Backend = Literal["onnxruntime", "python"]


@dataclass(frozen=True)
class RepositoryOptions:
    """Knobs of the generated configs and graphs; defaults suit one GPU or a laptop."""

    detector_name: str = DETECTOR_MODEL  # Triton model name of the detector
    classifier_name: str = CLASSIFIER_MODEL  # Triton model name of the classifier
    max_batch_size: int = 32  # largest batch Triton forms or accepts per request
    preferred_batch_sizes: tuple[int, ...] = (8, 16, 32)  # batches the dynamic batcher aims for
    max_queue_delay_us: int = 2000  # longest a request waits for others to fill a batch
    instances: int = 1  # model instances per device (2 overlaps copies with compute on a GPU)
    threads: int = 1  # ONNX Runtime intra-op threads per CPU instance
    nms: bool = True  # run NMS in the detector graph (else it answers all N raw rows)
    nms_iou: float = 0.45  # IoU above which a lower-scoring box of the same class goes
    nms_min_score: float = 0.005  # rows at or below this never leave the server (MD keeps >= 0.005)
    max_det: int = 100  # rows per image after NMS (the client keeps at most 100 too)
    fp16: bool = False  # GPU only: ONNX Runtime's TensorRT provider in FP16 (engines cached)
    trt_cache_dir: str = "/tmp/trapline-trt-cache"  # TensorRT engine cache, on the server


def build_repository(
    detector_onnx: Path,
    classifier_onnx: Path,
    out: Path,
    *,
    backend: Backend = "onnxruntime",
    gpu: bool = False,
    options: RepositoryOptions | None = None,
    python_site_packages: Path | None = None,
) -> Path:
    """Write a ready model repository to `out` (its two model folders are replaced) and return it.

    `python_site_packages` (python flavour only): the Triton venv's site-packages, written into
    `model.py` because the python-backend stub ignores PYTHONPATH.
    """
    opts = options or RepositoryOptions()
    if backend not in ("onnxruntime", "python"):
        raise ValueError(f"backend must be 'onnxruntime' or 'python', not {backend!r}")
    _check_options(opts)
    onnx = _import_onnx()
    detector_spec = load_detector_spec(detector_onnx)
    classifier_spec = load_classifier_spec(classifier_onnx)
    detector_graph = wrap_detector(onnx.load(str(detector_onnx)), detector_spec, opts)
    classifier_graph = wrap_classifier(onnx.load(str(classifier_onnx)), classifier_spec)
    out.mkdir(parents=True, exist_ok=True)
    for name, source, graph, side in (
        (opts.detector_name, detector_onnx, detector_graph, detector_spec.input_size),
        (opts.classifier_name, classifier_onnx, classifier_graph, classifier_spec.input_size),
    ):
        output_name = DETECTIONS if graph is detector_graph else LOGITS
        model_dir = out / name
        if model_dir.exists():
            shutil.rmtree(model_dir)
        version_dir = model_dir / "1"
        version_dir.mkdir(parents=True)
        # Protobuf stops at 2 GB: big graphs (DeepFaune's ViT-L is 1.2 GB) keep weights beside.
        large = sum(init.ByteSize() for init in graph.graph.initializer) > LARGE_MODEL_BYTES
        onnx.save(graph, str(version_dir / "model.onnx"), save_as_external_data=large,
                  location="model.onnx.data")  # fmt: skip
        sidecar = json.loads(sidecar_path(source).read_text())
        (version_dir / "model.json").write_text(json.dumps(sidecar, indent=2) + "\n")
        if backend == "python":
            (version_dir / "model.py").write_text(_model_py(python_site_packages))
        config = _config(
            name, backend, gpu, opts, source, sidecar, side, output_name, _output_dims(graph)
        )
        (model_dir / "config.pbtxt").write_text(config)
    return out


def wrap_detector(
    model: onnx.ModelProto, spec: DetectorSpec, options: RepositoryOptions
) -> onnx.ModelProto:
    """The detector graph with a uint8 NHWC input (/255 inside) and, if asked, NMS at the end."""
    onnx = _import_onnx()
    helper = onnx.helper
    graph = _prepare(model, spec.input_size, "detector")
    width = 5 + len(spec.classes) if spec.layout == "yolov5" else 4 + len(spec.classes)
    raw_name = graph.output[0].name
    raw_dims = _dims(graph.output[0])
    row_axis = 2 if spec.layout == "yolov5" else 1
    if len(raw_dims) != 3 or raw_dims[row_axis] not in (width, None):
        raise ModelContractError(
            f"detector output {raw_name} has shape {raw_dims}; layout {spec.layout} with "
            f"{len(spec.classes)} classes needs {width} values per row"
        )
    head = _input_nodes(graph, (1 / 255,) * 3, (0.0,) * 3)
    if not options.nms:
        tail = [helper.make_node("Identity", [raw_name], [DETECTIONS])]
        _finish(model, head, tail, DETECTIONS, raw_dims[1:])
        return model
    c = _Constants(graph)
    rows = raw_name
    nodes: list = []
    if spec.layout == "ultralytics":  # (B, 4 + nc, N) -> (B, N, 4 + nc)
        rows = "trapline_rows"
        nodes.append(helper.make_node("Transpose", [raw_name], [rows], perm=[0, 2, 1]))
    two, four, five, big = (c.i64(f"{v}", [v]) for v in (2, 4, 5, 1 << 30))
    zero, first = c.i64("0", [0]), 5 if spec.layout == "yolov5" else 4
    nodes += [
        helper.make_node("Slice", [rows, zero, four, two], ["trapline_boxes"]),
        helper.make_node("Slice", [rows, c.i64(f"{first}", [first]), big, two], ["trapline_cls"]),
    ]
    scores = "trapline_cls"
    if spec.layout == "yolov5":  # score = objectness x class
        nodes += [
            helper.make_node("Slice", [rows, four, five, two], ["trapline_obj"]),
            helper.make_node("Mul", ["trapline_obj", "trapline_cls"], ["trapline_scores"]),
        ]
        scores = "trapline_scores"
    nc = len(spec.classes)
    nodes += [
        # Only each row's best class competes (as in models/yolo.py): mask the others to 0.
        helper.make_node("ArgMax", [scores], ["trapline_best"], axis=2, keepdims=0),
        helper.make_node(
            "OneHot", ["trapline_best", c.i64("nc", [nc]), c.f32("onehot", [0.0, 1.0])],
            ["trapline_onehot"], axis=-1,
        ),
        helper.make_node("Mul", [scores, "trapline_onehot"], ["trapline_masked"]),
        helper.make_node("Transpose", ["trapline_masked"], ["trapline_by_class"], perm=[0, 2, 1]),
        helper.make_node(
            "NonMaxSuppression",
            ["trapline_boxes", "trapline_by_class", c.i64("max_det", [options.max_det]),
             c.f32("iou", [options.nms_iou]), c.f32("min_score", [options.nms_min_score])],
            ["trapline_selected"], center_point_box=1,
        ),  # (K, 3): image, class, row
        # Scatter the kept rows' scores into a zero (B, N) map; its top max_det are the answer.
        helper.make_node("GatherND", ["trapline_by_class", "trapline_selected"], ["trapline_kept_scores"]),
        helper.make_node("Gather", ["trapline_selected", c.i64("image_row", [0, 2])], ["trapline_pairs"], axis=1),
        helper.make_node("Shape", [rows], ["trapline_rows_shape"]),
        helper.make_node("Slice", ["trapline_rows_shape", zero, two, zero], ["trapline_bn"]),
        helper.make_node("ConstantOfShape", ["trapline_bn"], ["trapline_zeros"],
                         value=helper.make_tensor("zero", onnx.TensorProto.FLOAT, [1], [0.0])),
        helper.make_node("ScatterND", ["trapline_zeros", "trapline_pairs", "trapline_kept_scores"], ["trapline_dense"]),
        helper.make_node("Slice", ["trapline_rows_shape", c.i64("1", [1]), two, zero], ["trapline_n"]),
        helper.make_node("Min", ["trapline_n", c.i64("max_det_k", [options.max_det])], ["trapline_k"]),
        helper.make_node("TopK", ["trapline_dense", "trapline_k"], ["trapline_top", "trapline_top_rows"], axis=1),
        helper.make_node("Reshape", ["trapline_top_rows", c.i64("b_k_1", [0, 0, 1])], ["trapline_index"]),
        helper.make_node("GatherND", [rows, "trapline_index"], ["trapline_picked"], batch_dims=1),
        helper.make_node("Greater", ["trapline_top", c.f32("zero_score", [0.0])], ["trapline_valid"]),
        helper.make_node("Cast", ["trapline_valid"], ["trapline_valid_f"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Reshape", ["trapline_valid_f", c.i64("b_k_1v", [0, 0, 1])], ["trapline_mask"]),
    ]  # fmt: skip
    if spec.layout == "yolov5":
        nodes.append(helper.make_node("Mul", ["trapline_picked", "trapline_mask"], [DETECTIONS]))
    else:  # back to (B, 4 + nc, max_det)
        nodes += [
            helper.make_node("Mul", ["trapline_picked", "trapline_mask"], ["trapline_padded"]),
            helper.make_node("Transpose", ["trapline_padded"], [DETECTIONS], perm=[0, 2, 1]),
        ]
    n_rows = raw_dims[1] if spec.layout == "yolov5" else raw_dims[2]
    k = min(options.max_det, n_rows) if n_rows is not None else None
    out_dims = [k, width] if spec.layout == "yolov5" else [width, k]
    _finish(model, head, nodes, DETECTIONS, out_dims)
    return model


def wrap_classifier(model: onnx.ModelProto, spec: ClassifierSpec) -> onnx.ModelProto:
    """The classifier graph with a uint8 NHWC input, ImageNet-normalised inside."""
    helper = _import_onnx().helper
    graph = _prepare(model, spec.input_size, "classifier")
    raw_name = graph.output[0].name
    raw_dims = _dims(graph.output[0])
    if len(raw_dims) != 2 or raw_dims[1] not in (len(spec.labels), None):
        raise ModelContractError(
            f"classifier output {raw_name} has shape {raw_dims}; the sidecar lists "
            f"{len(spec.labels)} labels"
        )
    std = np.asarray(spec.std, dtype=np.float64)
    scale = tuple(float(v) for v in 1 / (255 * std))
    shift = tuple(float(v) for v in np.asarray(spec.mean) / std)
    head = _input_nodes(graph, scale, shift)
    tail = [helper.make_node("Identity", [raw_name], [LOGITS])]
    _finish(model, head, tail, LOGITS, [len(spec.labels)])
    return model


# --------------------------------------------------------------------------------------------
# Graph surgery


class _Constants:
    """Initializers added to a graph, named `trapline_c_<name>`."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph

    def i64(self, name: str, values: list[int]) -> str:
        return self.array(name, np.asarray(values, dtype=np.int64))

    def f32(self, name: str, values: list[float]) -> str:
        return self.array(name, np.asarray(values, dtype=np.float32))

    def array(self, name: str, array: np.ndarray) -> str:
        full = f"trapline_c_{name}"
        if not any(init.name == full for init in self.graph.initializer):
            self.graph.initializer.append(_import_onnx().numpy_helper.from_array(array, full))
        return full


def _prepare(model: onnx.ModelProto, side: int, what: str) -> onnx.GraphProto:
    """Check the float (B, 3, S, S) input, rename it to a private name; return the graph."""
    onnx = _import_onnx()
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise ModelContractError(
            f"{what} graph uses opset {opset}; re-export with opset >= {MIN_OPSET} (e.g. 17)"
        )
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelContractError(
            f"{what} graph has inputs {[i.name for i in inputs]}; expected one"
        )
    model_input = inputs[0]
    if model_input.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise ModelContractError(
            f"{what} input {model_input.name} is not float32; is it already wrapped?"
        )
    dims = _dims(model_input)
    if len(dims) != 4 or dims[1] != 3 or any(d not in (side, None) for d in dims[2:]):
        raise ModelContractError(
            f"{what} input {model_input.name} has shape {dims}; expected (batch, 3, {side}, {side})"
        )
    if dims[0] is not None:
        raise ModelContractError(
            f"{what} input {model_input.name} has a fixed batch of {dims[0]}; Triton batches "
            "requests, so re-export with a dynamic batch axis (YOLOv5: export.py --dynamic)"
        )
    del graph.output[1:]  # extra outputs (feature maps of some YOLOv5 exports) are not served
    _rename(graph, model_input.name, "trapline_float_input")
    _rename(graph, graph.output[0].name, "trapline_raw")
    batch = model_input.type.tensor_type.shape.dim[0]
    batch_dim = batch.dim_param or "batch"
    graph.input.remove(model_input)
    graph.input.insert(
        0,
        onnx.helper.make_tensor_value_info(
            IMAGES, onnx.TensorProto.UINT8, [batch_dim, side, side, 3]
        ),
    )
    return graph


def _input_nodes(
    graph: onnx.GraphProto, scale: tuple[float, ...], shift: tuple[float, ...]
) -> list:
    """uint8 NHWC -> float NCHW, x * scale - shift per channel (transpose while still bytes)."""
    helper = _import_onnx().helper
    c = _Constants(graph)
    nodes = [
        helper.make_node("Transpose", [IMAGES], ["trapline_nchw_u8"], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", ["trapline_nchw_u8"], ["trapline_nchw"], to=1),  # FLOAT
    ]
    scale_name = c.array("scale", np.asarray(scale, dtype=np.float32).reshape(1, 3, 1, 1))
    if any(shift):
        shift_name = c.array("shift", np.asarray(shift, dtype=np.float32).reshape(1, 3, 1, 1))
        nodes += [
            helper.make_node("Mul", ["trapline_nchw", scale_name], ["trapline_scaled"]),
            helper.make_node("Sub", ["trapline_scaled", shift_name], ["trapline_float_input"]),
        ]
    else:
        nodes.append(
            helper.make_node("Mul", ["trapline_nchw", scale_name], ["trapline_float_input"])
        )
    return nodes


def _finish(
    model: onnx.ModelProto, head: list, tail: list, output_name: str, dims: list[int | None]
) -> None:
    """Input conversion before the original nodes, `tail` after; `output_name` the only output.

    `dims` are the output's dims after the batch axis (None: dynamic).
    """
    onnx = _import_onnx()
    graph = model.graph
    original = list(graph.node)
    del graph.node[:]
    graph.node.extend([*head, *original, *tail])
    batch = graph.input[0].type.tensor_type.shape.dim[0].dim_param
    shape = [batch, *(d if d is not None else f"{output_name}_{i}" for i, d in enumerate(dims))]
    del graph.output[:]
    graph.output.append(
        onnx.helper.make_tensor_value_info(output_name, onnx.TensorProto.FLOAT, shape)
    )
    del graph.value_info[:]  # shapes recorded for the old tensors; ONNX Runtime re-infers
    if sum(init.ByteSize() for init in graph.initializer) < LARGE_MODEL_BYTES:
        onnx.checker.check_model(model)  # in memory only below protobuf's 2 GB


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename a tensor wherever it is produced or used, subgraphs (If / Loop bodies) included."""
    for node in graph.node:
        for names in (node.input, node.output):
            for i, name in enumerate(names):
                if name == old:
                    names[i] = new
        for attribute in node.attribute:
            for sub in [attribute.g, *attribute.graphs]:
                _rename(sub, old, new)
    for value in graph.output:
        if value.name == old:
            value.name = new


def _dims(value_info: onnx.ValueInfoProto) -> list[int | None]:
    return [
        d.dim_value if d.HasField("dim_value") else None
        for d in value_info.type.tensor_type.shape.dim
    ]


def _output_dims(model: onnx.ModelProto) -> list[int]:
    """Output dims without the batch axis, -1 where dynamic (Triton's notation)."""
    return [d if d is not None else -1 for d in _dims(model.graph.output[0])[1:]]


# --------------------------------------------------------------------------------------------
# Files


def _config(
    name: str,
    backend: Backend,
    gpu: bool,
    opts: RepositoryOptions,
    source: Path,
    sidecar: dict,
    side: int,
    output_name: str,
    output_dims: list[int],
) -> str:
    extra, warmup_sizes = "", [1]
    if gpu and opts.fp16 and backend == "onnxruntime":
        extra = _TENSORRT.substitute(cache=f"{opts.trt_cache_dir.rstrip('/')}/{name}")
        # TensorRT builds an engine for the batch sizes it has seen: warming up with the smallest
        # and largest batch makes it build one for the whole range now, not under traffic.
        warmup_sizes.append(opts.max_batch_size)
    warmup = _WARMUP.substitute(
        entries=",\n".join(
            _WARMUP_ENTRY.substitute(batch=b, input_name=IMAGES, side=side)
            for b in dict.fromkeys(warmup_sizes)
        )
    )
    spec_json = json.dumps(sidecar, separators=(",", ":"))
    preferred = sorted({b for b in opts.preferred_batch_sizes if b <= opts.max_batch_size})
    template = Template((TEMPLATE_DIR / "config.pbtxt.in").read_text())
    return template.substitute(
        name=name,
        backend=backend,
        max_batch_size=opts.max_batch_size,
        input_name=IMAGES,
        output_name=output_name,
        side=side,
        output_dims=", ".join(str(d) for d in output_dims),
        preferred_batch_sizes=", ".join(str(b) for b in preferred) or str(opts.max_batch_size),
        max_queue_delay_us=opts.max_queue_delay_us,
        instances=opts.instances,
        kind="KIND_GPU" if gpu else "KIND_CPU",
        threads=opts.threads,
        spec_json=spec_json.replace("\\", "\\\\").replace('"', '\\"'),
        spec_name=sidecar.get("name", "?"),
        spec_version=sidecar.get("version", "?"),
        source=source.name,
        warmup=warmup,
        extra=extra,
    )


# One all-zero request per batch size at load, so the first real batch pays no allocation.
_WARMUP = Template("""model_warmup [
$entries
]""")
_WARMUP_ENTRY = Template("""  {
    name: "zeros_$batch"
    batch_size: $batch
    inputs {
      key: "$input_name"
      value: { data_type: TYPE_UINT8 dims: [ $side, $side, 3 ] zero_data: true }
    }
  }""")

_TENSORRT = Template("""
# fp16 through ONNX Runtime's TensorRT provider; engines are built on first load and cached.
optimization {
  execution_accelerators {
    gpu_execution_accelerator: [
      {
        name: "tensorrt"
        parameters { key: "precision_mode" value: "FP16" }
        parameters { key: "max_workspace_size_bytes" value: "4294967296" }
        parameters { key: "trt_engine_cache_enable" value: "1" }
        parameters { key: "trt_engine_cache_path" value: "$cache" }
      }
    ]
  }
}
""")


def _model_py(site_packages: Path | None) -> str:
    text = (TEMPLATE_DIR / "model.py").read_text()
    if _SITE_MARKER not in text:
        raise RuntimeError(f"{TEMPLATE_DIR / 'model.py'} lost its site-packages marker line")
    if site_packages is None:
        return text
    return text.replace(
        _SITE_MARKER, f"_SITE_PACKAGES = {json.dumps(str(site_packages))}  # Triton venv"
    )


def _check_options(opts: RepositoryOptions) -> None:
    if opts.max_batch_size < 1 or opts.instances < 1 or opts.threads < 1 or opts.max_det < 1:
        raise ValueError("max_batch_size, instances, threads and max_det must be >= 1")
    if not 0 < opts.nms_iou <= 1 or opts.nms_min_score < 0:
        raise ValueError("nms_iou must be in (0, 1] and nms_min_score >= 0")
    for name in (opts.detector_name, opts.classifier_name):
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"invalid Triton model name {name!r}")


def _import_onnx():  # the onnx package is needed to build a repository, never to serve
    try:
        import onnx
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "building a Triton repository needs the onnx package: pip install 'onnx>=1.16'"
        ) from None
    return onnx
