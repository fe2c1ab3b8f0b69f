"""What a method is: one family of ways to tailor a task, registered once (:func:`register`), looked up by name.

A :class:`Method` holds everything the rest of tailorrt needs of its family: parsing a method name and
its options into a config dataclass, training, the state its pack owns, rebuilding the inference
network over the shared backbone from a pack, emitting its ONNX graph, and the rows and pictures that
``tailor info``, ``tailor compare`` and ``tailor report`` show. Code outside :mod:`tailorrt.training.methods` asks
the registry and never compares method names or dispatches on a method's classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from tailorrt.backbone_spec import BLOCK_FAMILIES, BackboneSpec
from tailorrt.errors import ConfigError, PackError
from tailorrt.records import TaskRecord
from tailorrt.registry import Registry
from tailorrt.training.backbones import UniversalBackbone
from tailorrt.training.datasets import TaskData
from tailorrt.training.onnx_graph import GraphBuilder
from tailorrt.training.phases import PhaseConfig, Trainer


@dataclass(frozen=True)
class MethodOption:
    """A training option of a method, offered by ``tailor train`` as ``--<flag>``: it sets ``path`` (a dotted
    field path) in the method's config."""

    flag: str
    kind: type
    help: str
    path: str

    @property
    def param(self) -> str:
        return self.flag.replace("-", "_")


@dataclass
class Trained:
    """What a method's training hands to the pack writer: the network (whose ``task_state()`` is the pack), its
    metrics, the phases it ran, and the method's own entries of ``task.json``."""

    net: nn.Module
    metrics: dict
    phases: list[dict]
    record: dict = field(default_factory=dict)


class Method:
    """One family of methods. Subclasses set the class attributes and implement the hooks."""

    family: ClassVar[str]
    names: ClassVar[tuple[str, ...]]  # the names it answers to; ``name:options`` where :attr:`takes_options`
    syntax: ClassVar[str]  # how its names are written, for help texts
    help: ClassVar[str]  # one sentence: what the method trains
    examples: ClassVar[tuple[str, ...]]  # names that the registry's tests train, export and serve
    takes_options: ClassVar[bool] = False
    options: ClassVar[tuple[MethodOption, ...]] = ()
    candidates: ClassVar[tuple[str, ...]] = ()  # the names --method auto tries by default
    default_pack: ClassVar[bool] = False  # True: its pack is named after the task alone
    teacher_phase: ClassVar[str | None] = None  # the phase whose checkpoint is the task's fine-tuned backbone
    blocks: ClassVar[tuple[str, ...]] = tuple(BLOCK_FAMILIES)  # the block families it runs on
    why_not: ClassVar[dict[str, str]] = {}  # block family -> why it does not run on it (for the one-line refusal)

    def accepts(self, name: str) -> bool:
        base, sep, _ = name.partition(":")
        return base in self.names and (not sep or self.takes_options)

    def check(self, name: str, num_units: int) -> None:
        """Raise ConfigError when ``name``'s options do not fit a backbone of ``num_units`` units."""

    # ------------------------------------------------------------------ config
    def default_config(self, builtin: bool) -> Any:
        """The config of a run: short schedules for the built-in generated tasks, the papers' for real data."""
        raise NotImplementedError

    def config_from_json(self, data: dict) -> Any:
        raise NotImplementedError

    # ------------------------------------------------------------------ the hooks
    def train(self, name: str, cfg: Any, backbone: UniversalBackbone, data: TaskData, trainer: Trainer) -> Trained:
        raise NotImplementedError

    def build(self, backbone: UniversalBackbone, record: TaskRecord) -> nn.Module:
        """The task's network from its ``task.json`` (weights not loaded), sharing the backbone's parameters."""
        raise NotImplementedError

    def emit(self, g: GraphBuilder, net: nn.Module) -> None:
        """The task's network as ONNX, from ``input`` to ``logits``."""
        raise NotImplementedError

    def describe(self, record: TaskRecord) -> str:
        """What training chose, in a few words (``unit 3``, ``12/40 channels cut``), or ''."""
        return ""

    def verdict(self, record: TaskRecord) -> str:
        """What training could and could not tell about its choice, in one line for ``tailor train`` (a search's
        difference to its reference, whether its data could resolve it, whether the method fell short), or ''."""
        return ""

    def training_seconds(self, record: TaskRecord) -> float:
        """Compute time of a pack's training: its phases as recorded (resumed runs count in full), plus any
        steps of the method that train nothing."""
        return round(sum(p.seconds for p in record.phases), 2)

    def architecture_figure(self, plt: Any, record: TaskRecord) -> Any:
        """The report's picture of the network as tailoring left it (a matplotlib figure)."""
        raise NotImplementedError

    def attention_figure(self, plt: Any, record: TaskRecord) -> Any | None:
        """The report's picture of the attention weights over training, or None where the method learns none."""
        return None

    def selection_table(self, record: TaskRecord) -> tuple[list[str], list[list[str]]] | None:
        """The report's table of the candidates training chose among (a header and rows of cells), or None."""
        return None

    def selection_figure(self, plt: Any, record: TaskRecord) -> Any | None:
        """The report's picture of the candidates training chose among (accuracy against FLOPs, the chosen one
        marked), or None where the method searched none."""
        return None


METHODS: Registry[Method] = Registry("method family")  # by family; a method name is looked up by get()


def register(method: Method) -> Method:
    """Add a method family to the registry (once, where the family is defined)."""
    clash = [n for n in method.names for m in METHODS if n in m.names]
    if clash:
        raise ValueError(f"method names {clash} of {method.family!r} registered twice")
    return METHODS.add(method.family, method)


def families() -> Iterator[Method]:
    return iter(METHODS)


def syntax() -> str:
    """Every method name as it is written, for help texts and errors."""
    return ", ".join(m.syntax for m in METHODS)


def get(name: str, backbone: BackboneSpec | None = None) -> Method:
    """The family of a method name (given the ``backbone``, checked to run on its blocks and its options checked
    against its units), or ConfigError."""
    method = next((m for m in METHODS if m.accepts(name)), None)
    if method is None:
        raise ConfigError(f"unknown method {name!r}; choose one of {syntax()}")
    if backbone is not None:
        if backbone.block not in method.blocks:
            runs_on = [m.syntax for m in METHODS if backbone.block in m.blocks]
            raise ConfigError(f"method {name!r} does not run on {backbone.block} blocks ({backbone.name}): "
                              f"{method.why_not.get(backbone.block, 'not built for them')}; methods that do: "
                              f"{', '.join(runs_on)}")
        method.check(name, backbone.num_units)
    return method


def for_record(record: TaskRecord) -> Method:
    """The family of a task pack, from its ``task.json``; a method this version does not know is a PackError."""
    method = next((m for m in METHODS if m.accepts(record.method)), None)
    if method is None:
        raise PackError(f"task {record.task!r} uses method {record.method!r}, which this version of tailorrt cannot "
                        f"load; upgrade tailorrt or retrain the task")
    return method


def describe(record: TaskRecord) -> str:
    """What training chose for a task, as its method words it (``tailor info``'s "chosen" column)."""
    return for_record(record).describe(record)


def pack_name(task_pack: str, name: str) -> str:
    """The pack of a task trained with ``name``: the task's own name for the default method, else
    ``<task>--<method>`` (``:`` becomes ``-``) so that several methods of one task live side by side."""
    return task_pack if get(name).default_pack else f"{task_pack}--{name.replace(':', '-')}"


def options() -> list[MethodOption]:
    """Every method's training options, each flag once (families may share one, e.g. ``--tune-epochs``)."""
    seen: dict[str, MethodOption] = {}
    for m in METHODS:
        for o in m.options:
            seen.setdefault(o.flag, o)
    return list(seen.values())


def configure(method: Method, builtin: bool, values: dict[str, Any], batch_size: int | None = None, *,
              strict: bool = True) -> Any:
    """``method``'s default config with the given option values (flag -> value; None: not given) and batch size.
    An option the method does not have is a ConfigError, or ignored when not ``strict``. A phase whose epochs are
    given runs exactly those epochs: its default minimum of steps applies only when that is given too."""
    cfg = method.default_config(builtin)
    own = {o.flag: o for o in method.options}
    given = set()
    for flag, value in values.items():
        if value is None or (flag not in own and not strict):
            continue
        if flag not in own:
            users = [m.family for m in METHODS if any(o.flag == flag for o in m.options)]
            raise ConfigError(f"--{flag} applies to {', '.join(users) or 'no method'}, not {method.family}")
        given.add(own[flag].path)
    for path in given:
        if path.endswith(".epochs") and (floor := path.removesuffix(".epochs") + ".min_steps") not in given:
            if isinstance(getattr(cfg, floor.partition(".")[0], None), PhaseConfig):
                cfg = replace_path(cfg, floor, 0)
    for flag, value in values.items():
        if value is not None and flag in own:
            cfg = replace_path(cfg, own[flag].path, value)
    return with_batch_size(cfg, batch_size) if batch_size is not None else cfg


def replace_path(obj: Any, path: str, value: Any) -> Any:
    """A copy of dataclass ``obj`` with the field at dotted ``path`` set to ``value``."""
    head, _, rest = path.partition(".")
    return dataclasses.replace(obj, **{head: replace_path(getattr(obj, head), rest, value) if rest else value})


def with_batch_size(cfg: Any, batch_size: int) -> Any:
    """A copy of ``cfg`` with every phase's batch size set."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, not {batch_size}")
    return map_phases(cfg, lambda p: dataclasses.replace(p, batch_size=batch_size))


def shorter(cfg: Any, fraction: float) -> Any:
    """A copy of ``cfg`` with every phase's epochs and minimum of steps scaled by ``fraction`` (at least one
    epoch each)."""
    return map_phases(cfg, lambda p: dataclasses.replace(p, epochs=max(1, round(p.epochs * fraction)),
                                                         min_steps=round(p.min_steps * fraction)))


def map_phases(cfg: Any, change: Callable[[PhaseConfig], PhaseConfig]) -> Any:
    """A copy of dataclass ``cfg`` with ``change`` applied to every :class:`PhaseConfig` in it, however deep."""
    changes = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, PhaseConfig):
            changes[f.name] = change(value)
        elif dataclasses.is_dataclass(value):
            changes[f.name] = map_phases(value, change)
    return dataclasses.replace(cfg, **changes)
