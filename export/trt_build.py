"""Building TensorRT engines from the exported task graphs (imported lazily: TensorRT is optional).

One engine per task, an optimisation profile over batch ``1..max_batch``, and one timing cache
reused across tasks and runs. Running them is :mod:`tailorrt.training.trt_runner`.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import ModuleType

import torch

from tailorrt.errors import ExportError
from tailorrt.training.onnx_graph import INPUT

__all__ = ["build_engine", "gpu_name", "timed_build"]


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


def gpu_name() -> str:
    return torch.cuda.get_device_name(0)


def timed_build(trt: ModuleType, onnx_path: Path, **kwargs) -> tuple[bytes, bytes, float]:
    t0 = time.perf_counter()
    plan, cache = build_engine(trt, onnx_path, **kwargs)
    return plan, cache, time.perf_counter() - t0
