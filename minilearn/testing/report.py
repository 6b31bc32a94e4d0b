"""CheckReport: the result of a checker, as a table in a notebook and as plain text in a terminal."""

import html
from dataclasses import dataclass

__all__ = ["Check", "CheckReport", "CheckFailed"]


class CheckFailed(AssertionError):
    """Raised by `CheckReport.raise_if_failed()`; its message lists the failed checks."""


@dataclass(frozen=True)
class Check:
    """One check of a report: its `name`, whether it `passed` (None: skipped, with the reason in
    `explanation`) and a one-line `explanation` of what was found."""

    name: str
    passed: bool | None
    explanation: str

    @property
    def result(self) -> str:
        """`"pass"`, `"FAIL"` or `"skip"`."""
        return {True: "pass", False: "FAIL", None: "skip"}[self.passed]


_RESULT_STYLE = {"pass": "color:#1a7f37", "FAIL": "color:#cf222e;font-weight:bold", "skip": "color:#6e7781"}


class CheckReport:
    """The checks a checker ran on `subject` (a loss or a callback), in the order it ran them.

    Its truth value is "every check that ran passed" (skipped checks neither pass nor fail), so a
    grader can write `assert check_loss(...)`. A bare `assert` does not print the report, though:
    in a notebook end the cell with `report.raise_if_failed()`, which raises `CheckFailed` listing
    the failed checks and otherwise returns the report, shown as a table.

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

    @property
    def failed(self) -> list[Check]:
        """The checks that failed."""
        return [c for c in self.checks if c.passed is False]

    def __bool__(self) -> bool:
        return not self.failed and any(c.passed for c in self.checks)

    def summary(self) -> str:
        """One line: the subject and how many checks passed, failed and were skipped."""
        counts = {r: sum(c.result == r for c in self.checks) for r in ("pass", "FAIL", "skip")}
        parts = [f"{counts['pass']} passed", f"{counts['FAIL']} failed"]
        if counts["skip"]:
            parts.append(f"{counts['skip']} skipped")
        return f"{self.subject}: {', '.join(parts)}"

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
