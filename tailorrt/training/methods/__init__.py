"""The ways to tailor a task, one module per family, each registered once
(:func:`~tailorrt.training.methods.base.register`).

Everything outside this package finds a method here, by name (:func:`get`) or by the ``method`` of a pack's
``task.json`` (:func:`for_record`), and asks it to train, rebuild, export or describe a task. A new family
is one new module that subclasses :class:`~tailorrt.training.methods.base.Method` and registers itself, plus one line
in :data:`FAMILIES` below.
"""

# isort: off
from tailorrt.training.methods import nettailor, flex, classic, channel_attention, adapters  # registration order
# isort: on
from tailorrt.training.methods.base import (
    Method,
    MethodOption,
    Trained,
    configure,
    describe,
    families,
    for_record,
    get,
    options,
    pack_name,
    shorter,
    syntax,
)

FAMILIES = (nettailor, flex, classic, channel_attention, adapters)
DEFAULT = nettailor.NAME  # what tailor train uses when no method is named
REFERENCE = classic.REFERENCE
reference_network = classic.reference_network

__all__ = ["DEFAULT", "FAMILIES", "REFERENCE", "Method", "MethodOption", "Trained", "configure", "describe", "families",
           "for_record", "get", "options", "pack_name", "reference_network", "shorter", "syntax"]
