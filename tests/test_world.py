import numpy as np

from tailorrt.training.world import BUILTIN_TASKS, SynthTask, generate


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


def test_builtin_task_loads_normalised_splits():
    from tailorrt.training.datasets import Preprocess, load_task

    data = load_task("synth-digits", data_dir=".", preprocess=Preprocess(16, (0.5,) * 3, (0.25,) * 3))
    assert data.classes == [str(i) for i in range(10)] and data.source == "generated"
    sizes = BUILTIN_TASKS["synth-digits"].sizes
    assert (len(data.train), len(data.val), len(data.test)) == (sizes["train"], sizes["val"], sizes["test"])
    x, y = data.train[0]
    assert x.shape == (3, 16, 16) and x.dtype.is_floating_point and -3 < float(x.mean()) < 3
