"""Packaging: the license and typing marker ship; ``anet_lite.torch`` exports its API only."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pyproject() -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.9/3.10
        tomllib = pytest.importorskip("tomli")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_license_file_says_what_pyproject_says():
    meta = _pyproject()["project"]
    assert meta["license"] == {"text": "MIT"}
    with open(os.path.join(ROOT, "LICENSE"), encoding="utf-8") as f:
        assert f.readline().strip() == "MIT License"


def test_py_typed_is_in_the_package_and_its_data():
    import anet_lite

    assert os.path.isfile(os.path.join(os.path.dirname(anet_lite.__file__), "py.typed"))
    assert "py.typed" in _pyproject()["tool"]["setuptools"]["package-data"]["anet_lite"]


def test_the_all_extra_holds_every_runtime_extra():
    extras = _pyproject()["project"]["optional-dependencies"]
    runtime = {"torch", "report", "cli", "image", "wandb", "mlflow", "integrations"}
    runtime |= {"tensorboard", "lightning", "hf"}
    want = {req for name in runtime for req in extras[name]}
    assert want == set(extras["all"])
    assert not any(r.startswith("transformers>=5") for r in extras["hf"])


def test_anet_lite_torch_exports_the_api_only():
    pytest.importorskip("torch")
    import anet_lite.torch as at

    assert sorted(at.__all__) == sorted(set(at.__all__))
    for name in at.__all__:
        assert getattr(at, name) is not None
        assert not name.isupper() and not name.startswith("digits_"), name
    assert {"Guard", "GuardStop", "GradNoiseTap", "forget_layers"} <= set(at.__all__)


def test_the_merge_scan_is_anet_lite_merge_and_imports_torch_only_when_called():
    code = (
        "import sys; import anet_lite.merge as m; "
        "assert 'scan' in m.__all__ and callable(m.scan); "
        "assert 'torch' not in sys.modules, 'imported torch'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
