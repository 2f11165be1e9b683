"""The CLI's credentials: --api-key / $TUNESERVE_API_KEY reach the server as call metadata on
every subcommand; TLS flags that cannot work are usage errors. (The TLS handshake itself is
tested against a real TLS server in tests/integration/test_cli_tls.py.)"""

from __future__ import annotations

import pytest

from tuneserve_client import Client
from tuneserve_client.cli import build_parser, main

TLS_ENV = ("TUNESERVE_API_KEY", "TUNESERVE_TLS_CA", "TUNESERVE_TLS_CERT", "TUNESERVE_TLS_KEY")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in TLS_ENV:
        monkeypatch.delenv(name, raising=False)


def test_api_key_flag_is_sent_as_bearer_metadata_on_every_call(
    tmp_path, server_target, training_service, capsys
):
    data = tmp_path / "train.csv"
    data.write_text("text,label\nhello,greet\n")
    assert main(["--target", server_target, "--api-key", "k-123", "jobs", "list"]) == 0
    assert (
        main(
            ["--target", server_target, "--api-key", "k-123", "train", "--adapter", "a", "--data", str(data)]
        )
        == 0
    )
    assert [m.get("authorization") for m in training_service.metadata] == ["Bearer k-123"] * 2


def test_api_key_from_the_environment_and_none_without(monkeypatch, server_target, training_service, capsys):
    assert main(["--target", server_target, "jobs", "list"]) == 0
    monkeypatch.setenv("TUNESERVE_API_KEY", "from-env")
    assert main(["--target", server_target, "jobs", "list"]) == 0
    assert main(["--target", server_target, "--api-key", "flag-wins", "jobs", "list"]) == 0
    assert [m.get("authorization") for m in training_service.metadata] == [
        None,
        "Bearer from-env",
        "Bearer flag-wins",
    ]


def test_client_api_key_joins_the_callers_metadata(server_target, training_service):
    with Client(server_target, api_key="abc", metadata={"x-team": "blue"}) as client:
        list(client.list_jobs())
    (sent,) = training_service.metadata
    assert sent["authorization"] == "Bearer abc" and sent["x-team"] == "blue"


def test_tls_settings_default_from_the_environment(monkeypatch):
    monkeypatch.setenv("TUNESERVE_TLS_CA", "/etc/ca.pem")
    monkeypatch.setenv("TUNESERVE_TLS_CERT", "/etc/me.pem")
    monkeypatch.setenv("TUNESERVE_TLS_KEY", "/etc/me.key")
    args = build_parser().parse_args(["health"])
    assert (args.tls_ca, args.tls_cert, args.tls_key) == ("/etc/ca.pem", "/etc/me.pem", "/etc/me.key")
    args = build_parser().parse_args(["--tls-ca", "other.pem", "health"])
    assert args.tls_ca == "other.pem"


def test_a_client_cert_without_its_key_is_a_usage_error(tmp_path, capsys):
    cert = tmp_path / "me.pem"
    cert.write_text("x")
    with pytest.raises(SystemExit) as info:
        main(["--tls-cert", str(cert), "health"])
    assert info.value.code == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err


def test_an_unreadable_tls_file_exits_2_naming_it(tmp_path, capsys):
    missing = tmp_path / "nope.pem"
    assert main(["--target", "127.0.0.1:1", "--tls-ca", str(missing), "health"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {missing}: ")
