"""W&B runs: the options, where W&B writes, a run folder's run id and report marker, the
Lightning loggers of training and path runs, and the line that says where a run is.

Every W&B run of this package starts, resumes and ends here (the report's tables are logged
by :mod:`connectivity.reporting.wandb_log.tables`). W&B itself is imported only inside the
functions that use it: a command that logs nothing need not pay for importing it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from connectivity.store.folders import ensure_folder
from connectivity.store.records import RunStore


@dataclass
class WandbOptions:
    """Weights & Biases logging of a path run (per-step metrics, tables, figures, checkpoint).

    Each run folder has one W&B run: its id is kept in ``<run folder>/wandb_id``, and
    everything W&B writes for it (the offline run, staged media and tables, caches, its
    service's logs) stays under ``<run folder>/wandb``. Offline runs name their staged files
    relative to the run folder, so a copied folder is uploaded as it is, from inside it:
    ``cd <run folder> && wandb sync wandb/offline-run-*`` (several folders of one id are one
    run, synced in order of start time). The classifier checkpoint is a reference to its path,
    outside the folder, and is never uploaded.

    Args:
        enabled: Log to W&B at all.
        project: W&B project.
        offline: Write an offline run under the run folder (``wandb sync`` uploads it later).
            ``WANDB_MODE`` in the environment wins over this.
        relog: Log the report again, as a second W&B run with a fresh id, even though this
            folder's report was logged already (by default a rerun of ``paths`` or ``report``
            on a logged run adds nothing to W&B).
    """

    enabled: bool = True
    project: str = "connectivity"
    offline: bool = True
    relog: bool = False


# Where W&B writes, inside the run folder: the offline runs (``dir``), the staged copies of
# logged tables, images and artifacts (WANDB_DATA_DIR; by default in the user's home, which
# `wandb sync` on another machine would miss), caches and the service's own logs.
WANDB_SUBDIR = "wandb"
DATA_SUBDIR = "data"
WANDB_ID_FILE = "wandb_id"
REPORTED_FILE = "wandb_reported.json"
PER_STEP_METRICS = ("max_energy", "max_force", "on_target", "active_pairs")


def wandb_environment(folder: Path) -> dict[str, str]:
    """The environment that keeps every file W&B writes for ``folder`` inside it."""
    root = Path(folder).resolve() / WANDB_SUBDIR
    return {
        "WANDB_DIR": str(root.parent),
        "WANDB_DATA_DIR": str(root / DATA_SUBDIR),
        "WANDB_CACHE_DIR": str(root / "cache"),
        "WANDB_ARTIFACT_DIR": str(root / "artifacts"),
    }


@contextlib.contextmanager
def run_folder_environment(folder: Path) -> Iterator[None]:
    """Point W&B's directories inside ``folder`` while the block runs; the caller's values
    (set or unset) come back afterwards, also when the block raises. ``WANDB_MODE`` is
    restored too, since Lightning's logger sets it for offline runs."""
    values = wandb_environment(folder)
    saved = {k: os.environ.get(k) for k in (*values, "WANDB_MODE")}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _mode(options: WandbOptions) -> str:
    return os.environ.get("WANDB_MODE") or ("offline" if options.offline else "online")


def mark_reported(store: RunStore, run_id: str) -> None:
    """Write the marker that W&B holds the folder's report, in run ``run_id``.

    It names the run only, not where the folder lay: a copied or moved folder's marker stays
    true (a marker of an earlier version also names the folder; that key is not read).
    """
    store.save_json(REPORTED_FILE, {"id": run_id})


def _reported(store: RunStore) -> dict[str, Any] | None:
    """What the marker of a logged report says (``{"id": run id}``), or None; a damaged marker
    is None too: the report is logged again rather than lost."""
    marker = store.read_json(REPORTED_FILE)
    return marker if isinstance(marker, dict) else None


def wandb_run_id(store: RunStore, fresh: bool = False) -> str:
    """The W&B run id of a run folder, created (and kept in ``wandb_id``) on first use.

    Args:
        store: The run folder.
        fresh: Replace the kept id by a new one (a second W&B run, asked for by ``relog``).
    """
    kept = "" if fresh else (store.read_text(WANDB_ID_FILE) or "").strip()
    if kept:
        return kept
    from wandb.sdk.lib.runid import generate_id

    run_id = generate_id()
    store.save_text(WANDB_ID_FILE, run_id + "\n")
    return run_id


def _run_id_to_log(store: RunStore, options: WandbOptions) -> str | None:
    """The id the report goes to, or None when it was logged under the current id already
    and no ``relog`` is asked."""
    run_id = wandb_run_id(store)
    marker = _reported(store)
    if marker is None or marker.get("id") != run_id:
        return run_id
    if not options.relog:
        return None
    return wandb_run_id(store, fresh=True)


def offline_runs(folder: str | Path) -> list[Path]:
    """The offline W&B runs of a run folder, oldest first by the second they started (W&B's
    folder name; runs started in the same second come in id order)."""
    return sorted((Path(folder) / WANDB_SUBDIR).glob("offline-run-*"))


def report_run_id(store: RunStore, options: WandbOptions) -> str | None:
    """The W&B run id a folder's report goes to; None (and says so) when W&B holds it already."""
    run_id = _run_id_to_log(store, options)
    if run_id is None:
        where = (
            f"; it is offline: upload it with `cd {store.folder} && wandb sync wandb/offline-run-*`"
            if offline_runs(store.folder)
            else ""
        )
        print(
            f"W&B already holds this folder's report (run {wandb_run_id(store)}){where}; pass "
            "--wandb.relog true to log it again as a new run."
        )
    return run_id


def run_config(store: RunStore) -> dict[str, Any]:
    """The run's config: ``run.json`` without its long lists (the pairs of a path run, the
    inputs of a graph run); empty before the run starts."""
    if not store.path("run.json").is_file():
        return {}
    return {k: v for k, v in store.manifest().items() if k not in ("pairs", "inputs")}


def init_arguments(
    store: RunStore, options: WandbOptions, run_id: str, job_type: str = "paths"
) -> dict[str, Any]:
    """``wandb.init``'s arguments for the run ``run_id`` of a run folder (resumed if it
    exists); ``job_type`` is ``paths`` or ``graph``."""
    return {
        "project": options.project,
        "name": store.folder.name,
        "id": run_id,
        "resume": "allow",
        "dir": str(store.folder.resolve()),
        "mode": _mode(options),
        "job_type": job_type,
        "config": run_config(store),
    }


def prepare_wandb_logger(logger: WandbLogger) -> None:
    """Start a Lightning ``WandbLogger``'s run without warnings that only its set-up causes.

    Lightning passes ``anonymous=None`` to ``wandb.init``, which recent W&B reports as a
    deprecated setting being set; W&B looks for a git repository from the run's save folder
    and warns when that folder does not exist yet (a first run in a fresh folder).
    """
    # Lightning keeps wandb.init's arguments here and no public setter exists.
    arguments = getattr(logger, "_wandb_init", None)
    if isinstance(arguments, dict) and arguments.get("anonymous", True) is None:
        del arguments["anonymous"]
    if logger.save_dir:
        ensure_folder(Path(logger.save_dir))


class RunFolderWandbLogger(WandbLogger):
    """A WandbLogger whose run starts with W&B's directories inside the run folder.

    Args:
        folder: The run folder.
        **kwargs: Arguments of :class:`~lightning.pytorch.loggers.WandbLogger`.
    """

    def __init__(self, folder: str | Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.folder = Path(folder)
        prepare_wandb_logger(self)

    @property
    def experiment(self) -> Any:
        # The run (and W&B's service, on its first start) read the directories at start.
        with run_folder_environment(self.folder):
            return WandbLogger.experiment.fget(self)  # type: ignore[attr-defined]


def paths_logger(store: RunStore, options: WandbOptions | None) -> RunFolderWandbLogger | None:
    """The Lightning logger of a path run: its W&B run is the one the report logs into.

    Give it to the ``Trainer`` of the experiment; the path module logs its per-step metrics
    ``<space>/max_energy``, ``<space>/max_force``, ``<space>/on_target`` and
    ``<space>/active_pairs`` through it. The run starts lazily (on first use, on rank zero
    only), with the folder's persistent id and ``resume="allow"``, so a resumed experiment
    continues the same W&B run; :func:`write_report` then logs the report into that run
    (while it is still active) and finishes it.

    Args:
        store: The run folder (its ``run.json`` becomes the run's config; when it is not
            written yet, the report adds it to the config later).
        options: W&B settings; None or ``enabled=False`` means no logger.

    Call it on every rank before the Trainer is built: only rank zero (by Lightning's
    ``rank_zero_only.rank``, read from the launcher's environment) reads or writes the
    folder's id; the other ranks get a logger that never starts a run.

    Returns:
        The logger, or None when W&B is off, or (on rank zero) when this folder's report was
        logged already and ``options.relog`` is false (a rerun of a finished run adds no run).
    """
    if options is None or not options.enabled:
        return None
    if rank_zero_only.rank != 0:
        # Other ranks never start the run (Lightning's logger is rank-zero only); they must
        # not race rank zero for the id file either.
        return RunFolderWandbLogger(store.folder, project=options.project, offline=False)
    run_id = _run_id_to_log(store, options)
    if run_id is None:
        return None
    arguments = init_arguments(store, options, run_id)
    return RunFolderWandbLogger(
        store.folder,
        name=arguments.pop("name"),
        save_dir=arguments.pop("dir"),
        id=arguments.pop("id"),
        project=arguments.pop("project"),
        # `offline=True` would set WANDB_MODE for the whole process; `mode` does not.
        offline=False,
        **arguments,
    )


def wandb_run_line(run: Any, run_folder: Path | None = None) -> str:
    """One line saying where a W&B run is: its page, or its offline folder and how to upload it.

    Args:
        run: A W&B run (``wandb.init``'s).
        run_folder: The paths or graph run folder the offline W&B runs lie in: they are
            uploaded from inside it, as the files they stage are named relative to it (so a
            copied folder syncs as it is). None: the W&B run's own folder.
    """
    if not getattr(run, "offline", False) and getattr(run, "url", None):
        return f"W&B run: {run.url}"
    if run_folder is not None:
        return (
            f"W&B run (offline): upload it with `cd {run_folder} && wandb sync wandb/offline-run-*`"
        )
    folder = getattr(run, "sync_dir", None) or str(Path(run.dir).parent)
    return f"W&B run (offline): upload it with `wandb sync {folder}`"


def _wandb_loggers(loggers: Iterable[Logger]) -> list[WandbLogger]:
    return [logger for logger in loggers if isinstance(logger, WandbLogger)]


def prepare_loggers(loggers: Iterable[Logger]) -> None:
    """:func:`prepare_wandb_logger` for each W&B logger of a Trainer (others are left alone)."""
    for logger in _wandb_loggers(loggers):
        prepare_wandb_logger(logger)


def log_config(loggers: Iterable[Logger], config: dict[str, Any]) -> None:
    """Add ``config`` to the config of each W&B run among a Trainer's loggers."""
    for logger in _wandb_loggers(loggers):
        logger.log_hyperparams(config)


def log_image(loggers: Iterable[Logger], key: str, image: Any, step: int, caption: str) -> None:
    """Log one image (an ``(H, W, 3)`` uint8 array) to each W&B run among a Trainer's loggers.

    Args:
        loggers: The Trainer's (or module's) loggers; loggers of other kinds are skipped.
        key: The W&B key (``val/reconstructions``).
        image: The picture, ``(H, W, 3)`` uint8.
        step: The Trainer's global step.
        caption: What the picture shows.
    """
    for logger in _wandb_loggers(loggers):
        logger.log_image(key=key, images=[image], step=step, caption=[caption])


def run_lines(loggers: Iterable[Logger]) -> list[str]:
    """:func:`wandb_run_line` of each W&B run among a Trainer's loggers."""
    return [wandb_run_line(logger.experiment) for logger in _wandb_loggers(loggers)]


def run_folder(trainer: L.Trainer) -> Path:
    """A training run's own folder: ``<save_dir>/<project>/<run id>`` with W&B (where Lightning
    puts its checkpoints), else the trainer's ``log_dir``."""
    for logger in _wandb_loggers(trainer.loggers):
        return Path(logger.save_dir or ".") / str(logger.name) / str(logger.version)
    return Path(trainer.log_dir or trainer.default_root_dir)


def finish_active_run() -> None:
    """Finish the process's active W&B run, if W&B was imported at all (a command's run ends
    with it, under its output settings: left to the end of the process, W&B's service would
    print its own sync hint after ours)."""
    if "wandb" in sys.modules:
        import wandb

        wandb.finish()


def close_wandb() -> None:
    """Finish the active W&B run and stop W&B's service, so that the next run in this process
    starts afresh, reading its own environment (a path run points W&B's folders into its run
    folder; a running W&B would warn that it ignores them)."""
    import wandb

    wandb.finish()
    wandb.teardown()
