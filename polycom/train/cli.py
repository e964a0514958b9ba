"""``train.py``'s command line: a refused launch prints one line, exits with status 2, and writes nothing.

- ``CheckBeforeLaunch``, a Hydra callback (``configs/hydra/default.yaml``), runs the config checks
  (``polycom.train.validate``) on the composed config *before* Hydra creates the run folder and writes ``.hydra/``:
  a launch refused for its config leaves no empty timestamped folder and never overwrites the ``.hydra/`` files of
  the run already in ``hydra.run.dir``. In a multirun it checks the keys before the sweep folder exists; values a
  sweep sets are checked in each job (by the trainer), after Hydra wrote that job's new folder.
- ``run`` calls the Hydra app and turns a config error -- Hydra's own (an unknown key or group option, a value of
  the wrong type, override syntax) or ours (``ConfigError``) -- into one line, with the closest known key or option:

      train.py: config error: trainer.max_step is not a config key; did you mean trainer.max_steps?

  Anything else keeps its traceback. ``HYDRA_FULL_ERROR=1`` set by the user shows Hydra's full error instead.
  A Ctrl-C before training started (or a second one; ``polycom.train.signals``) prints one line, exit status 130.
"""

from __future__ import annotations

import copy
import difflib
import os
import sys
from pathlib import Path

from hydra.errors import MissingConfigException, OverrideParseException
from hydra.experimental.callback import Callback
from omegaconf import open_dict, read_write
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from polycom.train.validate import ConfigError, check_known_keys, unknown_key_message, validate_config

EXIT_CONFIG_ERROR = 2
_FULL_ERROR = "HYDRA_FULL_ERROR"


class LaunchRefused(SystemExit):
    """A config error found by ``CheckBeforeLaunch``. A ``SystemExit`` (status 2), because Hydra turns an
    ``Exception`` raised in a callback into a warning and goes on; ``run`` prints ``error``."""

    def __init__(self, error: Exception):
        super().__init__(EXIT_CONFIG_ERROR)
        self.error = error


class CheckBeforeLaunch(Callback):
    """The config checks, run by Hydra before it creates the run (sweep) folder."""

    def on_run_start(self, config, **kwargs) -> None:
        try:
            task = _task_config(config)
            validate_config(task, int(os.environ.get("WORLD_SIZE", "1")))
            check_fresh_run_dir(task, Path(str(config.hydra.run.dir)))
        except ConfigError as err:
            raise LaunchRefused(err) from err

    def on_multirun_start(self, config, **kwargs) -> None:
        try:
            check_known_keys(_task_config(config))  # the values may differ by job: the trainer checks them
        except ConfigError as err:
            raise LaunchRefused(err) from err


def _task_config(config):
    """The training config without the ``hydra`` node, as Hydra hands it to the task function."""
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        task.pop("hydra", None)
    return task


def check_fresh_run_dir(cfg, run_dir: Path) -> None:
    """A fresh run (``trainer.resume`` unset) into a folder that holds checkpoints is refused (the trainer's rule,
    ``polycom.train.resume``), here before Hydra overwrites that run's ``.hydra/``. A job a scheduler requeued
    continues instead (``polycom.train.signals.resume_if_requeued``)."""
    from polycom.train.resume import refuse_fresh_run_into
    from polycom.train.signals import requeued

    if cfg.trainer.resume is None and not requeued(run_dir):
        refuse_fresh_run_into(run_dir)


def describe(err: BaseException) -> str:
    """One line for a config error: what is wrong, with the key or option meant when one is close."""
    if isinstance(err, MissingConfigException) and err.options and err.missing_cfg_file:
        group, _, name = err.missing_cfg_file.rpartition("/")
        close = difflib.get_close_matches(name, list(err.options), n=1, cutoff=0.5)
        return (f"{group}={name}: no such option" + (f"; did you mean {group}={close[0]}?" if close else "")
                + f" (options: {', '.join(err.options)})")
    cause = err.__cause__ if err.__cause__ is not None else err
    key = getattr(cause, "full_key", None)
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and key:
        return unknown_key_message(key)
    if isinstance(cause, OmegaConfBaseException) and key:
        return f"{key}: {_first_line(cause)}"
    if isinstance(err, OverrideParseException):
        return f"cannot parse the override {err.override!r}: {_first_line(err).removeprefix('Error parsing override ')}"
    line = _first_line(err)
    return line if cause is err else f"{line}: {_first_line(cause)}"


def _first_line(err: BaseException) -> str:
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


CONFIG_ERRORS = (ConfigError, OmegaConfBaseException, OverrideParseException, MissingConfigException)


def _is_config_error(err: BaseException) -> bool:
    from hydra.errors import ConfigCompositionException

    return isinstance(err, CONFIG_ERRORS + (ConfigCompositionException,))


def run(app, prog: str = "train.py") -> None:
    """Run a ``@hydra.main`` app; config errors and an early Ctrl-C end the process with one line (see above)."""
    user_full_error = os.environ.get(_FULL_ERROR) == "1"
    os.environ[_FULL_ERROR] = "1"  # Hydra re-raises instead of printing its multi-line report
    try:
        app()
    except LaunchRefused as refused:
        print(f"{prog}: config error: {describe(refused.error)}", file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing saved since the newest checkpoint", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        if user_full_error or not _is_config_error(err):
            raise
        print(f"{prog}: config error: {describe(err)}", file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)
    finally:
        if not user_full_error:
            os.environ.pop(_FULL_ERROR, None)
