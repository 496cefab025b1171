"""Token ids -> text while generating: incremental decoding, stop strings, what may be shown yet.

A byte-level BPE token can end in the middle of a UTF-8 character (a Korean syllable is 3 bytes),
so text is only extended by complete characters; and text that might be the start of a stop
string is held back until it is known not to be one.
"""

from __future__ import annotations


class TextStream:
    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = stop
        self.text = ""  # complete characters decoded so far
        self.stop_at: int | None = None  # where the first stop string starts in `text`
        self.sent = 0  # characters already handed out
        self._prefix = 0  # token offsets, as in vLLM/TGI: decoding ids[prefix:] keeps the decoder's
        self._read = 0  # context (e.g. a leading-space rule) identical to decoding the whole sequence
        self._searched = 0

    def add(self, ids: list[int]) -> bool:
        """Take the row's ids so far (one more than last time); True once a stop string appeared."""
        decode = self.tokenizer.decode
        before = decode(ids[self._prefix : self._read])
        after = decode(ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before) :]
            self._prefix, self._read = self._read, len(ids)
            self._find_stop()
        return self.stop_at is not None

    def _find_stop(self) -> None:
        if not self.stop:
            return
        start = max(0, self._searched - max(map(len, self.stop)) + 1)
        hits = [p for p in (self.text.find(s, start) for s in self.stop) if p >= 0]
        if hits:
            self.stop_at = min(hits)
        self._searched = len(self.text)

    def final_text(self, ids: list[int]) -> str:
        if self.stop_at is not None:
            return self.text[: self.stop_at]
        return self.tokenizer.decode(ids)

    def release(self, ids: list[int] | None = None) -> str:
        """Text not handed out yet that can be shown; pass the ids when the row is finished."""
        if ids is not None:
            end_text = self.final_text(ids)
        else:
            end_text = self.text[: self._safe_end()]
        out = end_text[self.sent :]
        self.sent = max(self.sent, len(end_text))
        return out

    def _safe_end(self) -> int:
        end = len(self.text) if self.stop_at is None else self.stop_at
        held = 0
        for s in self.stop:  # the longest tail of the text that is a proper prefix of a stop string
            for k in range(min(len(s) - 1, end), held, -1):
                if self.text.endswith(s[:k], 0, end):
                    held = k
                    break
        return end - held


def truncate_at_stop(tokenizer, ids: list[int], stop: list[str]) -> tuple[str, list[int], bool]:
    """(text, ids, stopped) of a finished sequence cut before its first stop string; ids are kept
    up to the last token that ends before the stop text."""
    text = tokenizer.decode(ids)
    hits = [p for p in (text.find(s) for s in stop) if p >= 0]
    if not hits:
        return text, ids, False
    cut = min(hits)
    return text[:cut], ids_before(tokenizer, ids, cut), True


def ids_before(tokenizer, ids: list[int], cut: int) -> list[int]:
    """The longest prefix of ids whose text fits in the first `cut` characters."""
    n = len(ids)
    while n > 0 and len(tokenizer.decode(ids[:n])) > cut:
        n -= 1
    return ids[:n]


def complete_prefix(tokenizer, ids: list[int]) -> list[int]:
    """ids without the trailing tokens of a character they do not finish."""
    text = tokenizer.decode(ids)
    if not text.endswith("\ufffd"):
        return ids
    return ids_before(tokenizer, ids, len(text.rstrip("\ufffd")))


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE writes byte b as this printable character (the inverse is the table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def token_bytes(tokenizer) -> list[bytes]:
    """The bytes each token id adds to the text: byte-level BPE pieces mapped back to bytes,
    `<0xHH>` byte-fallback pieces as that byte, added/special tokens as their UTF-8 text."""
    import json
    import re

    backend = tokenizer.backend
    byte_level = '"ByteLevel"' in json.dumps(json.loads(backend.to_str()).get("decoder"))
    alphabet = _byte_level_alphabet()
    added = {i: t.content for i, t in backend.get_added_tokens_decoder().items()}
    fallback = re.compile(r"<0x([0-9A-Fa-f]{2})>")
    out = []
    for i in range(tokenizer.vocab_size):
        piece = added.get(i) or backend.id_to_token(i) or ""
        if i in added:
            out.append(piece.encode())
        elif fallback.fullmatch(piece):
            out.append(bytes([int(piece[3:5], 16)]))
        elif byte_level and all(c in alphabet for c in piece):
            out.append(bytes(alphabet[c] for c in piece))
        else:
            out.append(piece.replace("\u2581", " ").encode())
    return out
