"""MkDocs hooks of the documentation site (named in mkdocs.yml).

- The tutorials are the notebooks of `nbs/`, run top to bottom before each build exactly as the test
  suite runs them (`run_notebook`: a fresh kernel, the small setting `MINILEARN_SMALL=1`), so their pages
  show the outputs of the code as it is. A notebook that raises fails the build. Each page opens with the
  API it exercises (`NOTEBOOK_API`), linked to the reference.
- A notebook page's table of contents gets its headings' titles and anchors (`on_page_content`).
- A docstring that refers to a name of the library that does not exist (`minilearn.x.y`, or
  `Learner.method`) is a warning, which `strict: true` turns into a failed build.
"""

import importlib
import inspect
import logging
import os
import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NBS, TUTORIALS = ROOT / "nbs", ROOT / "docs" / "tutorials"
PACKAGES = ("minilearn", "minilearn.callbacks", "minilearn.losses", "minilearn.sampling", "minilearn.testing",
            "minilearn.metrics")
# Which reference page documents each package's names (a name in two packages is documented once, at the first).
PAGES = {"minilearn.callbacks": "callbacks", "minilearn.losses": "losses", "minilearn.sampling": "sampling",
         "minilearn.testing": "testing", "minilearn.metrics": "metrics", "minilearn": "minilearn"}
NOTEBOOK_API = {
    "00_quickstart": ["minilearn.Learner", "minilearn.DataLoaders", "minilearn.callbacks.ProgressCB",
                      "minilearn.callbacks.MetricsCB", "minilearn.callbacks.OneCycleCB", "minilearn.callbacks.Recorder",
                      "minilearn.callbacks.LRFinderCB"],
    "01_callbacks": ["minilearn.Callback", "minilearn.CancelBatchException", "minilearn.callbacks.LossCB",
                     "minilearn.callbacks.TrainCB", "minilearn.callbacks.SingleBatchCB"],
    "02_accelerate": ["minilearn.callbacks.AccelerateCB", "minilearn.callbacks.AccelerateCustomCB",
                      "minilearn.NormalizedLoss", "minilearn.callbacks.reset_accelerate_state"],
    "03_weighted_losses": ["minilearn.losses.KeyTokenWeightedLoss", "minilearn.losses.WeightedCrossEntropy",
                           "minilearn.callbacks.LossCB", "minilearn.callbacks.AccelerateCustomCB"],
    "04_rl_losses": ["minilearn.losses.PolicyGradientLoss", "minilearn.losses.ImportanceWeightedCrossEntropy",
                     "minilearn.sampling.sample"],
    "05_logprob_losses": ["minilearn.forward_backward_custom", "minilearn.callbacks.LogprobLossCB",
                          "minilearn.losses.make_dpo_loss", "minilearn.losses.make_candidate_ce_loss"],
    "06_inspecting": ["minilearn.Predictions", "minilearn.ClassificationInterpretation", "minilearn.metrics.accuracy",
                      "minilearn.callbacks.CSVLoggerCB", "minilearn.callbacks.TrackerCB",
                      "minilearn.callbacks.ActivationStatsCB"],
    "07_rl_end_to_end": ["minilearn.callbacks.RolloutCB", "minilearn.sampling.sample", "minilearn.losses.group_advantages",
                         "minilearn.losses.PolicyGradientLoss", "minilearn.losses.kl_penalty"],
}
log = logging.getLogger("mkdocs.plugins.minilearn")
_command = "build"


def run_notebook(nb: nbformat.NotebookNode, directory: Path) -> nbformat.NotebookNode:
    """Execute `nb` in place, in a fresh kernel started in `directory`, in the small setting the test suite
    uses; its cells get their outputs. Raises `nbclient.exceptions.CellExecutionError` at a failing cell."""
    small = {"MINILEARN_SMALL": "1", "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    saved = {k: os.environ.get(k) for k in small}
    os.environ.update(small)  # the kernel inherits the environment
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(directory)}}).execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v
    return nb


def reference_url(identifier: str, depth: int) -> str:
    """The URL of `identifier`'s entry in the API reference, from a page `depth` folders below the site root."""
    package = max((p for p in PAGES if identifier.startswith(p + ".")), key=len)
    return "../" * depth + f"reference/{PAGES[package]}/#{identifier}"


def _api_cell(name: str) -> nbformat.NotebookNode:
    links = ", ".join(f"[`{i.rsplit('.', 1)[1]}`]({reference_url(i, 2)})" for i in NOTEBOOK_API[name])
    return nbformat.v4.new_markdown_cell(f"*This tutorial exercises:* {links}. It was run with `MINILEARN_SMALL=1` "
                                         f"(the test suite's small setting); run `nbs/{name}.ipynb` for the full one.")


def on_startup(command: str, dirty: bool) -> None:
    global _command
    _command = command


def on_pre_build(config) -> None:
    TUTORIALS.mkdir(exist_ok=True)
    for path in sorted(NBS.glob("*.ipynb")):
        out = TUTORIALS / path.name
        # `mkdocs serve` rebuilds on every change it sees (these pages too): run a notebook only when it changed.
        if _command == "serve" and out.exists() and out.stat().st_mtime > path.stat().st_mtime:
            continue
        nb = run_notebook(nbformat.read(path, as_version=4), NBS)
        nb.cells.insert(1, _api_cell(path.stem))
        nbformat.write(nb, out)
    check_docstring_references()


def on_page_content(html: str, page, config, files) -> str:
    # mkdocs-jupyter makes a notebook page's table of contents from the headings' text without its code
    # spans, so a heading such as "`DataLoaders`: the data" gets a title and a link that its anchor does
    # not answer. The headings are in the same order as the table: give each entry its heading's.
    if page.file.src_uri.endswith(".ipynb"):
        links, stack = [], list(page.toc)[::-1]
        while stack:
            link = stack.pop()
            links.append(link)
            stack.extend(list(link.children)[::-1])
        levels = {link.level for link in links}
        headings = [(i, re.sub(r"<[^>]+>|¶", "", text).strip())
                    for level, i, text in re.findall(r'<h(\d) id="([^"]+)"[^>]*>(.*?)</h\1>', html, re.S)
                    if int(level) in levels]
        if len(headings) == len(links):
            for link, (anchor, title) in zip(links, headings):
                link.id, link.title = anchor, title
        else:
            log.warning(f"{page.file.src_uri}: {len(links)} entries in its table of contents, {len(headings)} headings")
    return html


def _resolve(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def check_docstring_references() -> list[str]:
    """Warn about each docstring of a public name that refers to a name of the library that does not exist:
    `` `minilearn.module.name` ``, or `` `Class.attribute` `` for a public class. Returns the warnings."""
    public = {}
    for package in PACKAGES:
        mod = importlib.import_module(package)
        public.update({name: getattr(mod, name) for name in mod.__all__})
    classes = {name: obj for name, obj in public.items() if inspect.isclass(obj)}
    problems = []
    for name, obj in public.items():
        members = [obj] + [v for k, v in vars(obj).items() if not k.startswith("_")] if inspect.isclass(obj) else [obj]
        for member in members:
            doc = inspect.getdoc(member) if callable(member) or inspect.isclass(member) else None
            for ref in re.findall(r"`([A-Za-z_][\w.]*)[`(]", doc or ""):
                head = ref.split(".")[0]
                if ref.startswith("minilearn.") and not _resolve(ref) or (
                        head in classes and "." in ref and not hasattr(classes[head], ref.split(".")[1])):
                    problems.append(f"the docstring of {name} refers to `{ref}`, which does not exist")
    for problem in problems:
        log.warning(problem)
    return problems
