"""The code's shape: layers that only point down, no import cycles, and method names compared only in
``tailorrt/training/methods/`` (read from the source with ``ast``, function-level imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

from tailorrt.export.exporter import STEPS
from tailorrt.training import methods

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"tailorrt": "tailorrt", "cli": "tailorrt.cli", "export": "tailorrt.export", "serving": "tailorrt.serving",
           "tools": "tailorrt.tools"}
# what each layer may import, bottom up: the core (tailorrt/ but training/) imports none of the others; the training
# side (tailorrt/training/, torch) imports only the core; the server only the core
ALLOWED = {"core": set(), "tailorrt.training": {"core"}, "tailorrt.export": {"core", "tailorrt.training"},
           "tailorrt.serving": {"core"},
           "tailorrt.tools": {"core", "tailorrt.training", "tailorrt.export", "tailorrt.serving"},
           "tailorrt.cli": {"core", "tailorrt.training", "tailorrt.export", "tailorrt.serving", "tailorrt.tools"}}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = path
    return out


MODULES = _modules()


def _layer(module: str) -> str:
    return next((p for p in ALLOWED if p != "core" and (module == p or module.startswith(p + "."))), "core")


def _imports(path: Path) -> set[str]:
    """The tailorrt modules a file imports at run time, in functions too (a ``from package import name`` of a submodule
    counts as the submodule; imports for type checkers only do not count)."""
    found = set()
    tree = ast.parse(path.read_text())
    type_only = {id(n) for block in ast.walk(tree)
                 if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
                 for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in MODULES else node.module)
    return {m for m in found if m in MODULES}


GRAPH = {m: _imports(p) - {m} for m, p in MODULES.items()}


def _every_import(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import of a file, in functions and for type checkers too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def test_the_core_and_the_server_never_reach_the_training_side():
    """No module of the core (``tailorrt/`` but ``training/``) or of the server imports torch, torchvision, onnx or
    ``tailorrt.training``, at module level or in a function: the torch side is reached through what the training
    side registers (the backends' entry points) or by the commands that compose both (``cli/``, ``tools/``,
    ``export/``)."""
    found = []
    for module, path in MODULES.items():
        if _layer(module) not in ("core", "tailorrt.serving"):
            continue
        found += [f"{path.relative_to(ROOT)}:{line} {n}" for line, n in _every_import(path)
                  if n.split(".")[0] in ("torch", "torchvision", "onnx") or n.startswith("tailorrt.training")]
    assert not found, found


def test_layers_only_point_down():
    wrong = [f"{m} imports {d}" for m, deps in GRAPH.items() for d in sorted(deps)
             if _layer(d) != _layer(m) and _layer(d) not in ALLOWED[_layer(m)]]
    assert not wrong, wrong


def test_no_import_cycles():
    """Tarjan's strongly connected components: every one must be a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_method_names_are_compared_only_inside_methods():
    """No string that is a registered method's name appears in code outside ``tailorrt/training/methods/``: everything
    else asks the registry."""
    names = {n for m in methods.families() for n in m.names}
    found = []
    for module, path in MODULES.items():
        if module.startswith("tailorrt.training.methods"):
            continue
        tree = ast.parse(path.read_text())
        attributes = {id(n.args[1]) for n in ast.walk(tree) if isinstance(n, ast.Call) and len(n.args) > 1
                      and ast.unparse(n.func) in ("getattr", "hasattr", "setattr")}  # an attribute, not a method
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and node.value.partition(":")[0] in names and id(node) not in attributes:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not found, found


def test_the_registry_is_whole():
    """Every family can be found by each of its names and by its examples, and says how to write them."""
    for m in methods.families():
        assert m.examples and m.help and m.syntax and all(methods.get(e) is m for e in m.examples)
        assert all(methods.get(n) is m for n in m.names if not m.takes_options or n != "finetune-last")


def test_precision_and_export_kind_names_are_compared_only_inside_their_registry():
    """No comparison (``==``, ``!=``, ``in``) with a precision or an export folder's name outside ``tailorrt/kinds/``:
    everything else asks the registry (the backend names, onnx, torch and tensorrt, are not kinds)."""
    from tailorrt import kinds

    names = {k.folder for k in kinds.kinds()} | set(kinds.precisions())
    names -= {"onnx"}  # also a backend's name
    found = []
    for module, path in MODULES.items():
        if module.startswith("tailorrt.kinds"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                for part in ast.walk(node):
                    if isinstance(part, ast.Constant) and part.value in names:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    assert not found, found


def test_every_export_kind_is_whole():
    from tailorrt import kinds

    for k in kinds.kinds():
        assert kinds.get(k.folder) is k and kinds.by_record_kind(k.record_kind) is k
        assert callable(STEPS[k.folder])  # its export step registered itself
        if k.precision is not None:
            assert kinds.for_precision(k.precision) is k
    assert kinds.precisions()[0] == kinds.DEFAULT_PRECISION


RECORD_NAMES = {"meta", "bmeta", "task_meta", "backbone_meta"}  # how code names a task or backbone record's dict
# modules that own the fields they read: the records module, each method its own fields, each export kind its
# manifest; and two whose ``meta`` is not a record (checkpoint metadata, torchvision's CIFAR meta)
RECORD_OWNERS = ("tailorrt.records", "tailorrt.record_fields", "tailorrt.training.methods", "tailorrt.kinds",
                 "tailorrt.training.phases", "tailorrt.training.datasets")
# export records: written by the export kinds' steps in tailorrt/export/, read elsewhere as ExportRecord
MANIFEST_NAMES = {"manifest", "onnx_manifest"}
MANIFEST_OWNERS = ("tailorrt.records", "tailorrt.record_fields", "tailorrt.kinds", "tailorrt.export")


def _names(node: ast.AST, names: set[str]) -> bool:
    """``meta``, ``x.meta``...: but not click's ``ctx.meta`` (a context's own dict)."""
    return (isinstance(node, ast.Name) and node.id in names) or \
        (isinstance(node, ast.Attribute) and node.attr in names and ast.unparse(node.value) != "ctx")


def _string_key_reads(names: set[str], owners: tuple[str, ...]) -> list[str]:
    found = []
    for module, path in MODULES.items():
        if module.startswith(owners):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            key = None
            if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _names(node.value, names):
                key = node.slice
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                    and _names(node.func.value, names) and node.args:
                key = node.args[0]
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    return found


def test_records_are_read_by_attribute():
    """Outside the modules that own them, no field of a task or backbone record (``meta["metrics"]``,
    ``bmeta.get("sha256")``) or of an export record (``manifest["tasks"]``) is read by string key: code reads
    :class:`tailorrt.records.TaskRecord`, :class:`~tailorrt.records.BackboneRecord` and
    :class:`~tailorrt.records.ExportRecord`, checked once."""
    found = _string_key_reads(RECORD_NAMES, RECORD_OWNERS) + _string_key_reads(MANIFEST_NAMES, MANIFEST_OWNERS)
    assert not found, found


def test_records_are_passed_typed():
    """No function takes a task, backbone or export record as a dict (``meta: dict``): code passes
    :class:`~tailorrt.records.TaskRecord` and its kin, parsed once where the file is read; only the parsers in
    ``tailorrt/records.py`` and the export kinds' field checks take the JSON itself."""
    found = []
    for module, path in MODULES.items():
        if module.startswith(("tailorrt.records", "tailorrt.record_fields", "tailorrt.kinds")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for arg in node.args.args + node.args.kwonlyargs:
                    if arg.arg in RECORD_NAMES | MANIFEST_NAMES and arg.annotation is not None \
                            and ast.unparse(arg.annotation).startswith(("dict", "Mapping")):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}({arg.arg})")
    assert not found, found


# what a request runs, from the CLI and the server down to the runtime, the onnx backend and image decoding
SERVING = ("tailorrt", "tailorrt.runtime", "tailorrt.backends", "tailorrt.onnx_weight_store", "tailorrt.images",
           "tailorrt.pack", "tailorrt.inventory", "tailorrt.records", "tailorrt.integrity", "tailorrt.kinds",
           "tailorrt.preprocess", "tailorrt.serving.app", "tailorrt.serving.grpc_server",
           "tailorrt.serving.local", "tailorrt.cli.app")
TRAINING_SIDE = ("torch", "torchvision", "onnx", "scipy", "matplotlib", "pycocotools")


def _module_level_imports(path: Path) -> set[str]:
    """Every module a file imports when it is imported (not in functions, not for type checkers): dotted names,
    tailorrt's and others'."""
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES)
            elif isinstance(node, ast.If) and ast.unparse(node.test) != "TYPE_CHECKING":
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
            elif isinstance(node, ast.ClassDef):
                visit(node.body)

    visit(ast.parse(path.read_text()).body)
    return found


def test_the_serving_side_does_not_import_the_training_side():
    """Following every module-level import from the serving modules (a package's ``__init__`` included) reaches
    neither ``tailorrt/training/`` nor torch, torchvision, onnx and the other training dependencies: they are
    imported in functions that need them (the torch and TensorRT backends, training commands), which a serving
    install never calls."""
    seen, todo, reached = set(), list(SERVING), {}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parents = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
        for name in _module_level_imports(MODULES[module]) | set(parents):
            if name in MODULES and name.startswith("tailorrt.training"):
                reached.setdefault(name, module)
            elif name in MODULES:
                todo.append(name)
            elif name.split(".")[0] in TRAINING_SIDE:
                reached.setdefault(name, module)
    assert not reached, {name: f"imported by {module}" for name, module in reached.items()}


def _declared(extras: tuple[str, ...] = ()) -> set[str]:
    """The distributions ``pyproject.toml`` asks for: the base install, and ``extras``."""
    import re

    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [d for e in extras for d in project["optional-dependencies"][e]]
    return {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in wanted}


def test_every_package_the_code_imports_is_declared():
    """Each third-party module a module imports (in functions too) comes from a distribution ``pyproject.toml``
    declares: the core from the base install, the server from it and ``ray`` (``serving/ray.py``, for ``--ray``),
    the rest from the base install, ``train`` and the other extras (gpu, ray, imagenet)."""
    import sys
    from importlib.metadata import packages_distributions

    owners = packages_distributions()
    base, server, full = _declared(), _declared(("ray",)), _declared(("train", "gpu", "ray", "imagenet"))
    missing = []
    for module, path in MODULES.items():
        declared = {"core": base, "tailorrt.serving": server}.get(_layer(module), full)
        for line, name in _every_import(path):
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top == "tailorrt":
                continue
            dists = {d.lower().replace("_", "-") for d in owners.get(top, [top])}
            if not dists & declared:
                missing.append(f"{path.relative_to(ROOT)}:{line} {name} ({', '.join(sorted(dists))})")
    assert not missing, missing
