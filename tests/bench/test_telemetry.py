"""miga_fast.telemetry never fails without NVML / psutil, and measures what it claims on the CPU."""

import sys
import time
import types

import torch

from miga_fast import telemetry


def test_nvml_module_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    nv = telemetry.NVML()
    assert not nv.available and "pynvml" in nv.reason
    assert nv.info()["nvml"].startswith("unavailable")
    assert nv.sample() == {"gpu_mem_bytes": None, "power_w": None} and nv.energy_mj() is None
    nv.close()
    with telemetry.Monitor("cpu", nvml=nv) as mon:
        pass
    assert mon.result["nvml"].startswith("unavailable") and mon.result["energy_j"] is None


def _fake_pynvml(fail_init=None):
    nv = types.ModuleType("pynvml")

    class NVMLError_LibraryNotFound(Exception):  # noqa: N801 (the real class name)
        pass

    def init():
        if fail_init:
            raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")

    energy = [1000.0]

    def total_energy(handle):
        energy[0] += 500.0  # mJ per query
        return energy[0]

    nv.nvmlInit = init
    nv.nvmlShutdown = lambda: None
    nv.nvmlDeviceGetHandleByIndex = lambda i: object()
    nv.nvmlDeviceGetName = lambda h: b"Fake GPU"
    nv.nvmlSystemGetDriverVersion = lambda: "1.0"
    nv.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=3 * telemetry.MB)
    nv.nvmlDeviceGetPowerUsage = lambda h: 150_000  # mW
    nv.NVML_CLOCK_SM, nv.NVML_CLOCK_MEM = 1, 2
    nv.nvmlDeviceGetClockInfo = lambda h, which: 1500 if which == 1 else 9000
    nv.nvmlDeviceGetTotalEnergyConsumption = total_energy
    return nv


def test_nvml_library_not_found(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(fail_init=True))
    nv = telemetry.NVML()
    assert not nv.available and "NVMLError_LibraryNotFound" in nv.reason
    assert telemetry.environment("cpu")["nvml"] == "not used (CPU run)"


def test_nvml_values_flow_into_the_monitor(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml())
    nv = telemetry.NVML()
    assert nv.available and nv.info()["gpu_name"] == "Fake GPU"
    with telemetry.Monitor("cpu", nvml=nv, interval=0.001) as mon:
        time.sleep(0.02)
    r = mon.result
    assert r["nvml"] == "ok" and r["power_mean_w"] == 150.0 and r["gpu_mem_peak_mb"] == 3.0
    assert r["energy_j"] > 0 and r["sm_clock_mean_mhz"] == 1500


def test_monitor_sees_a_transient_peak():
    with telemetry.Monitor("cpu", interval=0.002) as mon:
        x = torch.ones(64 * 1024 * 1024 // 4)  # 64 MB, touched
        time.sleep(0.05)
        del x
    r = mon.result
    assert r["wall_s"] >= 0.05 and r["cpu_s"] >= 0
    assert r["rss_peak_mb"] - r["rss_start_mb"] > 40
    assert r["maxrss_mb"] >= r["rss_peak_mb"] - 1
    assert r["cuda_max_allocated_mb"] is None and r["nvml"] == "not used (CPU run)"


def test_rss_without_psutil(monkeypatch):
    with_psutil = telemetry.rss_bytes()
    monkeypatch.setattr(telemetry, "_PSUTIL", None)
    statm = telemetry.rss_bytes()
    assert statm is not None and with_psutil is not None
    assert abs(statm - with_psutil) < 64 * telemetry.MB
    assert telemetry.environment()["rss_source"] == "/proc/self/statm"
