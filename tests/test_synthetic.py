"""The synthetic model dirs that the full-size benchmarks measure: they must load, export and serve like trained ones,
with real data's defaults (the task owns its universal blocks' norms)."""

import numpy as np
import pytest

from tailorrt import Runtime
from tailorrt.export.exporter import ExportRequest, export_model
from tailorrt.pack import ModelDir
from tailorrt.training.synthetic import make_model_dir


@pytest.mark.parametrize("backbone", ["tiny", "tiny-mbconv"])
def test_synthetic_model_dir_exports_and_serves(tmp_path, backbone):
    make_model_dir(tmp_path / "m", backbone=backbone, tasks=2, classes=3)
    mdir = ModelDir(tmp_path / "m")
    assert mdir.task_names() == ["synthetic-0", "synthetic-1"]
    assert all(mdir.task_record(t).raw["config"]["universal_norms"] for t in mdir.task_names())
    export_model(ExportRequest(model_dir=str(tmp_path / "m"), parity_images=2), report=lambda _: None)
    size = mdir.backbone_record().input_size
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    torch_rt, onnx_rt = Runtime(tmp_path / "m", backend="torch"), Runtime(tmp_path / "m", backend="onnx")
    for task in mdir.task_names():
        np.testing.assert_allclose(onnx_rt.logits(task, x), torch_rt.logits(task, x), atol=1e-4, rtol=1e-4)
