"""Compiled code that outlives the process, and what engine mode "auto" knows about it.

* `use_persistent_cache()`: inductor's on-disk caches (FX graphs, AOT autograd) go under `cache_root()/inductor`
  (`$MIGA_FAST_CACHE_DIR`, else `$XDG_CACHE_HOME/miga_fast`, else `~/.cache/miga_fast`) instead of torch's
  default under /tmp, which many systems empty at boot. An explicit `$TORCHINDUCTOR_CACHE_DIR` wins.
* Warm markers: after a compiled engine has run, `mark_warm(key)` records that this exact engine (denoiser class and
  parameter shapes, plan, latent shape, torch) has code in that cache; `is_warm(key)` asks before a render. A
  marker only says what this package wrote: a cache emptied by hand makes "auto" pick compile once at a cold
  start's cost.
* `choose_mode(device, frames, warm)`: "auto" on a CPU compiles when the video is long enough to repay the
  compile, by the break-even frame counts measured by `bench/compile_start.py` (bundled model, miga-stream,
  this 2-core CPU: cold start 45 s of compile, warm start 7 s, then x1.56 frames/s), else runs eager.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

# Frames from which the compiled engine's whole render (compile included) is faster than eager's
# (bench/results/compile_start.csv: 64-frame miga-stream renders of the bundled model, fresh processes).
BREAK_EVEN_FRAMES = {"cold": 783, "warm": 151}


def cache_root() -> Path:
    """miga_fast's cache folder (created on use)."""
    env = os.environ.get("MIGA_FAST_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "miga_fast"


def use_persistent_cache() -> Path:
    """Point inductor's on-disk caches at `cache_root()/inductor` unless `$TORCHINDUCTOR_CACHE_DIR` is set; call
    before the first compile (inductor reads the variable when it first needs the folder). Returns the folder."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_root() / "inductor")
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def caches_disabled() -> bool:
    """Whether inductor was told to ignore its on-disk caches (then every start is cold)."""
    return os.environ.get("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "0") not in ("", "0")


def engine_key(**parts) -> str:
    """A digest of what a compiled engine's code depends on (`parts`: denoiser class and parameter shapes, plan
    config, latent shape, ...; not the weight values, which are graph inputs), plus torch's version and the
    inductor cache folder."""
    blob = json.dumps({**parts, "torch": torch.__version__, "cache": str(use_persistent_cache())},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _marker(key: str) -> Path:
    return cache_root() / "engines" / f"{key}.json"


def is_warm(key: str) -> bool:
    """Whether a compiled engine of `key` ran before with the on-disk caches on."""
    return not caches_disabled() and _marker(key).is_file()


def mark_warm(key: str, info: dict) -> None:
    """Record that the compiled engine of `key` has its code in the cache (`info`: for people reading the file)."""
    if caches_disabled():
        return
    path = _marker(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(info, default=str, indent=1))
        tmp.replace(path)
    except OSError:  # a read-only home: auto mode just stays on the cold break-even
        pass


def choose_mode(device: torch.device, frames: int, warm: bool) -> tuple[str, str]:
    """Engine mode "auto" resolved for one render: (mode, why). CUDA: "auto" (graphs, see `modes.select_mode`);
    CPU: "compile" when `frames` reaches the break-even for a warm or cold start, else "eager"."""
    if device.type == "cuda":
        return "auto", "CUDA device: CUDA graphs"
    start = "warm" if warm else "cold"
    need = BREAK_EVEN_FRAMES[start]
    if frames >= need:
        return "compile", f"{frames} frames >= {need}, the {start}-start break-even of compiling"
    return "eager", f"{frames} frames < {need}, the {start}-start break-even of compiling"
