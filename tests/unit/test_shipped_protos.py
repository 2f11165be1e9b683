"""protos/ is all another language needs: every .proto under it compiles with `-Iprotos`
alone (plus the well-known google/protobuf types that every protoc bundles), a client's own
.proto can import the health and status-details protos from there, and the copied
third-party protos declare exactly what the Python packages register at run time."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
THIRD_PARTY = ("grpc/health/v1/health.proto", "google/rpc/status.proto", "google/rpc/error_details.proto")

# A client's own file, as a user of another language might write one next to ours.
CLIENT_PROTO = """\
syntax = "proto3";
package myclient.v1;

import "google/rpc/error_details.proto";
import "google/rpc/status.proto";
import "grpc/health/v1/health.proto";
import "tuneserve/v1/datasets.proto";
import "tuneserve/v1/server_info.proto";

message SeenFailure {
  google.rpc.Status status = 1;
  google.rpc.BadRequest bad_request = 2;
  google.rpc.QuotaFailure quota = 3;
  google.rpc.RetryInfo retry = 4;
  tuneserve.v1.DataReport report = 5;
  grpc.health.v1.HealthCheckResponse.ServingStatus health = 6;
  tuneserve.v1.GetServerInfoResponse server = 7;
}
"""


def _protoc(include: Path, files: list[str], out: Path) -> descriptor_pb2.FileDescriptorSet:
    """grpc_tools.protoc with one -I (its main adds only its bundled well-known types)."""
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{include}",
            f"--python_out={out}",
            f"--descriptor_set_out={out / 'set.pb'}",
            *files,
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString((out / "set.pb").read_bytes())
    return fds


def _all_protos(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.proto"))


def test_every_proto_compiles_with_protos_as_the_only_include_path(tmp_path):
    files = _all_protos(PROTOS)
    assert set(THIRD_PARTY) <= set(files)
    fds = _protoc(PROTOS, files, tmp_path / "out")
    assert {f.name for f in fds.file} == set(files)


def test_a_clients_own_proto_imports_health_and_status_details_from_protos_alone(tmp_path):
    tree = tmp_path / "protos"
    shutil.copytree(PROTOS, tree)
    (tree / "myclient" / "v1").mkdir(parents=True)
    (tree / "myclient" / "v1" / "client.proto").write_text(CLIENT_PROTO)
    fds = _protoc(tree, ["myclient/v1/client.proto"], tmp_path / "out")
    assert [f.name for f in fds.file] == ["myclient/v1/client.proto"]
    assert (tmp_path / "out" / "myclient" / "v1" / "client_pb2.py").is_file()


def _descriptor(module) -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(fd)
    return fd


def _without_json_names(fd: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """protoc fills json_name in descriptor sets; the Python packages' embedded ones lack it."""

    def strip(messages) -> None:
        for m in messages:
            for f in m.field:
                f.ClearField("json_name")
            strip(m.nested_type)

    strip(fd.message_type)
    return fd


@pytest.mark.parametrize("path", THIRD_PARTY)
def test_shipped_third_party_protos_are_what_the_python_packages_serve(path, tmp_path):
    from google.rpc import error_details_pb2, status_pb2
    from grpc_health.v1 import health_pb2

    module = {
        "grpc/health/v1/health.proto": health_pb2,
        "google/rpc/status.proto": status_pb2,
        "google/rpc/error_details.proto": error_details_pb2,
    }[path]
    [compiled] = [f for f in _protoc(PROTOS, [path], tmp_path / "out").file if f.name == path]
    want = _descriptor(module)
    want.name = path  # grpcio-health-checking registers it as grpc_health/v1/health.proto
    assert _without_json_names(compiled) == want
    assert "Licensed under the Apache License, Version 2.0" in (PROTOS / path).read_text()


def test_only_tuneserve_stubs_are_generated_and_committed():
    """`make proto` compiles protos/tuneserve/v1 only; health and google.rpc come from their
    Python packages at run time, never from stubs of ours."""
    makefile = (ROOT / "Makefile").read_text()
    assert "protos/tuneserve/v1/*.proto" in makefile
    generated = {p.relative_to(ROOT / "client").parts[0] for p in (ROOT / "client").rglob("*_pb2.py")}
    assert generated == {"tuneserve"}
    protos = {p.stem for p in (PROTOS / "tuneserve" / "v1").glob("*.proto")}
    stubs = {p.name.removesuffix("_pb2.py") for p in (ROOT / "client" / "tuneserve" / "v1").glob("*_pb2.py")}
    assert stubs == protos
