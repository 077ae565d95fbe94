"""The backend registry: export and the runners' chooser look backends up by name."""

from pathlib import Path

import pytest

from rfcache.errors import RfcacheError
from rfcache.export import BACKENDS, BundleError, open_runner
from rfcache.export.backends import Backend, backend_names, get_backend, register_backend
from rfcache.export.bundle import EngineFolder


def test_the_built_in_backends_are_registered_the_default_first():
    assert BACKENDS == backend_names()[:3] == ("onnx", "aoti", "tensorrt")
    assert [get_backend(name).name for name in BACKENDS] == list(BACKENDS)
    assert get_backend("aoti").extension == ".pt2" and get_backend("onnx").extension == ".onnx"
    assert not get_backend("tensorrt").half_graphs  # FP16 engines are built from fp32 graphs


def test_an_unknown_backend_is_one_error_naming_the_known_ones():
    with pytest.raises(RfcacheError, match="backend 'tflite' is not one of onnx, aoti, tensorrt"):
        get_backend("tflite")
    bundle = EngineFolder(Path("b"), {"backend": "tflite"}, None)  # type: ignore[arg-type]
    with pytest.raises(BundleError, match="b: backend 'tflite'"):
        open_runner(bundle)


def test_a_registered_backend_opens_its_bundles():
    class Echo(Backend):
        name = "echo-test"

        def open_runner(self, bundle, *, device="cpu", threads=None):
            return ("echo", bundle.backend, device)

    register_backend(Echo())
    try:
        bundle = EngineFolder(Path("b"), {"backend": "echo-test"}, None)  # type: ignore[arg-type]
        assert open_runner(bundle, device="cuda") == ("echo", "echo-test", "cuda")
        with pytest.raises(BundleError, match=r"echo-test bundles take no thread count \(got 4; onnx ones do\)"):
            open_runner(bundle, threads=4)  # refused, not ignored
    finally:
        from rfcache.export import backends

        backends._REGISTRY.pop("echo-test")


def test_tensorrt_is_imported_only_when_used():
    import subprocess
    import sys

    code = "import sys, rfcache.export.backends; print('tensorrt' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
