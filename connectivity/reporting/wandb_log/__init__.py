"""Weights & Biases, in one place: runs started, resumed and finished (:mod:`.runs`), the
report's tables and figures logged (:mod:`.tables`), offline runs kept syncable (:mod:`.offline`).

No other module of the package imports ``wandb``; Lightning's ``WandbLogger`` class is named
here only.
"""

from connectivity.reporting.wandb_log.offline import (
    offline_run_records,
    read_transaction_log,
    relocate_offline_runs,
    write_transaction_log,
)
from connectivity.reporting.wandb_log.runs import (
    REPORTED_FILE,
    WANDB_ID_FILE,
    RunFolderWandbLogger,
    WandbOptions,
    close_wandb,
    finish_active_run,
    log_config,
    log_image,
    mark_reported,
    offline_runs,
    paths_logger,
    prepare_loggers,
    prepare_wandb_logger,
    report_run_id,
    run_folder,
    run_folder_environment,
    run_lines,
    wandb_environment,
    wandb_run_id,
    wandb_run_line,
)
from connectivity.reporting.wandb_log.tables import (
    log_graph_report,
    log_paths_report,
    split_rows,
    table_parts,
)

__all__ = [
    "REPORTED_FILE",
    "WANDB_ID_FILE",
    "RunFolderWandbLogger",
    "WandbOptions",
    "close_wandb",
    "finish_active_run",
    "log_config",
    "log_graph_report",
    "log_image",
    "log_paths_report",
    "mark_reported",
    "offline_run_records",
    "offline_runs",
    "paths_logger",
    "prepare_loggers",
    "prepare_wandb_logger",
    "read_transaction_log",
    "relocate_offline_runs",
    "report_run_id",
    "run_folder",
    "run_folder_environment",
    "run_lines",
    "split_rows",
    "table_parts",
    "wandb_environment",
    "wandb_run_id",
    "wandb_run_line",
    "write_transaction_log",
]
