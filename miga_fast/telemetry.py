"""Run telemetry for benchmarks: process memory and CPU time everywhere, the CUDA allocator's peak on CUDA, and
GPU memory / power / energy / clocks through NVML when it can be loaded.

Nothing here raises because a source is missing: without `pynvml` (pip install nvidia-ml-py), without the NVIDIA
driver library (NVMLError_LibraryNotFound), without a GPU or permission, NVML reports ``available = False`` and
a one-line ``reason``, and the other sources still work. RSS comes from psutil when installed, else
``/proc/self/statm`` (Linux), else nothing (None).

    with Monitor(device) as mon:        # a sampler thread records the peak RSS (and NVML power/memory) meanwhile
        run()
    mon.result                          # wall_s, cpu_s, rss_*_mb, maxrss_mb, cuda_*_mb, nvml, gpu_*, energy_j ...
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from typing import Any

import torch

MB = 1024 * 1024
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _psutil():
    try:
        import psutil

        psutil.Process().memory_info()
        return psutil
    except Exception:  # not installed, or unsupported platform
        return None


_PSUTIL = _psutil()


def rss_bytes() -> int | None:
    """Resident set size of this process now, in bytes (None when no source works)."""
    if _PSUTIL is not None:
        try:
            return int(_PSUTIL.Process().memory_info().rss)
        except Exception:
            pass
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def max_rss_bytes() -> int | None:
    """Peak RSS over the life of this process (getrusage), in bytes."""
    try:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (OSError, ValueError):
        return None
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, KiB on Linux


def cpu_seconds() -> float:
    """CPU time (user + system, all threads) of this process so far."""
    return time.process_time()


class NVML:
    """Lazy NVML access for one GPU; never raises. ``available`` / ``reason`` say whether it works."""

    def __init__(self, index: int = 0):
        self.available, self.reason, self.index = False, "", index
        self._nv: Any = None
        self._handle: Any = None
        self._energy_ok = True
        try:
            import pynvml  # nvidia-ml-py (or the pynvml package)
        except Exception as exc:  # ImportError, or a broken install
            self.reason = f"pynvml not importable ({type(exc).__name__}: {exc}); pip install nvidia-ml-py"
            return
        try:
            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception as exc:  # NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, no such GPU, ...
            self.reason = f"{type(exc).__name__}: {exc}".strip()
            return
        self._nv, self.available = pynvml, True

    def _get(self, fn: str, *args, default=None):
        if not self.available:
            return default
        try:
            return getattr(self._nv, fn)(self._handle, *args)
        except Exception:  # unsupported query on this GPU / driver
            return default

    def info(self) -> dict[str, str]:
        if not self.available:
            return {"nvml": f"unavailable: {self.reason}"}
        name = self._get("nvmlDeviceGetName", default="?")
        try:
            driver = self._nv.nvmlSystemGetDriverVersion()
        except Exception:
            driver = "?"
        return {"nvml": "ok", "gpu_name": _text(name), "driver": _text(driver)}

    def sample(self) -> dict[str, float | None]:
        """GPU memory used (bytes), power (W), SM and memory clocks (MHz); None for what the GPU does not report."""
        mem = self._get("nvmlDeviceGetMemoryInfo")
        power = self._get("nvmlDeviceGetPowerUsage")  # mW
        clocks = {}
        if self.available:
            for key, which in (("sm_clock_mhz", "NVML_CLOCK_SM"), ("mem_clock_mhz", "NVML_CLOCK_MEM")):
                clocks[key] = self._get("nvmlDeviceGetClockInfo", getattr(self._nv, which, 0))
        return {"gpu_mem_bytes": None if mem is None else float(mem.used),
                "power_w": None if power is None else power / 1000.0, **clocks}

    def energy_mj(self) -> float | None:
        """Total energy since the driver loaded, in mJ (Volta and newer), else None."""
        if not self._energy_ok:
            return None
        value = self._get("nvmlDeviceGetTotalEnergyConsumption")
        if value is None:
            self._energy_ok = False
        return None if value is None else float(value)

    def close(self) -> None:
        if self.available:
            try:
                self._nv.nvmlShutdown()
            except Exception:
                pass
            self.available = False


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _mb(value: float | None) -> float | None:
    return None if value is None else value / MB


class Monitor:
    """Context manager measuring one run: wall and CPU time, RSS (start / sampled peak / end), lifetime max RSS,
    CUDA allocator peaks (``device`` on CUDA: the peak counters are reset at entry) and NVML samples.

    A daemon thread samples every ``interval`` seconds; ``take_peak()`` returns (and restarts) the RSS peak
    since its last call, for periodic reports during long runs. ``result`` is filled at exit.
    """

    def __init__(self, device: str | torch.device = "cpu", *, interval: float = 0.01, nvml: NVML | None | bool = None):
        self.device = torch.device(device)
        self.interval = interval
        if nvml is None:  # NVML only for CUDA runs (loading it costs nothing when it is absent)
            nvml = NVML(self.device.index or 0) if self.device.type == "cuda" else False
        self.nvml = nvml or None
        self.result: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak = self._window_peak = 0
        self._power: list[float] = []
        self._gpu_mem_peak = 0.0
        self._clocks: list[float] = []

    def _sample(self) -> None:
        rss = rss_bytes() or 0
        with self._lock:
            self._peak = max(self._peak, rss)
            self._window_peak = max(self._window_peak, rss)
        if self.nvml is not None and self.nvml.available:
            s = self.nvml.sample()
            if s["power_w"] is not None:
                self._power.append(s["power_w"])
            if s["gpu_mem_bytes"] is not None:
                self._gpu_mem_peak = max(self._gpu_mem_peak, s["gpu_mem_bytes"])
            if s.get("sm_clock_mhz") is not None:
                self._clocks.append(float(s["sm_clock_mhz"]))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def take_peak(self) -> int:
        """Peak RSS (bytes) since the previous call (or the start); also samples now."""
        self._sample()
        with self._lock:
            peak, self._window_peak = self._window_peak, 0
        return peak

    def __enter__(self) -> Monitor:
        self._cuda = self.device.type == "cuda" and torch.cuda.is_available()
        if self._cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._rss_start = rss_bytes()
        self._energy_start = self.nvml.energy_mj() if self.nvml is not None else None
        self._sample()
        self._cpu0, self._t0 = cpu_seconds(), time.perf_counter()
        self._thread = threading.Thread(target=self._loop, name="miga-fast-telemetry", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._cuda:
            torch.cuda.synchronize(self.device)
        wall, cpu = time.perf_counter() - self._t0, cpu_seconds() - self._cpu0
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        r: dict[str, Any] = {
            "wall_s": wall, "cpu_s": cpu,
            "rss_start_mb": _mb(self._rss_start), "rss_peak_mb": _mb(self._peak) if self._peak else None,
            "rss_end_mb": _mb(rss_bytes()), "maxrss_mb": _mb(max_rss_bytes()),
            "cuda_max_allocated_mb": None, "cuda_max_reserved_mb": None,
            "nvml": "not used (CPU run)" if self.nvml is None else (
                "ok" if self.nvml.available else f"unavailable: {self.nvml.reason}"),
            "gpu_mem_peak_mb": None, "power_mean_w": None, "power_peak_w": None, "energy_j": None,
            "sm_clock_mean_mhz": None,
        }
        if self._cuda:
            r["cuda_max_allocated_mb"] = _mb(torch.cuda.max_memory_allocated(self.device))
            r["cuda_max_reserved_mb"] = _mb(torch.cuda.max_memory_reserved(self.device))
        if self.nvml is not None and self.nvml.available:
            r["gpu_mem_peak_mb"] = _mb(self._gpu_mem_peak) if self._gpu_mem_peak else None
            if self._power:
                r["power_mean_w"] = sum(self._power) / len(self._power)
                r["power_peak_w"] = max(self._power)
            end = self.nvml.energy_mj()
            if end is not None and self._energy_start is not None:
                r["energy_j"] = (end - self._energy_start) / 1000.0
            elif r["power_mean_w"] is not None:  # no energy counter: mean sampled power x time
                r["energy_j"] = r["power_mean_w"] * wall
            if self._clocks:
                r["sm_clock_mean_mhz"] = sum(self._clocks) / len(self._clocks)
        self.result = r


def environment(device: str | torch.device = "cpu") -> dict[str, str]:
    """What the telemetry can see on this machine: RSS source, CUDA device and NVML status (never raises)."""
    if _PSUTIL is not None:
        rss_source = "psutil"
    else:
        rss_source = "/proc/self/statm" if os.path.exists("/proc/self/statm") else "unavailable"
    device = torch.device(device)
    on_cuda = device.type == "cuda" and torch.cuda.is_available()
    env = {"rss_source": rss_source, "cuda": torch.cuda.get_device_name(device) if on_cuda else "-"}
    nv = NVML(device.index or 0) if device.type == "cuda" else None
    env.update(nv.info() if nv is not None else {"nvml": "not used (CPU run)"})
    if nv is not None:
        nv.close()
    return env
