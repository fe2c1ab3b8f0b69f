"""ONNX Runtime sessions, one per task, that share one copy of the universal weights as ONNX Runtime lays them out.

At full optimisation ONNX Runtime re-lays every conv weight out for this CPU (the NCHWc layout) and
would do so once per session: K tasks, K copies of the backbone. And one session over all tasks runs
every task's nodes on every call, since ONNX Runtime does not skip nodes that the requested outputs
do not need. So each task gets its own session, built in two steps:

1. ONNX Runtime optimises the task's exported graph at full level with the conv-affine fusions off
   (they would fold the task's batch norms into the shared weights) and writes the optimised graph,
   its tensors in a side file.
2. The optimised tensors are looked up by content in a :class:`WeightStore`: a re-laid universal
   weight is byte-identical for every task, so it is kept once and handed to every session through
   ``SessionOptions.add_initializer`` (no copy). The session then loads the optimised graph as it is.

With a ``directory`` (``Runtime(weights_dir=...)``, ``tailor serve --workers N``), the store writes each tensor
there once, as a file named by its content, and maps it read-only: every process that uses the same directory
reads the same pages of the page cache, so N server processes hold one physical copy of the universal weights.

Sessions allocate activations from one shared arena (``session.use_env_allocators``), so K sessions do
not keep K arenas, and their threads stop spinning when a call returns (``session.force_spinning_stop``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tailorrt import onnx_rewrite
from tailorrt.onnx_proto import initializers

DISABLED_FUSIONS = ["ConvBNFusion", "ConvAddFusion", "ConvMulFusion"]
OPTIMIZED_DATA = "optimized.data"
MIN_EXTERNAL_BYTES = 64  # tensors at least this big go through the store; smaller ones stay in the graph
ALIGN = 64


@dataclass
class _Entry:
    array: np.ndarray
    value: ort.OrtValue
    users: set[str] = field(default_factory=set)


class WeightStore:
    """Tensors kept once by content (sha256), each with the set of tasks that use it; in memory, or in files of
    ``directory`` mapped read-only (shared by every process that uses the directory)."""

    def __init__(self, directory: Path | None = None) -> None:
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self.directory = directory

    def put(self, task: str, data: memoryview | np.ndarray, dtype: np.dtype, shape: tuple[int, ...]) -> ort.OrtValue:
        """The stored OrtValue for these bytes, stored now (64-byte aligned) if no task had them yet."""
        digest = hashlib.sha256(data).hexdigest()
        key = digest + f"/{np.dtype(dtype).str}/{shape}"
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                array = np.frombuffer(data, dtype=dtype).reshape(shape)
                array = aligned_copy(array) if self.directory is None else mapped(self.directory, digest, array)
                entry = self._entries[key] = _Entry(array, ort.OrtValue.ortvalue_from_numpy(array))
            entry.users.add(task)
            return entry.value

    def release(self, task: str) -> None:
        """Forget the task; tensors no other task uses are freed (once no session holds them)."""
        with self._lock:
            for key in [k for k, e in self._entries.items() if e.users == {task}]:
                del self._entries[key]
            for entry in self._entries.values():
                entry.users.discard(task)

    @property
    def nbytes(self) -> int:
        return sum(e.array.nbytes for e in self._entries.values())

    def shared_bytes(self) -> int:
        """Bytes of tensors that more than one task uses."""
        return sum(e.array.nbytes for e in self._entries.values() if len(e.users) > 1)


def aligned_copy(array: np.ndarray, align: int = ALIGN) -> np.ndarray:
    """A C-contiguous copy whose data starts on an ``align``-byte boundary (vector loads need it)."""
    raw = np.empty(array.nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    out = raw[start:start + array.nbytes].view(array.dtype).reshape(array.shape)
    out[...] = array
    return out


def mapped(directory: Path, digest: str, array: np.ndarray) -> np.ndarray:
    """``array``'s bytes as a read-only map of ``directory/<digest>`` (page-aligned). The file is written by the
    first process that needs it, under a temporary name then linked into place, so that every process maps the
    same file (and so the same pages) and none maps half a file; one that does not hash to ``digest`` is
    replaced."""
    path = directory / digest
    if not _holds(path, digest, array.nbytes):
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{digest[:16]}-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(np.ascontiguousarray(array).tobytes())
            try:
                os.link(tmp, path)
            except FileExistsError:  # another process linked its copy first, or a bad file is there
                if not _holds(path, digest, array.nbytes):
                    os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return np.memmap(path, array.dtype, mode="r", shape=array.shape)


def _holds(path: Path, digest: str, size: int) -> bool:
    try:
        return path.stat().st_size == size and hashlib.sha256(np.memmap(path, np.uint8, mode="r")).hexdigest() == digest
    except FileNotFoundError:
        return False


@functools.lru_cache(maxsize=1)
def register_shared_arena() -> None:
    """Register one CPU arena with ONNX Runtime's environment, once per process, for sessions that opt in."""
    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))


def session_options(threads: int, external_folder: Path | None = None) -> ort.SessionOptions:
    """Options of every task session (and of the plain sessions they are compared with): ``threads`` intra-op
    threads that spin while a call runs (fast dispatch of small ops) and stop as soon as it returns, so that
    idle sessions do not take the cores from the busy one and from the server."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    if external_folder is not None:
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(external_folder))
    return opts


def optimize_graph(graph: Path, out: Path, *, fuse: bool = False) -> None:
    """Write ``graph`` as ONNX Runtime optimises it for this CPU (full level; conv-affine fusions off unless
    ``fuse``) to ``out``; tensors of at least MIN_EXTERNAL_BYTES go to ``OPTIMIZED_DATA`` beside it. Without
    ``fuse``, on a CPU with the NCHWc layout, the task's own batch norms after shared convolutions are first written
    as 1x1 depthwise convolutions (:mod:`tailorrt.onnx_rewrite`), which the layout runs with their ReLU6 fused."""
    opts = session_options(1, graph.parent)
    opts.optimized_model_filepath = str(out)
    opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", OPTIMIZED_DATA)
    opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                  str(MIN_EXTERNAL_BYTES))
    opts.log_severity_level = 3  # the "optimised for this hardware" warning is the point here
    ort.InferenceSession(session_model(graph, fuse=fuse), opts, providers=["CPUExecutionProvider"],
                         disabled_optimizers=[] if fuse else DISABLED_FUSIONS)


def session_model(graph: Path, *, fuse: bool = False) -> str | bytes:
    """What a task session optimises: the graph file, or (shared weights on an NCHWc CPU) its bytes with the task's
    own batch norms written as convolutions; either way its external data is found in ``graph.parent`` by the
    options of :func:`session_options`."""
    if fuse or not onnx_rewrite.nchwc_cpu():
        return str(graph)
    rewritten, count = onnx_rewrite.affines_as_convs(graph.read_bytes())
    return rewritten if count else str(graph)


@dataclass
class TaskSession:
    """A task's session and the stored tensors it reads: they live as long as this object, so a call that is
    still running keeps them even after the task was removed from the store."""

    session: ort.InferenceSession
    values: list[ort.OrtValue]

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], {"input": x})[0]


def task_session(task: str, graph: Path, store: WeightStore, *, threads: int,
                 providers: list[str] | None = None, fuse: bool = False, prepack: bool = True) -> TaskSession:
    """A session for one exported task graph whose large tensors come from (and are added to) ``store``.

    ``fuse`` lets ONNX Runtime fold the task's batch norms into the conv weights: the fused weights are the
    task's own (nothing to share), which is faster on small inputs and costs about one backbone per task.
    ``prepack=False`` stops ONNX Runtime from re-laying weights inside the session (int8 convs do, per session:
    a copy of the task's int8 weights each); the stored tensors are then the only copy, and int8 convs run slower.
    (ONNX Runtime's C API can share pre-packed weights between sessions, ``OrtPrepackedWeightsContainer``, but
    its int8 conv kernel refuses: "doesn't have an implementation that can cache computed pre-packed weights",
    onnxruntime 1.32.)
    """
    providers = providers or ["CPUExecutionProvider"]
    if providers[0] != "CPUExecutionProvider":
        # The re-laid weights are a CPU layout. On a GPU each task's session holds its own copy of the weights
        # (not measured: no GPU was at hand).
        return TaskSession(ort.InferenceSession(str(graph), session_options(threads), providers=providers), [])
    with tempfile.TemporaryDirectory(prefix="tailorrt-optimized-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        optimize_graph(graph, optimized, fuse=fuse)
        opts = session_options(threads, Path(tmp))
        data = np.memmap(Path(tmp) / OPTIMIZED_DATA, np.uint8, mode="r") if (Path(tmp) / OPTIMIZED_DATA).exists() \
            else None
        values = []
        for tensor in initializers(optimized):
            if tensor.location is not None:
                offset, length = tensor.location
                values.append(store.put(task, data[offset:offset + length], tensor.dtype, tensor.dims))
                opts.add_initializer(tensor.name, values[-1])
        del data
        register_shared_arena()
        opts.add_session_config_entry("session.use_env_allocators", "1")
        if not prepack:
            opts.add_session_config_entry("session.disable_prepacking", "1")
        # already optimised for this CPU; the basic level has nothing left to do but must not undo it
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        session = ort.InferenceSession(str(optimized), opts, providers=providers,
                                       disabled_optimizers=DISABLED_FUSIONS)
        return TaskSession(session, values)

