"""Chat messages and logprobs over gRPC, and the OpenAI-compatible HTTP endpoints, on the real
SmolLM2-135M-Instruct (served base = smollm2) with an adapter trained through the service.

* gRPC chat is the model's own apply_chat_template; its logprobs (chosen + top-k) equal a
  plain transformers + peft forward of prompt + completion through the exported adapter
  (float32, 1e-4); streamed logprobs equal the unary ones.
* The real `openai` SDK against the same process (openai_port): models listed, a chat
  completion through the adapter equal to gRPC (text, logprobs, usage), streamed, a
  completion, seeded sampling equal to gRPC, and the errors: 401, 404 (unknown model and
  another tenant's adapter), 400 naming the parameter, 413."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import torch
from conftest import ROOT, Proc, free_port, wait_serving

from tuneserve_client import Client, InvalidArgument

DATA = ROOT / "examples" / "data" / "support_style" / "train.jsonl"
BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
ADAPTER = "support-chat"
MESSAGES = [
    {"role": "system", "content": "You are a support agent."},
    {"role": "user", "content": "My parcel was stolen from my doorstep."},
]


class Server:
    def __init__(self, api: Proc, data_dir: Path, http_port: int, client: Client) -> None:
        self.api, self.data_dir, self.client, self.http_port = api, data_dir, client, http_port
        self.base_url = f"http://127.0.0.1:{http_port}/v1"

    def openai(self, api_key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=api_key or self.api.api_key, max_retries=0)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("openai")
    http_port = free_port()
    settings = {
        "base_model": "smollm2",
        "max_new_tokens_default": 32,
        "max_new_tokens_limit": 64,
        "openai_port": http_port,
    }
    api = Proc("api", root / "data", root, port=free_port(), **settings)
    worker = None
    try:
        wait_serving(api.target, timeout=240)
        worker = Proc("worker", root / "data", root, **settings)
        client = Client(api.target, timeout=120, api_key=api.api_key)
        rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
        job = client.train(
            ADAPTER,
            rows[:24],
            task="causal_lm",
            validation=rows[48:52],
            lora_rank=8,
            learning_rate=3e-3,
            batch_size=8,
            max_steps=3,
            warmup_ratio=0.0,
            max_seq_length=96,
            sample_generations=0,
            request_id="openai-chat-v1",
        )
        job = client.wait(job, timeout=900, poll_interval=0.5)
        assert job.state == "SUCCEEDED", job.error
        yield Server(api, root / "data", http_port, client)
        client.close()
    finally:
        for proc in (worker, api):
            if proc is not None and proc.stop() not in (0, None):
                print(f"--- {proc.role} log ---\n{proc.log()[-4000:]}")


@pytest.fixture(scope="module")
def oracle(server: Server, tmp_path_factory: pytest.TempPathFactory):
    """Plain transformers + peft: the served base's float copy and the exported adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneserve_server.modeling_lm import local_model_dir, smollm2_file

    base_dir = local_model_dir(str(smollm2_file()), server.data_dir / "models")  # the server's cache
    export = tmp_path_factory.mktemp("export") / ADAPTER
    server.client.export_adapter(ADAPTER, export)
    tok = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    return tok, PeftModel.from_pretrained(base, str(export)).eval()


def direct_logprobs(oracle, messages, completion_ids: list[int]) -> tuple[list[int], torch.Tensor]:
    tok, model = oracle
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0].float()
    start = len(prompt_ids) - 1
    return prompt_ids, torch.log_softmax(logits[start : start + len(completion_ids)], -1)


def test_grpc_chat_is_the_chat_template_and_logprobs_equal_a_direct_peft_forward(server, oracle) -> None:
    tok, _ = oracle
    got = server.client.chat(ADAPTER, MESSAGES, max_new_tokens=16, logprobs=True, top_logprobs=3)
    assert got.completion_tokens == len(got.logprobs) > 0
    completion = [lp.token_id for lp in got.logprobs]
    prompt_ids, want = direct_logprobs(oracle, MESSAGES, completion)
    assert got.prompt_tokens == len(prompt_ids)
    diffs = []
    for step, lp in enumerate(got.logprobs):
        diffs.append(abs(lp.logprob - float(want[step, lp.token_id])))
        top_v, top_i = torch.topk(want[step], 3)
        assert list(lp.top_ids) == top_i.tolist() and lp.token_id == lp.top_ids[0]  # greedy
        assert [v for _, v in lp.top] == pytest.approx(top_v.tolist(), abs=1e-4)
    assert max(diffs) < 1e-4, max(diffs)
    assert tok.decode(completion, skip_special_tokens=True).startswith(got.text)
    # the same conversation as raw text through apply_chat_template gives the same reply
    rendered = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    raw = server.client.generate(ADAPTER, rendered, max_new_tokens=16, raw_prompt=True)
    assert raw.text == got.text and raw.prompt_tokens == got.prompt_tokens

    with server.client.stream(
        ADAPTER, messages=MESSAGES, max_new_tokens=16, logprobs=True, top_logprobs=3
    ) as s:
        text = "".join(s)
    assert text == got.text == s.final.text
    assert [lp.token_id for lp in s.final.logprobs] == completion
    assert [lp.logprob for lp in s.final.logprobs] == pytest.approx(
        [lp.logprob for lp in got.logprobs], abs=1e-5
    )


def test_grpc_chat_refusals_name_the_field(server) -> None:
    c = server.client
    cases = [
        (lambda: c.chat(None, [{"role": "robot", "content": "hi"}]), "messages[0].role"),
        (lambda: c.chat(None, [{"role": "user", "content": " "}]), "messages[0].content"),
        (lambda: c.chat(None, MESSAGES, logprobs=True, top_logprobs=21), "generation.top_logprobs"),
        (lambda: list(c.stream(None, "hi", messages=MESSAGES)), "messages"),
        (lambda: list(c.stream(None, messages=MESSAGES, raw_prompt=True)), "generation.raw_prompt"),
    ]
    for call, field in cases:
        with pytest.raises(InvalidArgument) as err:
            call()
        assert field in [v[0] for v in err.value.field_violations], (field, err.value)
    assert c.server_info().limits.max_top_logprobs == 20


def test_openai_sdk_lists_models_and_chats_through_the_adapter_like_grpc(server) -> None:
    sdk = server.openai()
    server.client.set_alias(f"{ADAPTER}@1", "prod")  # an alias is a model id too
    ids = {m.id for m in sdk.models.list()}
    assert {BASE, ADAPTER, f"{ADAPTER}@1", f"{ADAPTER}@prod"} <= ids
    assert sdk.models.retrieve(f"{ADAPTER}@prod").version == 1
    assert sdk.models.retrieve(f"{ADAPTER}@1").owned_by == "default"

    grpc_reply = server.client.chat(ADAPTER, MESSAGES, max_new_tokens=16, logprobs=True, top_logprobs=2)
    reply = sdk.chat.completions.create(
        model=ADAPTER, messages=MESSAGES, max_tokens=16, logprobs=True, top_logprobs=2
    )
    choice = reply.choices[0]
    assert choice.message.content == grpc_reply.text and reply.model == f"{ADAPTER}@1"
    assert choice.finish_reason == ("length" if grpc_reply.finish_reason == "length" else "stop")
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (
        grpc_reply.prompt_tokens,
        grpc_reply.completion_tokens,
    )
    assert reply.usage.total_tokens == grpc_reply.prompt_tokens + grpc_reply.completion_tokens
    content = choice.logprobs.content
    assert [c.token for c in content] == [lp.token for lp in grpc_reply.logprobs]
    assert [c.logprob for c in content] == pytest.approx([lp.logprob for lp in grpc_reply.logprobs], abs=1e-5)
    assert all(len(c.top_logprobs) == 2 for c in content)

    chunks = list(
        sdk.chat.completions.create(
            model=ADAPTER,
            messages=MESSAGES,
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == grpc_reply.text
    assert len([ch for ch in chunks if ch.choices and ch.choices[0].delta.content]) > 3  # piece by piece
    assert chunks[-1].usage.completion_tokens == grpc_reply.completion_tokens
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == choice.finish_reason


def test_openai_sdk_completion_seed_and_stop_match_grpc(server) -> None:
    sdk = server.openai()
    prompt = "The three primary colours are"
    want = server.client.generate(
        None, prompt, max_new_tokens=12, raw_prompt=True, logprobs=True, top_logprobs=2
    )
    got = sdk.completions.create(model=BASE, prompt=prompt, max_tokens=12, logprobs=2)
    assert got.choices[0].text == want.text and got.usage.completion_tokens == want.completion_tokens
    assert got.choices[0].logprobs.token_logprobs == pytest.approx(
        [lp.logprob for lp in want.logprobs], abs=1e-5
    )
    streamed = list(sdk.completions.create(model=BASE, prompt=prompt, max_tokens=12, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == want.text

    sampled = dict(max_new_tokens=20, temperature=0.9, top_p=0.9, seed=11)
    grpc_sampled = server.client.chat(ADAPTER, MESSAGES, **sampled)
    http_sampled = sdk.chat.completions.create(
        model=f"{ADAPTER}@1", messages=MESSAGES, max_tokens=20, temperature=0.9, top_p=0.9, seed=11
    )
    assert http_sampled.choices[0].message.content == grpc_sampled.text
    stop = grpc_sampled.text.split()[1]
    cut = sdk.chat.completions.create(
        model=f"{ADAPTER}@1",
        messages=MESSAGES,
        max_tokens=20,
        temperature=0.9,
        top_p=0.9,
        seed=11,
        stop=[stop],
    )
    assert cut.choices[0].finish_reason == "stop" and stop not in cut.choices[0].message.content


def test_openai_errors_have_openai_bodies_and_http_codes(server) -> None:
    with pytest.raises(openai.AuthenticationError) as err:
        server.openai("tsk_nope_wrong").chat.completions.create(model=BASE, messages=MESSAGES)
    assert err.value.status_code == 401 and err.value.body["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        server.openai("tsk_nope_wrong").models.list()

    with pytest.raises(openai.NotFoundError) as err:
        server.openai().chat.completions.create(model="no-such-adapter", messages=MESSAGES)
    assert err.value.body["param"] == "model" and err.value.body["code"] == "model_not_found"
    other = server.api.create_key("other", "predict", description="another tenant")
    with pytest.raises(openai.NotFoundError):  # another tenant's adapter: as if it did not exist
        server.openai(other).chat.completions.create(model=ADAPTER, messages=MESSAGES)
    assert ADAPTER not in {m.id for m in server.openai(other).models.list()}

    sdk = server.openai()
    for kwargs, param in [
        ({"temperature": -1}, "temperature"),
        ({"max_tokens": 65}, "max_tokens"),
        ({"top_p": 0}, "top_p"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"n": 2}, "n"),
    ]:
        with pytest.raises(openai.BadRequestError) as err:
            sdk.chat.completions.create(**{"model": BASE, "messages": MESSAGES, **kwargs})
        assert err.value.status_code == 400 and err.value.body["param"] == param, (param, err.value.body)
        assert err.value.body["type"] == "invalid_request_error" and err.value.body["message"].startswith(
            param
        )
    with pytest.raises(openai.BadRequestError) as err:  # past max_text_chars
        sdk.completions.create(model=BASE, prompt=["ok", "word " * 900], max_tokens=8)
    assert err.value.body["param"] == "prompt[1]"

    # A body past the bound is refused from its declared length, before it is read.
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
    conn.putrequest("POST", "/v1/completions")
    conn.putheader("authorization", f"Bearer {server.api.api_key}")
    conn.putheader("content-type", "application/json")
    conn.putheader("content-length", str(8 * 256 * 4096))
    conn.endheaders()
    conn.send(b'{"model": "')
    response = conn.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["error"]["code"] == "request_too_large"
    conn.close()


def test_cli_predict_with_a_system_turn_is_a_chat(server, capsys) -> None:
    from tuneserve_client.cli import main

    want = server.client.chat(ADAPTER, MESSAGES, max_new_tokens=16, logprobs=True)
    argv = ["--target", server.api.target, "--api-key", server.api.api_key, "--json", "predict"]
    argv += ["--adapter", ADAPTER, "--system", MESSAGES[0]["content"], "--max-new-tokens", "16", "--logprobs"]
    assert main([*argv, MESSAGES[1]["content"]]) == 0
    (got,) = json.loads(capsys.readouterr().out)
    assert got["text"] == want.text and got["completion_tokens"] == want.completion_tokens
    assert [lp["token_id"] for lp in got["logprobs"]] == [lp.token_id for lp in want.logprobs]
    assert main([*argv[:4], "predict", "--adapter", ADAPTER, "--system", "x", "--stream", "hi"]) == 0
