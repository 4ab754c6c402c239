"""The batch on Ray (`pip install -e ".[ray]"`): one actor per worker, each holding the model; units dispatched as
actors free up; an actor that dies (killed, its node lost) is replaced and its unit re-queued, so its render
resumes from its checkpoint in the shared output folder (`batch.run(..., ray="local" | ADDRESS)`).

On a GPU host each actor asks Ray for one GPU (`device="cuda"`); on CPU for `threads` CPUs. The output folder
must be reachable by every node (one machine, or a shared filesystem); the manifest is written by the driver.
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import ConfigError


class _Worker:
    """A Ray actor: the model loaded once, then units rendered in a row (its long-lived engines serve them)."""

    def __init__(self, model, device, threads, outdir, checkpoint_every):
        from .batch_worker import worker_generator

        self.work = (model, device, threads, outdir, checkpoint_every)
        worker_generator(model, device, threads)

    def pid(self) -> int:
        import os

        return os.getpid()

    def render(self, unit) -> list[dict]:
        from .batch_worker import render_jobs

        return render_jobs(*self.work, unit)


def run_on_ray(address: str, workers: int, work: tuple, units: list, record: Callable[[list[dict]], bool], view,
               on_start: Callable | None = None) -> None:
    """Render `units` on `workers` actors of the Ray at `address` ("local": start one here, stopped at the end);
    `record(rows)` returning False stops dispatching (the running units are still recorded)."""
    try:
        import ray
        from ray.exceptions import RayActorError
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install -e '.[ray]' (or use --workers N for local processes)") from None
    _, device, threads, _, _ = work
    started = not ray.is_initialized()
    if started:
        if address == "local":
            ray.init(num_cpus=max(workers * (threads or 1), 1), include_dashboard=False, log_to_driver=False,
                     object_store_memory=100 * 2**20)
        else:
            ray.init(address=address, log_to_driver=False)
    resources = {"num_gpus": 1} if str(device).startswith("cuda") else {"num_cpus": threads or 1}
    actor_class = ray.remote(max_restarts=0, **resources)(_Worker)

    def new_actor():
        actor = actor_class.remote(*work)
        return actor, ray.get(actor.pid.remote())

    try:
        idle = [new_actor() for _ in range(workers)]
        queue, running, going = list(units), {}, True
        while running or (queue and going):
            while going and queue and idle:
                (actor, pid), unit = idle.pop(), queue.pop(0)
                view.start(unit)
                running[actor.render.remote(unit)] = (actor, pid, unit)
                if on_start is not None:
                    on_start([j.id for j in unit], pid)
            ready, _ = ray.wait(list(running), num_returns=1)
            actor, pid, unit = running.pop(ready[0])
            try:
                rows = ray.get(ready[0])
            except RayActorError:  # the actor's process or node died: a new actor, the unit again (it resumes)
                view.requeue(unit)
                queue.insert(0, unit)
                ray.kill(actor)
                idle.append(new_actor())
                continue
            idle.append((actor, pid))
            going = record(rows) and going
    finally:
        if started:
            ray.shutdown()
