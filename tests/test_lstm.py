"""The LSTM baseline of tutorial 1: nn.LSTM learns the toy corpus and answers the next-word question."""

import json

import pytest
import torch

from hangpt.cli import main
from hangpt.models.lstm import LSTMLanguageModel


def test_state_carries_the_context():
    torch.manual_seed(0)
    model = LSTMLanguageModel(50, n_embd=16, hidden_size=32).eval()
    ids = torch.tensor([[3, 4, 5, 6]])
    whole, _ = model(ids)
    first, state = model(ids[:, :2])
    rest, _ = model(ids[:, 2:], state)  # reading on from the state = reading it all at once
    assert torch.allclose(torch.cat([first, rest], 1), whole, atol=1e-6)
    assert isinstance(model.lstm, torch.nn.LSTM)


def test_cli_trains_and_completes_the_sentence(tmp_path, capsys):
    from hangpt.tokenizer import train_tokenizer

    lines = ["The stock market is unpredictable.", "주식 시장은 예측할 수 없다."] * 50
    (tmp_path / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "tok").mkdir()
    train_tokenizer(iter(lines), vocab_size=300).save(tmp_path / "tok")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["lstm", "--data", str(tmp_path / "corpus.txt"), "--tokenizer", str(tmp_path / "tok"), "--prompt",
              "The stock market is", "--prompt", "주식 시장은", "--max-steps", "120", "--max-new-tokens", "10", "--json"])
    out = capsys.readouterr()
    assert e.value.code == 0, out.err
    result = json.loads(out.out)
    assert [c["text"] for c in result["completions"]] == [" unpredictable.", " 예측할 수 없다."]
    assert result["loss"] < 0.2 and "LSTM: " in out.err
