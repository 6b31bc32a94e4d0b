"""Callback `order` values come from one table, `minilearn.Order`, and the table keeps the relations
the callbacks rely on (which runs first, which owns a step)."""

import ast
from pathlib import Path

import minilearn.callbacks as callbacks
from minilearn import Callback, Order

ROOT = Path(__file__).resolve().parents[2]


def order_assignments():
    """`(file, class, value node)` for every `order = ...` in a class body of the library."""
    for path in [*(ROOT / "minilearn").rglob("*.py"), *(ROOT / "callbacks").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    if isinstance(stmt, ast.Assign):
                        targets = stmt.targets
                    else:
                        targets = [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
                    if any(isinstance(t, ast.Name) and t.id == "order" for t in targets) and stmt.value is not None:
                        yield path.relative_to(ROOT), node.name, stmt.value


def test_every_order_in_the_library_is_a_name_from_the_table():
    found = list(order_assignments())
    assert len(found) >= 17
    for path, cls, value in found:
        if cls == "Callback":  # the base class's default
            continue
        named = isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name) and value.value.id == "Order"
        assert named and hasattr(Order, value.attr), f"{path}: {cls}.order = {ast.unparse(value)}"


def test_each_shipped_callback_has_its_row_of_the_table():
    rows = {"AccelerateCB": Order.ACCELERATE, "AccelerateCustomCB": Order.ACCELERATE, "TrainCB": Order.TRAIN,
            "LRFinderCB": Order.LR_FINDER, "DeviceCB": Order.DEVICE, "MetricsCB": Order.METRICS,
            "Recorder": Order.RECORDER, "ProgressCB": Order.PROGRESS, "BatchSchedCB": Order.SCHEDULE,
            "OneCycleCB": Order.SCHEDULE, "GradClipCB": Order.GRAD_CLIP, "SingleBatchCB": Order.SINGLE_BATCH,
            "LossCB": Order.LOSS, "LogprobLossCB": Order.LOGPROB_LOSS, "SaveModelCB": Order.SAVE_MODEL,
            "EarlyStoppingCB": Order.EARLY_STOPPING, "CSVLoggerCB": Order.CSV_LOGGER, "TrackerCB": Order.TRACKER, "ActivationStatsCB": Order.ACTIVATION_STATS, "TerminateOnNaNCB": Order.TERMINATE_ON_NAN,
            "RolloutCB": Order.ROLLOUTS}
    shipped = {n for n in callbacks.__all__ if isinstance(getattr(callbacks, n), type)
               and issubclass(getattr(callbacks, n), Callback)}
    assert set(rows) == shipped
    assert {name: getattr(callbacks, name).order for name in rows} == rows


def test_the_table_keeps_the_relations_it_states():
    # step ownership: each later owner of a step sits above the one it takes the step from
    assert Order.TRAIN < Order.CHECK_PREDICT < Order.LOSS < Order.ACCELERATE < Order.LOGPROB_LOSS
    # events: the bad loss is seen first; the epoch's row is written before it is recorded, shown,
    # counted and saved, and the count before the save
    assert Order.TERMINATE_ON_NAN < Order.DEVICE < Order.TRAIN
    assert Order.METRICS < Order.RECORDER < Order.PROGRESS
    assert Order.METRICS < Order.EARLY_STOPPING < Order.SAVE_MODEL < Order.SINGLE_BATCH < Order.CHECK_RECORDER
    assert Order.METRICS < Order.CSV_LOGGER < Order.SAVE_MODEL and Order.METRICS < Order.TRACKER
