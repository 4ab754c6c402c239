"""`miga-fast serve` as a real process on a loopback port (a tiny random model, or the bundled one)."""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from miga_fast.client import Client
from tests.tiny_model import PROMPT, save_tiny

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `miga-fast serve` subprocess; `kill()` is SIGKILL, `start()` again reuses the port and state dir."""

    def __init__(self, model, state_dir, *extra):
        self.model, self.state_dir, self.extra = model, state_dir, extra
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        cmd = [sys.executable, "-m", "miga_fast.cli", "serve", "--model", str(self.model), "--port", str(self.port),
               "--state-dir", str(self.state_dir), *self.extra]
        self.proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=1).read()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("server did not come up in 60 s")

    def kill(self):
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self, token=None):
        return Client(self.url, token=token)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("service-model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    srv = Server(tiny_model, tmp_path_factory.mktemp("state"), "--max-queue", "64").start()
    yield srv
    srv.stop()


__all__ = ["ENV", "PROMPT", "Server"]
