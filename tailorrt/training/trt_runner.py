"""Running TensorRT engines (imported lazily: TensorRT is optional). Engines run on CUDA buffers owned by
PyTorch, so no other CUDA binding is needed. Building them is :mod:`tailorrt.export.trt_build`."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import torch

from tailorrt.errors import DependencyMissingError, ExportError
from tailorrt.training.onnx_graph import INPUT, LOGITS

INSTALL_HINT = "pip install 'tailorrt[gpu]'"


def require_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or DependencyMissingError (exit code 2) saying what is missing."""
    try:
        import tensorrt
    except ImportError as e:
        raise DependencyMissingError(f"--trt needs TensorRT, which is not installed ({e}); install it with "
                                     f"{INSTALL_HINT} on a machine with an NVIDIA GPU") from e
    if not torch.cuda.is_available():
        raise DependencyMissingError("--trt needs a CUDA GPU, and PyTorch sees none (torch.cuda.is_available() is "
                                     f"False); run the export on a machine with an NVIDIA GPU and {INSTALL_HINT}")
    return tensorrt


class EngineRunner:
    """Runs a serialized engine on NCHW float32 numpy batches (at most the profile's max batch)."""

    def __init__(self, trt: ModuleType, plan: bytes) -> None:
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise ExportError("TensorRT could not load the engine (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        inp = torch.from_numpy(np.ascontiguousarray(x)).to("cuda", self._dtypes[INPUT])
        self.context.set_input_shape(INPUT, tuple(inp.shape))
        self.context.set_tensor_address(INPUT, inp.data_ptr())
        outs = {}
        for name in self.outputs:
            outs[name] = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._dtypes[name],
                                     device="cuda")
            self.context.set_tensor_address(name, outs[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ExportError("TensorRT execution failed")
        stream.synchronize()
        return {n: t.float().cpu().numpy() for n, t in outs.items()}

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.run(x)[LOGITS]


def _torch_dtype(trt: ModuleType, dtype) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32}
    if dtype not in table:
        raise ExportError(f"unsupported TensorRT tensor type {dtype}")
    return table[dtype]
