"""setup.py exists only to build the optional C++ CPU extension (csrc/).

Everything else is declared in pyproject.toml. The extension is built when a C++ compiler is
present and MIGA_FAST_NO_EXT is unset; any build failure falls back to the pure-PyTorch reference
ops at run time (miga_fast.ops reports which backend is active).
"""

import os

from setuptools import setup

ext_modules, cmdclass = [], {}
if not os.environ.get("MIGA_FAST_NO_EXT") and os.path.isdir("csrc") and any(
    f.endswith(".cpp") for f in os.listdir("csrc")
):
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension

        ext_modules = [
            CppExtension(
                "miga_fast._C",
                sorted(os.path.join("csrc", f) for f in os.listdir("csrc") if f.endswith(".cpp")),
                extra_compile_args=["-O3", "-fopenmp"],
                extra_link_args=["-fopenmp"],
            )
        ]
        cmdclass = {"build_ext": BuildExtension.with_options(no_python_abi_suffix=True)}
    except Exception as exc:  # torch missing at build time: ship the pure-Python package
        print(f"miga_fast: skipping C++ extension ({exc})")

setup(ext_modules=ext_modules, cmdclass=cmdclass)
