"""Checkpoint files: written so that a crash never leaves a broken one, read without running code.

A checkpoint is a directory holding

    checkpoint.json             the manifest, written last: names the two files below and their sha256
    model-<tag>.safetensors     the model's weights (safetensors: tensors only, readable by other tools)
    state-<tag>.pt              everything else (optimizer, schedules, position, random states), read back
                                with `torch.load(weights_only=True)`, which refuses pickled objects

Every file is written to a temporary name, fsynced and renamed into place, under a fresh tag each
save; the manifest is replaced last, and only then are the previous save's files deleted. So a killed
save leaves the previous checkpoint intact, and a directory never completed has no manifest.
"""

import hashlib
import json
import os
import pickle
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model

from minilearn.exceptions import CheckpointError

__all__ = ["MANIFEST", "atomic_write", "save_checkpoint", "read_checkpoint", "check_weights", "is_checkpoint",
           "remove_checkpoint"]

MANIFEST = "checkpoint.json"
_FORMAT, _VERSION = "minilearn-checkpoint", 1
_PLAIN = (torch.Tensor, bool, int, float, str, bytes, type(None))
PathLike = str | os.PathLike


def _fsync_dir(directory: Path) -> None:
    # A rename is durable only once the directory entry is on disk (POSIX; Windows neither can nor needs to).
    if os.name == "posix":
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: PathLike, write: Callable[[Path], None]) -> None:
    """Create or replace the file `path` with what `write(temporary_path)` writes, so that `path` is
    always either the old file or the complete new one, even if the process is killed.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "a.txt"
    >>> atomic_write(p, lambda tmp: tmp.write_text("hello"))
    >>> p.read_text()
    'hello'
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")  # same directory: rename stays atomic
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the data reaches the disk before the name points at it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _check_plain(value: Any, where: str) -> None:
    # torch.load(weights_only=True) reads back only plain data: fail now, naming the culprit, rather
    # than write a checkpoint that cannot be loaded.
    if isinstance(value, (dict, list, tuple)):
        for k, v in value.items() if isinstance(value, dict) else enumerate(value):
            _check_plain(v, f"{where}[{k!r}]")
    elif not isinstance(value, _PLAIN):
        raise TypeError(f"{where} is a {type(value).__name__}; a checkpoint keeps only tensors, numbers, strings, "
                        f"None, and lists, tuples and dicts of them (so that loading it never runs code)")


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def save_checkpoint(path: PathLike, model: torch.nn.Module, state: dict) -> Path:
    """Save `model`'s weights and the plain-data `state` as the checkpoint directory `path` (created
    if needed; an earlier checkpoint there is replaced atomically). Returns `path`. Raises `TypeError`,
    writing nothing, when `state` holds other than tensors, numbers, strings, None, lists, tuples, dicts."""
    _check_plain(state, "state")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:12]
    names = {"model": f"model-{tag}.safetensors", "state": f"state-{tag}.pt"}
    # save_model (not save_file) because it stores tied weights once instead of refusing them.
    atomic_write(path / names["model"], lambda tmp: save_model(model, str(tmp)))
    atomic_write(path / names["state"], lambda tmp: torch.save(state, tmp))
    manifest = {"format": _FORMAT, "version": _VERSION,
                "files": {k: {"name": n, "sha256": _sha256(path / n)} for k, n in names.items()}}
    atomic_write(path / MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1)))
    _remove_unlisted(path, set(names.values()))
    return path


def _remove_unlisted(path: Path, keep: set[str]) -> None:
    # Only files this module writes: the previous save's, and temporaries of a save that was killed.
    for f in path.iterdir():
        ours = f.name.startswith(("model-", "state-", ".model-", ".state-", f".{MANIFEST}."))
        if ours and f.name not in keep and f.is_file():
            f.unlink(missing_ok=True)


def is_checkpoint(path: PathLike) -> bool:
    """True when `path` is a complete checkpoint directory (its manifest was written)."""
    return (Path(path) / MANIFEST).is_file()


def remove_checkpoint(path: PathLike) -> None:
    """Delete a checkpoint directory, manifest first, so that a deletion cut short never leaves
    something that looks like a checkpoint. Files that are not the checkpoint's are left alone."""
    path = Path(path)
    (path / MANIFEST).unlink(missing_ok=True)
    _fsync_dir(path)
    _remove_unlisted(path, set())
    if not any(path.iterdir()):
        path.rmdir()


def _verified_file(path: Path, manifest: dict, key: str) -> Path:
    try:
        entry = manifest["files"][key]
        file, expected = path / entry["name"], entry["sha256"]
    except (KeyError, TypeError):
        raise CheckpointError(f"{path / MANIFEST} does not name a {key} file: the manifest is damaged") from None
    if Path(entry["name"]).name != entry["name"]:
        raise CheckpointError(f"{path / MANIFEST} names {entry['name']!r}, which is not a file inside the checkpoint")
    if not file.is_file():
        raise CheckpointError(f"the checkpoint file {file} is missing")
    if _sha256(file) != expected:
        raise CheckpointError(f"the checkpoint file {file} is corrupted: its sha256 does not match the one "
                              f"recorded in {MANIFEST} (truncated or changed after it was saved)")
    return file


def read_checkpoint(path: PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read a checkpoint written by `save_checkpoint`: `(state, weights)`, on the CPU, after checking
    the manifest and each file's sha256. Raises `CheckpointError` naming the file when the checkpoint
    is missing, incomplete, corrupted, or its state holds pickled objects (refused, not run)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint at {path}: expected a directory written by Learner.save")
    if not is_checkpoint(path):
        raise CheckpointError(f"{path} is not a complete checkpoint: it has no {MANIFEST} (a save into it "
                              f"was interrupted, or it was never one)")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path / MANIFEST} is corrupted: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT or manifest.get("version") != _VERSION:
        raise CheckpointError(f"{path / MANIFEST} is not a minilearn checkpoint manifest (format version {_VERSION})")
    model_file, state_file = _verified_file(path, manifest, "model"), _verified_file(path, manifest, "state")
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"WeightsUnpickler error: (.*?)(?: Please|\n|$)", str(e))  # e.g. "Unsupported global: GLOBAL exec ..."
        reason = found.group(1) if found else "not plain data"
        raise CheckpointError(f"the checkpoint file {state_file} holds pickled objects that are not plain data, so "
                              f"it was refused (loading them could run code): {reason}") from None
    except (RuntimeError, EOFError) as e:
        raise CheckpointError(f"the checkpoint file {state_file} cannot be read: {e}") from None
    try:
        weights = load_file(model_file, device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"the checkpoint file {model_file} cannot be read: {e}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"the checkpoint file {state_file} holds a {type(state).__name__}, expected a dict")
    return state, weights


def check_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: PathLike) -> None:
    """Raise `CheckpointError` naming `source` unless `weights` (from `read_checkpoint`) fit `model`
    (same names, a tied weight stored once, and shapes) for `model.load_state_dict(weights, strict=False)`."""
    expected = model.state_dict()
    # A tied weight is stored once; the other names of its storage are filled by loading that one.
    loaded_storage = {expected[k].untyped_storage().data_ptr() for k in weights if k in expected}
    missing = [k for k in expected if k not in weights and expected[k].untyped_storage().data_ptr() not in loaded_storage]
    unexpected = [k for k in weights if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(weights[k].shape)}, model {tuple(expected[k].shape)}"
              for k in weights if k in expected and weights[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(f"the weights in {source} do not fit {type(model).__name__}: missing {missing}, "
                              f"unexpected {unexpected}, shape mismatches {shapes}")
