"""How far each launch of the real-model matrix (tests/integration/test_real_models.py) is from one process without
Accelerate: the largest weight gap and the largest epoch-table gap per launch setting, over every model
and loss, and the dropout row's gap to its replayed random streams. Run: `python tests/bench/real_models_gaps.py` (two launches, OMP_NUM_THREADS=1 in each process)."""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import test_real_models as t  # noqa: E402


def main():
    launches = t.launch_matrix(Path(tempfile.mkdtemp()))
    print(f"{'launch':32} {'weights':>10} {'table':>10} {'dropout':>10}   (largest absolute gap to one process, "
          f"{len(t.matrix.MODELS)} models x {len(t.matrix.LOSSES)} losses; dropout row: weight gap to its replayed "
          f"streams)")
    for processes, gas in [(1, 1), (1, 2), (2, 1), (2, 2)]:
        w_gap = table_gap = 0.0
        for model_name in t.matrix.MODELS:
            for loss in t.matrix.LOSSES:
                weights, table = launches[processes][f"{model_name}/{loss}/gas{gas}"]
                want_weights, want_table = t.reference(model_name, loss)
                w_gap = max(w_gap, max((weights[k] - want_weights[k]).abs().max().item() for k in want_weights))
                table_gap = max(table_gap, max(abs(a["loss"] - b["loss"]) for a, b in zip(table, want_table)))
        weights = launches[processes][f"{t.matrix.DROPOUT_MODEL}/weighted_ce/gas{gas}"][0]
        want = t.replayed_streams(processes, gas)
        dropout_gap = max((weights[k] - want[k]).abs().max().item() for k in want)
        print(f"{f'{processes} process(es), accumulation {gas}':32} {w_gap:10.1e} {table_gap:10.1e} {dropout_gap:10.1e}")


if __name__ == "__main__":
    main()
