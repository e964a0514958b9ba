"""Where a downstream task's rows come from: the Hugging Face Hub, or a local folder and nothing else.

A local folder follows the layout of the shared data (``$POLYCOM_DATA_DIR/downstream``): ``save_to_disk``
folders for the Hub sets and JSON-lines files for LAMBADA, BLiMP and the HellaSwag subset. When a local
folder is given it is the only place looked at, so an offline run never falls back to the network by
accident and a missing set fails at once, naming the task and the paths tried.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import islice
from pathlib import Path


@dataclass(frozen=True)
class Source:
    """One table of rows: the whole task, or one MMLU subject / BLiMP paradigm (``subset``).

    ``hub`` is ``(path, config name or None, split)`` for ``datasets.load_dataset``; ``local`` lists
    candidate paths relative to the local folder, the first that exists wins (a ``save_to_disk`` folder
    or a ``.jsonl`` file)."""

    hub: tuple[str, str | None, str]
    local: tuple[str, ...]
    subset: str | None = None


def load_rows(task: str, source: Source, data_dir: str | Path | None, limit: int | None) -> list[dict]:
    """The first ``limit`` rows (all when None) in the table's own order, as plain dicts."""
    if data_dir is None:
        return _hub_rows(task, source, limit)
    return _local_rows(task, local_path(task, source, data_dir), limit)


def local_path(task: str, source: Source, data_dir: str | Path) -> Path:
    """The first existing candidate path of ``source`` under ``data_dir``; FileNotFoundError otherwise."""
    candidates = [Path(data_dir) / rel for rel in source.local]
    for path in candidates:
        if path.exists():
            return path
    what = f"{task} ({source.subset})" if source.subset else task
    tried = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(f"{what}: no local data under {data_dir}; looked for {tried}")


def _local_rows(task: str, path: Path, limit: int | None) -> list[dict]:
    if path.is_dir():
        import datasets

        table = datasets.load_from_disk(str(path))
        if limit is not None:
            table = table.select(range(min(limit, len(table))))
        return table.to_list()
    rows = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(islice(lines, limit), start=1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{task}: {path} line {number} is not valid JSON ({err})") from err
    return rows


def _hub_rows(task: str, source: Source, limit: int | None) -> list[dict]:
    import datasets

    path, name, split = source.hub
    if limit is not None:
        split = f"{split}[:{limit}]"
    try:
        table = datasets.load_dataset(path, name, split=split)
    except Exception as err:  # network, missing config, ...: say which task and dataset it was
        raise RuntimeError(f"{task}: could not load {path} ({name}, split {split}) from the Hub: {err}") from err
    return table.to_list()
