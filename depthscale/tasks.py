"""Synthetic tasks where depth matters, as per-position labelling.

Each task reads a character string, encoded with a leading BOS (id 0, unlabelled); the label at position i is a function of characters 0..i (so a
causal model can answer in place), and -100 marks positions that carry no label. With a sliding
window of w positions, information moves at most (w - 1) positions per layer per iteration, so
answers that depend on far-back characters need more iterations T.

  parity:    bits "0110101"            -> running parity at every position "0100110"
  addition:  digit pairs a0 b0 a1 b1 … -> at each b_i, digit i of a + b (least significant first);
             carry chains are made long on purpose (half the pairs sum to 9)
  sum:       "a+b=s", each number written least significant digit first, n-digit operands and n + 1
             sum digits (leading zeros kept), a generative task: the answer digits are labelled as
             next-token targets (the label at '=' is s_0, at s_i it is s_{i+1}), so a model generates s
             one digit at a time after "a+b="; carry chains are long on purpose, as in addition
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from depthscale_runtime.tokenizer import BOS_ID, CharTokenizer

IGNORE = -100


@dataclass(frozen=True)
class Batch:
    ids: torch.Tensor      # int64 [B, 1 + length], BOS first
    labels: torch.Tensor   # int64 [B, 1 + length], IGNORE where unlabelled (BOS included)

    @staticmethod
    def with_bos(ids: torch.Tensor, labels: torch.Tensor) -> "Batch":
        bos = torch.full_like(ids[:, :1], BOS_ID)
        return Batch(ids=torch.cat([bos, ids], 1), labels=torch.cat([torch.full_like(bos, IGNORE), labels], 1))


class Task:
    name: str
    chars: str

    @property
    def tokenizer(self) -> CharTokenizer:
        return CharTokenizer(self.chars)

    def sample(self, batch: int, length: int, gen: torch.Generator) -> Batch:
        """A batch of `batch` examples of `length` characters (at most; addition rounds to pairs)."""
        raise NotImplementedError

    def labels_for(self, text: str) -> str:
        """The expected answer characters for `text` (one per labelled position)."""
        raise NotImplementedError


class Parity(Task):
    name, chars = "parity", "01"

    def sample(self, batch, length, gen):
        bits = torch.randint(0, 2, (batch, length), generator=gen)
        parity = torch.cumsum(bits, dim=1) % 2
        return Batch.with_bos(bits + 1, parity + 1)          # '0' -> 1, '1' -> 2

    def labels_for(self, text):
        out, p = [], 0
        for c in text:
            p ^= int(c)
            out.append(str(p))
        return "".join(out)


def _digit_pairs(batch: int, n: int, gen: torch.Generator):
    """Operands a, b as int64 [batch, n] digits (least significant first) with long carry chains (each
    digit pair sums to 9 with probability 1/2), the digits of a + b (n tensors [batch]) and the final carry."""
    a = torch.randint(0, 10, (batch, n), generator=gen)
    nine = torch.rand(batch, n, generator=gen) < 0.5
    b = torch.where(nine, 9 - a, torch.randint(0, 10, (batch, n), generator=gen))
    digits, carry = [], torch.zeros(batch, dtype=torch.long)
    for i in range(n):
        total = a[:, i] + b[:, i] + carry
        digits.append(total % 10)
        carry = total // 10
    return a, b, digits, carry


class Addition(Task):
    name, chars = "addition", "0123456789"

    def sample(self, batch, length, gen):
        n = max(1, length // 2)
        a, b, digits, _ = _digit_pairs(batch, n, gen)
        s = torch.stack(digits, dim=1)
        ids = torch.stack([a, b], dim=2).reshape(batch, 2 * n) + 1
        labels = torch.stack([torch.full_like(s, IGNORE - 1), s], dim=2).reshape(batch, 2 * n) + 1
        return Batch.with_bos(ids[:, :length], labels[:, :length])

    def labels_for(self, text):
        out, carry = [], 0
        for i in range(1, len(text), 2):
            total = int(text[i - 1]) + int(text[i]) + carry
            out.append(str(total % 10))
            carry = total // 10
        return "".join(out)


class Sum(Task):
    """Generative addition: "a+b=s" (least significant digit first) with the sum's digits as next-token
    targets. Operands have n = max(1, (length - 3) // 3) digits (3n + 3 characters in all)."""
    name, chars = "sum", "0123456789+="

    @staticmethod
    def digits(length: int) -> int:
        """Operand digits n for a text of at most `length` characters (n >= 1)."""
        return max(1, (length - 3) // 3)

    @staticmethod
    def answer(a: int, b: int, n: int) -> str:
        """The n + 1 digits of a + b, least significant first."""
        return f"{a + b:0{n + 1}d}"[::-1]

    def sample(self, batch, length, gen):
        n = self.digits(length)
        a, b, digits, carry = _digit_pairs(batch, n, gen)
        s = torch.stack(digits + [carry], dim=1)                               # [batch, n + 1]
        plus, equals = torch.full((batch, 1), 10), torch.full((batch, 1), 11)  # '+', '=' (ids 11, 12)
        ids = torch.cat([a, plus, b, equals, s], dim=1) + 1                    # [batch, 3n + 3]
        labels = torch.full_like(ids, IGNORE)
        labels[:, 2 * n + 1: 3 * n + 2] = ids[:, 2 * n + 2:]                   # '=' and s_0..s_{n-1}: the next digit
        return Batch.with_bos(ids, labels)

    def labels_for(self, text):
        """The sum's digits (least significant first, n + 1 of them), from the operands in `text`."""
        left = text.split("=", 1)[0]
        a, b = left.split("+")
        n = max(len(a), len(b))
        return self.answer(int(a[::-1]), int(b[::-1]), n)


TASKS: dict[str, Task] = {t.name: t for t in (Parity(), Addition(), Sum())}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name]
