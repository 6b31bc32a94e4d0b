"""ProgressCB where its output goes: a log file gets one line per epoch phase (or fastai's one line per
epoch), a terminal gets bars that end cleanly, and lr_find's trial fit leaves no table and no bar."""

import os
import pty
import subprocess
import sys
import textwrap

import pytest

from minilearn.callbacks import ProgressCB

SCRIPT = textwrap.dedent("""
    import sys, torch, torch.nn.functional as F
    from torch.utils.data import TensorDataset
    from minilearn import Learner, DataLoaders
    from minilearn.callbacks import MetricsCB, ProgressCB
    torch.manual_seed(0)
    x = torch.randn(640, 10); y = (x[:, 0] > 0).long()
    dls = DataLoaders.from_dsets(TensorDataset(x[:512], y[:512]), TensorDataset(x[512:], y[512:]), bs=8)
    metrics = MetricsCB(accuracy=lambda preds, y: (preds.argmax(-1) == y).float().mean())
    rows = "epoch" if "epoch" in sys.argv else "phase"
    learn = Learner(torch.nn.Linear(10, 2), dls, F.cross_entropy, cbs=[metrics, ProgressCB(comment_every=0, rows=rows)])
    if "lr_find" in sys.argv:
        learn.lr_find(show_plot=False, num_it=30)
        print("AFTER LR_FIND")
    learn.fit(3, valid="no_valid" not in sys.argv)
    print("HISTORY", [(r["phase"], round(r["loss"], 4), round(r["accuracy"], 4)) for r in metrics.history])
""")


def screen(out: str) -> list[str]:
    """The lines a terminal shows for `out`: a carriage return moves back to the line's start, where
    what follows overwrites what was there."""
    lines = []
    for raw in out.split("\n"):
        line = ""
        for part in raw.split("\r"):
            line = part + line[len(part):]
        lines.append(line.rstrip())
    return lines


def run(tmp_path, *args, tty=False) -> str:
    script = tmp_path / "fit.py"
    script.write_text(SCRIPT)
    cmd = [sys.executable, str(script), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not tty:
        log = tmp_path / "log.txt"
        with open(log, "w") as f:  # `python fit.py > log.txt`
            subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=True, timeout=120, env=env)
        return log.read_text()
    leader, follower = pty.openpty()
    proc = subprocess.Popen(cmd, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(timeout=120) == 0, out.decode()[-2000:]
    os.close(leader)
    return out.decode()


def history(line: str) -> list[tuple[str, float, float]]:
    return eval(line.removeprefix("HISTORY "))


def test_a_log_file_gets_the_table_one_line_per_epoch_phase(tmp_path):
    out = run(tmp_path)
    assert "\r" not in out and "█" not in out
    lines = out.splitlines()
    assert lines[0].split() == ["epoch", "phase", "loss", "accuracy", "time"]
    rows = [line.split() for line in lines[1:7]]
    assert [r[:2] for r in rows] == [[str(e), p] for e in range(3) for p in ("train", "valid")]
    assert [(r[1], float(r[2]), float(r[3])) for r in rows] == history(lines[7])
    assert len(lines) == 8


def test_rows_epoch_is_fastais_table_in_a_log_file(tmp_path):
    lines = run(tmp_path, "epoch").splitlines()
    assert lines[0].split() == ["epoch", "train_loss", "valid_loss", "accuracy", "time"]
    rows, passes = [line.split() for line in lines[1:4]], history(lines[4])
    assert [r[0] for r in rows] == ["0", "1", "2"] and all(len(r) == 5 and ":" in r[4] for r in rows)
    train, valid = passes[0::2], passes[1::2]
    assert [(float(r[1]), float(r[2]), float(r[3])) for r in rows] == [(t[1], v[1], v[2]) for t, v in zip(train, valid)]
    assert len(lines) == 5


def test_rows_epoch_without_validation_shows_the_training_loss(tmp_path):
    lines = run(tmp_path, "epoch", "no_valid").splitlines()
    assert lines[0].split() == ["epoch", "train_loss", "time"]
    assert [float(line.split()[1]) for line in lines[1:4]] == [p[1] for p in history(lines[4])]
    assert len(lines) == 5


def test_lr_find_prints_nothing_into_a_log_file(tmp_path):
    assert run(tmp_path, "lr_find").startswith("AFTER LR_FIND\n")


def test_a_terminal_gets_bars_and_lr_find_leaves_no_bar_and_no_table(tmp_path):
    out = run(tmp_path, "lr_find", tty=True)
    before = out.split("AFTER LR_FIND")[0]
    assert "\r" in before and "█" in before  # a bar was drawn while it ran
    lines = screen(out)
    assert lines[0] == "AFTER LR_FIND", lines[:3]  # and erased: the next print starts the screen
    assert lines[1].split() == ["epoch", "phase", "loss", "accuracy", "time"]


@pytest.mark.parametrize("valid", [True, False])
def test_rows_epoch_in_a_terminal(tmp_path, valid):
    lines = [line for line in screen(run(tmp_path, "epoch", *([] if valid else ["no_valid"]), tty=True)) if line]
    header = ["epoch", "train_loss", "valid_loss", "accuracy", "time"] if valid else ["epoch", "train_loss", "time"]
    assert lines[0].split() == header
    assert [line.split()[0] for line in lines[1:4]] == ["0", "1", "2"] and lines[4].startswith("HISTORY"), lines


def test_an_unknown_layout_is_refused():
    with pytest.raises(ValueError, match=r"ProgressCB\(rows='fastai'\): expected 'phase' .* or 'epoch'"):
        ProgressCB(rows="fastai")


NOTEBOOK_CELLS = [SCRIPT.split("rows = ")[0] + textwrap.dedent("""
    learn = Learner(torch.nn.Linear(10, 2), dls, F.cross_entropy, cbs=[metrics, ProgressCB()])
    learn.lr_find(show_plot=False, num_it=30)
"""), textwrap.dedent("""
    progress = ProgressCB(plot=True)
    Learner(torch.nn.Linear(10, 2), dls, F.cross_entropy, cbs=[MetricsCB(), progress]).fit(1)
    print("MARKERS", [line.get_marker() for line in progress.mbar.graph_ax.lines])
"""), textwrap.dedent("""
    Learner(torch.nn.Linear(10, 2), dls, F.cross_entropy, cbs=[metrics, ProgressCB(rows="epoch")]).fit(2)
""")]


def test_in_a_notebook_lr_find_leaves_nothing_one_epoch_plots_its_valid_point_and_rows_epoch_works(monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in NOTEBOOK_CELLS])
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()  # applies each display's updates
    lr_find, one_epoch, rows_epoch = (cell.outputs for cell in nb.cells)
    lr_find_html = "".join(o.get("data", {}).get("text/html", "") for o in lr_find)  # fastprogress's <style> stays
    assert "<progress" not in lr_find_html and "<table" not in lr_find_html, lr_find_html  # bars erased, no table
    assert lr_find[-1]["data"]["text/plain"].startswith("SuggestedLRs(steep=")
    assert "MARKERS ['None', 'o']" in one_epoch[-1].text  # the one-point validation series has a marker
    html = "".join(o.get("data", {}).get("text/html", "") for o in rows_epoch)
    headers = [h.split("<")[0] for h in html.split("<th>")[1:]]
    assert headers == ["epoch", "train_loss", "valid_loss", "accuracy", "time"], html
    assert html.count("<tr>") == 3  # the header and a row for each of the 2 epochs
