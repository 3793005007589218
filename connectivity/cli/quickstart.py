"""``connectivity quickstart``: the whole study on the embedded digits, offline, on a CPU.

Stages, each skipped when its result is already there: the quick classifier, a decoder for its
first hidden layer and one for its last layer, then 50 pairs (the closest calls of 600) decided
in the input space and in both layers with table, figures and an offline W&B run. Every stage
is the same YAML config a user would run by hand (``configs/classifier/quick.yaml``,
``configs/decoder/quick_*.yaml``, ``configs/paths/quick.yaml``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from connectivity.checkpoints import file_digest
from connectivity.cli.commands import PathsCommand
from connectivity.cli.training import TrainingCLI
from connectivity.engine.split import INPUT
from connectivity.errors import ConnectivityError
from connectivity.lightning.output import quiet_library_output
from connectivity.reporting.wandb_log import close_wandb
from connectivity.store.files import copy_file, read_json_or, write_json
from connectivity.store.records import RunStore, figure_name

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DECODED_LAYERS = {"layer1": "quick_layer1.yaml", "flatten": "quick_last.yaml"}


def _say(message: str) -> None:
    print(f"[quickstart] {message}", flush=True)


def _config(relative: str) -> Path:
    path = CONFIGS / relative
    if not path.is_file():
        raise ConnectivityError(
            f"quickstart needs the repository's configs ({path} is missing): install the project "
            "from its checkout with `pip install -e .` and run it there"
        )
    return path


def _fit(config: Path, target: Path, classifier: Path | None = None) -> dict[str, Any]:
    """Train as ``connectivity fit -c config`` does; copy the best checkpoint to ``target``.

    ``classifier``: the checkpoint a decoder is trained on (its config names a fixed path).
    """
    args = ["fit", "-c", str(config)]
    if classifier is not None:
        args += ["--model.init_args.classifier", str(classifier)]
    cli = TrainingCLI(args=args)
    best = cli.trainer.checkpoint_callback.best_model_path
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best, verbose=False)
    close_wandb()  # else the next stage's logger would log into this stage's W&B run
    copy_file(Path(best), target)  # the stage counts as done only once its checkpoint is whole
    return {"checkpoint": str(best), "test": results[0] if results else {}}


def _run_paths(config: Path, classifier: Path, decoders: dict[str, str], run: Path) -> None:
    """Run ``connectivity paths -c config`` on this quickstart's classifier and decoders."""
    command = PathsCommand.from_file(config)
    command.experiment = dataclasses.replace(
        command.experiment,
        classifier=str(classifier),
        decoders=decoders,
        output_dir=str(run.parent),
        name=run.name,
    )
    command.run()


def example_figure(store: RunStore) -> Path | None:
    """The figure of the input-space pair whose straight line dips deepest out of its class
    among those a band decided (chosen by the run, not by a pair number); None when every
    input-space line stayed in its class or no such figure is drawn."""
    bent = [
        record
        for record in store.load(INPUT)
        if record["verdict"] != "linear"
        and (store.folder / figure_name(INPUT, record["pair"]["id"])).is_file()
    ]
    if not bent:
        return None
    deepest = min(bent, key=lambda record: float(record["line_min_margin"]))
    return store.folder / figure_name(INPUT, deepest["pair"]["id"])


def _paths_done(folder: Path) -> bool:
    table = folder / "table.md"
    return table.is_file() and "Not yet decided" not in table.read_text()


def quickstart(output: str = "lightning_logs/quickstart") -> dict[str, Any]:
    """Train the digits classifier and its decoders, then decide 50 pairs in three spaces.

    Finished stages are reused; a retrained classifier makes every later stage run again.

    Args:
        output: Folder of the quickstart's checkpoints, path run and ``summary.json``.

    Returns:
        The summary (also saved), with the wall time of each stage run.
    """
    with quiet_library_output():
        return _quickstart(Path(output))


def _quickstart(folder: Path) -> dict[str, Any]:
    summary_file = folder / "summary.json"
    summary: dict[str, Any] = read_json_or(summary_file, {})

    def stage(
        name: str, done: bool, work: Callable[[], dict[str, Any] | None], **details: Any
    ) -> bool:
        """Run the stage unless it is ``done``; whether it ran."""
        if done:
            _say(f"{name}: done before, reused")
            return False
        _say(f"{name}: running")
        start = time.perf_counter()
        found = work() or {}
        summary[name] = {**found, **details, "seconds": round(time.perf_counter() - start, 1)}
        write_json(summary_file, summary)
        _say(f"{name}: finished in {summary[name]['seconds']} s")
        return True

    classifier = folder / "classifier.ckpt"
    stage(
        "classifier",
        classifier.is_file(),
        lambda: _fit(_config("classifier/quick.yaml"), classifier),
    )
    # Later stages are built on one classifier; a retrained one makes them stale.
    digest = file_digest(classifier)

    def fresh(name: str) -> bool:
        return summary.get(name, {}).get("classifier_sha256") == digest

    decoders = {}
    for layer, config in DECODED_LAYERS.items():
        decoder = folder / f"decoder_{layer}.ckpt"
        decoders[layer] = str(decoder)
        stage(
            f"decoder {layer}",
            decoder.is_file() and fresh(f"decoder {layer}"),
            lambda config=config, decoder=decoder: _fit(
                _config(f"decoder/{config}"), decoder, classifier=classifier
            ),
            classifier_sha256=digest,
        )
    run_folder = folder / "paths"
    if run_folder.exists() and not fresh("paths"):
        # Records of another classifier: keep them aside rather than delete anyone's results.
        aside = folder / f"paths.stale-{time.strftime('%Y%m%d-%H%M%S')}"
        run_folder.rename(aside)
        _say(f"paths: results of an earlier classifier moved to {aside}")
    ran = stage(
        "paths",
        _paths_done(run_folder),
        lambda: _run_paths(_config("paths/quick.yaml"), classifier, decoders, run_folder),
        classifier_sha256=digest,
    )

    store = RunStore(run_folder)
    example = example_figure(store)
    if example is None:
        _say("no input-space line left its class, so no band ran there: see index.html")
    else:
        copy = folder / "example.png"
        if not copy.is_file() or copy.read_bytes() != example.read_bytes():
            copy_file(example, copy)  # a reused run writes nothing again
        _say(f"example of a band at work: {example} (copied to {copy})")
    _say("wall time per stage: " + ", ".join(f"{k} {v['seconds']} s" for k, v in summary.items()))
    _say(
        f"summary page: {store.folder / 'index.html'} (table, counts, figures by space); "
        f"table: {store.folder / 'table.md'}"
    )
    if not ran:  # a run that ran printed its table already
        print((store.folder / "table.md").read_text())
    return summary
