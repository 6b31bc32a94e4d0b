"""CheckReport: the result of a checker, as a table in a notebook and as plain text in a terminal."""

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Check", "CheckReport", "CheckFailed"]


class CheckFailed(AssertionError):
    """Raised by `CheckReport.raise_if_failed()`; its message lists the failed checks."""


@dataclass(frozen=True)
class Check:
    """One check of a report: its `name`, whether it `passed` (None: skipped) and a one-line `explanation`."""

    name: str
    passed: bool | None
    explanation: str

    @property
    def result(self) -> str:
        return {True: "pass", False: "FAIL", None: "skip"}[self.passed]


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if value is None:
        return "None"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _as_number(value: Any) -> float | None:
    if isinstance(value, (str, bytes)):
        return None
    try:
        t = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        return None
    return t.item() if t.numel() == 1 and not t.is_complex() else None


def _closeness(name: str, got: Any, expected: Any, rtol: float, atol: float) -> tuple[bool, str]:
    if isinstance(expected, (list, tuple)):
        items = list(got) if isinstance(got, (list, tuple)) or getattr(got, "ndim", None) == 1 else None
        want = [round(float(e), 6) for e in expected]
        if items is None:
            return False, f"{name} is {_describe(got)}, not a sequence of numbers (expected {want})"
        if len(items) != len(expected):
            return False, (f"{name} holds {len(items)} number{'s' * (len(items) != 1)} where {len(expected)} are "
                           f"expected: {items} against {want}")
        for i, (g, e) in enumerate(zip(items, expected)):
            same, why = _closeness(f"{name}[{i}]", g, e, rtol, atol)
            if not same:
                return False, why
        return True, f"{name} {[round(_as_number(g), 6) for g in items]} equal the expected {want}"
    number, want = _as_number(got), float(expected)
    if number is None:
        return False, f"{name} is {_describe(got)}, not one number (expected {want:.6g})"
    if abs(number - want) > atol + rtol * abs(want):
        return False, f"{name} is {number:.8g} but {want:.8g} is expected (rtol {rtol:g})"
    return True, f"{name} is {number:.6g} as expected"


_RESULT_STYLE = {"pass": "color:#1a7f37", "FAIL": "color:#cf222e;font-weight:bold", "skip": "color:#6e7781"}


class CheckReport:
    """The checks a checker ran on `subject` (a loss or a callback), in the order it ran them.

    True when every check that ran passed; a bare `assert report` does not print the report, so end a
    notebook cell with `report.raise_if_failed()` instead.

    >>> report = CheckReport("my_loss").add("scalar", True, "returns a scalar").add("bf16", False, "bfloat16")
    >>> bool(report), [c.name for c in report.failed]
    (False, ['bf16'])
    >>> print(report)
    my_loss: 1 passed, 1 failed
      pass  scalar  returns a scalar
      FAIL  bf16    bfloat16
    """

    def __init__(self, subject: str):
        self.subject = subject
        self.checks: list[Check] = []

    def add(self, name: str, passed: bool | None, explanation: str) -> "CheckReport":
        """Append a check (also for exercise-specific checks of your own); returns the report."""
        self.checks.append(Check(name, None if passed is None else bool(passed), explanation))
        return self

    def add_close(self, name: str, got: Any, expected: float | Sequence[float], rtol: float = 1e-5,
                  atol: float = 1e-8) -> "CheckReport":
        """Append a check that `got` equals `expected` (a number or a list of numbers) as numbers, whatever
        holds them (numpy scalars, one-element tensors; for a list, a list, tuple or 1-dim tensor of them).

        >>> report = CheckReport("norms").add_close("norms", [torch.tensor(0.5), 1.25], [0.5, 1.25])
        >>> report.add_close("loss", torch.ones(2), 1.0).checks[1].explanation
        'loss is a tensor of shape (2,), not one number (expected 1)'
        >>> report.checks[0].explanation
        'norms [0.5, 1.25] equal the expected [0.5, 1.25]'
        """
        return self.add(name, *_closeness(name, got, expected, rtol, atol))

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.passed is False]

    def __bool__(self) -> bool:
        return not self.failed and any(c.passed for c in self.checks)

    def summary(self) -> str:
        """One line: the subject and how many checks passed, failed and were skipped."""
        n = {r: sum(c.result == r for c in self.checks) for r in ("pass", "FAIL", "skip")}
        skipped = f", {n['skip']} skipped" if n["skip"] else ""
        return f"{self.subject}: {n['pass']} passed, {n['FAIL']} failed{skipped}"

    def _lines(self, checks: list[Check]) -> list[str]:
        width = max((len(c.name) for c in checks), default=0)
        return [f"  {c.result:<4}  {c.name:<{width}}  {c.explanation}" for c in checks]

    def __str__(self) -> str:
        return "\n".join([self.summary(), *self._lines(self.checks)])

    __repr__ = __str__

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td style='text-align:left'><code>{html.escape(c.name)}</code></td>"
            f"<td style='text-align:left;{_RESULT_STYLE[c.result]}'>{c.result}</td>"
            f"<td style='text-align:left'>{html.escape(c.explanation)}</td></tr>" for c in self.checks)
        return (f"<p><b>{html.escape(self.summary())}</b></p><table><thead><tr><th>check</th><th>result</th>"
                f"<th style='text-align:left'>explanation</th></tr></thead><tbody>{rows}</tbody></table>")

    def raise_if_failed(self) -> "CheckReport":
        """Raise `CheckFailed` listing the failed checks, or return the report when none failed."""
        if self:
            return self
        if not self.failed:
            raise CheckFailed(f"{self.subject}: no check ran")
        raise CheckFailed("\n".join([self.summary(), *self._lines(self.failed)]))
