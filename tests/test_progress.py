"""ProgressCB where its output goes: a log file gets one line per epoch phase, a terminal gets bars
that end cleanly, also when a fit stops half way (lr_find)."""

import os
import pty
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys, torch, torch.nn.functional as F
    from torch.utils.data import TensorDataset
    from minilearn import Learner, DataLoaders
    from minilearn.callbacks import MetricsCB, ProgressCB
    torch.manual_seed(0)
    x = torch.randn(640, 10); y = (x[:, 0] > 0).long()
    dls = DataLoaders.from_dsets(TensorDataset(x[:512], y[:512]), TensorDataset(x[512:], y[512:]), bs=8)
    metrics = MetricsCB()
    learn = Learner(torch.nn.Linear(10, 2), dls, F.cross_entropy, cbs=[metrics, ProgressCB(comment_every=0)])
    if "lr_find" in sys.argv:
        learn.lr_find(show_plot=False, num_it=30)
        print("AFTER LR_FIND")
    learn.fit(3)
    print("HISTORY", [round(r["loss"], 4) for r in metrics.history])
""")


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


def test_a_log_file_gets_the_table_one_line_per_epoch_phase(tmp_path):
    out = run(tmp_path)
    assert "\r" not in out and "█" not in out
    lines = out.splitlines()
    assert lines[0].split() == ["epoch", "phase", "loss", "time"]
    rows = [line.split() for line in lines[1:7]]
    assert [r[:2] for r in rows] == [[str(e), p] for e in range(3) for p in ("train", "valid")]
    history = eval(lines[7].removeprefix("HISTORY "))
    assert [float(r[2]) for r in rows] == history
    assert len(lines) == 8


def test_a_terminal_gets_bars_and_lr_find_ends_its_bar_before_the_next_print(tmp_path):
    out = run(tmp_path, "lr_find", tty=True)
    before, after = out.split("AFTER LR_FIND")
    assert "\r" in before and "█" in before  # bars were drawn
    assert before.endswith("\n"), repr(before[-200:])  # the next print starts on a new line
    assert "HISTORY" in after and after.count(" valid ") == 3
