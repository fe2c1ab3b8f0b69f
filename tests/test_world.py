import numpy as np

from tailorrt.world import BUILTIN_TASKS, SynthTask, generate


def _small(task: SynthTask) -> SynthTask:
    return SynthTask(task.name, task.classes, task.draw, {"train": 60, "val": 30}, task.noise, task.clutter)


def test_generation_is_deterministic_and_balanced():
    for task in BUILTIN_TASKS.values():
        t = _small(task)
        a, la = generate(t, "train", image_size=24)
        b, lb = generate(t, "train", image_size=24)
        assert a.shape == (60, 24, 24, 3) and a.dtype == np.uint8
        assert np.array_equal(a, b) and np.array_equal(la, lb)
        counts = np.bincount(la, minlength=len(t.classes))
        assert counts.max() - counts.min() <= 1


def test_splits_differ_and_classes_differ():
    t = _small(BUILTIN_TASKS["synth-digits"])
    train, _ = generate(t, "train")
    val, _ = generate(t, "val")
    assert not np.array_equal(train[:30], val)


def test_target_tasks_have_distinct_sizes_and_names():
    names = set(BUILTIN_TASKS)
    assert {"synth-source", "synth-digits", "synth-signs", "synth-glyphs"} <= names
    assert len(BUILTIN_TASKS["synth-source"].classes) >= 64
    for t in BUILTIN_TASKS.values():
        assert len(set(t.classes)) == len(t.classes)
        assert {"train", "val", "test"} <= set(t.sizes)
