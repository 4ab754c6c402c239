"""Backend choice for the fused ops (``adaln_modulate``, ``gated_residual``, ``hetero_attention``,
``solver_update``) and loading of their C++ extension.

Backends:
  * ``"ref"``: the pure-PyTorch reference ``<op>_ref``; runs everywhere (also the CPU fallback).
  * ``"triton"``: the Triton kernels of ``miga_fast.kernels``; CUDA tensors, or CPU tensors when
    ``TRITON_INTERPRET=1`` (the interpreter, for tests only: never chosen automatically).
  * ``"cpp"``: the C++ CPU kernels of ``csrc/``, ops ``torch.ops.miga_fast.<op>`` of the ``miga_fast._C``
    library (built by setup.py, or at run time by ``build_extension``).

Without a choice, CUDA tensors use Triton and CPU tensors the C++ kernels when available (except where an
op knows the reference is faster, e.g. SDPA for long attention), anything else the reference. ``backend=`` or
``$MIGA_FAST_BACKEND`` forces one and fails loudly when it cannot run.

The choice is made in Python when the op is called, so under ``torch.compile`` it is made once, at trace
time: changing ``$MIGA_FAST_BACKEND`` afterwards needs ``torch._dynamo.reset()``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

BACKENDS = ("ref", "triton", "cpp")
ENV_VAR = "MIGA_FAST_BACKEND"
# Kernel dtypes; anything else (float64, ...) runs on the reference.
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CSRC = Path(__file__).resolve().parents[2] / "csrc"
# Same flags as setup.py.
CXX_FLAGS = ["-O3", "-fopenmp"]

# find_spec does not import triton, so a broken CUDA install cannot break this module's import.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
_ext = {"loaded": False, "origin": None}
_cpp_fakes: dict[str, Callable] = {}
_references_only = [False]  # set by `references_only()`


def interpreting() -> bool:
    """Whether Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``, set by the test suite)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def extension_loaded() -> bool:
    """Whether the ``torch.ops.miga_fast.*`` C++ kernels are registered in this process."""
    return _ext["loaded"]


def unavailable_reason(backend: str, device: torch.device, dtypes: tuple[torch.dtype, ...] = ()) -> str | None:
    """Why ``backend`` cannot run on ``device`` with tensors of ``dtypes``, or None when it can."""
    if backend == "ref":
        return None
    bad = [dt for dt in dtypes if dt not in KERNEL_DTYPES]
    if bad:
        return f"its kernels take float32/float16/bfloat16 tensors (got {bad[0]})"
    if backend == "triton":
        if not _TRITON_INSTALLED:
            return "the 'triton' package is not installed (pip install 'miga_fast[triton]')"
        if device.type == "cuda" or (device.type == "cpu" and interpreting()):
            return None
        return f"Triton needs CUDA tensors (got device {device.type!r}; TRITON_INTERPRET=1 runs it on the CPU)"
    if device.type != "cpu":
        return f"the C++ kernels take CPU tensors (got device {device.type!r})"
    if not extension_loaded():
        return (
            "the C++ extension miga_fast._C is not built (pip install --no-build-isolation -e . with a C++ "
            "compiler, or call miga_fast.ops.backend.build_extension())"
        )
    return None


def resolve(
    op: str,
    device: torch.device,
    dtypes: tuple[torch.dtype, ...],
    backend: str | None = None,
    *,
    cpu_order: tuple[str, ...] = ("cpp", "ref"),
) -> str:
    """The backend ``op`` runs on: ``backend``, else ``$MIGA_FAST_BACKEND``, else the first available of
    ``("triton", "ref")`` on CUDA and of ``cpu_order`` elsewhere (an op passes ``("ref",)`` where the reference
    is the faster CPU path); always ``"ref"`` inside ``references_only()``."""
    if _references_only[0]:
        return "ref"
    source = "backend="
    if backend is None and os.environ.get(ENV_VAR):
        backend, source = os.environ[ENV_VAR], ENV_VAR
    if backend is None:
        order = ("triton", "ref") if device.type == "cuda" else (*cpu_order, "ref")
        return next(b for b in order if unavailable_reason(b, device, dtypes) is None)
    if backend not in BACKENDS:
        raise ValueError(f"{op}: {source} must be one of {BACKENDS} (got {backend!r})")
    reason = unavailable_reason(backend, device, dtypes)
    if reason is not None:
        raise RuntimeError(f"{op}: backend {backend!r} (forced by {source}) cannot run: {reason}")
    return backend


@contextlib.contextmanager
def references_only() -> Iterator[None]:
    """Every fused op runs its PyTorch reference inside the block, whatever ``backend=`` asks: for exporters
    (ONNX / TensorRT), whose graphs must hold standard ops only."""
    before = _references_only[0]
    _references_only[0] = True
    try:
        yield
    finally:
        _references_only[0] = before


def register_cpp_fake(op: str, fake: Callable) -> None:
    """Shape function of ``torch.ops.miga_fast.<op>``, registered as soon as the extension is loaded."""
    _cpp_fakes[op] = fake
    if extension_loaded():
        _register_fakes()


def _register_fakes() -> None:
    for op, fake in list(_cpp_fakes.items()):
        if hasattr(torch.ops.miga_fast, op):
            torch.library.register_fake(f"miga_fast::{op}", fake)
            del _cpp_fakes[op]


def _load(path: str) -> None:
    torch.ops.load_library(path)
    _ext.update(loaded=True, origin=path)
    _register_fakes()


def load_extension() -> bool:
    """Load the ``miga_fast._C`` library built by setup.py, if any (not with ``MIGA_FAST_NO_EXT``)."""
    if extension_loaded() or os.environ.get("MIGA_FAST_NO_EXT"):
        return extension_loaded()
    try:
        spec = importlib.util.find_spec("miga_fast._C")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin and spec.origin.endswith(".so"):
        _load(spec.origin)
    return extension_loaded()


def build_extension(build_root: str | os.PathLike | None = None, *, verbose: bool = False) -> str:
    """Compile ``csrc/*.cpp`` into a cached library (in ``$TMPDIR/miga_fast_ext`` by default) and load it.

    For source checkouts where setup.py did not build ``miga_fast._C``. Uses
    ``torch.utils.cpp_extension.load`` when ninja is installed, else the compiler directly, one process
    per source file. Returns the library path; a no-op when the kernels are already loaded.
    """
    if extension_loaded():
        return _ext["origin"]
    sources = sorted(CSRC.glob("*.cpp"))
    if not sources:
        raise FileNotFoundError(f"no C++ sources in {CSRC} (csrc/ ships only with a source checkout)")
    digest = hashlib.sha256()
    for part in [torch.__version__, sys.version, *CXX_FLAGS]:
        digest.update(part.encode())
    for src in sorted([*sources, *CSRC.glob("*.h")]):
        digest.update(src.name.encode() + src.read_bytes())
    name = f"miga_fast_C_{digest.hexdigest()[:12]}"
    root = Path(build_root or Path(tempfile.gettempdir()) / "miga_fast_ext") / name
    root.mkdir(parents=True, exist_ok=True)
    from torch.utils.cpp_extension import is_ninja_available, load

    if is_ninja_available():
        load(name, [str(s) for s in sources], extra_cflags=CXX_FLAGS, extra_ldflags=["-fopenmp"],
             build_directory=str(root), is_python_module=False, verbose=verbose)
        _ext.update(loaded=True, origin=str(root / f"{name}.so"))
        _register_fakes()
    else:
        library = root / f"{name}.so"
        if not library.exists():
            _compile(sources, root, library, verbose)
        _load(str(library))
    return _ext["origin"]


def _compile(sources: list[Path], root: Path, library: Path, verbose: bool) -> None:
    """Compile each source in its own process (parallel), then link; what cpp_extension does without ninja."""
    from torch.utils.cpp_extension import include_paths, library_paths

    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX)")
    includes = [f"-I{p}" for p in [*include_paths(), sysconfig.get_paths()["include"]]]
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    flags = ["-std=c++20", "-fPIC", abi, "-DTORCH_API_INCLUDE_EXTENSION_H", *CXX_FLAGS, *includes]
    objects = [root / f"{s.stem}.o" for s in sources]
    out = None if verbose else subprocess.DEVNULL
    jobs = [subprocess.Popen([cxx, *flags, "-c", str(s), "-o", str(o)], stdout=out, stderr=subprocess.PIPE)
            for s, o in zip(sources, objects, strict=True)]
    errors = [job.communicate()[1].decode() for job in jobs if job.wait() != 0]
    if errors:
        raise RuntimeError("building the C++ kernels failed:\n" + "\n".join(e[-3000:] for e in errors))
    libs = [f"-L{p}" for p in library_paths()] + ["-lc10", "-ltorch_cpu", "-ltorch"]
    tmp = library.with_suffix(f".{os.getpid()}.tmp")
    subprocess.run([cxx, "-shared", *map(str, objects), "-o", str(tmp), *libs, "-fopenmp"], check=True,
                   stdout=out)
    tmp.replace(library)  # atomic: a concurrent build never loads a half-written library
