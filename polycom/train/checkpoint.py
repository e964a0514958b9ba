"""Atomic, verifiable training checkpoints.

A checkpoint is a folder ``<run>/checkpoints/step_<N>/`` holding Accelerate's state (model, optimizer,
RNG states of every process), ``trainer_state.json`` (step, tokens, data position, counters) and, written
last, ``MANIFEST.json`` with the size and SHA-256 of every other file. It is written under a temporary
name and renamed into place only when complete, so a crash while saving leaves the previous checkpoints
untouched. On load, a folder whose manifest is missing or does not match its files is rejected and
``resume=auto`` falls back to the previous good one.

Loading never runs code from the folder: weights are safetensors, the trainer state JSON, and the pickled
files Accelerate writes (optimizer state, RNG states) are read with ``torch.load(weights_only=True)``, which
admits tensors and plain data only. A file that needs more is refused with ``UnsafeCheckpointError`` naming
it; the RNG states are read first, by this module, because Accelerate skips an unreadable RNG file silently
(the resume would then go on with other random numbers).

Checkpoints whose trainer state has ``"keep": true`` (the wsd schedule's pre-decay checkpoint) are never
pruned.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
TRAINER_STATE = "trainer_state.json"
PREFIX = "step_"


class CorruptCheckpointError(RuntimeError):
    pass


class UnsafeCheckpointError(RuntimeError):
    """A pickled file of the checkpoint holds more than tensors and plain data (it could run code)."""


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"{PREFIX}{step:08d}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"files": entries}, indent=1))
    _fsync_file(tmp)
    os.replace(tmp, folder / MANIFEST)


def verify(folder: Path) -> None:
    """Raise CorruptCheckpointError naming the problem if ``folder`` is not a complete checkpoint."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise CorruptCheckpointError(f"{folder}: no {MANIFEST} (checkpoint incomplete)")
    try:
        entries = json.loads(manifest_path.read_text())["files"]
    except (ValueError, KeyError) as err:
        raise CorruptCheckpointError(f"{manifest_path}: unreadable manifest ({err})") from err
    for rel, meta in entries.items():
        path = folder / rel
        if not path.is_file():
            raise CorruptCheckpointError(f"{path}: listed in the manifest but missing")
        if path.stat().st_size != meta["bytes"]:
            raise CorruptCheckpointError(f"{path}: {path.stat().st_size} bytes, manifest says {meta['bytes']}")
        if _sha256(path) != meta["sha256"]:
            raise CorruptCheckpointError(f"{path}: checksum does not match the manifest")


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Completed checkpoint folders (by name), oldest first. Temporary folders are ignored."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def valid_checkpoints(run_dir: Path) -> Iterator[Path]:
    """Checkpoints that pass verification, newest first (verified lazily), warning about each one that does not."""
    rejected: list[str] = []
    for folder in reversed(list_checkpoints(run_dir)):
        try:
            verify(folder)
        except CorruptCheckpointError as err:
            rejected.append(str(err))
            continue
        for reason in rejected:
            log.warning("skipping corrupt checkpoint: %s; resuming from %s instead", reason, folder)
        rejected = []
        yield folder
    for reason in rejected:
        log.warning("skipping corrupt checkpoint: %s (no valid checkpoint left)", reason)


def latest_valid_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that passes verification, warning about every newer one that does not."""
    return next(valid_checkpoints(run_dir), None)


def read_trainer_state(folder: Path) -> dict:
    return json.loads((Path(folder) / TRAINER_STATE).read_text())


def save_checkpoint(accelerator, run_dir: Path, step: int, trainer_state: dict, keep: int) -> Path:
    """Save on every process (Accelerate writes per-process RNG state), publish atomically on rank 0."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=1))
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync_file(f)
        write_manifest(tmp)
        if final.exists():  # re-saving the same step (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _prune(run_dir, keep)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, folder: Path) -> dict:
    from accelerate.utils import load as safe_load  # torch.load(weights_only=True), numpy arrays allowed

    folder = Path(folder)
    verify(folder)
    rng_file = folder / f"random_states_{accelerator.process_index}.pkl"
    try:
        safe_load(rng_file)
    except FileNotFoundError as err:
        raise CorruptCheckpointError(f"{rng_file}: missing (this process's RNG states)") from err
    except Exception as err:
        raise UnsafeCheckpointError(f"{rng_file}: refused by torch.load(weights_only=True), so not loaded: "
                                    f"{type(err).__name__}: {str(err)[:300]}") from err
    try:
        accelerator.load_state(str(folder), load_kwargs={"weights_only": True})
    except pickle.UnpicklingError as err:
        pickled = ", ".join(sorted(p.name for p in folder.glob("*") if p.suffix in (".bin", ".pkl", ".pt")))
        raise UnsafeCheckpointError(f"{folder}: one of its pickled files ({pickled}) was refused by "
                                    f"torch.load(weights_only=True), so not loaded: {str(err)[:300]}") from err
    return read_trainer_state(folder)


def _prune(run_dir: Path, keep: int) -> None:
    if keep <= 0:
        return
    for old in list_checkpoints(run_dir)[:-keep]:
        try:
            kept = read_trainer_state(old).get("keep", False)
        except (OSError, ValueError):
            kept = False
        if not kept:
            shutil.rmtree(old, ignore_errors=True)
    for stale in (Path(run_dir) / "checkpoints").glob(f"{PREFIX}*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
