"""Several exported task graphs as one ONNX graph, so that one ONNX Runtime session serves them all.

Private names are already prefixed with the task (see :mod:`tailorrt.export.graph`); shared
initializers have the same name in every graph and appear once. Each task's input and outputs
become ``<task>/input``, ``<task>/logits`` and ``<task>/probabilities``, with a batch axis of its own.
"""

from __future__ import annotations

import onnx
from onnx import helper

from tailorrt.errors import ExportError
from tailorrt.export.graph import INPUT, LOGITS, PROBS


def io_name(task: str, name: str) -> str:
    return f"{task}/{name}"


def merge_graphs(graphs: dict[str, onnx.ModelProto]) -> onnx.ModelProto:
    """One model computing every task's outputs from its own input."""
    if not graphs:
        raise ExportError("no task graphs to merge")
    nodes, inits, inputs, outputs, seen = [], [], [], [], set()
    first = next(iter(graphs.values()))
    for task, model in graphs.items():
        rename = {n: io_name(task, n) for n in (INPUT, LOGITS, PROBS)}
        for node in model.graph.node:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            for field in (copy.input, copy.output):
                for i, name in enumerate(field):
                    field[i] = rename.get(name, name)
            nodes.append(copy)
        for init in model.graph.initializer:
            if init.name not in seen:
                seen.add(init.name)
                inits.append(init)
        for src, dst in ((model.graph.input, inputs), (model.graph.output, outputs)):
            for value in src:
                copy = onnx.ValueInfoProto()
                copy.CopyFrom(value)
                copy.name = rename[value.name]
                copy.type.tensor_type.shape.dim[0].dim_param = io_name(task, "batch")  # batches differ per task
                dst.append(copy)
    graph = helper.make_graph(nodes, "tailorrt-merged", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=list(first.opset_import), ir_version=first.ir_version,
                             producer_name="tailorrt")


def external_location(tensor: onnx.TensorProto) -> tuple[str, int, int] | None:
    """(file, offset, length) of an initializer stored as external data, else None."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return None
    info = {e.key: e.value for e in tensor.external_data}
    return info["location"], int(info.get("offset", 0)), int(info["length"])
