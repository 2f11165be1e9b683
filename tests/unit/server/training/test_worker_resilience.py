"""A trainer worker outlives job-store errors instead of exiting: it keeps polling with a
growing backoff while the store is unreachable and takes the queue up again when it is back,
and a failing heartbeat does not stop the job it keeps alive. The worker's calls go through
a real SqliteStore, wrapped so they are counted (the recipe trains no model)."""

from __future__ import annotations

import threading

from worker_fixtures import CountingStore, StepRecipe, wait_until

from tuneserve_server.config import load_settings
from tuneserve_server.domain.jobs import JobState, TaskType
from tuneserve_server.storage.local_adapter_store import LocalAdapterStore
from tuneserve_server.storage.sqlite_store import SqliteStore
from tuneserve_server.training.worker import RECIPES, TrainerWorker


def test_worker_keeps_polling_a_failing_store_and_recovers(tmp_path, make_spec):
    settings = load_settings({"data_dir": tmp_path, "worker_poll_s": 0.05}, env={})
    real = SqliteStore(tmp_path / "jobs.db")
    job, _ = real.create_job(make_spec())
    store = CountingStore(real)
    store.down = True  # every call now raises, as an unreachable database would
    recipes = {**RECIPES, TaskType.CLASSIFICATION: StepRecipe}
    worker = TrainerWorker(settings, store, LocalAdapterStore(settings.adapter_path), recipes=recipes)
    thread = threading.Thread(target=worker.run_forever, daemon=True)
    thread.start()
    try:
        wait_until(lambda: store.calls["claim_job"] >= 2, what="a second claim attempt")
        assert thread.is_alive()
        assert store.failed["claim_job"] == store.calls["claim_job"]
        store.down = False  # the database is back
        wait_until(lambda: real.get_job("default", job.id).state is JobState.SUCCEEDED, what="the job")
        claims = store.times["claim_job"]
        # A failed poll backs off (1 s, then 2 s), it does not spin at worker_poll_s.
        assert claims[1] - claims[0] >= 0.9 and claims[2] - claims[1] >= 1.9
        assert store.calls["complete_job"] == 1 and store.calls["heartbeat"] >= 1
        assert store.failed.total() == store.failed["claim_job"] == 2
    finally:
        worker.stopping.set()
        thread.join(5)
    assert not thread.is_alive()
    real.close()


def test_a_failing_heartbeat_does_not_stop_the_job(tmp_path, make_spec):
    # Lease 2 s: a heartbeat every 0.5 s.
    settings = load_settings({"data_dir": tmp_path, "worker_poll_s": 0.05, "worker_lease_s": 2}, env={})
    real = SqliteStore(tmp_path / "jobs.db")
    job, _ = real.create_job(make_spec())
    store = CountingStore(real)
    store.fail["heartbeat"] = 2

    def after_two_failed_beats(step: int) -> None:
        if step == 2:  # the job runs on while its heartbeats fail, then succeed again
            wait_until(lambda: store.calls["heartbeat"] >= 3, what="a heartbeat after the failures")

    recipes = {
        TaskType.CLASSIFICATION: lambda ctx: StepRecipe(ctx, steps=3, before_step=after_two_failed_beats)
    }
    worker = TrainerWorker(settings, store, LocalAdapterStore(settings.adapter_path), recipes=recipes)
    assert worker.run_once()
    done = real.get_job("default", job.id)
    assert done.state is JobState.SUCCEEDED, done.error
    assert store.failed["heartbeat"] == 2 and store.calls["heartbeat"] >= 4  # and the final one
    assert done.progress.step == 3  # the last heartbeat recorded the final step
    real.close()


def test_the_worker_imports_the_training_libraries_before_its_first_claim(tmp_path):
    """A fresh interpreter (this one has imported everything already): when run_forever makes
    its first claim, peft and transformers' model classes are loaded, so no job pays for them."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import sys
        from tuneserve_server.config import load_settings
        from tuneserve_server.storage.local_adapter_store import LocalAdapterStore
        from tuneserve_server.storage.sqlite_store import SqliteStore
        from tuneserve_server.training.worker import TrainerWorker

        settings = load_settings({{"data_dir": {str(tmp_path)!r}, "worker_poll_s": 0.05}}, env={{}})
        store = SqliteStore(settings.data_dir / "jobs.db")
        worker = TrainerWorker(settings, store, LocalAdapterStore(settings.adapter_path))
        before = "peft" in sys.modules
        seen = []

        def claim(*args, **kwargs):
            seen.append("peft" in sys.modules and "transformers.models.auto.modeling_auto" in sys.modules)
            worker.stopping.set()
            return None

        store.claim_job = claim
        worker.run_forever()
        print(before, seen)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False [True]"
