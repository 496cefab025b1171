"""LoRA: hangpt's adapters against PEFT's on the transformers model (logits, trainable counts, the
files each writes), an SFT run that trains only adapters, merging, and an exact resume."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from safetensors.torch import load_file

from hangpt.checkpoint import load_checkpoint, save_checkpoint
from hangpt.cli import main
from hangpt.models.lora import add_lora, has_lora
from test_model_golden import _hf_tiny

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

ALL = ["c_attn", "c_proj", "c_fc"]


def _hf_gpt2(folder, tokenizer):
    """A random tiny GPT-2 saved by transformers (non-trivial biases), with our tokenizer."""
    _hf_tiny(folder, tokenizer)
    return folder


def _randomize(params):
    with torch.no_grad():  # B starts at zero: make the adapter do something
        for p in params:
            p.normal_(0, 0.1)


def _logits(model, ids):
    with torch.no_grad():
        return model.eval()(ids).logits


def _hangpt_adapter(tmp_path, tiny_tokenizer, targets=ALL, **kw):
    base = _hf_gpt2(tmp_path / "base", tiny_tokenizer)
    ckpt = load_checkpoint(base)
    _randomize(add_lora(ckpt.model, r=4, alpha=8, targets=targets, **kw))
    save_checkpoint(tmp_path / "adapter", ckpt.model, ckpt.tokenizer, {"stage": "sft", "base_model": {"path": str(base)}})
    return base, tmp_path / "adapter", ckpt.model


@pytest.mark.parametrize("targets", [ALL, ["c_attn"], ["mlp.c_proj"]])
def test_hangpt_adapter_loads_in_peft_with_same_logits(tmp_path, tiny_tokenizer, targets):
    base, adapter, model = _hangpt_adapter(tmp_path, tiny_tokenizer, targets)
    assert not (adapter / "model.safetensors").exists() and not (adapter / "config.json").exists()  # base not copied
    ids = torch.randint(0, tiny_tokenizer.vocab_size, (2, 24))
    ours = _logits(model, ids)
    ref = peft.PeftModel.from_pretrained(transformers.GPT2LMHeadModel.from_pretrained(base), adapter)
    assert (_logits(ref, ids) - ours).abs().max().item() < 1e-4
    assert (_logits(load_checkpoint(adapter).model, ids) - ours).abs().max().item() < 1e-4  # --model ADAPTER

    # the same files PEFT writes: tensor names and the config fields that matter
    theirs = peft.get_peft_model(transformers.GPT2LMHeadModel.from_pretrained(base),
                                 peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM"))
    theirs.save_pretrained(tmp_path / "peft")
    assert load_file(str(adapter / "adapter_model.safetensors")).keys() == \
        load_file(str(tmp_path / "peft" / "adapter_model.safetensors")).keys()
    ours_cfg, peft_cfg = (json.loads((d / "adapter_config.json").read_text()) for d in (adapter, tmp_path / "peft"))
    for key in ("peft_type", "task_type", "r", "lora_alpha", "fan_in_fan_out", "bias", "use_rslora"):
        assert ours_cfg[key] == peft_cfg[key], key
    assert sorted(ours_cfg["target_modules"]) == sorted(peft_cfg["target_modules"])
    assert ours_cfg["base_model_name_or_path"] == str(base.resolve())
    assert json.loads((adapter / "hangpt.json").read_text())["adapter"]["base"] == str(base.resolve())


def test_rslora_scaling_matches_peft(tmp_path, tiny_tokenizer):
    base, adapter, model = _hangpt_adapter(tmp_path, tiny_tokenizer, use_rslora=True)
    ids = torch.randint(0, tiny_tokenizer.vocab_size, (2, 16))
    ref = peft.PeftModel.from_pretrained(transformers.GPT2LMHeadModel.from_pretrained(base), adapter)
    assert (_logits(ref, ids) - _logits(model, ids)).abs().max().item() < 1e-4


@pytest.mark.parametrize("targets", [None, ALL, "all-linear", ["attn.c_proj"], r".*\.1\.mlp\.c_fc"])
def test_trainable_parameter_count_equals_peft(tmp_path, tiny_tokenizer, targets):
    base = _hf_gpt2(tmp_path / "base", tiny_tokenizer)
    model = load_checkpoint(base).model
    n = sum(p.numel() for p in add_lora(model, r=8, targets=targets))
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)
    theirs = peft.get_peft_model(transformers.GPT2LMHeadModel.from_pretrained(base),
                                 peft.LoraConfig(r=8, target_modules=targets, task_type="CAUSAL_LM"))
    assert n == theirs.get_nb_trainable_parameters()[0]


def test_peft_written_adapter_loads_in_hangpt(tmp_path, tiny_tokenizer):
    base = _hf_gpt2(tmp_path / "base", tiny_tokenizer)
    theirs = peft.get_peft_model(transformers.GPT2LMHeadModel.from_pretrained(base),
                                 peft.LoraConfig(r=4, lora_alpha=16, target_modules=ALL, task_type="CAUSAL_LM"))
    _randomize([p for n, p in theirs.named_parameters() if "lora_B" in n])
    theirs.save_pretrained(tmp_path / "peft")  # no hangpt.json: the base comes from base_model_name_or_path
    ids = torch.randint(0, tiny_tokenizer.vocab_size, (2, 24))
    ours = load_checkpoint(tmp_path / "peft").model
    assert (_logits(ours, ids) - _logits(theirs, ids)).abs().max().item() < 1e-4


def _qa_file(path):
    rows = ["Q,A"] + [f"질문 {i % 8}번 뭐예요,답은 {i % 8}번이에요." for i in range(48)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def _run(args, code=0):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    assert e.value.code == code


def _run_interrupted(monkeypatch, args, step=2):
    """Run a training command with Ctrl-C during step `step` + 1: it saves a resumable checkpoint, exits 130."""
    from hangpt.train.loop import Trainer

    original = Trainer._micro_step

    def micro_step(self, model):
        if self.step == step:
            signal.raise_signal(signal.SIGINT)
        return original(self, model)

    with monkeypatch.context() as m:
        m.setattr(Trainer, "_micro_step", micro_step)
        _run(args, code=130)


def _prefs_file(path):
    rows = [("배고파", "맛있는 거 챙겨 드세요.", "싫어"), ("추워", "따뜻하게 입으세요.", "몰라")] * 6
    path.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}, ensure_ascii=False) + "\n"
                            for p, c, r in rows), encoding="utf-8")
    return path


def test_sft_with_lora_lowers_val_loss_trains_only_adapters_and_merges(tmp_path, tiny_checkpoint, capsys):
    from hangpt.data.conversations import read_conversations
    from hangpt.templates import get_template, prepare_tokenizer
    from hangpt.train.sft import encode_conversations, holdout_split, validation_loss

    # a base that already has the template's tokens, so nothing but the adapters can train
    template = get_template("kogpt2")
    start = load_checkpoint(tiny_checkpoint)
    prepare_tokenizer(template, start.tokenizer, start.model)
    base = tmp_path / "base"
    save_checkpoint(base, start.model, start.tokenizer, {"stage": "pretrain"})
    data, out = tmp_path / "qa.csv", tmp_path / "lora"
    _qa_file(data)
    _run(["sft", "--model", base, "--data", data, "--out", out, "--template", "kogpt2", "--lora-r", 8,
          "--lora-targets", "c_attn,c_proj,c_fc", "--max-steps", 40, "--batch-size", 8, "--lr", "3e-3",
          "--val-fraction", 0.25, "--no-progress", "--json"])
    summary = json.loads(capsys.readouterr().out)

    base_ckpt = load_checkpoint(base)
    _, val = holdout_split(read_conversations(data), 0.25, 1234)
    examples = encode_conversations(val, template, base_ckpt.tokenizer, 128).examples
    before = validation_loss(base_ckpt.model, examples, base_ckpt.tokenizer.pad_id, 8)
    assert summary["final"]["val_loss"] < 0.85 * before  # 6.08 -> 4.86 nats when written

    tensors = load_file(str(out / "adapter_model.safetensors"))
    n_layers = base_ckpt.model.config.n_layer
    assert len(tensors) == 2 * 4 * n_layers and all(".lora_A." in k or ".lora_B." in k for k in tensors)
    assert not (out / "model.safetensors").exists() and not (out / "train_state.pt").exists()
    assert json.loads((out / "hangpt.json").read_text())["stage"] == "sft"

    _run(["merge", "--model", out, "--out", tmp_path / "merged"])
    merged = load_checkpoint(tmp_path / "merged")
    assert not has_lora(merged.model) and merged.meta["chat_template"]["name"] == "kogpt2"
    unmerged = load_checkpoint(out, merge_adapter=False).model
    assert has_lora(unmerged)
    ids = torch.randint(0, base_ckpt.tokenizer.vocab_size, (2, 20))
    assert (_logits(merged.model, ids) - _logits(unmerged, ids)).abs().max().item() < 1e-4
    assert not torch.allclose(_logits(base_ckpt.model, ids), _logits(merged.model, ids), atol=1e-3)

    _run(["generate", "--model", out, "--prompt", "질문", "--max-new-tokens", 4])  # every command takes the adapter


def test_lora_ctrl_c_then_resume_equals_uninterrupted(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    """With tokens added by the template the grown embedding trains too and is saved in the adapter."""
    data = tmp_path / "qa.csv"
    _qa_file(data)
    head = ["sft", "--model", tiny_checkpoint, "--data", data, "--template", "kogpt2", "--lora-r", 4,
            "--max-steps", 6, "--batch-size", 4, "--val-fraction", 0.1, "--save-every", 100, "--no-progress",
            "--gradient-checkpointing"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    _run(head + ["--out", straight])
    _run_interrupted(monkeypatch, head + ["--out", stopped])
    assert "interrupted at step 3" in capsys.readouterr().err
    assert (stopped / "train_state.pt").exists() and (stopped / "adapter_model.safetensors").exists()
    _run(head + ["--out", stopped, "--resume"])
    a, b = (load_file(str(d / "adapter_model.safetensors")) for d in (straight, stopped))
    assert a.keys() == b.keys() and "base_model.model.transformer.wte.weight" in a
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("targets", [None, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]])
def test_llama_adapter_matches_peft(tmp_path, tiny_tokenizer, targets):
    """nn.Linear layers (the Llama family): same logits and trainable count as PEFT, both ways."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=tiny_tokenizer.vocab_size, hidden_size=64, intermediate_size=96,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=128, bos_token_id=1, eos_token_id=2)
    base = tmp_path / "base"
    transformers.LlamaForCausalLM(config).save_pretrained(base)
    tiny_tokenizer.save(base)
    ckpt = load_checkpoint(base, dtype="float32")
    params = add_lora(ckpt.model, r=4, alpha=8, targets=targets)
    _randomize(params)
    save_checkpoint(tmp_path / "adapter", ckpt.model, ckpt.tokenizer, {"stage": "sft", "base_model": {"path": str(base)}})
    theirs = peft.PeftModel.from_pretrained(transformers.LlamaForCausalLM.from_pretrained(base), tmp_path / "adapter")
    ids = torch.randint(0, tiny_tokenizer.vocab_size, (2, 24))
    assert (_logits(theirs, ids) - _logits(ckpt.model, ids)).abs().max().item() < 1e-4
    assert (_logits(load_checkpoint(tmp_path / "adapter").model, ids) - _logits(theirs, ids)).abs().max().item() < 1e-4
    fresh = peft.get_peft_model(transformers.LlamaForCausalLM.from_pretrained(base),
                                peft.LoraConfig(r=4, target_modules=targets, task_type="CAUSAL_LM"))
    assert sum(p.numel() for p in params) == fresh.get_nb_trainable_parameters()[0]


def test_alignment_commands_with_lora(tmp_path, tiny_checkpoint, capsys):
    """rm, dpo and ppo with --lora-r: adapters + the new heads (score, v_head) are all that is saved;
    the reward adapter scores as a reward model, merged or not."""
    prefs = _prefs_file(tmp_path / "prefs.jsonl")
    common = ["--max-steps", 2, "--batch-size", 4, "--lora-r", 4, "--no-progress"]
    _run(["rm", "train", "--model", tiny_checkpoint, "--data", prefs, "--out", tmp_path / "rm", *common])
    rm = tmp_path / "rm"
    tensors = load_file(str(rm / "adapter_model.safetensors"))
    assert "base_model.model.score.weight" in tensors and not (rm / "model.safetensors").exists()
    adapter_config = json.loads((rm / "adapter_config.json").read_text())
    assert adapter_config["task_type"] == "SEQ_CLS" and adapter_config["modules_to_save"] == ["score"]

    score = ["rm", "score", "--prompt", "배고파", "--response", "밥 드세요", "--json"]
    capsys.readouterr()
    _run([*score, "--model", rm])
    reward = json.loads(capsys.readouterr().out)["rewards"][0]["reward"]
    _run(["merge", "--model", rm, "--out", tmp_path / "rm-full"])
    capsys.readouterr()
    _run([*score, "--model", tmp_path / "rm-full"])
    assert json.loads(capsys.readouterr().out)["rewards"][0]["reward"] == pytest.approx(reward, abs=1e-4)

    _run(["dpo", "--model", tiny_checkpoint, "--data", prefs, "--out", tmp_path / "dpo", *common])
    assert all("lora_" in k for k in load_file(str(tmp_path / "dpo" / "adapter_model.safetensors")))

    (tmp_path / "prompts.txt").write_text("배고파\n추워\n", encoding="utf-8")
    _run(["ppo", "--model", tiny_checkpoint, "--reward-model", rm, "--prompts", tmp_path / "prompts.txt",
          "--out", tmp_path / "ppo", "--max-new-tokens", 4, "--ppo-epochs", 1, "--mini-batch-size", 2, *common])
    ppo = load_checkpoint(tmp_path / "ppo")
    assert set(ppo.extra_tensors) == {"v_head.weight", "v_head.bias"} and not has_lora(ppo.model)


def test_classify_with_lora_trains_and_adapter_predicts_as_merged(tmp_path, tiny_checkpoint, capsys):
    """The head trains whole, the base only through adapters; eval/predict take the adapter folder
    and agree with its merged folder."""
    from test_classify import _sentiment_file

    _sentiment_file(tmp_path / "train.tsv", 200, 0)
    _sentiment_file(tmp_path / "test.tsv", 60, 1)
    out = tmp_path / "clf"
    _run(["classify", "train", "--model", tiny_checkpoint, "--data", tmp_path / "train.tsv", "--out", out,
          "--lora-r", 4, "--max-steps", 30, "--batch-size", 16, "--lr", "3e-3", "--val-fraction", 0.2,
          "--eval-every", 10, "--no-progress", "--json"])
    summary = json.loads(capsys.readouterr().out)
    history = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    train = [h for h in history if "class_loss" in h]
    val = [h["val_loss"] for h in history if "val_loss" in h]
    assert train[-1]["class_loss"] < 0.2 * train[0]["class_loss"] and val == sorted(val, reverse=True)
    assert val[-1] < 0.3 * val[0] and summary["final"]["val_acc"] >= 0.95
    assert train[-1]["lm_loss"] < train[0]["lm_loss"]  # GPT-1's auxiliary loss: only the adapters can lower it

    tensors = load_file(str(out / "adapter_model.safetensors"))
    assert "base_model.model.score.weight" in tensors and not (out / "model.safetensors").exists()
    assert all(".lora_" in k for k in tensors if k != "base_model.model.score.weight")
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["task_type"] == "SEQ_CLS" and adapter_config["modules_to_save"] == ["score"]

    _run(["merge", "--model", out, "--out", tmp_path / "merged"])
    results = {}
    for folder in (out, tmp_path / "merged"):
        capsys.readouterr()
        _run(["classify", "eval", "--model", folder, "--data", tmp_path / "test.tsv", "--json"])
        evaluation = json.loads(capsys.readouterr().out)
        _run(["classify", "predict", "--model", folder, "--data", tmp_path / "test.tsv", "--json"])
        results[folder.name] = evaluation, json.loads(capsys.readouterr().out)["predictions"]
    (adapter_eval, adapter_pred), (merged_eval, merged_pred) = results["clf"], results["merged"]
    assert adapter_eval["accuracy"] >= 0.95 and adapter_eval["confusion"] == merged_eval["confusion"]
    assert [p["label"] for p in adapter_pred] == [p["label"] for p in merged_pred]
    for a, b in zip(adapter_pred, merged_pred):
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)


def test_classify_with_lora_resumes_exactly(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    from test_classify import _sentiment_file

    _sentiment_file(tmp_path / "train.tsv", 80, 0)
    head = ["classify", "train", "--model", tiny_checkpoint, "--data", tmp_path / "train.tsv", "--lora-r", 4,
            "--max-steps", 5, "--batch-size", 8, "--save-every", 100, "--no-progress"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    _run(head + ["--out", straight])
    _run_interrupted(monkeypatch, head + ["--out", stopped])
    assert "interrupted at step 3" in capsys.readouterr().err
    _run(head + ["--out", stopped, "--resume"])
    a, b = (load_file(str(d / "adapter_model.safetensors")) for d in (straight, stopped))
    assert a.keys() == b.keys() and "base_model.model.score.weight" in a
    assert all(torch.equal(a[k], b[k]) for k in a)
