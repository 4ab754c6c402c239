"""Test-wide setup. TRITON_INTERPRET must be set before any Triton kernel module is imported: on a CPU-only
machine the kernels run in Triton's interpreter; with CUDA they compile and run on the GPU (gpu-marked tests)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Warm-compile markers of this run stay in a folder of its own (a user's cache would make "auto" compile in tests);
# inductor's own cache stays where torch keeps it.
if "MIGA_FAST_CACHE_DIR" not in os.environ:
    import tempfile

    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    os.environ["MIGA_FAST_CACHE_DIR"] = tempfile.mkdtemp(prefix="miga_fast_cache-")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())

import pytest  # noqa: E402

from miga_fast.ops import backend as fused_backend  # noqa: E402
from tests.tiny_model import save_tiny  # noqa: E402


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    try:
        import tensorrt  # noqa: F401

        has_trt = True
    except Exception:
        has_trt = False
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if "trt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT (pip install miga_fast[tensorrt])"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def cpp_extension():
    """Load the C++ kernels: the library built by setup.py, else build csrc/ now (cached in $TMPDIR)."""
    if fused_backend.load_extension():
        return
    try:
        fused_backend.build_extension()
    except Exception as exc:  # no compiler / headers: the C++ tests cannot run here
        pytest.skip(f"C++ extension not built and building it failed: {str(exc)[-500:]}")


@pytest.fixture(params=["triton", "cpp"])
def kernel_backend(request):
    """Each kernel backend that can run on CPU tensors here (Triton: under TRITON_INTERPRET=1)."""
    if request.param == "cpp":
        request.getfixturevalue("cpp_extension")
    reason = fused_backend.unavailable_reason(request.param, torch.device("cpu"))
    if reason is not None:
        pytest.skip(f"{request.param} backend: {reason}")
    return request.param


@pytest.fixture(scope="session")
def weights(tmp_path_factory):
    """tests/tiny_model.TINY's random weights (seed 0) on disk, for every test that loads a model file."""
    return save_tiny(tmp_path_factory.mktemp("model") / "tiny.safetensors")
