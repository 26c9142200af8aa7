"""Load a checkpoint the user marked trusted, resolving only the names we expect.

Even with `--trust`, unpickling goes through an allow-list: torch's own tensor/storage/module
classes, a few containers, numpy scalars, and the YOLOv5 / ultralytics classes that
`yolov5_arch.YOLOV5_CLASSES` / `ultralytics_arch.ULTRALYTICS_CLASSES` /
`ultralytics_v9.YOLOV9_CLASSES` map to our plain-torch re-implementations. A pickle that names anything else (`os.system`,
an unknown YOLOv5 block, a training-only helper) is refused with that name, so an import never
runs code the user did not expect, and a checkpoint from a YOLOv5 variant we do not cover says
exactly which class is missing.

torch.load(pickle_module=...) builds its unpickler by subclassing `pickle_module.Unpickler`, and
its own `find_class` handles the `*Storage` names first; everything else reaches ours.
"""

from __future__ import annotations

import _compat_pickle
import pickle
import types
from pathlib import Path
from typing import Any

import torch

from trapline.models.importers.identify import CheckpointError
from trapline.models.importers.ultralytics_arch import ULTRALYTICS_CLASSES
from trapline.models.importers.ultralytics_v9 import YOLOV9_CLASSES
from trapline.models.importers.yolov5_arch import YOLOV5_CLASSES

_ALLOWED_PREFIXES = ("torch.nn.modules.", "torch._utils", "torch.storage", "torch._tensor",
                     "torch.nn.parameter", "torch.serialization")  # fmt: skip
_ALLOWED = {
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("torch", "Size"),
    ("torch", "device"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("argparse", "Namespace"),
}
_TORCH_DTYPES = {name for name in dir(torch) if isinstance(getattr(torch, name), torch.dtype)}


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # torch.save writes protocol 2, whose names are Python 2's (`__builtin__.set`).
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in YOLOV5_CLASSES:
            return YOLOV5_CLASSES[(module, name)]
        if (module, name) in ULTRALYTICS_CLASSES:
            return ULTRALYTICS_CLASSES[(module, name)]
        if (module, name) in YOLOV9_CLASSES:
            return YOLOV9_CLASSES[(module, name)]
        if module.startswith(("numpy.dtypes",)) and name.endswith("DType"):
            return super().find_class(module, name)
        allowed = (
            (module, name) in _ALLOWED
            or module.startswith(_ALLOWED_PREFIXES)
            or (module == "torch" and (name in _TORCH_DTYPES or name.endswith("Storage")))
        )
        if not allowed:
            raise CheckpointError(
                f"the checkpoint refers to {module}.{name}, which the importer does not load "
                "(known: YOLOv5 Conv/C3/Bottleneck/SPPF/SPP/Focus/Concat/Detect/Model; "
                "ultralytics YOLOv8/YOLO11 Conv/DWConv/C2f/C3k2/C3k/SPPF/C2PSA/PSABlock/"
                "Attention/Concat/DFL/Detect/DetectionModel and YOLOv9-c RepNCSPELAN4/RepCSP/"
                "RepBottleneck/RepConv/ADown/SPPELAN; torch modules and tensors)"
            )
        return super().find_class(module, name)


_pickle_module = types.ModuleType("trapline_allowlist_pickle")
_pickle_module.Unpickler = _AllowListUnpickler  # type: ignore[attr-defined]
_pickle_module.load = lambda f, **kw: _AllowListUnpickler(f, **kw).load()  # type: ignore[attr-defined]
_pickle_module.__name__ = "trapline_allowlist_pickle"


def load_trusted(path: Path) -> Any:
    """The unpickled checkpoint, on the CPU. Call only after the user passed --trust."""
    try:
        return torch.load(
            str(path), map_location="cpu", pickle_module=_pickle_module, weights_only=False
        )
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as error:
        raise CheckpointError(f"{path}: cannot load the checkpoint: {error}") from None
