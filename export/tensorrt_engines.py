"""TensorRT engines built from the exported task graphs (imported lazily: TensorRT is optional).

One engine per task, an optimisation profile over batch ``1..max_batch``, and one timing cache
reused across tasks and runs. Engines run on CUDA buffers owned by PyTorch, so no other CUDA
binding is needed.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from tailorrt.errors import DependencyMissingError, ExportError
from tailorrt.export.graph import INPUT, LOGITS

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


def build_engine(trt: ModuleType, onnx_path: Path, *, input_shape: tuple[int, int, int], max_batch: int,
                 fp16: bool, timing_cache: bytes) -> tuple[bytes, bytes]:
    """Build a serialized engine from an ONNX file; returns it and the updated timing cache."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    cache = config.create_timing_cache(timing_cache)
    config.set_timing_cache(cache, ignore_mismatch=False)
    config.clear_flag(trt.BuilderFlag.TF32)  # fp32 engines stay comparable to ONNX Runtime at 1e-3
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT, (1, *input_shape), (max_batch, *input_shape), (max_batch, *input_shape))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path.name} (see the log above)")
    return bytes(plan), bytes(config.get_timing_cache().serialize())


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


def gpu_name() -> str:
    return torch.cuda.get_device_name(0)


def timed_build(trt: ModuleType, onnx_path: Path, **kwargs) -> tuple[bytes, bytes, float]:
    t0 = time.perf_counter()
    plan, cache = build_engine(trt, onnx_path, **kwargs)
    return plan, cache, time.perf_counter() - t0
