"""Load a checkpoint the user marked trusted, resolving only exact names we expect.

`--trust` says the user vouches for the file, but a pickle from the wrong place should still
not run code, so two independent gates stand between the file and Python:

1. `pickle_scan.check_checkpoint` reads every pickle torch.load would read (zip and legacy
   files alike) without running it, and refuses any name outside `ALLOWED` (exact
   (module, name) pairs: no prefixes, no dotted names), any opcode that builds objects some
   other way (INST, OBJ, EXT*), any call of a value that is not an allowed name, and any call
   real files never make (`may_call`). Its refusal is one line that names the culprit.
2. The bytes that were checked (not the file again) go to `torch.load(weights_only=True)`,
   torch's own restricted unpickler, with `ALLOWED`'s names added as safe globals: even a pickle
   the scan misread could reach nothing else.

The pairs are the ones real files name: MegaDetector v5 (YOLOv5 `models.yolo` / `models.common`,
released and straight out of `train.py`, whose optimizer state and `best_fitness` hold numpy
values pickled under protocol 2 through `_codecs.encode`), MDv1000 / MDv6 (ultralytics), and
DeepFaune (tensors in dicts). YOLOv5 / ultralytics class names map to the plain-torch
re-implementations in `yolov5_arch` / `ultralytics_arch` / `ultralytics_v9`.
"""

from __future__ import annotations

import io
import pathlib
import pickle
from argparse import Namespace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trapline.models.importers.identify import CheckpointError
from trapline.models.importers.pickle_scan import PickleRefused, check_checkpoint
from trapline.models.importers.ultralytics_arch import ULTRALYTICS_CLASSES
from trapline.models.importers.ultralytics_v9 import YOLOV9_CLASSES
from trapline.models.importers.yolov5_arch import YOLOV5_CLASSES

# torch.nn classes YOLOv5 (v3-v7) and ultralytics (v8-11, v9 blocks, criterion) pickle.
_NN = {
    "conv": ("Conv2d",),
    "batchnorm": ("BatchNorm2d",),
    "activation": ("SiLU", "LeakyReLU", "Hardswish", "ReLU", "Sigmoid"),
    "linear": ("Identity",),
    "container": ("Sequential", "ModuleList"),
    "pooling": ("MaxPool2d",),
    "upsampling": ("Upsample",),
    "loss": ("BCEWithLogitsLoss",),
}
_REBUILD = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
            "_rebuild_parameter_with_state")  # fmt: skip
_reconstruct = np.ndarray(0).__reduce__()[0]  # numpy's own, whatever its module is called
_scalar = np.float64(0).__reduce__()[0]

# (module, name) as written in the file -> the object it loads as.
ALLOWED: dict[tuple[str, str], Any] = {
    **YOLOV5_CLASSES,
    **ULTRALYTICS_CLASSES,
    **YOLOV9_CLASSES,
    **{(f"torch.nn.modules.{m}", n): getattr(nn, n) for m, names in _NN.items() for n in names},
    **{("torch._utils", n): getattr(torch._utils, n) for n in _REBUILD},
    **{("torch", n): getattr(torch, n) for n in dir(torch)
       if n.endswith("Storage") and not n.startswith("_") and isinstance(getattr(torch, n), type)},
    **{("torch", n): getattr(torch, n) for n in dir(torch)
       if isinstance(getattr(torch, n), torch.dtype)},
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("torch.nn.parameter", "Parameter"): nn.Parameter,
    ("collections", "OrderedDict"): __import__("collections").OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): __import__("_codecs").encode,  # protocol 2 bytes; latin1 only
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # numpy 1 names
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # numpy 2 names
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("argparse", "Namespace"): Namespace,  # YOLOv5 / ultralytics `opt`
    # Paths in `opt` load as pure paths: data only, and a Windows path loads on Linux too.
    **{(module, kind + "Path"): getattr(pathlib, "Pure" + kind + "Path")
       for module in ("pathlib", "pathlib._local") for kind in ("Posix", "Windows")},
}  # fmt: skip
# Objects torch's unpickler must also accept as BUILD targets: numpy's dtype classes.
_BUILD_ONLY = {type(np.dtype(c)) for c in np.typecodes["All"]}
SAFE_GLOBALS = [(obj, f"{module}.{name}") for (module, name), obj in ALLOWED.items()] + [
    (cls, f"trapline.allowed_build.{cls.__name__}") for cls in _BUILD_ONLY
]

KNOWN = (
    "known: YOLOv5 Conv/C3/Bottleneck/SPPF/SPP/Focus/Concat/Detect/Model; ultralytics "
    "YOLOv8/YOLO11 Conv/DWConv/C2f/C3k2/C3k/SPPF/C2PSA/PSABlock/Attention/Concat/DFL/Detect/"
    "DetectionModel and YOLOv9-c RepNCSPELAN4/RepCSP/RepBottleneck/RepConv/ADown/SPPELAN; "
    "torch modules and tensors; numpy arrays"
)


# Names that say which unsupported family a refused file is, and what to do instead.
_ORIGINAL_YOLOV9 = ("RepNCSPELAN4", "ADown", "SPPELAN", "DDetect", "DualDDetect", "CBLinear")
_END_TO_END = ("v10Detect", "SCDown", "C2fCIB", "PSA")  # YOLOv10 blocks (ultralytics)


def _what_to_do(refused: str) -> str:
    """A hint for the two families the importers do not rebuild, from the refused name."""
    name = refused.rsplit(".", 1)[-1]
    if refused.split(" refers to ")[-1].startswith("models.") and name in _ORIGINAL_YOLOV9:
        return (
            ". This is the original YOLOv9 repository's layout (YOLOv9 blocks under "
            "`models.common` / `models.yolo`, as MDv1000-cedar is expected to be): Trapline "
            "rebuilds YOLOv9-c only under ultralytics' class names. Export it to ONNX with that "
            "repository's export.py (--include onnx --dynamic) and write the sidecar by hand "
            "(docs/models.md, 'By hand'), or use MDv5a / MDv1000-redwood, -larch or -sorrel"
        )
    if name in _END_TO_END:
        return (
            ". This is a YOLOv10-style end-to-end model (MDv6 YOLOv10 variants): its one-to-one "
            "head answers top-k rows, not the (B, 4 + nc, N) layout the pipeline decodes, so it "
            "cannot be served as it is; use MDv5a or an MDv1000 / MDv6 YOLOv9-c or YOLO11 model"
        )
    return ""


def is_allowed(module: str, name: str) -> bool:
    return (module, name) in ALLOWED


def may_call(module: str, name: str, opcode: str) -> bool:
    """How real files call what they name: classes are made with NEWOBJ (modules only so,
    whose constructors would allocate whatever the arguments ask); storages and dtypes are
    named, never called."""
    obj = ALLOWED[(module, name)]
    if isinstance(obj, torch.dtype) or (module == "torch" and name.endswith("Storage")):
        return False
    if obj is np.ndarray:  # an argument of numpy's _reconstruct, never called itself: a
        return False  # call would allocate whatever shape it names, uninitialised
    if opcode != "REDUCE":
        return isinstance(obj, type)
    return not (isinstance(obj, type) and issubclass(obj, nn.Module))


def load_trusted(path: Path) -> Any:
    """The unpickled checkpoint, on the CPU. Call only after the user passed --trust."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read: {error}") from None
    try:
        check_checkpoint(data, is_allowed, may_call)
    except PickleRefused as error:
        raise CheckpointError(
            f"{path}: refused before loading anything: {error} (the importer loads exact names "
            f"only; {KNOWN}){_what_to_do(str(error))}"
        ) from None
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # torch's own gate; its message spans lines
        reason = " ".join(str(error).split())[:300]
        raise CheckpointError(f"{path}: refused while loading: {reason}") from None
    except (RuntimeError, EOFError, AttributeError, ValueError, TypeError) as error:
        reason = " ".join(str(error).split())[:300]
        raise CheckpointError(f"{path}: cannot load the checkpoint: {reason}") from None
