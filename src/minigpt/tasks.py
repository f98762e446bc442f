"""Algorithmic tasks that show whether a model *uses* context past its trained length.

Perplexity on text cannot tell "uses the longer context" from "ignores it gracefully". The
established probe (Kazemnejad et al. 2023, "The impact of positional encoding on length
generalization in transformers"; Delétang et al. 2023; Zhou et al. 2024) trains on short
instances of a task whose answer needs the whole input, and tests on longer ones, scoring
exact match. Instances are generated on the fly from a seed (no files):

    copy     s|s.          a random string over 10 letters, a separator, the string again
    reverse  s|r.          the same with the string reversed
    add      a+b=c.        n-digit numbers, every number written least-significant digit
                           first (the order in which carries are produced, Zhou et al. 2024);
                           c has n + 1 digits
    recall   k1v1...|k v.  n key-value pairs (distinct three-letter keys, one-digit values),
                           then one of the keys: its value (associative recall, Ba et al.
                           2016; the multi-query form is Arora et al. 2023's MQAR)
    passkey  ddd f...f|ddd.  a three-digit passkey, n filler letters, '|', the passkey again
                           (passkey retrieval, Mohtashami & Jaggi 2023): the one dependency
                           grows with n while every token stays in-distribution

The instance length n is the string length (copy, reverse), the digit count (add), the
number of pairs (recall) or the filler length (passkey). Every task also says how far back
an exact answer must look: `dependency(n)` is the longest distance, in tokens, from an answer
token to an input token it needs (copy: n + 1; reverse: 2n; add: 2n + 2; recall: 4n + 4 when
the first key is asked; passkey: n + 4). A test past L whose dependency stays within L tests
a longer *sequence*; only a dependency past L tests the use of context past L. Training
draws n uniformly from 1 to the longest n whose whole example fits in L tokens; tests use
longer n up to 4x that. Training batches hold one example per row, right-padded, with the
loss on the answer and the final "." only. A test instance counts as correct when greedy
decoding reproduces the whole answer *and the final "."* (a model that never stops is
wrong): that is the case exactly when, fed the right answer so far, the model's most likely
next token is the right one at every answer position, so one teacher-forced forward pass
scores it.

Baselines: every task scores, on the same test instances, answers that ignore the input
(the best constant answer, chosen with hindsight on those instances), and a task may add its
own (recall: the most frequent value in the prompt, ignoring the key). A model has learned
a task only when it beats its best baseline beyond noise.

Held out by construction: an instance whose prompt hashes (crc32) to 0 mod 8 is a test or
validation instance and never a training one, so no test instance was seen in training.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from .config import IGNORE_INDEX
from .errors import ConfigError, MiniGPTError
from .tokenizers import CharTokenizer

LETTERS = "abcdefghij"
DIGITS = "0123456789"
SEP, EOS, PLUS, EQ = "|", ".", "+", "="
VOCAB = sorted(set(LETTERS + DIGITS + SEP + EOS + PLUS + EQ))
HELD_OUT = 8  # one prompt hash in HELD_OUT is reserved for validation and test


class Task:
    """A generator of (prompt, answer) pairs of a given instance length."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    length_is: ClassVar[str] = ""  # what the instance length n counts
    chance: ClassVar[float] = 0.0  # the exact-match accuracy of guessing the answer
    longest: ClassVar[int] = 100_000  # the longest instance the task can generate

    def instance(self, rng: random.Random, n: int) -> tuple[str, str]:
        raise NotImplementedError

    def example_tokens(self, n: int) -> int:
        """Tokens of a whole example of length n: prompt + answer + the final '.'."""
        raise NotImplementedError

    def dependency(self, n: int) -> int:
        """The longest distance in tokens from an answer token back to an input token that
        an exact answer of length n needs."""
        raise NotImplementedError

    def baselines(self, instances: list[tuple[str, str]]) -> dict[str, list[int]]:
        """Per-instance hits (1/0) of answers that ignore the input: the best constant answer
        (the most frequent answer of these instances) and any the task adds."""
        answers = [a for _, a in instances]
        best = max(set(answers), key=lambda a: (answers.count(a), a)) if answers else ""
        return {"best constant answer": [int(a == best) for a in answers]}

    def max_train_length(self, L: int) -> int:
        """The longest instance whose whole example fits in L tokens."""
        n = 0
        while self.example_tokens(n + 1) <= L:
            n += 1
        return n


class Copy(Task):
    name = "copy"
    description = "a random string over 10 letters, '|', the same string again"
    length_is = "the string length"

    def instance(self, rng: random.Random, n: int) -> tuple[str, str]:
        s = "".join(rng.choice(LETTERS) for _ in range(n))
        return s + SEP, s

    def example_tokens(self, n: int) -> int:
        return 2 * n + 2

    def dependency(self, n: int) -> int:
        return n + 1  # answer token i (at n + 1 + i) needs prompt token i


class Reverse(Copy):
    name = "reverse"
    description = "a random string over 10 letters, '|', the string reversed"

    def instance(self, rng: random.Random, n: int) -> tuple[str, str]:
        s = "".join(rng.choice(LETTERS) for _ in range(n))
        return s + SEP, s[::-1]

    def dependency(self, n: int) -> int:
        return 2 * n  # from 2 (the first answer token) to 2n (the last)


class Add(Task):
    name = "add"
    description = ("a + b = c with n-digit numbers, every number written least-significant "
                   "digit first, c with n + 1 digits")
    length_is = "the number of digits of each operand"

    def instance(self, rng: random.Random, n: int) -> tuple[str, str]:
        a = [rng.randrange(10) for _ in range(n)]  # least-significant digit first
        b = [rng.randrange(10) for _ in range(n)]
        c, carry = [], 0
        for x, y in zip(a, b):
            carry, digit = divmod(x + y + carry, 10)
            c.append(digit)
        c.append(carry)
        digits = "".join
        return (f"{digits(map(str, a))}{PLUS}{digits(map(str, b))}{EQ}",
                digits(map(str, c)))

    def example_tokens(self, n: int) -> int:
        return 3 * n + 4

    def dependency(self, n: int) -> int:
        return 2 * n + 2  # sum digit i (at 2n + 2 + i) needs digit i of a (at i)


class Recall(Task):
    name = "recall"
    description = ("key-value pairs (distinct three-letter keys, one-digit values), '|', one of "
                   "the keys: answer its value")
    length_is = "the number of key-value pairs"
    chance = 0.1  # ten digits
    longest = len(LETTERS) ** 3  # distinct keys

    def instance(self, rng: random.Random, n: int) -> tuple[str, str]:
        keys = [LETTERS[k // 100] + LETTERS[k // 10 % 10] + LETTERS[k % 10]
                for k in rng.sample(range(self.longest), n)]
        values = [rng.choice(DIGITS) for _ in range(n)]
        q = rng.randrange(n)
        return "".join(k + v for k, v in zip(keys, values)) + SEP + keys[q], values[q]

    def example_tokens(self, n: int) -> int:
        return 4 * n + 6

    def dependency(self, n: int) -> int:
        return 4 * n + 4  # the answer (at 4n + 4) needs the first pair's value (at 3) or key

    def baselines(self, instances: list[tuple[str, str]]) -> dict[str, list[int]]:
        """Adds the key-blind answer: the most frequent value in the prompt (ties: the value
        that occurs first)."""
        out = super().baselines(instances)
        hits = []
        for prompt, answer in instances:
            values = prompt.split(SEP)[0][3::4]
            hits.append(int(max(values, key=lambda v: (values.count(v), -values.index(v)))
                            == answer))
        out["most frequent value (key-blind)"] = hits
        return out


class Passkey(Task):
    name = "passkey"
    description = ("a three-digit passkey, n random filler letters, '|', the passkey again "
                   "(the dependency grows with n)")
    length_is = "the number of filler letters between the passkey and the question"
    chance = 0.001
    digits = 3

    def instance(self, rng: random.Random, n: int) -> tuple[str, str]:
        key = "".join(rng.choice(DIGITS) for _ in range(self.digits))
        filler = "".join(rng.choice(LETTERS) for _ in range(n))
        return key + filler + SEP, key

    def example_tokens(self, n: int) -> int:
        return 2 * self.digits + n + 2

    def dependency(self, n: int) -> int:
        return n + self.digits + 1  # answer digit j (at n + 4 + j) needs passkey digit j


TASKS: dict[str, type[Task]] = {t.name: t for t in (Copy, Reverse, Add, Recall, Passkey)}
LM = "lm"  # the language-modelling study (no algorithmic task)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; choose lm or one of {', '.join(TASKS)}.")
    return TASKS[name]()


def held_out(prompt: str) -> bool:
    return zlib.crc32(prompt.encode()) % HELD_OUT == 0


def draw(task: Task, rng: random.Random, n: int, heldout: bool) -> tuple[str, str]:
    """One instance of length n from the training part or the held-out part."""
    for _ in range(10_000):
        prompt, answer = task.instance(rng, n)
        if held_out(prompt) == heldout:
            return prompt, answer
    raise MiniGPTError(f"could not draw a {'held-out' if heldout else 'training'} "
                       f"{task.name} instance of length {n}.")  # pragma: no cover


def test_lengths(task: Task, L: int, spec: str | None = None) -> list[int]:
    """Instance lengths to test: by default 0.5, 1, 1.5, 2, 3 and 4 times the longest trained
    instance; or a comma-separated list of multiples ('1x,2x') or plain lengths ('8,16')."""
    nmax = task.max_train_length(L)
    if nmax < 1:
        raise ConfigError(f"block_size {L} is too short for any {task.name} example "
                          f"({task.example_tokens(1)} tokens at length 1).")
    items = (spec or "0.5x,1x,1.5x,2x,3x,4x").split(",")
    out = set()
    for item in (i.strip() for i in items if i.strip()):
        try:
            n = round(float(item[:-1]) * nmax) if item.lower().endswith("x") else int(item)
            if n < 1 or n > 100_000:
                raise ValueError
        except ValueError:
            raise ConfigError(f"--lengths: {item!r} is neither a multiple of the longest "
                              f"trained instance ({nmax}) like 2x nor a positive instance "
                              "length.") from None
        if n > task.longest:
            raise ConfigError(f"--lengths: {task.name} instances have at most {task.longest} "
                              f"({task.length_is}), not {n}.")
        out.add(n)
    return sorted(out)


@dataclass
class TaskDataset:
    """The training interface of data.Dataset (`batch`, `check_block`, `tokenizer`) for a
    task: batches are a pure function of (seed, split, step, micro, rank)."""

    task: Task
    block_size: int
    tokenizer: CharTokenizer

    @classmethod
    def build(cls, name: str, block_size: int) -> "TaskDataset":
        return cls(get_task(name), block_size, CharTokenizer(VOCAB))

    @property
    def max_train_length(self) -> int:
        return self.task.max_train_length(self.block_size)

    def check_block(self, block_size: int) -> None:
        if self.task.max_train_length(block_size) < 1:
            raise ConfigError(f"block_size {block_size} is too short for any {self.task.name} "
                              "example.")

    def encode_example(self, prompt: str, answer: str) -> tuple[list[int], list[int]]:
        """x, y of one example; y is IGNORE_INDEX on the prompt (only the answer is scored)."""
        ids = self.tokenizer.encode(prompt + answer + EOS)
        x, y = ids[:-1], list(ids[1:])
        y[: len(prompt) - 1] = [IGNORE_INDEX] * (len(prompt) - 1)
        return x, y

    def batch(self, split: str, *, step: int, micro: int, batch_size: int, block_size: int,
              seed: int, mode: str = "documents", rank: int = 0, world: int = 1
              ) -> tuple[torch.Tensor, torch.Tensor]:
        nmax = self.task.max_train_length(block_size)
        rows = []
        for r in range(rank * batch_size, (rank + 1) * batch_size):
            rng = random.Random(f"{seed}/{split}/{step}/{micro}/{r}")
            n = rng.randint(1, nmax)
            rows.append(self.encode_example(*draw(self.task, rng, n, split != "train")))
        return _pad(rows, self.tokenizer.pad_id)


def _pad(rows: list[tuple[list[int], list[int]]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(x) for x, _ in rows)
    x = np.full((len(rows), width), pad, dtype=np.int64)
    y = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
    for i, (xi, yi) in enumerate(rows):  # right padding: causal attention never sees it
        x[i, : len(xi)], y[i, : len(yi)] = xi, yi
    return torch.from_numpy(x), torch.from_numpy(y)


def test_set(data: TaskDataset, n: int, count: int, seed: int, split: str = "test"
             ) -> list[tuple[str, str]]:
    """`count` held-out instances of length n, the same for every model of a study (split
    "val": another draw from the held-out part, for deciding when training has converged)."""
    rng = random.Random(f"{seed}/{split}/{data.task.name}/{n}")
    return [draw(data.task, rng, n, True) for _ in range(count)]


@torch.no_grad()
def exact_match(model: torch.nn.Module, data: TaskDataset, instances: list[tuple[str, str]],
                *, batch_tokens: int = 16384) -> list[int]:
    """1 where greedy decoding reproduces the whole answer, else 0, per instance."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[int] = []
    try:
        width = len(data.encode_example(*instances[0])[0])
        rows = max(1, batch_tokens // width)
        for i in range(0, len(instances), rows):
            x, y = _pad([data.encode_example(*inst) for inst in instances[i: i + rows]],
                        data.tokenizer.pad_id)
            logits, _ = model(x.to(device))  # (B, T, V)
            y = y.to(device)
            scored = y != IGNORE_INDEX  # the answer and its final '.'
            right = (logits.argmax(-1) == y) | ~scored
            out += right.all(1).long().tolist()
    finally:
        model.train(was_training)
    return out


def evaluate_task(model: torch.nn.Module, data: TaskDataset, lengths: list[int],
                  instances: int, seed: int) -> dict[str, Any]:
    """Exact-match accuracy with a 95% Wilson interval at every test length."""
    from .evaluation import wilson_interval
    from .positional import PositionLimitError

    L = model.cfg.block_size
    untrained = getattr(model.pos, "untrained", lambda a, b: None)
    results = []
    for n in lengths:
        tokens = data.task.example_tokens(n)
        row: dict[str, Any] = {"length": n, "tokens": tokens, "multiple": n / data.max_train_length,
                               "dependency": data.task.dependency(n), "n": instances,
                               "correct": None, "accuracy": None,
                               "ci_low": None, "ci_high": None, "reason": None,
                               "untrained": None, "per_instance": []}
        try:
            if tokens - 1 > L and not model.pos.extrapolates:
                raise PositionLimitError("positions stop at L")
            hits = exact_match(model, data, test_set(data, n, instances, seed))
        except PositionLimitError:
            row["reason"] = f"n/a, {model.cfg.pos} positions stop at L"
            results.append(row)
            continue
        k = sum(hits)
        lo, hi = wilson_interval(k, len(hits))
        row.update(correct=k, accuracy=k / len(hits), ci_low=lo, ci_high=hi,
                   untrained=untrained(L, tokens - 1), per_instance=hits)
        results.append(row)
    return {"task": data.task.name, "max_train_length": data.max_train_length,
            "results": results}


def baseline_hits(data: TaskDataset, lengths: list[int], instances: int, seed: int
                  ) -> dict[str, dict[str, list[int]]]:
    """Per test length (as a string key), the per-instance hits of each input-blind baseline
    on exactly the instances the models are scored on."""
    return {str(n): data.task.baselines(test_set(data, n, instances, seed)) for n in lengths}


def validation_accuracy(model: torch.nn.Module, data: TaskDataset, count: int, seed: int
                        ) -> float:
    """Exact-match accuracy on `count` held-out validation instances of the longest trained
    length (drawn apart from the test instances): the in-distribution convergence check."""
    hits = exact_match(model, data, test_set(data, data.max_train_length, count, seed, "val"))
    return sum(hits) / len(hits)


def describe(name: str, L: int) -> str:
    task = get_task(name)
    nmax = task.max_train_length(L)
    return (f"{name}: {task.description}; trained on lengths 1-{nmax} "
            f"({task.example_tokens(nmax)} tokens at most, L = {L})")


__all__ = ["TASKS", "LM", "TaskDataset", "evaluate_task", "test_lengths", "get_task",
           "describe", "baseline_hits", "validation_accuracy"]
