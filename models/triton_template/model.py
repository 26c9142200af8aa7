"""Triton python-backend model: one Trapline ONNX graph (uint8 NHWC in), run by ONNX Runtime.

Copied into `<repository>/<model>/1/model.py` by `trapline models build-repo --backend python`.
The graph next to it (`model.onnx`) is the same uint8 graph the onnxruntime flavour serves in
production (normalisation, and the detector's NMS, inside), so this file only batches and runs.

The python-backend stub embeds its own interpreter and ignores PYTHONPATH, so the Triton venv's
site-packages (numpy<2, onnxruntime) go first on `sys.path` before anything imports numpy;
`build_repository` writes that path below. Dynamic batching hands `execute` several requests:
they run as one ONNX Runtime call and the output is split back per request.
"""

import json
import sys
from pathlib import Path

_SITE_PACKAGES = None  # build_repository writes the Triton venv's site-packages here
if _SITE_PACKAGES and _SITE_PACKAGES not in sys.path:
    sys.path.insert(0, _SITE_PACKAGES)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]  # noqa: E402


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.name = config["name"]
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters.get("intra_op_thread_count", "1"))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers: list = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise pb_utils.TritonModelException(
                    f"{self.name}: KIND_GPU instance but this onnxruntime has no CUDA provider "
                    "(install onnxruntime-gpu in the Triton venv, or build the repository without --gpu)"
                )
            device = int(args.get("model_instance_device_id", "0"))
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device}))
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        graph_inputs = [i.name for i in self.session.get_inputs()]
        if graph_inputs != [self.input_name]:
            raise pb_utils.TritonModelException(
                f"{self.name}: config input {self.input_name!r} but {path} takes {graph_inputs}"
            )

    def execute(self, requests: list) -> list:
        arrays = [
            pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            for request in requests
        ]
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        try:
            output = self.session.run([self.output_name], {self.input_name: batch})[0]
        except Exception as error:  # onnxruntime raises its own types; report, don't crash
            failure = pb_utils.TritonError(f"{self.name}: ONNX Runtime failed: {error}")
            return [pb_utils.InferenceResponse(error=failure) for _ in requests]
        responses, start = [], 0
        for array in arrays:
            part = np.ascontiguousarray(output[start : start + len(array)])
            start += len(array)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, part)]))
        return responses

    def finalize(self) -> None:
        self.session = None
