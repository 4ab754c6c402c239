"""The batch on a local Ray started by the test (2 CPU actors): the same videos, and an actor SIGKILLed mid-job has
its job re-queued on a new actor, resumed from its checkpoint."""

import os
import signal
import threading
import time

import numpy as np
import pytest

from miga_fast import batch

from .conftest import JOBS, videos

pytest.importorskip("ray")


def test_ray_two_workers_and_a_killed_worker(reference, model, tmp_path):
    jobs, _, expected = reference
    out = tmp_path / "out"
    victim, killed = JOBS[3]["id"], {}

    def kill_when_half_done(pid):
        segments = out / f"{victim}.mp4.ckpt" / "segments"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(segments.glob("*.mp4"))) < 3:
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        killed["pid"] = pid

    def on_start(ids, pid):
        if ids == [victim] and not killed and pid is not None:
            killed["thread"] = threading.Thread(target=kill_when_half_done, args=(pid,), daemon=True)
            killed["thread"].start()

    rows = batch.run(jobs, out, model=str(model), workers=2, ray="local", threads=1, checkpoint_every=4,
                     progress=False, on_start=on_start)
    killed["thread"].join(timeout=60)
    assert [r["status"] for r in rows] == ["done"] * len(JOBS)
    by_id = {r["id"]: r for r in rows}
    assert by_id[victim]["pid"] != killed["pid"] and by_id[victim]["resumed_from"] >= 8  # re-queued, resumed
    assert len({r["pid"] for r in rows}) >= 2  # two actors served the batch
    got = videos(out)
    assert all(np.array_equal(np.stack(got[k]), np.stack(expected[k])) for k in expected)
