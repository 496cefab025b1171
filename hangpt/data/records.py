"""What the readers of long real files share: records with an empty text are skipped and counted,
never silently and never by stopping the whole file (KoChatGPT's 12,000 PPO prompts hold a few
empty ones). A record of the wrong shape still stops with its file and line named."""

from __future__ import annotations


class Records(list):
    """A reader's records, plus how many were skipped and where the first one was."""

    def __init__(self, items=(), skipped: int = 0, first_skipped: str = ""):
        super().__init__(items)
        self.skipped, self.first_skipped = skipped, first_skipped

    def skip(self, where: str) -> None:
        self.skipped += 1
        self.first_skipped = self.first_skipped or where

    def skipped_note(self, what: str = "records") -> str:
        """' (3 records with an empty text skipped, the first at FILE: record 6331)', or ''."""
        if not self.skipped:
            return ""
        return f" ({self.skipped} {what} with an empty text skipped, the first at {self.first_skipped})"


def has_blank_text(record, fields: tuple[str, ...] = ("prompt", "completion", "chosen", "rejected")) -> bool:
    """A JSON record whose prompt or an answer (completion_0.. included) is empty or blank text."""
    return isinstance(record, dict) and any(
        isinstance(v, str) and not v.strip() for k, v in record.items()
        if k in fields or ("completion" in fields and k.startswith("completion_")))
