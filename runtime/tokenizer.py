"""CharTokenizer: id 0 is the start-of-text token (BOS), character k of `chars` has id k + 1.

encode() prepends BOS, so a model always has a first position to anchor on (without it, "11" and
"1" look alike to attention that averages). decode() skips BOS.
"""

from __future__ import annotations

BOS_ID = 0


class CharTokenizer:
    def __init__(self, chars: str):
        if len(set(chars)) != len(chars) or not chars:
            raise ValueError("tokenizer characters must be distinct and non-empty")
        self.chars = chars
        self._ids = {c: i + 1 for i, c in enumerate(chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> list[int]:
        """text -> [BOS, ids of its characters] (len(text) + 1 ids)."""
        bad = sorted({c for c in text if c not in self._ids})
        if bad:
            raise ValueError(f"characters not in the tokenizer {self.chars!r}: {''.join(bad)!r}")
        return [BOS_ID] + [self._ids[c] for c in text]

    def decode(self, ids) -> str:
        return "".join(self.chars[i - 1] if 0 < i <= len(self.chars) else "" for i in ids)
