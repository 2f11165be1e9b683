"""The `tuneserve` command line: parsing, exit codes, and output against a real local server."""

from __future__ import annotations

import io
import json
import sys
import types

import pytest

from tuneserve.v1 import common_pb2, training_pb2
from tuneserve_client.cli import build_parser, main


def test_train_arguments():
    args = build_parser().parse_args(
        [
            "--json",
            "--namespace",
            "ns",
            "train",
            "--adapter",
            "a",
            "--data",
            "d.csv",
            "--epochs",
            "3",
            "--learning-rate",
            "1e-4",
            "--validation-fraction",
            "0.2",
            "--wait",
        ]
    )
    assert args.json and args.namespace == "ns" and args.timeout == 30.0
    assert (args.adapter, args.data, args.epochs, args.wait) == ("a", "d.csv", 3, True)
    assert args.learning_rate == pytest.approx(1e-4) and args.validation_fraction == pytest.approx(0.2)
    assert args.batch_size is None and args.seed is None and args.validation is None


def test_target_defaults_to_environment(monkeypatch):
    monkeypatch.delenv("TUNESERVE_TARGET", raising=False)
    assert build_parser().parse_args(["adapters", "list"]).target == "localhost:50051"
    monkeypatch.setenv("TUNESERVE_TARGET", "tuneserve.internal:443")
    assert build_parser().parse_args(["adapters", "list"]).target == "tuneserve.internal:443"


def test_jobs_list_states_are_case_insensitive_and_checked(capsys):  # capsys: argparse noise
    args = build_parser().parse_args(["jobs", "list", "--state", "running", "--state", "FAILED"])
    assert args.states == ["RUNNING", "FAILED"]
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["jobs", "list", "--state", "sleeping"])
    assert info.value.code == 2


@pytest.mark.parametrize(
    "argv",
    [[], ["jobs"], ["train", "--adapter", "a"], ["train", "--data", "x", "--adapter", "a", "--epochs", "0"]],
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


def test_server_commands_are_delegated(monkeypatch):
    calls = []
    module = types.ModuleType("tuneserve_server.cli")
    module.main = lambda argv: calls.append(argv) or 7
    monkeypatch.setitem(sys.modules, "tuneserve_server.cli", module)

    assert main(["serve", "--port", "1"]) == 7
    assert calls == [["serve", "--port", "1"]]


def test_server_commands_without_the_server_exit_2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tuneserve_server.cli", None)  # import fails
    assert main(["worker"]) == 2
    assert "server" in capsys.readouterr().err


def test_data_file_error_exits_2_naming_file_and_line(tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"text": "a", "label": "x"}\n{oops\n')
    assert main(["--target", "127.0.0.1:1", "train", "--adapter", "a", "--data", str(data)]) == 2
    assert f"error: {data}:2: invalid JSON" in capsys.readouterr().err


def test_train_and_wait(tmp_path, capsys, server_target, training_service):
    data = tmp_path / "train.csv"
    data.write_text("text,label\nhello,greet\nbye,leave\n")
    done = training_pb2.Job(
        id="job-1",
        adapter_name="intents",
        state=training_pb2.JOB_STATE_SUCCEEDED,
        progress=training_pb2.JobProgress(step=4, total_steps=4, epoch=2, train_loss=0.5),
        metrics={"accuracy": 1.0},
        adapter_version=1,
    )
    training_service.jobs["job-1"] = [done]

    rc = main(
        [
            "--target",
            server_target,
            "--namespace",
            "team-a",
            "train",
            "--adapter",
            "intents",
            "--data",
            str(data),
            "--epochs",
            "2",
            "--seed",
            "1",
            "--wait",
        ]
    )

    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert out[0] == "job-1"
    assert "SUCCEEDED" in out[1] and "step 4/4" in out[1] and "intents@1" in out[1]
    assert out[2] == "metrics: accuracy=1.0000"
    (request,) = training_service.train_requests
    assert request.namespace == "team-a" and len(request.training_examples) == 2
    opt = request.hyperparameters.optimizer
    assert (opt.epochs, opt.seed) == (2, 1) and not opt.HasField("batch_size")


def test_train_causal_lm_from_a_file(tmp_path, capsys, server_target, training_service):
    data = tmp_path / "train.jsonl"
    data.write_text(
        '{"prompt": "Hi", "completion": "Hello!"}\n'
        '{"messages": [{"role": "user", "content": "Yo"}, {"role": "assistant", "content": "Hey"}]}\n'
    )
    validation = tmp_path / "val.csv"
    validation.write_text("prompt,completion\nWho?,Me\n")

    rc = main(
        [
            "--target",
            server_target,
            "train",
            "--adapter",
            "style",
            "--task",
            "causal_lm",
            "--data",
            str(data),
            "--validation",
            str(validation),
            "--train-on-prompt",
            "--sample-generations",
            "2",
            "--max-seq-length",
            "256",
        ]
    )

    assert rc == 0 and capsys.readouterr().out.strip() == "job-1"
    (request,) = training_service.train_requests
    assert request.task == common_pb2.TASK_TYPE_CAUSAL_LM
    first, second = (e.causal_lm for e in request.training_examples)
    assert (first.prompt, first.completion) == ("Hi", "Hello!")
    assert [(m.role, m.content) for m in second.messages] == [("user", "Yo"), ("assistant", "Hey")]
    (val,) = (e.causal_lm for e in request.validation_examples)
    assert (val.prompt, val.completion) == ("Who?", "Me")
    hp = request.hyperparameters
    assert hp.causal_lm.train_on_prompt and hp.causal_lm.sample_generations == 2
    assert hp.optimizer.max_seq_length == 256


def test_jobs_wait_for_a_failed_job_exits_1(capsys, server_target, training_service):
    training_service.jobs["j"] = [
        training_pb2.Job(id="j", state=training_pb2.JOB_STATE_FAILED, error="out of memory")
    ]
    assert main(["--target", server_target, "jobs", "wait", "j"]) == 1
    captured = capsys.readouterr()
    assert "j FAILED" in captured.out
    assert "error: job j FAILED: out of memory" in captured.err


def test_rpc_error_exits_1(capsys, server_target):
    assert main(["--target", server_target, "jobs", "get", "missing"]) == 1
    assert capsys.readouterr().err.strip() == "error: NOT_FOUND: job missing not found"


def test_jobs_get_json(capsys, server_target, training_service):
    job = training_pb2.Job(id="j", state=training_pb2.JOB_STATE_RUNNING)
    job.created_at.FromSeconds(0)
    training_service.jobs["j"] = [job]

    assert main(["--target", server_target, "--json", "jobs", "get", "j"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["id"] == "j" and payload["state"] == "RUNNING" and payload["done"] is False
    assert payload["created_at"] == "1970-01-01T00:00:00+00:00" and payload["started_at"] is None


def test_predict_reads_stdin_for_dash(monkeypatch, capsys, server_target, inference_service):
    monkeypatch.setattr(sys, "stdin", io.StringIO("from stdin\n\nsecond\n"))

    rc = main(["--target", server_target, "predict", "--adapter", "sent@2", "--probabilities", "first", "-"])

    assert rc == 0
    (request,) = inference_service.requests
    assert list(request.inputs) == ["first", "from stdin", "second"]
    assert request.adapter == "sent@2" and request.return_probabilities
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"pos\t0.9000\tpos:0.9000 neg:0.1000\t{t}" for t in request.inputs]


def test_predict_without_adapter_uses_base_model(capsys, server_target, inference_service):
    assert main(["--target", server_target, "predict", "one"]) == 0
    assert inference_service.requests[0].adapter == ""
    assert capsys.readouterr().out == "pos\t0.9000\tone\n"


def test_adapters_list_and_delete(capsys, server_target):
    assert main(["--target", server_target, "adapters", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "TASK", "LATEST", "VERSIONS", "BASE", "MODEL"]
    assert [line.split()[0] for line in lines[1:]] == ["a", "b", "c"]

    assert main(["--target", server_target, "--json", "adapters", "delete", "x"]) == 0
    assert json.loads(capsys.readouterr().out) == {"adapter": "x", "deleted_versions": [1, 2]}


def test_info_prints_the_server_and_its_limits(capsys, server_target):
    assert main(["--target", server_target, "info"]) == 0
    lines = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines())
    lines = {k: v.strip() for k, v in lines.items()}
    assert lines["base model"] == "org/lm" and lines["task"] == "causal_lm" and lines["version"] == "1.2.3"
    assert lines["auth"] == "api_key (also jwt)"
    assert lines["features"] == "generation, streaming_generation"
    assert lines["texts per predict"] == "7" and lines["characters per text"] == "99"
    assert lines["max LoRA rank"] == "32" and lines["max new tokens"] == "256 (default 64)"
    assert lines["active jobs quota"] == "3" and lines["dataset bytes quota"] == "unlimited"
    assert "tokens read per input" not in lines  # 0: not a classification server

    assert main(["--target", server_target, "--json", "info"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["limits"]["max_predict_inputs"] == 7 and got["limits"]["max_new_tokens_limit"] == 256
    assert got["features"] == ["generation", "streaming_generation"]
    assert got["quotas"]["pinned_adapters"] == 2 and got["auth_mode"] == "api_key"
