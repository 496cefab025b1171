"""With LoRA, the reference model of PPO/GRPO and DPO is the policy's own base with its adapters
switched off (PEFT's disable_adapter()): no second copy of the base is held, and training gives
exactly what a frozen copy gave."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from hangpt.checkpoint import load_checkpoint
from hangpt.models.lora import add_lora, adapters_disabled, merge_lora
from hangpt.train import ppo as ppo_module
from hangpt.train.ppo import PPOConfig, PPOTrainer, train_ppo
from test_lora import _prefs_file, _run, _run_interrupted
from test_ppo import PROMPTS, _cfg, _counting_scorer, _target_tokens

LORA = {"r": 4, "alpha": 8, "dropout": 0.05, "targets": ["c_attn", "c_proj", "c_fc"]}


def test_adapters_disabled_gives_the_base_logits(tiny_checkpoint):
    base = load_checkpoint(tiny_checkpoint).model.eval()
    model = copy.deepcopy(base)
    with torch.no_grad():
        for p in add_lora(model, **LORA):
            p.normal_(0, 0.1)
    model.eval()
    ids = torch.randint(0, base.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, adapted = base(ids).logits, model(ids).logits
        with adapters_disabled(model) as off:
            assert torch.equal(off(ids).logits, want)
        assert torch.equal(model(ids).logits, adapted)  # switched back on
    assert not torch.allclose(adapted, want, atol=1e-3)


def _ppo(checkpoint, out):
    targets = _target_tokens(load_checkpoint(checkpoint).tokenizer)
    settings = PPOConfig(mini_batch_size=2, ppo_epochs=2, max_new_tokens=6, kl_coef=0.2)
    train_ppo(checkpoint, PROMPTS, _counting_scorer(targets), _cfg(out, batch_size=4, max_steps=3, lora=dict(LORA)),
              settings, log=lambda *a: None)
    return load_file(str(out / "adapter_model.safetensors")), (out / "train_log.jsonl").read_text()


def test_ppo_lora_holds_one_base_and_trains_as_with_a_frozen_copy(tmp_path, tiny_checkpoint, monkeypatch):
    seen, module_copies = {}, []
    fit, deepcopy = PPOTrainer.fit, copy.deepcopy

    def spy_fit(self):
        seen["trainer"] = self
        return fit(self)

    def spy_deepcopy(x, *args):
        if isinstance(x, torch.nn.Module):
            module_copies.append(type(x).__name__)
        return deepcopy(x, *args)

    with monkeypatch.context() as m:
        m.setattr(PPOTrainer, "fit", spy_fit)
        m.setattr(copy, "deepcopy", spy_deepcopy)
        adapter, log = _ppo(tiny_checkpoint, tmp_path / "off")
    trainer = seen["trainer"]
    assert module_copies == [] and trainer.reference is None
    held = sum(p.numel() for p in trainer.policy.parameters())
    base = load_checkpoint(tiny_checkpoint).model.num_parameters()
    lora = sum(t.numel() for k, t in adapter.items() if ".lora_" in k)
    v_head = trainer.policy.gpt.config.hidden_size + 1
    assert held == base + lora + v_head  # the base once, the adapters, the value head

    # the same run with the reference a frozen copy of the starting model, as before adapters could be switched off
    open_policy = ppo_module.open_policy

    def with_copy(*args, **kwargs):
        pol = open_policy(*args, **kwargs)
        pol.reference = merge_lora(copy.deepcopy(pol.ckpt.model)).eval().requires_grad_(False)  # B = 0: the base
        return pol

    with monkeypatch.context() as m:
        m.setattr(ppo_module, "open_policy", with_copy)
        copied, copied_log = _ppo(tiny_checkpoint, tmp_path / "copy")
    assert json.loads(copied_log.splitlines()[-1])["kl"] != 0  # the policy moved away from the reference
    assert copied_log == log and copied.keys() == adapter.keys()
    assert all(torch.equal(copied[k], adapter[k]) for k in adapter)


def test_dpo_lora_resume_uses_the_base_as_reference(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    """A resumed LoRA DPO run recomputes the reference log-probs with the adapters off instead of
    loading the base a second time, and ends exactly where an uninterrupted run does."""
    from hangpt.train import dpo

    prefs = _prefs_file(tmp_path / "prefs.jsonl")
    head = ["dpo", "--model", tiny_checkpoint, "--data", prefs, "--max-steps", 4, "--batch-size", 4, "--lora-r", 4,
            "--save-every", 100, "--no-progress"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    _run(head + ["--out", straight])
    _run_interrupted(monkeypatch, head + ["--out", stopped])
    assert "interrupted at step 3" in capsys.readouterr().err

    def no_second_base(*args):
        raise AssertionError("the reference was loaded again")

    with monkeypatch.context() as m:
        m.setattr(dpo, "load_reference", no_second_base)
        _run(head + ["--out", stopped, "--resume"])
    a, b = (load_file(str(d / "adapter_model.safetensors")) for d in (straight, stopped))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(b[k].abs().sum() > 0 for k in b if ".lora_B." in k)


def test_grpo_lora_reference_is_the_policy_with_adapters_off(tmp_path, tiny_checkpoint, monkeypatch):
    from hangpt.train.grpo import GRPOConfig, GRPOTrainer, train_grpo

    seen = {}
    fit = GRPOTrainer.fit

    def spy_fit(self):
        seen["trainer"] = self
        return fit(self)

    monkeypatch.setattr(GRPOTrainer, "fit", spy_fit)
    targets = _target_tokens(load_checkpoint(tiny_checkpoint).tokenizer)
    out = tmp_path / "grpo"
    train_grpo(tiny_checkpoint, PROMPTS, _counting_scorer(targets), _cfg(out, batch_size=8, max_steps=3, lora=dict(LORA)),
               GRPOConfig(num_generations=4, max_completion_length=6, beta=0.1), log=lambda *a: None)
    assert seen["trainer"].reference is None
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["kl"] == 0.0 and log[-1]["kl"] > 0  # the adapters start at zero: the policy is the reference
    assert all(".lora_" in k for k in load_file(str(out / "adapter_model.safetensors")))
