"""Experiment trackers (TensorBoard, W&B, ... as Accelerate knows them) beside metrics.jsonl, which stays the record.

`train.log_with` names them (`tensorboard`, `wandb`, `tensorboard,wandb`, a YAML list, `all`: every one whose
package is installed). Only a training run logs: `make_accelerator(cfg, run=True)` passes them to its own
Accelerator (one per run: `log_with`, the project folder and the trackers are the instance's, not Accelerate's
process-wide state), with the run's `<out_dir>/trackers/` as their logging folder.

* **Checked before any work**: an unknown name is a ConfigError at config validation, listing Accelerate's
  trackers; a tracker whose package is missing is a ConfigError naming the package before the Accelerator is
  made (Accelerate itself would only drop it, with a debug-level log line).
* **Started after the run's checks pass** (the run owns out_dir by then: nothing is written there before), on the
  main process only (Accelerate's `init_trackers` and `log` run there alone), with the resolved config as flat
  hyperparameters (`data.batch_size`: TensorBoard takes only numbers, strings and booleans; lists as JSON text,
  nulls left out).
* **Each metrics.jsonl row is logged** at its `step` (the training step): the step rows, the evaluations, the final
  summary; numbers only (booleans such as `final` and strings such as `checkpoint` are left out). The values are
  the Python numbers the row already holds: no host read is added.
  A tracker that cannot start (W&B online without a login) is a one-line TrackerError; the run is then failed.
* **A resume continues the same run.** TensorBoard: the new event file starts with a purge at the checkpoint's step
  (`SummaryWriter(purge_step=)`), which hides everything the earlier run logged from that step on; the rows
  metrics.jsonl keeps at that step are logged again, so TensorBoard shows exactly metrics.jsonl's rows (a start
  over: a purge at 0). W&B: the same run id (kept in `<out_dir>/trackers/run.json`) with `resume="allow"`; W&B
  takes only increasing steps in a run, so the redone steps keep the first run's values there (not checked
  against a W&B server: offline, each start is its own offline-run folder of that id).
* **Ended however the run ends** (finished, preempted, stopped, an error): each tracker's `finish`, not
  `Accelerator.end_training`, which also destroys the process group that a later run in the same process
  (`compare`, the demo's teacher) still needs. A failed run is marked failed in W&B (exit code 1).
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from .config import ConfigError, _flatten, to_dict
from .errors import UserError

TRACKERS_DIR = "trackers"
RUN_FILE = "run.json"  # the run's id for trackers that resume by id (W&B)
KEY = "train.log_with"

# Accelerate's availability check for each built-in tracker, and what to install when it fails
_PACKAGES = {
    "tensorboard": ("is_tensorboard_available", "tensorboard"),
    "wandb": ("is_wandb_available", "wandb"),
    "comet_ml": ("is_comet_ml_available", "comet-ml"),
    "aim": ("is_aim_available", "'aim<4'"),
    "mlflow": ("is_mlflow_available", "mlflow"),
    "clearml": ("is_clearml_available", "clearml"),
    "dvclive": ("is_dvclive_available", "dvclive"),
    "swanlab": ("is_swanlab_available", "swanlab"),
    "trackio": ("is_trackio_available", "trackio"),
}


class TrackerError(UserError):
    """A tracker that could not start or end, in one line (the run's own files are unaffected)."""


def known() -> list[str]:
    """The names Accelerate accepts in `log_with` (its built-in trackers and any registered with it)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return sorted(LOGGER_TYPE_TO_CLASS)


def parse(value) -> list[str]:
    """`train.log_with` as tracker names: "none"/""/[] -> []; "a,b" or [a, b] -> ["a", "b"]; "all" kept as is.

    An unknown name is a ConfigError listing Accelerate's trackers (with the closest one, for a typo)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [str(n).strip().lower() for n in items if str(n).strip()]
    if names in ([], ["none"], ["no"], ["false"], ["off"]):  # `log_with: false` in YAML, or =false / =off
        return []
    allowed = known()
    for name in names:
        if name not in allowed and name != "all":
            import difflib

            close = difflib.get_close_matches(name, allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"config key '{KEY}': unknown tracker {name!r}{hint}; Accelerate's trackers: "
                f"{', '.join(allowed)}, or all (every installed one), or none"
            )
    if len(names) != len(set(names)):
        raise ConfigError(f"config key '{KEY}' names a tracker twice: {value!r}")
    return names


def available(name: str) -> bool:
    """Accelerate's own check of a tracker's package, asked now (a tracker registered with Accelerate: True)."""
    import accelerate.utils as au

    check = _PACKAGES.get(name)
    return check is None or bool(getattr(au, check[0])())


def resolve(cfg) -> list[str]:
    """The trackers this run logs to, each with its package installed; a missing one is a ConfigError naming it.

    `all`: every built-in tracker whose package is installed (at least one)."""
    names = parse(cfg.train.log_with)
    if "all" in names:
        found = [n for n in _PACKAGES if available(n)]
        if not found:
            raise ConfigError(
                f"config key '{KEY}'=all: no tracker package is installed (e.g. pip install "
                "tensorboard, or pip install wandb)"
            )
        return found + [n for n in names if n != "all" and n not in found]
    for name in names:
        if not available(name):
            raise ConfigError(
                f"config key '{KEY}' names {name}, but its package is not installed: pip install {_PACKAGES[name][1]}"
            )
    return names


def project_config(cfg):
    """Where a run's trackers write: `<out_dir>/trackers/` (the project folder is out_dir; nothing is created yet)."""
    from accelerate.utils import ProjectConfiguration

    out = Path(cfg.out_dir)
    return ProjectConfiguration(project_dir=str(out), logging_dir=str(out / TRACKERS_DIR))


def check_made(accelerator, names: list[str]) -> None:
    """Accelerate keeps only the trackers it found installed when it was imported: say so if it dropped one."""
    got = [str(t) for t in accelerator.log_with]
    missing = [n for n in names if n not in got]
    if missing:
        raise ConfigError(
            f"config key '{KEY}': Accelerate did not take {', '.join(missing)} (installed after "
            "accelerate was imported? start a new process)"
        )


def hparams(cfg) -> dict:
    """The resolved config as flat `section.key` values that every tracker takes (numbers, strings, booleans)."""
    flat = {}
    for key, value in _flatten(to_dict(cfg)).items():
        if value is None:
            continue
        flat[key] = json.dumps(value) if isinstance(value, (list, tuple, dict)) else value
    return flat


def start(accelerator, cfg, step: int, resumed: bool) -> None:
    """Main process, once the run owns out_dir: start the trackers (a resume continues the same tracker runs)."""
    if not getattr(accelerator, "log_with", None):
        return
    folder = Path(cfg.out_dir) / TRACKERS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    run_id = _run_id(folder, resumed)
    init_kwargs = {
        # TensorBoard hides every event at or after `step` that the earlier run logged (as metrics.jsonl drops the
        # rows after the checkpoint; a start over: step 0, all of them); the kept rows at `step` are logged again.
        "tensorboard": {"purge_step": step},
        "wandb": {"dir": str(folder), "name": Path(cfg.out_dir).name, "id": run_id, "resume": "allow"},
    }
    try:
        accelerator.init_trackers(cfg.train.tracker_project, config=hparams(cfg), init_kwargs=init_kwargs)
    except Exception as e:  # noqa: BLE001 - a tracker's own error (no network, no login) as one line
        names = ", ".join(str(t) for t in accelerator.log_with)
        finish(accelerator, failed=True, quiet=True)  # those that started; the others have nothing to end
        hint = " (W&B with no login or no network: WANDB_MODE=offline logs under out_dir)" if "wandb" in names else ""
        raise TrackerError(f"config key '{KEY}': {names} could not start: {_first_line(e)}{hint}") from None
    if step > 0:
        _relog(accelerator, Path(cfg.out_dir) / "metrics.jsonl", step)


def _relog(accelerator, metrics: Path, step: int) -> None:
    """After TensorBoard's purge at `step`: the rows metrics.jsonl keeps at `step` (the step row before the
    checkpoint, an evaluation), logged again to TensorBoard alone (W&B keeps them: it only appends)."""
    board = [t for t in accelerator.trackers if t.name == "tensorboard"]
    if not board or not metrics.is_file():
        return
    for line in metrics.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("step") == step:
            for tracker in board:
                tracker.log(_numbers(row), step=step)


def log(accelerator, row: dict) -> None:
    """One metrics.jsonl row at its training step, numbers only (main process: Accelerate skips the others)."""
    if not getattr(accelerator, "trackers", None):
        return
    accelerator.log(_numbers(row), step=row["step"])


def _numbers(row: dict) -> dict:
    """A row's numeric fields but the step (booleans such as `final`, strings such as `checkpoint` left out)."""
    return {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def finish(accelerator, failed: bool = False, quiet: bool = False) -> list[str]:
    """End every tracker of this run (idempotent); a tracker that fails to end is a line printed (unless quiet),
    not an error that would hide how the run ended. Returns those lines."""
    trackers = list(getattr(accelerator, "trackers", None) or [])
    if not trackers:
        return []
    accelerator.trackers = []
    problems = []
    for tracker in trackers:
        try:
            if failed and tracker.name == "wandb":
                tracker.run.finish(exit_code=1)  # shown as failed, not finished
            else:
                tracker.finish()
        except Exception as e:  # noqa: BLE001
            problems.append(f"warning: {KEY}: {tracker.name} did not end cleanly: {_first_line(e)}")
    for line in problems if not quiet else ():
        print(line)
    return problems


def _run_id(folder: Path, resumed: bool) -> str:
    """This run's id for the trackers: kept across resumes in trackers/run.json, new for a new run."""
    from .files import atomic_write_json

    path = folder / RUN_FILE
    if resumed:
        try:
            return str(json.loads(path.read_text())["id"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a checkpoint from elsewhere, or a run from before trackers: a new id
    run_id = secrets.token_hex(4)
    atomic_write_json(path, {"id": run_id})
    return run_id


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
