"""GetServerInfo through a real `tuneserve api` and the real client and CLI: the limits it
reports are the server's configured ones (started with non-default values, so they are read,
not hard-coded) and the ones it enforces; any authenticated caller may ask, nobody else.

Cheap on purpose: one API process, no worker, nothing trained."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata

import pytest
from conftest import Proc, free_port, wait_serving

from tuneserve_client import Client, InvalidArgument, Unauthenticated

SETTINGS = {
    "max_predict_inputs": 7,
    "max_text_chars": 321,
    "max_lora_rank": 12,
    "max_dataset_bytes": 123_456,
    "max_train_examples": 999,
    "quota_active_jobs": 3,
    "quota_pinned_adapters": 0,
}


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> Iterator[Proc]:
    root = tmp_path_factory.mktemp("server-info")
    proc = Proc("api", root / "data", root, port=free_port(), **SETTINGS)
    try:
        wait_serving(proc.target)
        yield proc
    finally:
        rc = proc.stop()
        if rc not in (0, None):
            print(f"--- api log ---\n{proc.log()[-4000:]}")


def test_server_info_reports_the_configured_limits_model_and_features(api):
    from tuneserve_server.modeling import MINILM_ID

    with Client(api.target, timeout=30, api_key=api.api_key) as client:
        info = client.server_info()
    assert info.base_model == MINILM_ID and info.task == "classification"
    assert info.version == metadata.version("tuneserve")
    lim = info.limits
    assert (lim.max_predict_inputs, lim.max_text_chars, lim.max_lora_rank) == (7, 321, 12)
    assert (lim.max_dataset_bytes, lim.max_train_examples) == (123_456, 999)
    assert lim.max_request_bytes == 64 * 1024 * 1024
    assert lim.max_sequence_tokens == 512 and lim.max_input_tokens == 128  # MiniLM; the runner's cut
    assert (lim.max_new_tokens_default, lim.max_new_tokens_limit) == (0, 0)  # no generation here
    assert info.quotas.active_jobs == 3 and info.quotas.pinned_adapters == 0
    assert info.quotas.adapter_versions == 200  # a default, as configured
    assert info.auth_mode == "api_key" and not info.auth_jwt and not info.auth_client_certificates
    assert info.features == ("probabilities", "calibration", "prediction_sets", "uncertainty")


def test_the_reported_limits_are_the_enforced_ones(api):
    with Client(api.target, timeout=30, api_key=api.api_key) as client:
        lim = client.server_info().limits
        with pytest.raises(InvalidArgument) as err:
            client.predict("", ["hello"] * (lim.max_predict_inputs + 1))
        assert err.value.field_violations[0][0] == "inputs"
        assert f"at most {lim.max_predict_inputs} texts" in str(err.value)
        with pytest.raises(InvalidArgument) as err:
            client.predict("", ["x" * (lim.max_text_chars + 1)])
        assert err.value.field_violations[0][0] == "inputs[0]"


def test_any_authenticated_caller_may_ask_and_nobody_else(api):
    predict_only = api.create_key("teama", "predict", description="lowest role")
    with Client(api.target, timeout=30, api_key=predict_only) as client:
        assert client.server_info().limits.max_text_chars == 321
    for key in (None, "tsk_not-a-real_key"):
        with Client(api.target, timeout=30, api_key=key) as client, pytest.raises(Unauthenticated):
            client.server_info()
    log = api.log()
    assert "GetServerInfo" in log and "auth.failed" in log
    with Client(api.target, timeout=30) as client:  # health needs no key, and knows the service
        assert client.health("tuneserve.v1.ServerInfoService") == "SERVING"


def _cli(api: Proc, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tuneserve_client.cli", "--target", api.target, *args, "info"],
        env={k: v for k, v in api.env.items() if k != "TUNESERVE_API_KEY"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_cli_prints_the_server_info_and_json(api):
    done = _cli(api, "--api-key", api.api_key)
    assert done.returncode == 0, done.stderr
    lines = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in done.stdout.splitlines())}
    assert lines["task"] == "classification" and lines["auth"] == "api_key"
    assert lines["texts per predict"] == "7" and lines["characters per text"] == "321"
    assert lines["max LoRA rank"] == "12" and lines["max dataset bytes"] == "123456"
    assert lines["pinned adapters quota"] == "unlimited" and lines["active jobs quota"] == "3"

    done = _cli(api, "--api-key", api.api_key, "--json")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["limits"]["max_lora_rank"] == 12 and got["task"] == "classification"

    refused = _cli(api)
    assert refused.returncode == 1 and "error:" in refused.stderr
