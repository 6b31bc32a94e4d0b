"""Griffe extensions of the API reference (named in mkdocs.yml).

- `CallbacksPackage`: `minilearn.callbacks` is installed from the top-level folder `callbacks/` (pyproject's
  `package-dir`), where griffe, reading the sources, does not look for it. This puts that folder in its
  place, so the reference shows `minilearn.callbacks.AccelerateCB` as users import it.
- `FencedExamples`: the docstrings are Markdown with doctest examples (`>>>` lines, which the test suite
  runs); each example becomes a Python code block instead of being read as prose.
"""

import griffe


class CallbacksPackage(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs) -> None:
        if pkg.name == "minilearn" and "callbacks" not in pkg.members:
            callbacks = loader.load("callbacks", find_stubs_package=False)
            del loader.modules_collection.members["callbacks"]  # known only by its installed name
            callbacks.parent = pkg
            pkg.set_member("callbacks", callbacks)


def fence_examples(text: str) -> str:
    """`text` with each run of doctest lines (from a `>>>` line to the next blank line) in a pycon fence."""
    out, indent = [], None  # indent: that of the open block's fence, None outside one
    for line in text.splitlines():
        if indent is None and line.lstrip().startswith(">>>"):
            indent = line[:len(line) - len(line.lstrip())]
            out.append(indent + "```pycon")
        elif indent is not None and not line.strip():
            out.append(indent + "```")
            indent = None
        out.append(line)
    return "\n".join(out + ([indent + "```"] if indent is not None else []))


class FencedExamples(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence_examples(obj.docstring.value)
