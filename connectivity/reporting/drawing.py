"""The pair figures of a path run folder: which ones a report draws, what each was drawn from
(``figures/drawn.json``), and drawing those missing or stale.

The drawing itself is :func:`connectivity.reporting.figures.pair_figure`; the files are written
by the store (:class:`~connectivity.store.records.RunStore`).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from connectivity.engine.split import INPUT
from connectivity.errors import ConnectivityError, OptionsError
from connectivity.reporting import figures as figures_module
from connectivity.reporting.figures import checked_points, figure_png, lowest_margin, pair_figure
from connectivity.reporting.tables import ends_text, verdict_sentence
from connectivity.store.records import RunStore, figure_name

# Which figures a report draws (``figures``: the paths config, ``--figures`` of ``paths`` and
# ``report``). A digits figure takes about 0.3 s on a CPU core (2026-12-06: 129 in 40.6 s), and
# more with larger images and more pivots; ``auto`` draws the ones a person looks at.
FIGURES = ("auto", "all", "none")
# ``auto``'s closest linear calls per space: one row of the gallery.
CLOSEST_LINEAR = 3
FIGURES_HELP = (
    "which pair figures to draw: auto (every nonlinear, none and diverged pair, and the "
    f"{CLOSEST_LINEAR} linear pairs closest to a boundary per space), all, or none; a figure "
    "is drawn again only when its record, its decoder or the drawing code changed"
)


# What each figure was drawn from (see :func:`_stamp`), so a rerun redraws only what changed.
STAMPS_FILE = "figures/drawn.json"


def check_figures(value: Any) -> str:
    """``value`` when it is one of :data:`FIGURES`.

    Raises:
        OptionsError: Any other value (checked before any work).
    """
    if not isinstance(value, str) or value not in FIGURES:
        raise OptionsError(
            f"figures must be one of {', '.join(FIGURES)}, got {value!r}; auto draws the "
            "pairs worth a look, all draws every pair"
        )
    return value


def figures_to_draw(
    by_space: dict[str, list[dict[str, Any]]], figures: str, closest: int = CLOSEST_LINEAR
) -> set[tuple[str, int]]:
    """``(space, pair id)`` of every figure ``figures`` asks for.

    ``auto``: per space, every pair whose verdict is not ``linear`` (nonlinear, none, diverged)
    and the ``closest`` linear pairs with the lowest target margin along the line between its
    ends (ties: the lower pair id), no two sharing an input while others are left (a weakly
    classified input would otherwise make every pair it is in a "closest call" at its end);
    ``all``: every pair; ``none``: no pair.

    Raises:
        OptionsError: ``figures`` is not one of :data:`FIGURES`.
    """
    check_figures(figures)
    if figures == "none":
        return set()
    chosen: set[tuple[str, int]] = set()
    for space, records in by_space.items():
        if figures == "all":
            chosen |= {(space, r["pair"]["id"]) for r in records}
            continue
        linear = [r for r in records if r["verdict"] == "linear"]
        chosen |= {(space, r["pair"]["id"]) for r in records if r["verdict"] != "linear"}
        linear.sort(key=lambda r: (_margin_between_ends(r), r["pair"]["id"]))
        picked: list[dict[str, Any]] = []
        used: set[int] = set()
        for record in linear:
            ends = {record["pair"].get("start_index"), record["pair"].get("end_index")} - {None}
            if len(picked) < closest and not ends & used:
                picked.append(record)
                used |= ends
        ids = {id(r) for r in picked}
        picked += [r for r in linear if id(r) not in ids][: closest - len(picked)]
        chosen |= {(space, r["pair"]["id"]) for r in picked}
    return chosen


def _margin_between_ends(record: dict[str, Any]) -> float:
    """The lowest target margin of a line's checked points strictly between its ends (records
    without checked points: the lowest along the whole line)."""
    if record.get("line_check_position") is None:
        return lowest_margin(record, "line")
    position, margin, _ = checked_points(record, "line")
    inside = margin[(position > 0) & (position < 1) & np.isfinite(margin)]
    return float(inside.min()) if inside.size else lowest_margin(record, "line")


def _short_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


# Bump when :func:`_draw_pair` or :func:`~connectivity.reporting.tables.verdict_sentence` (a
# figure's title) changes what is drawn.
DRAWING_VERSION = 1


# The code that draws a figure, as imported (read now: the file may be edited while a run
# goes on): a change of it makes every figure stale.
_DRAWING_CODE = hashlib.sha256(
    Path(figures_module.__file__).read_bytes() + f"report {DRAWING_VERSION}".encode()
).hexdigest()[:16]


# The digest of a decoder checkpoint that is not there (a run folder copied without it).
UNKNOWN_DECODER = "missing"


def _decoder_digests(*decoders: dict[str, str]) -> list[dict[str, str]]:
    """``{space: digest of its decoder checkpoint}`` of each ``{space: checkpoint}`` given;
    :data:`UNKNOWN_DECODER` where the file is missing. A checkpoint named in several (the
    run's own decoders, given again) is read once."""
    found: dict[Path, str] = {}

    def digest(path: str) -> str:
        file = Path(path).resolve()
        if file not in found:
            found[file] = _short_digest(file.read_bytes()) if file.is_file() else UNKNOWN_DECODER
        return found[file]

    return [{space: digest(path) for space, path in paths.items()} for paths in decoders]


def _read_stamps(store: RunStore) -> dict[str, Any]:
    """What each figure was drawn from; none yet, or damaged: figures are judged by their
    times alone."""
    stamps = store.read_json(STAMPS_FILE, {})
    return stamps if isinstance(stamps, dict) else {}


def _stamp(store: RunStore, space: str, pair_id: int, decoder: str | None, code: str) -> dict:
    """What a figure is drawn from: its record (digest of the file), decoder and code."""
    record = store.record_path(space, pair_id).read_bytes()
    return {"record": _short_digest(record), "decoder": decoder, "code": code}


def _up_to_date(
    store: RunStore,
    space: str,
    pair_id: int,
    stamp: dict[str, Any] | None,
    wanted: dict[str, Any],
    own_decoder: str | None,
) -> bool:
    """Whether a pair's figure on disk shows its record as the decoders and code now would.

    With a stamp, the stamp decides. A figure without one (drawn before stamps were kept) is
    taken when it is newer than its record and the space's decoder is the run's own, which
    is what drew it. Where the decoder checkpoint is missing (the folder was copied without
    it) the figure cannot be drawn again, and the one there is kept."""
    file = store.folder / figure_name(space, pair_id)
    if not file.is_file():
        return False
    if stamp is not None:
        if wanted["decoder"] == UNKNOWN_DECODER:
            wanted = {**wanted, "decoder": stamp.get("decoder")}
        return stamp == wanted
    record = store.record_path(space, pair_id)
    return file.stat().st_mtime_ns >= record.stat().st_mtime_ns and wanted["decoder"] == own_decoder


def load_decoders(paths: dict[str, str], classifier: str | None = None) -> dict[str, Any]:
    """``{space: DecoderModule}`` of a run's ``{space: decoder checkpoint}``.

    Args:
        paths: The decoder checkpoints by space.
        classifier: The run's classifier checkpoint. A decoder reads its head from the
            classifier it was trained on; the path saved in it may be relative to another
            folder, so the run's own classifier is used when that file exists (the decoder's
            digest still refuses other weights).

    Raises:
        CheckpointError: a decoder cannot be loaded, or was trained on another classifier.
        ConnectivityError: a decoder maps another layer than the space it is given for.
    """
    if not paths:
        return {}
    from connectivity.decoder import DecoderModule

    if classifier is not None and not Path(classifier).is_file():
        classifier = None
    decoders = {}
    for space, path in paths.items():
        decoder = DecoderModule.from_checkpoint(path, classifier=classifier)
        if decoder.hparams.layer != space:
            raise ConnectivityError(
                f"the decoder {path} maps layer {decoder.hparams.layer!r} to images, but it is "
                f"given for {space!r}; give it as decoders.{decoder.hparams.layer}"
            )
        decoders[space] = decoder
    return decoders


def points_as_images(space: str, points: Tensor, decoders: dict[str, Any]) -> Tensor | None:
    """How a person sees the points of a space: the images themselves, decoded, or not at all."""
    if space == INPUT:
        return points
    if space in decoders:
        return decoders[space].decode(points).cpu()
    return None


def _images_note(space: str, decoders: dict[str, Any]) -> str | None:
    """How the images of a latent space's figures were made (None: the points are images)."""
    if space == INPUT or space not in decoders:
        return None
    from connectivity.decoder import validation_note

    return f"decoded by the {space} decoder ({validation_note(decoders[space].validation)})"


def _draw_pair(
    store: RunStore,
    space: str,
    record: dict[str, Any],
    class_names: list[str],
    decoders: dict[str, Any],
) -> Path:
    """Draw one pair's figure in one space and save it; its file."""
    pair = record["pair"]
    title = (
        f"{space}: pair {pair['id']} ({ends_text(pair)}), class "
        f"{class_names[record['target']]!r}: "
        f"{verdict_sentence(record)}"
    )
    figure = pair_figure(
        record,
        title,
        points_as_images(space, record["line"], decoders),
        points_as_images(space, record["path"], decoders),
        class_names=class_names,
        images_note=_images_note(space, decoders),
        difference=space == INPUT,
        end_images=None if space == INPUT else record.get("end_images"),
    )
    name = figure_name(space, pair["id"])
    store.save_bytes(name, figure_png(figure))
    return store.path(name)


def draw_figures(
    store: RunStore,
    by_space: dict[str, list[dict[str, Any]]],
    decoders: dict[str, str],
    figures: str = "auto",
) -> set[tuple[str, int]]:
    """Draw the figures ``figures`` asks for (see :func:`figures_to_draw`) that are missing or
    stale, with a progress bar on a terminal; remove stale figures it does not ask for.

    A figure is stale when its record, the space's decoder checkpoint or the drawing code
    changed since it was drawn (``figures/drawn.json`` keeps what each was drawn from).

    Args:
        store: The run folder.
        by_space: Its records (:meth:`RunStore.load_all`).
        decoders: ``{space: decoder checkpoint}`` to show latent points as images.
        figures: ``auto``, ``all`` or ``none``.

    Returns:
        ``(space, pair id)`` of every figure the folder now holds for these records.

    Raises:
        OptionsError: ``figures`` is not one of :data:`FIGURES`.
    """
    chosen = figures_to_draw(by_space, figures)
    manifest = store.manifest()
    code = _DRAWING_CODE
    digests, own = _decoder_digests(decoders, store.decoders())
    before = _read_stamps(store).get("figures")
    held: dict[str, Any] = dict(before) if isinstance(before, dict) else {}
    kept: set[tuple[str, int]] = set()
    todo: list[tuple[str, dict[str, Any], dict[str, Any]]] = []  # (space, record, its stamp)
    for space, records in by_space.items():
        for record in records:
            pair_id = record["pair"]["id"]
            name = figure_name(space, pair_id)
            wanted = _stamp(store, space, pair_id, digests.get(space), code)
            if _up_to_date(store, space, pair_id, held.get(name), wanted, own.get(space)):
                held.setdefault(name, wanted)  # a stamp there says more (its decoder)
                kept.add((space, pair_id))
            elif (space, pair_id) in chosen:
                todo.append((space, record, wanted))
            else:
                # A figure that no longer shows its record is removed rather than left wrong.
                store.remove(name)
                held.pop(name, None)
    if todo:
        print(
            f"Drawing {len(todo)} figure{'' if len(todo) == 1 else 's'} (figures={figures}; "
            f"{len(kept)} up to date"
            + ("; --figures all draws every pair)" if figures == "auto" else ")"),
            flush=True,
        )
    spaces = {space for space, _, _ in todo}  # decoders are loaded only where a figure needs one
    needed = {s: p for s, p in decoders.items() if s in spaces}
    try:
        modules = load_decoders(needed, manifest.get("classifier"))
    except ConnectivityError as error:
        raise ConnectivityError(
            f"{len(todo)} figures need the decoders {needed}, which cannot be loaded from here "
            f"({error}); run from the folder the run was made in, give them with --decoders "
            "'{space: checkpoint}', or leave figures as they are with --figures none"
        ) from error
    from tqdm import tqdm

    try:
        for space, record, wanted in tqdm(
            todo, desc="figures", unit="figure", leave=False, file=sys.stderr, disable=None
        ):
            pair_id = record["pair"]["id"]
            _draw_pair(store, space, record, manifest["class_names"], modules)
            held[figure_name(space, pair_id)] = wanted
            kept.add((space, pair_id))
    finally:
        # Also after an interruption: what was drawn is not drawn again.
        if held != before:
            store.save_json(STAMPS_FILE, {"figures": dict(sorted(held.items()))}, indent=1)
    return kept
