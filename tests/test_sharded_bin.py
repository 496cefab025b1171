"""Older hub uploads (polyglot-ko, KoGPT) come as pytorch_model-*.bin shards named by
pytorch_model.bin.index.json: they load memory-mapped like safetensors shards, and a missing shard
or a bad index is one error line naming the file."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from huggingface_hub import save_torch_state_dict  # noqa: E402

from hangpt.checkpoint import load_checkpoint  # noqa: E402
from hangpt.cli import main  # noqa: E402
from test_gptj_neox_golden import make_folder  # noqa: E402


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, tiny_tokenizer):
    folder = tmp_path_factory.mktemp("neox-bin")
    hf = make_folder(folder, tiny_tokenizer, "neox-parallel-quarter-rotary")
    for f in folder.glob("model*.safetensors*"):
        f.unlink()
    # what transformers 4's save_pretrained(safe_serialization=False, max_shard_size=...) wrote
    # (transformers 5 writes safetensors only; huggingface_hub keeps the .bin layout)
    save_torch_state_dict(hf.state_dict(), folder, safe_serialization=False, max_shard_size="100KB")
    return hf, folder


def test_bin_shards_load_with_equal_logits(sharded):
    hf, folder = sharded
    shards = sorted(f.name for f in folder.glob("pytorch_model-*.bin"))
    assert len(shards) >= 3 and (folder / "pytorch_model.bin.index.json").exists()
    assert not list(folder.glob("*.safetensors"))
    ckpt = load_checkpoint(folder)
    ids = torch.randint(3, ckpt.model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(ids).logits, hf(ids).logits, atol=1e-4, rtol=1e-4)


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _error(folder, capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", str(folder), "--prompt", "x", "--max-new-tokens", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0]
    return err[0]


def test_missing_shard_or_bad_index_is_one_error_line(sharded, tmp_path, capsys):
    _, folder = sharded
    missing = _copy(folder, tmp_path / "missing")
    gone = sorted(missing.glob("pytorch_model-*.bin"))[1]
    gone.unlink()
    line = _error(missing, capsys)
    assert str(gone) in line and "missing" in line

    bad = _copy(folder, tmp_path / "bad-json")
    (bad / "pytorch_model.bin.index.json").write_text('{"weight_map": {', encoding="utf-8")
    assert str(bad / "pytorch_model.bin.index.json") in _error(bad, capsys)

    outside = _copy(folder, tmp_path / "outside")
    index = json.loads((outside / "pytorch_model.bin.index.json").read_text())
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = "../elsewhere.bin"
    (outside / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    line = _error(outside, capsys)
    assert str(outside / "pytorch_model.bin.index.json") in line and "../elsewhere.bin" in line

    corrupt = _copy(folder, tmp_path / "corrupt")
    shard = sorted(corrupt.glob("pytorch_model-*.bin"))[0]
    shard.write_bytes(b"not a zip file")
    assert str(shard) in _error(corrupt, capsys)


def test_safetensors_win_over_the_index_of_bins_not_downloaded(sharded, tmp_path):
    """A hub download fetches safetensors when there are any, and every *.json: the .bin shards'
    index may sit beside a single model.safetensors without its shards."""
    hf, folder = sharded
    both = _copy(folder, tmp_path / "both")
    for f in both.glob("pytorch_model-*.bin"):
        f.unlink()
    hf.save_pretrained(both)  # model.safetensors, one file
    ckpt = load_checkpoint(both)
    ids = torch.randint(3, ckpt.model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(ids).logits, hf(ids).logits, atol=1e-4, rtol=1e-4)
