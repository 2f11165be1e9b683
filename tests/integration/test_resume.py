"""A worker killed with SIGKILL mid-job, or stopped with SIGTERM, loses no work: the next
worker continues from the last checkpoint and the job ends with the same total steps."""

from __future__ import annotations

import signal
import time

from conftest import Proc, banking77, free_port, wait_serving

from tuneserve_client import Client


def wait_step(client: Client, job_id: str, at_least: int, timeout: float = 600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get_job(job_id)
        if job.step >= at_least or job.done:
            return job
        time.sleep(0.1)
    raise TimeoutError(f"{job_id} never reached step {at_least}")


def test_kill_9_and_sigterm_resume_from_checkpoints(tmp_path):
    data = tmp_path / "data"
    settings = dict(checkpoint_every_steps=4, worker_lease_s=3)
    api = Proc("api", data, tmp_path, port=free_port(), **settings)
    workers = [Proc("worker", data, tmp_path, **settings)]
    try:
        wait_serving(api.target)
        with Client(api.target, timeout=60, api_key=api.api_key) as client:
            job = client.train(
                "resumable",
                banking77("train", per_label=24),
                epochs=4,
                batch_size=8,
                validation_scheme="holdout",  # one training run (k-fold resume: test_cross_validation)
            )

            # 1. SIGKILL: no chance to save; the next worker resumes from the last periodic
            #    checkpoint (a multiple of 4), repeating only the steps after it.
            killed_at = wait_step(client, job.id, 10).step
            workers[0].stop(signal.SIGKILL)
            workers.append(Proc("worker", data, tmp_path, **settings))

            # 2. SIGTERM: the worker checkpoints at the step it is on and hands the job back.
            resumed = wait_step(client, job.id, killed_at + 6)
            workers[1].stop(signal.SIGTERM)
            stopped_at = client.get_job(job.id).step
            assert workers[1].proc.returncode == 0
            assert client.get_job(job.id).state == "QUEUED"
            workers.append(Proc("worker", data, tmp_path, **settings))

            final = client.wait(job.id, timeout=600, poll_interval=0.3)
        assert final.state == "SUCCEEDED", final.error
        assert final.step == final.total_steps
        assert final.attempts == 2  # the kill counted; the graceful hand-back did not
        resumed_from = final.metrics["resumed_from_step"]
        assert resumed_from == stopped_at  # SIGTERM saved exactly where it stopped
        assert final.resumed_from_step == stopped_at
        with Client(api.target, timeout=60, api_key=api.api_key) as client:
            events = list(client.watch_job(job.id))
        states = [e.state for e in events if e.type == "STATE"]
        # queued, started, lease expired -> queued, started, released -> queued, started, done
        assert states == ["QUEUED", "RUNNING", "QUEUED", "RUNNING", "QUEUED", "RUNNING", "SUCCEEDED"]
        resumes = [e.step for e in events if e.type == "CHECKPOINT" and "resumed" in e.message]
        assert len(resumes) == 2 and resumes[0] > 0 and resumes[1] == stopped_at
        log2 = workers[1].log()
        first_resume = int(log2.split("resumed from checkpoint")[1].split("step=")[1].split()[0])
        # The newest periodic checkpoint before the kill, so at most 3 steps before the step the
        # store had heard of (`killed_at`). Heartbeats lag training by up to one interval, so
        # the worker may have reached, and checkpointed, steps past `killed_at` before SIGKILL.
        assert first_resume % 4 == 0 and first_resume > killed_at - 4
        print(
            f"\nkill -9 at step {killed_at}: resumed from {first_resume}, "
            f"{killed_at - first_resume} steps repeated; SIGTERM at {stopped_at}: resumed from "
            f"{int(resumed_from)}, 0 repeated; {final.total_steps} steps in all"
        )
        assert resumed.step > killed_at
    finally:
        api.stop()
        for w in workers:
            w.stop()
