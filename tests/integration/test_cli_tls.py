"""The CLI against real TLS servers: a CA, server and client certificates made here (with the
`cryptography` package), a `tuneserve api` with tls_cert_file/tls_key_file reached with
--tls-ca, and one that also requires client certificates (tls_client_ca_file) reached with
--tls-cert/--tls-key. Over mTLS, a causal-LM adapter is trained from the command line (SmolLM2,
every hyperparameter flag given, checked in the job the server stored) and generates."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from conftest import ROOT, Proc, auth_channel, free_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tuneserve.v1 import training_pb2, training_pb2_grpc
from tuneserve_client import Client, TuneserveError, tls_credentials
from tuneserve_client.cli import main
from tuneserve_client.hyperparameters import BY_PATH

SUPPORT = ROOT / "examples" / "data" / "support_style" / "train.jsonl"
CLIENT_ENV = (
    "TUNESERVE_TARGET",
    "TUNESERVE_API_KEY",
    "TUNESERVE_TLS_CA",
    "TUNESERVE_TLS_CERT",
    "TUNESERVE_TLS_KEY",
)


# --- a small PKI -----------------------------------------------------------------------------


class Issuer:
    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            self._builder(self.name, self.key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )

    def _builder(self, subject: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
        now = datetime.now(UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
        )

    def issue(self, name: str, directory: Path, *, server: bool) -> tuple[Path, Path]:
        """A leaf certificate and key signed by this CA, as PEM files: (cert, key)."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            self._builder(subject, key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cert_path, key_path

    def write(self, path: Path) -> Path:
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path


class Pki:
    def __init__(self, directory: Path) -> None:
        ca, stranger = Issuer("tuneserve test CA"), Issuer("someone else's CA")
        self.ca = ca.write(directory / "ca.pem")
        self.stranger_ca = stranger.write(directory / "stranger-ca.pem")
        self.server_cert, self.server_key = ca.issue("server", directory, server=True)
        self.client_cert, self.client_key = ca.issue("client", directory, server=False)
        self.stranger_cert, self.stranger_key = stranger.issue("stranger", directory, server=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(autouse=True)
def no_client_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CLIENT_ENV:
        monkeypatch.delenv(name, raising=False)


def wait_tls_serving(proc: Proc, credentials: grpc.ChannelCredentials, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    with Client(proc.target, timeout=2, credentials=credentials, api_key=proc.api_key) as client:
        while time.monotonic() < deadline:
            assert proc.proc.poll() is None, proc.log()[-4000:]
            with contextlib.suppress(TuneserveError):  # not up yet
                if client.health() == "SERVING":
                    return
            time.sleep(0.2)
    raise TimeoutError(f"TLS server at {proc.target} did not become SERVING:\n{proc.log()[-4000:]}")


def cli(*argv: str) -> int:
    return main(["--timeout", "20", *argv])


# --- TLS: the server proves who it is ---------------------------------------------------------


def test_tls_server_is_reached_with_tls_ca(pki: Pki, tmp_path: Path, capsys, monkeypatch) -> None:
    api = Proc(
        "api",
        tmp_path / "data",
        tmp_path,
        port=free_port(),
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
    )
    try:
        wait_tls_serving(api, tls_credentials(pki.ca))
        target = ["--target", api.target, "--api-key", api.api_key]

        assert cli(*target, "--tls-ca", str(pki.ca), "health") == 0
        assert capsys.readouterr().out.strip() == "SERVING"
        assert cli(*target, "--tls-ca", str(pki.ca), "--json", "adapters", "list") == 0
        assert json.loads(capsys.readouterr().out) == []

        monkeypatch.setenv("TUNESERVE_TLS_CA", str(pki.ca))  # the same from the environment
        assert cli(*target, "health") == 0
        assert capsys.readouterr().out.strip() == "SERVING"
        monkeypatch.delenv("TUNESERVE_TLS_CA")

        assert cli(*target, "health") == 1  # plaintext to a TLS port
        assert "UNAVAILABLE" in capsys.readouterr().err
        assert cli(*target, "--tls-ca", str(pki.stranger_ca), "health") == 1  # untrusted server cert
        assert "UNAVAILABLE" in capsys.readouterr().err
    finally:
        if api.stop() not in (0, None):
            print(f"--- api log ---\n{api.log()[-4000:]}")


# --- mTLS: the client proves who it is too; a causal-LM adapter trained from the CLI -----------


@pytest.fixture(scope="module")
def mtls_lm(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """A SmolLM2 API that requires client certificates, and a worker."""
    root = tmp_path_factory.mktemp("mtls")
    settings = {"base_model": "smollm2", "max_new_tokens_default": 24, "max_new_tokens_limit": 64}
    api = Proc(
        "api",
        root / "data",
        root,
        port=free_port(),
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        tls_client_ca_file=pki.ca,
        **settings,
    )
    worker = None
    try:
        wait_tls_serving(api, tls_credentials(pki.ca, pki.client_cert, pki.client_key))
        worker = Proc("worker", root / "data", root, **settings)
        yield api
    finally:
        for proc in (worker, api):
            if proc is not None and proc.stop() not in (0, None):
                print(f"--- {proc.role} log ---\n{proc.log()[-4000:]}")


def test_mtls_needs_a_client_certificate_the_server_trusts(
    mtls_lm: Proc, pki: Pki, capsys, monkeypatch
) -> None:
    target, ca = ["--target", mtls_lm.target, "--api-key", mtls_lm.api_key], ["--tls-ca", str(pki.ca)]

    assert (
        cli(*target, *ca, "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key), "health") == 0
    )
    assert capsys.readouterr().out.strip() == "SERVING"

    assert cli(*target, *ca, "health") == 1  # no client certificate
    assert "UNAVAILABLE" in capsys.readouterr().err
    assert (
        cli(*target, *ca, "--tls-cert", str(pki.stranger_cert), "--tls-key", str(pki.stranger_key), "health")
        == 1
    )  # a certificate from a CA the server does not trust
    assert "UNAVAILABLE" in capsys.readouterr().err

    monkeypatch.setenv("TUNESERVE_TLS_CA", str(pki.ca))
    monkeypatch.setenv("TUNESERVE_TLS_CERT", str(pki.client_cert))
    monkeypatch.setenv("TUNESERVE_TLS_KEY", str(pki.client_key))
    assert cli(*target, "health") == 0


def test_causal_lm_adapter_trained_and_used_from_the_cli(
    mtls_lm: Proc, pki: Pki, tmp_path: Path, capsys
) -> None:
    rows = [line for line in SUPPORT.read_text().splitlines() if line.strip()]
    train, validation = tmp_path / "train.jsonl", tmp_path / "validation.jsonl"
    train.write_text("\n".join(rows[:16]) + "\n")
    validation.write_text("\n".join(rows[48:52]) + "\n")
    tls = [
        "--target",
        mtls_lm.target,
        "--api-key",
        mtls_lm.api_key,
        "--tls-ca",
        str(pki.ca),
        "--tls-cert",
        str(pki.client_cert),
        "--tls-key",
        str(pki.client_key),
    ]

    # The validation rows as an uploaded dataset, the training rows inline.
    assert cli(*tls, "datasets", "upload", str(validation), "--task", "causal_lm") == 0
    validation_id = capsys.readouterr().out.strip()

    given = {  # every hyperparameter, each different from the server's default
        "lora.rank": 4,
        "lora.alpha": 8.0,
        "lora.dropout": 0.0,
        "lora.target_modules": ["q_proj", "k_proj"],
        "optimizer.learning_rate": 0.00390625,
        "optimizer.batch_size": 4,
        "optimizer.epochs": 1,
        "optimizer.max_steps": 2,
        "optimizer.warmup_ratio": 0.0,
        "optimizer.weight_decay": 0.0,
        "optimizer.seed": 7,
        "optimizer.max_seq_length": 96,
        "optimizer.gradient_accumulation_steps": 2,
        "evaluation.eval_every_steps": 1,
        "evaluation.metric_for_best": "eval_loss",
        "evaluation.early_stopping_patience": 5,
        "evaluation.calibrate": False,
        "evaluation.fit_uncertainty": False,
        "evaluation.abstain_target_precision": 0.0,  # a coverage target instead
        "evaluation.abstain_target_coverage": 0.75,
        "evaluation.ood_false_positive_rate": 0.125,
        "evaluation.baseline": False,
        "evaluation.validation_scheme": "holdout",
        "evaluation.folds": 4,
        "evaluation.min_holdout_rows": 10,
        "causal_lm.train_on_prompt": True,
        "causal_lm.sample_generations": 1,
        "preference.beta": 0.25,
        "preference.loss_type": "sigmoid",
        "preference.label_smoothing": 0.25,
        # A causal-LM job: no search (classification only), its budget and parameters inert.
        "search.trials": 0,
        "search.budget_seconds": 30.0,
        "search.parameters": ["steps"],
    }
    assert sorted(given) == sorted(BY_PATH)  # a new field needs a value here
    flags: list[str] = []
    for path, value in given.items():
        flag = BY_PATH[path].flag
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            flags += [flag, *value]
        else:
            flags += [flag, str(value)]

    rc = cli(
        *tls,
        "--json",
        "train",
        "--adapter",
        "support-style",
        "--task",
        "causal_lm",
        "--data",
        str(train),
        "--validation-dataset",
        validation_id,
        *flags,
        "--wait",
    )
    out = capsys.readouterr()
    assert rc == 0, out.err
    job = json.loads(out.out.splitlines()[-1])
    assert job["state"] == "SUCCEEDED" and job["task"] == "causal_lm", job
    assert job["train_examples"] == 16 and job["validation_examples"] == 4
    assert "eval_loss" in job["metrics"] and len(job["sample_generations"]) == 1

    # The server ran with exactly what the flags said (the job stores its hyperparameters).
    credentials = tls_credentials(pki.ca, pki.client_cert, pki.client_key)
    with auth_channel(mtls_lm, credentials) as channel:
        stored = (
            training_pb2_grpc.TrainingServiceStub(channel)
            .GetJob(training_pb2.GetJobRequest(namespace="default", job_id=job["id"]), timeout=20)
            .job.hyperparameters
        )
    assert {path: BY_PATH[path].get(stored) for path in given} == given

    assert (
        cli(
            *tls,
            "--json",
            "predict",
            "--adapter",
            "support-style",
            "--max-new-tokens",
            "8",
            "How do I reset my password?",
        )
        == 0
    )
    (generation,) = json.loads(capsys.readouterr().out)
    assert generation["text"] and 0 < generation["completion_tokens"] <= 8
