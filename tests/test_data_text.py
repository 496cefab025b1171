"""Plain text reading: folders, .gz, BOM, CRLF, and one-line errors naming file and line."""

from __future__ import annotations

import gzip

import pytest

from hangpt.data.text import expand_paths, iter_documents, read_lines
from hangpt.errors import InputError


def test_folders_are_expanded_recursively_and_sorted(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("z\n", encoding="utf-8")
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress("a\n".encode()))
    (tmp_path / "notes.json").write_text("{}", encoding="utf-8")
    assert [p.name for p in expand_paths([tmp_path])] == ["a.txt.gz", "z.txt"]
    assert list(iter_documents([tmp_path])) == ["a", "z"]


def test_bom_crlf_and_blank_lines(tmp_path):
    f = tmp_path / "bom.txt"
    f.write_bytes("\ufeff첫 줄\r\n\r\n  \r\n둘째 줄".encode("utf-8"))
    assert list(read_lines(f)) == ["첫 줄", "", "  ", "둘째 줄"]
    assert list(iter_documents([f])) == ["첫 줄", "둘째 줄"]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.txt", "no such file or folder"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "folder has no text files"),
        (lambda d: (d / "blank.txt").write_text("\n \n") and d / "blank.txt", "file is empty"),
    ],
)
def test_missing_and_empty_inputs(tmp_path, make, message):
    with pytest.raises(InputError, match=message):
        list(iter_documents([make(tmp_path)]))


def test_undecodable_line_is_named_exactly_with_a_cp949_hint(tmp_path):
    lines = [f"줄 {i}".encode() for i in range(1, 3001)]  # well past the 8 KB read buffer
    lines[2499] = "안녕하세요".encode("cp949")
    f = tmp_path / "windows.txt"
    f.write_bytes(b"\n".join(lines))
    with pytest.raises(InputError) as e:
        list(read_lines(f))
    assert str(e.value) == (f"{f}: line 2500 is not valid UTF-8 "
                            "(it looks like cp949/euc-kr: convert it with `iconv -f cp949 -t utf-8`)")


def test_binary_garbage_has_no_cp949_hint(tmp_path):
    f = tmp_path / "junk.txt"
    f.write_bytes(b"ok\n\xff\xfe\xff\n")
    with pytest.raises(InputError, match=r"line 2 is not valid UTF-8$"):
        list(read_lines(f))


def test_truncated_gzip(tmp_path):
    f = tmp_path / "cut.txt.gz"
    data = gzip.compress("".join(f"{i}번째 한국어 문장입니다.\n" for i in range(5000)).encode())
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut.txt.gz: cannot read line \d+"):
        list(read_lines(f))


def test_block_reading_equals_line_by_line_reading(tmp_path, monkeypatch):
    """Blocks of a few bytes: lines and multi-byte characters cut at every place, a line longer than
    a block, CRLF, no final newline; then an undecodable byte in a late block is named at its line."""
    from hangpt.data import text

    lines = ["가나다", "", "abc\r", "긴 줄 " * 40, "  ", "끝"]
    f = tmp_path / "t.txt"
    f.write_bytes("\ufeff".encode() + "\n".join(lines).encode("utf-8"))
    expected = [line.rstrip("\r") for line in lines]
    for block in (1, 2, 3, 5, 64, 1 << 20):
        monkeypatch.setattr(text, "BLOCK_BYTES", block)
        assert list(read_lines(f)) == expected
        assert list(iter_documents([f])) == [line for line in expected if line.strip()]
    monkeypatch.setattr(text, "BLOCK_BYTES", 7)
    f.write_bytes("\n".join(lines).encode("utf-8") + "\n".encode() + "한글".encode("cp949") + b"\nok\n")
    with pytest.raises(InputError, match=r"t\.txt: line 7 is not valid UTF-8 \(it looks like cp949"):
        list(read_lines(f))
