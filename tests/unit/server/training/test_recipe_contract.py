"""The recipe contract (training/recipe.py): the worker's table has a recipe for every task
the server trains, each registered recipe has the Protocol's shape and imports no other
recipe, and a recipe registered in the table (one that trains no model) is driven by the real
worker through a real SqliteStore: claimed, its events logged, its adapter published, and
its resume, cancel and preemption signals honoured, without touching any other recipe."""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path

import pytest
from worker_fixtures import StepRecipe, wait_until

from tuneserve_server.api.convert import TASK_TO_PB
from tuneserve_server.config import load_settings
from tuneserve_server.domain.jobs import (
    CausalExample,
    EventType,
    Hyperparameters,
    JobSpec,
    JobState,
    LabelledText,
    PreferenceExample,
    TaskType,
)
from tuneserve_server.modeling import AdapterMeta, BaseModelSource
from tuneserve_server.storage.local_adapter_store import LocalAdapterStore
from tuneserve_server.storage.sqlite_store import SqliteStore
from tuneserve_server.training.recipe import Recipe, RecipeContext
from tuneserve_server.training.worker import RECIPES, TrainerWorker


def spec_for(task: TaskType) -> JobSpec:
    if task is TaskType.CAUSAL_LM:
        rows: tuple = (CausalExample(prompt="q?", completion="a."),)
    elif task is TaskType.PREFERENCE:
        rows = (PreferenceExample(prompt="q?", chosen="a.", rejected="b."),)
    else:
        rows = (LabelledText("text", "pos"), LabelledText("other", "neg"))
    return JobSpec("default", "a", task, "r", rows, rows[:1], Hyperparameters())


def test_every_task_the_server_trains_has_a_recipe():
    assert set(RECIPES) == set(TaskType)
    assert set(TASK_TO_PB) <= set(RECIPES)  # every task a Train request can name


@pytest.mark.parametrize("task", list(RECIPES), ids=lambda t: t.value)
def test_each_registered_recipe_has_the_protocols_shape(task, tmp_path):
    factory = RECIPES[task]
    assert isinstance(factory, type) and issubclass(factory, Recipe)
    # Built from the context alone; the phases take what the Protocol's take.
    (ctx_param, *rest) = list(inspect.signature(factory).parameters.values())
    assert ctx_param.annotation in (RecipeContext, "RecipeContext")
    assert all(p.default is not inspect.Parameter.empty for p in rest)
    for phase in ("setup", "train", "finalize"):
        wanted = list(inspect.signature(getattr(Recipe, phase)).parameters)
        assert list(inspect.signature(getattr(factory, phase)).parameters) == wanted, phase
    recipe = factory(RecipeContext(spec_for(task), BaseModelSource(str(tmp_path), "m")))
    assert isinstance(recipe, Recipe)


def test_recipes_never_import_each_other():
    modules = {factory.__module__ for factory in RECIPES.values()}
    assert len(modules) == len(RECIPES)
    for name in modules:
        tree = ast.parse(Path(sys.modules[name].__file__).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not imported & (modules - {name}), name


@pytest.fixture
def world(tmp_path):
    settings = load_settings({"data_dir": tmp_path, "worker_poll_s": 0.05}, env={})
    store = SqliteStore(tmp_path / "jobs.db")
    yield settings, store, LocalAdapterStore(settings.adapter_path)
    store.close()


def worker_with(world, **recipe_args) -> tuple[TrainerWorker, list[StepRecipe]]:
    """A worker whose table has StepRecipe for classification and the real recipes otherwise."""
    settings, store, adapters = world
    built: list[StepRecipe] = []

    def factory(ctx: RecipeContext) -> StepRecipe:
        built.append(StepRecipe(ctx, **recipe_args))
        return built[-1]

    return TrainerWorker(
        settings, store, adapters, recipes={**RECIPES, TaskType.CLASSIFICATION: factory}
    ), built


def events_of(store, job_id: str) -> list:
    return store.list_events("default", job_id)


def test_a_registered_recipe_is_claimed_logged_and_published(world, make_spec):
    _, store, adapters = world
    worker, built = worker_with(world, steps=3)
    job, _ = store.create_job(make_spec())
    assert worker.run_once()
    assert not worker.run_once()  # the queue is empty again
    (recipe,) = built
    assert recipe.phases == ["setup", "train", "finalize"]
    assert recipe.ctx.job_id == job.id and recipe.ctx.spec.train == make_spec().train
    assert recipe.ctx.checkpoint_dir == world[0].checkpoint_path / job.id
    done = store.get_job("default", job.id)
    assert done.state is JobState.SUCCEEDED, done.error
    assert (done.attempts, done.adapter_version, done.resumed_from_step) == (1, 1, 0)
    assert done.metrics == {"eval_loss": 0.25, "total_steps": 3.0}
    assert done.sample_generations == [{"prompt": "p", "reference": "r", "generated": f"from {job.id}"}]
    assert done.progress.step == 3
    events = events_of(store, job.id)
    assert [e.state for e in events if e.type is EventType.STATE] == [
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.SUCCEEDED,
    ]
    assert [e.progress.step for e in events if e.type is EventType.PROGRESS] == [1, 2, 3]
    assert [e.metrics for e in events if e.type is EventType.EVALUATION] == [done.metrics]
    meta = AdapterMeta.read(adapters.open("default", "intents", 1))
    assert (meta.job_id, meta.labels, meta.metrics) == (job.id, ("neg", "pos"), done.metrics)


def test_a_resume_the_recipe_reports_is_recorded_once(world, make_spec):
    _, store, _ = world
    worker, _ = worker_with(world, steps=4, resume_from=2)
    job, _ = store.create_job(make_spec())
    assert worker.run_once()
    done = store.get_job("default", job.id)
    assert done.state is JobState.SUCCEEDED and done.resumed_from_step == 2
    resumes = [e for e in events_of(store, job.id) if e.type is EventType.CHECKPOINT]
    assert [e.message for e in resumes] == ["resumed from the checkpoint at step 2"]
    assert [e.progress.step for e in events_of(store, job.id) if e.type is EventType.PROGRESS] == [3, 4]


def test_a_cancel_request_reaches_the_recipe_through_its_context(world, make_spec):
    _, store, _ = world
    built: list[StepRecipe] = []

    def cancel_before_step_2(step: int) -> None:
        if step == 2:
            store.cancel_job("default", job.id)
            wait_until(built[0].ctx.cancel.is_set, what="the heartbeat to pass the cancel on")

    worker, built = worker_with(world, steps=5, before_step=cancel_before_step_2)
    job, _ = store.create_job(make_spec())
    assert worker.run_once()
    done = store.get_job("default", job.id)
    assert (done.state, done.error, done.adapter_version) == (JobState.CANCELLED, "cancelled by request", 0)
    assert built[0].phases == ["setup", "train"]
    assert [e.progress.step for e in events_of(store, job.id) if e.type is EventType.PROGRESS] == [1, 2]


def test_preemption_checkpoints_and_gives_the_job_back(world, make_spec):
    _, store, _ = world
    worker, built = worker_with(world, steps=5, before_step=lambda step: step == 3 and worker.stopping.set())
    job, _ = store.create_job(make_spec())
    assert worker.run_once()
    back = store.get_job("default", job.id)
    assert back.state is JobState.QUEUED and back.progress.step == 3
    assert [e.message for e in events_of(store, job.id) if e.type is EventType.CHECKPOINT] == ["saved"]
    assert built[0].phases == ["setup", "train"]


def test_a_task_without_a_recipe_fails_the_job(world, make_spec):
    settings, store, adapters = world
    job, _ = store.create_job(make_spec())
    assert TrainerWorker(settings, store, adapters, recipes={}).run_once()
    done = store.get_job("default", job.id)
    assert done.state is JobState.FAILED
    assert done.error == "training failed: ValueError: no recipe for task classification"
