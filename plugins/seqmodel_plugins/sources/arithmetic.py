"""Arithmetic problems generated on the fly: the seeds' "teach a GPT to add" exercise.

Every split is a lazy sequence: ``split(name)[i]`` computes problem i from a hash of (`seed`,
split, i), so the same index is the same problem in every process, in a fresh instance and after
a resume, and no list of problems is ever built. An example is ``{"question": "123+45=",
"answer": "861", "digits": 3, "op": "+"}`` (the answer 168 written least significant digit first
when `reverse`, which lets a left-to-right decoder produce each digit after the carry that
decides it).

Lengths: problem i of a split is a `digits`-digit problem, `digits` cycling through the split's
lengths (train and val: `min_digits` .. `max_digits`; test: `test_digits`, which may hold lengths
longer than any seen in training). One operand has exactly `digits` digits, the other between
min(`min_digits`, `digits`) and `digits` (which of the two is longer is a coin flip); a one-digit
operand is 0-9. For "-" the larger operand comes first, so no answer is negative. With `pad`,
both operands are written with `digits` digits and the answer with the most it can have
("045+123=", "8610" reversed): every digit of a length then sits at a fixed position.

Held-out problems: a hash of (`seed`, a, op, b) assigns every problem of the training lengths to
exactly one split (`held_out` of them to val, as many to test, the rest to train); a split's
generator redraws a problem that belongs to another split. Test problems longer or shorter than
the training lengths are held out by construction.

With the `seq2seq` task and a decoder-only model (``mask = "prefix"``) the question is a
bidirectional prefix and the loss falls on the answer only (recipes/addition.toml says why).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

from seqmodel.capabilities import check_split
from seqmodel.errors import UserError

OPERATORS = ("+", "-", "*")
ANSWER_DIGITS = {"+": lambda d: d + 1, "-": lambda d: d, "*": lambda d: 2 * d}
"""Operator -> the longest answer of two operands of at most d digits."""
MAX_DIGITS = 40
"""Longest operand: the 64-byte hash behind a problem draws both operands of up to 40 digits."""
ATTEMPTS = 10_000
"""Draws before a split gives up finding a problem of a length that it owns (`held_out` too small)."""


@dataclass
class ArithmeticConfig:
    """`[data] source = "arithmetic"`."""

    min_digits: int = 1
    """Shortest problem length (the longer operand's digits) of the train and val splits."""
    max_digits: int = 3
    """Longest problem length of the train and val splits."""
    test_digits: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    """Problem lengths of the test split, equally many of each (longer than `max_digits`: length
    generalisation)."""
    operators: list[str] = field(default_factory=lambda: ["+"])
    """Operators, drawn uniformly: any of "+", "-" (larger operand first), "*"."""
    reverse: bool = True
    """Write the answer least significant digit first ("579" as "975")."""
    pad: bool = False
    """Zero-pad both operands to the problem's length and the answer to the longest answer of that
    length ("123+045=", "0168" before reversing), so each digit of a length has a fixed position
    (minGPT's adder pads likewise)."""
    train_size: int = 200_000
    """Problems in the train split (generated when read, never stored)."""
    val_size: int = 2000
    """Problems in the val split."""
    test_size: int = 2000
    """Problems in the test split, spread equally over `test_digits`."""
    held_out: float = 0.05
    """Share of the problems of the training lengths reserved for val, and as many for test."""
    seed: int = 0
    """Seeds the problems and which split each problem belongs to."""

    def validate(self) -> list[tuple[str, str]]:
        """(key, problem) pairs; empty when valid."""
        bad = []
        for key in ("min_digits", "max_digits"):
            if not 1 <= getattr(self, key) <= MAX_DIGITS:
                bad.append((key, f"must be in [1, {MAX_DIGITS}], got {getattr(self, key)}"))
        if self.min_digits > self.max_digits:
            bad.append(("max_digits", f"must be at least min_digits ({self.min_digits}), got {self.max_digits}"))
        if not self.test_digits or any(not 1 <= d <= MAX_DIGITS for d in self.test_digits):
            bad.append(("test_digits", f"expected a non-empty list of lengths in [1, {MAX_DIGITS}], got {self.test_digits}"))
        if not self.operators or any(op not in OPERATORS for op in self.operators):
            bad.append(("operators", f"expected a non-empty list of {', '.join(map(repr, OPERATORS))}, got {self.operators}"))
        for key in ("train_size", "val_size", "test_size"):
            if getattr(self, key) < 1:
                bad.append((key, f"must be at least 1, got {getattr(self, key)}"))
        if not 0 < self.held_out < 0.5:
            bad.append(("held_out", f"must be in (0, 0.5), got {self.held_out}"))
        return bad


def draw(*keys: object) -> int:
    """A 512-bit integer that is a pure function of `keys`."""
    return int.from_bytes(hashlib.blake2b(":".join(map(str, keys)).encode(), digest_size=64).digest(), "little")


def operand(digits: int, r: int) -> tuple[int, int]:
    """(an operand of exactly `digits` digits, 0-9 for one digit; what is left of `r`)."""
    low = 0 if digits == 1 else 10 ** (digits - 1)
    r, offset = divmod(r, 10**digits - low)
    return low + offset, r


def owner(seed: int, a: int, op: str, b: int, held_out: float) -> str:
    """The split a problem of the training lengths belongs to."""
    u = draw("owner", seed, a, op, b) / 2**512
    return "val" if u < held_out else "test" if u < 2 * held_out else "train"


def solve(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


class Problems(Sequence):
    """One split's problems: ``problems[i]`` generates problem i (see the module docstring)."""

    def __init__(self, config: ArithmeticConfig, split: str) -> None:
        c = self.config = config
        self.split = split
        self.lengths = list(c.test_digits) if split == "test" else list(range(c.min_digits, c.max_digits + 1))
        self.size = getattr(c, f"{split}_size")

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(self.size))]
        if not -self.size <= i < self.size:
            raise IndexError(f"problem {i} of a split of {self.size}")
        return self.problem(i % self.size)

    def __iter__(self) -> Iterator[dict]:
        return (self.problem(i) for i in range(self.size))

    def problem(self, i: int) -> dict:
        c, digits = self.config, self.lengths[i % len(self.lengths)]
        owned = c.min_digits <= digits <= c.max_digits  # only these lengths are shared with training
        for attempt in range(ATTEMPTS):
            a, op, b = self.operands(draw(c.seed, self.split, i, attempt), digits)
            if not owned or owner(c.seed, a, op, b, c.held_out) == self.split:
                return self.write(a, op, b, digits)
        raise UserError(f"arithmetic source: no {digits}-digit problem of the {self.split} split found in "
                        f"{ATTEMPTS} draws (too few problems of that length; raise held_out)")

    def write(self, a: int, op: str, b: int, digits: int) -> dict:
        """The example of problem (a, op, b) of a length, written as configured."""
        width, answer_width = (digits, ANSWER_DIGITS[op](digits)) if self.config.pad else (1, 1)
        answer = f"{solve(a, op, b):0{answer_width}d}"
        return {"question": f"{a:0{width}d}{op}{b:0{width}d}=", "answer": answer[::-1] if self.config.reverse else answer,
                "digits": digits, "op": op}

    def operands(self, r: int, digits: int) -> tuple[int, str, int]:
        """(a, op, b) of a `digits`-digit problem from the random integer `r`."""
        c = self.config
        r, k = divmod(r, len(c.operators))
        shortest = min(c.min_digits, digits)
        r, other = divmod(r, digits - shortest + 1)
        a, r = operand(digits, r)
        b, r = operand(shortest + other, r)
        if r % 2:
            a, b = b, a
        op = c.operators[k]
        return (max(a, b), op, min(a, b)) if op == "-" else (a, op, b)


class ArithmeticSource:
    """See the module docstring."""

    Config = ArithmeticConfig
    fields = ("question", "answer", "digits", "op")

    def __init__(self, config: ArithmeticConfig) -> None:
        self.config = config

    def split(self, name: str) -> Problems:
        check_split(name)
        return Problems(self.config, name)

    def identity(self) -> dict:
        return {"source": "arithmetic", "version": 1, **asdict(self.config)}
