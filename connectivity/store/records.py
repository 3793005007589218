"""Saved results of a path experiment: one file per pair and space, and the verdict table.

Every record is written atomically (a temporary file renamed over the final name), so a crash
never leaves a half-written record, and a rerun skips what is already there.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from connectivity.engine.decisions import PairRecord
from connectivity.store.files import (
    RunFolderError,
    atomic_write_bytes,
    atomic_write_text,
    read_json,
    read_json_or,
    read_tensor,
    write_json,
    write_tensor,
)

__all__ = ["Pair", "RunFolderError", "RunStore"]

ADVERSARIAL = "adversarial.pt"  # a run's adversarial examples (pairs.adversarial)


@dataclass(frozen=True)
class Pair:
    """Two dataset items of the same class.

    ``adversarial``: the end is an adversarial example made to be of this class (its index
    is past the split's items, into the run's ``adversarial.pt``); records saved before there
    were such pairs lack the key and are natural.
    """

    id: int
    start_index: int
    end_index: int
    label: int
    adversarial: bool = False

    def manifest(self) -> dict[str, Any]:
        """The pair as ``run.json`` lists it: a natural pair without the ``adversarial`` key,
        as folders written before there were adversarial pairs list it (so they resume)."""
        values = asdict(self)
        if not self.adversarial:
            del values["adversarial"]
        return values


def compact(value: Any) -> Any:
    """``value`` with every tensor replaced by a compact CPU copy of its own.

    A record's tensors are often views into a whole batch; ``torch.save`` of a view writes its
    entire storage, so a record would grow with the number of pairs decided beside it.
    """
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone(memory_format=torch.contiguous_format)
    if isinstance(value, dict):
        return {k: compact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(compact(v) for v in value)
    return value


def untrained_key(seed: int, space: str) -> str:
    """Where the records of an untrained baseline network (``seed``) in ``space`` go, relative
    to ``records/`` (and its band checkpoints, relative to ``bands/``)."""
    return f"untrained_seed{seed}/{space}"


def figure_name(space: str, pair_id: int) -> str:
    """Where a pair's figure lies in its run folder (relative to the folder)."""
    return f"figures/{space}/pair_{pair_id:04d}.png"


def _pair_id(file: Path) -> int:
    """The pair id in a record's name ``pair_<id>.pt`` (ids may outgrow the zero padding)."""
    return int(file.stem.split("_")[1])


_ABSENT = object()


def _shown(value: Any) -> str:
    return "absent" if value is _ABSENT else json.dumps(value, default=str)


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """The keys in which two manifests differ, dotted down to the leaves (``path.steps``),
    each with both values when they are short: ``"path.steps (folder: 20, asked: 30)"``.

    A key that only one side has shows ``absent`` on the other; a long value (the pair list)
    is named without its values.
    """
    found = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if a == b:
            continue
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            found.extend(differences(a, b, f"{name}."))
            continue
        values = f" (folder: {_shown(a)}, asked: {_shown(b)})"
        found.append(name + (values if len(values) <= 80 else ""))
    return found


def _as_configured(keys: list[str]) -> list[str]:
    """Manifest keys as a user's config names them: the manifest keeps the ``pairs`` options
    under ``sampling`` and the pairs they drew under ``pairs``."""
    named = []
    for key in keys:
        if key == "pairs" or key.startswith("pairs "):
            key = "the pairs drawn" + key[len("pairs") :]
        elif key.startswith("sampling."):
            key = "pairs." + key[len("sampling.") :]
        named.append(key)
    return named


def _keep_additions(old: dict[str, Any], new: dict[str, Any], additions: tuple[str, ...]) -> None:
    """Give each manifest the parts of ``additions`` only the other has (in place): such a part
    is kept, not compared (:meth:`RunStore.start`)."""
    for key in additions:
        if (key in old) != (key in new):
            new.setdefault(key, old.get(key))
            old.setdefault(key, new[key])


class RunStore:
    """The folder of one path experiment.

    Layout: ``run.json`` (what was asked), ``records/<space>/pair_<id>.pt`` (one per decided
    pair), ``table.md`` / ``table.csv``, ``pairs.csv``, ``figures/`` and the web pages
    ``index.html`` and ``index_<space>.html``. A record that cannot be read is moved
    aside to ``pair_<id>.pt.damaged-<time>`` when a run resumes, so that pair is decided again.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    @property
    def records_dir(self) -> Path:
        return self.folder / "records"

    def record_path(self, space: str, pair_id: int) -> Path:
        return self.records_dir / space / f"pair_{pair_id:04d}.pt"

    def _has_records(self) -> bool:
        # Any depth: a graph run keeps its records one level deeper (records/<model>/<space>/),
        # and a paths run must never claim a graph run's folder, nor the reverse.
        return any(self.records_dir.rglob("pair_*.pt")) or any(self.records_dir.rglob("loop_*.pt"))

    def start(self, manifest: dict[str, Any], additions: tuple[str, ...] = ()) -> None:
        """Claim the folder for ``manifest``; refuse one that holds a different experiment.

        A folder whose ``run.json`` differs but that holds no decided pair yet (a run that died
        before its first record, say with options it could not use) is claimed anew, so the
        corrected rerun is never blocked by it.

        Args:
            manifest: What the run asks (``run.json``).
            additions: Keys of parts a run may add to the experiment, or leave out, without
                making it another one (an untrained baseline beside the trained network's
                pairs): where only one of the two manifests has such a key, the folder keeps
                it, and the rest must agree.

        Raises:
            RunFolderError: The folder holds records of a different experiment.
        """
        path = self.folder / "run.json"
        # Leftovers of writes a crash interrupted; the records they were meant to replace are
        # intact (or absent, and will be redone).
        for pattern in (".pair_*.tmp", ".loop_*.tmp"):
            for leftover in self.records_dir.rglob(pattern):
                leftover.unlink(missing_ok=True)
        text = json.dumps(manifest, indent=2, sort_keys=True, default=str)
        if path.is_file():
            new = json.loads(text)
            try:
                old = read_json(path)
            except RunFolderError:
                if self._has_records():
                    raise
                old = None  # damaged, but nothing was decided under it: claim anew
            if old is not None:
                _keep_additions(old, new, additions)
                text = json.dumps(new, indent=2, sort_keys=True)
            if old == new:
                atomic_write_text(path, text)  # unchanged text is left as it is
                return
            if old is not None and self._has_records():
                raise RunFolderError(
                    f"{self.folder} holds results of a different experiment (differs in: "
                    f"{'; '.join(_as_configured(differences(old, new)))}). Use another `name`, "
                    "or delete the "
                    "folder to start over."
                )
        atomic_write_text(path, text)

    def refuse_other(self, key: str, value: Any, option: str) -> None:
        """Refuse, before the work that :meth:`start` would refuse it after, a folder holding
        records whose ``run.json`` has another ``key`` (a ``/``-separated path; absent and None
        alike) than ``value``, the setting of ``option``.

        Raises:
            RunFolderError: as :meth:`start` words it.
        """
        old: Any = read_json_or(self.folder / "run.json", None)
        for part in key.split("/"):
            old = old.get(part) if isinstance(old, dict) else None
        new = json.loads(json.dumps(value, sort_keys=True, default=str))
        if old != new and self._has_records():
            raise RunFolderError(
                f"{self.folder} holds results of a different experiment (differs in: {option}). "
                "Use another `name`, or delete the folder to start over."
            )

    def holds(self, manifest: dict[str, Any], additions: tuple[str, ...] = ()) -> bool:
        """Whether the folder's ``run.json`` is ``manifest`` (as :meth:`start` compares them,
        ``additions`` included); False when it is missing or damaged."""
        new = json.loads(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        old = read_json_or(self.folder / "run.json", None)
        if not isinstance(old, dict):
            return False
        _keep_additions(old, new, additions)
        return old == new

    def save_adversarial(self, ends: dict[str, torch.Tensor]) -> None:
        """Write the run's adversarial examples (``adversarial.pt``: images, the split indices
        of their sources and natural ends, targets, L-infinity distances) atomically."""
        write_tensor(self.folder / ADVERSARIAL, ends)

    def adversarial(self) -> dict[str, Any] | None:
        """What :meth:`save_adversarial` wrote; None when the file is missing or damaged (the
        examples are then made again)."""
        try:
            return read_tensor(self.folder / ADVERSARIAL)
        except FileNotFoundError:
            return None
        except Exception as error:  # pickle, zip and unpickler errors all mean "damaged"
            warnings.warn(
                f"{self.folder / ADVERSARIAL} cannot be read ({type(error).__name__}); making "
                "the adversarial examples again",
                RuntimeWarning,
                stacklevel=2,
            )
            return None

    def manifest(self) -> dict[str, Any]:
        path = self.folder / "run.json"
        if not path.is_file():
            raise RunFolderError(f"{self.folder} is not a path-experiment folder (no run.json)")
        return read_json(path)

    def save_decoders(self, decoders: dict[str, str]) -> None:
        """Remember which decoders show this run's latent points (they do not change results)."""
        # Absolute: a report run from another folder still finds them.
        decoders = {space: str(Path(path).resolve()) for space, path in decoders.items()}
        self.save_text("decoders.json", json.dumps(decoders, indent=2))

    def decoders(self) -> dict[str, str]:
        path = self.folder / "decoders.json"
        return read_json(path) if path.is_file() else {}

    def _files(self, space: str, stem: str = "pair") -> list[Path]:
        """Record files ``<stem>_<id>.pt`` of ``space`` in id order (numeric, not by name)."""
        return sorted((self.records_dir / space).glob(f"{stem}_*.pt"), key=_pair_id)

    @staticmethod
    def _read(file: Path) -> dict[str, Any]:
        return read_tensor(file)

    def read_record(self, space: str, pair_id: int) -> dict[str, Any]:
        """One saved record.

        Raises:
            FileNotFoundError: The pair is not decided (yet).
            Exception: The record is damaged (pickle, zip and unpickler errors).
        """
        return self._read(self.record_path(space, pair_id))

    def done(self, space: str, stem: str = "pair") -> set[int]:
        """Ids of the pairs (records ``<stem>_<id>.pt``: a surfaces run's loops are ``loop``)
        already decided in ``space``.

        Only records that load count: a damaged one (a disk that filled up, a copy cut short)
        is renamed to ``<name>.damaged-<time>`` with a warning, and its pair is decided again.
        """
        ids = set()
        for file in self._files(space, stem):
            try:
                self._read(file)
            except FileNotFoundError:
                continue  # another rank moved it aside just now
            except Exception as error:  # pickle, zip and unpickler errors all mean "damaged"
                aside = file.with_name(f"{file.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
                try:
                    file.rename(aside)
                except FileNotFoundError:
                    continue
                warnings.warn(
                    f"{file} cannot be read ({type(error).__name__}); moved it to {aside.name} "
                    "and deciding that pair again",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            ids.add(_pair_id(file))
        return ids

    def save(
        self, space: str, pair: Pair, record: PairRecord, end_images: torch.Tensor | None = None
    ) -> None:
        """Write one pair's record; its tensors are compact copies, so its size depends on the
        pair alone, not on the batch it was decided in.

        Args:
            space: The space the pair was decided in.
            pair: The pair.
            record: What was found.
            end_images: ``(2, C, H, W)`` the pair's two input images in [0, 1], kept (as uint8,
                ``end_images`` of the record) for figures of latent spaces, whose points are
                not images. None: not kept (the input space: its ends are the inputs).
        """
        payload = compact({"space": space, "pair": asdict(pair), **asdict(record)})
        if end_images is not None:
            # uint8: the figures need no more, and the record stays small (2 KiB for digits).
            payload["end_images"] = (
                (end_images.detach().float().clamp(0, 1) * 255)
                .round()
                .to(device="cpu", dtype=torch.uint8)
            )
        write_tensor(self.record_path(space, pair.id), payload)

    def load(self, space: str, stem: str = "pair") -> list[dict[str, Any]]:
        """All saved records (``<stem>_<id>.pt``) of ``space``, ordered by id.

        Raises:
            RunFolderError: A record cannot be read; the message names its file.
        """
        records = []
        for file in self._files(space, stem):
            try:
                records.append(self._read(file))
            except Exception as error:  # pickle, zip and unpickler errors all mean "damaged"
                raise RunFolderError(
                    f"{file} is damaged and cannot be read ({type(error).__name__}). Rerun the "
                    "same config to decide that pair again (the damaged file is moved aside), "
                    "then report again."
                ) from error
        return records

    def load_all(self) -> dict[str, list[dict[str, Any]]]:
        """All saved records, by space in the run's order."""
        return {space: self.load(space) for space in self.manifest()["spaces"]}

    # The report's files: tables, pages, figures and their stamps, W&B's markers. Each name is
    # relative to the folder (``table.md``, ``figures/input/pair_0001.png``).

    def path(self, name: str) -> Path:
        """Where the file ``name`` (relative to the folder) lies."""
        return self.folder / name

    def save_text(self, name: str, text: str) -> None:
        """Write a text file of the folder atomically; one that holds ``text`` already is left
        as it is (its time too)."""
        atomic_write_text(self.path(name), text)

    def save_bytes(self, name: str, data: bytes) -> None:
        """Write a file of the folder atomically (a figure's PNG, say)."""
        atomic_write_bytes(self.path(name), data)

    def save_json(self, name: str, value: Any, indent: int | None = 2) -> None:
        """Write ``value`` as JSON (one trailing newline) atomically."""
        write_json(self.path(name), value, indent)

    def read_json(self, name: str, default: Any = None) -> Any:
        """A JSON file of the folder that may be missing or damaged (``default`` then): markers,
        stamps, caches; what it holds is remade from the records."""
        return read_json_or(self.path(name), default)

    def read_text(self, name: str, default: str | None = None) -> str | None:
        """A text file of the folder, or ``default`` when it is not there or unreadable."""
        try:
            return self.path(name).read_text()
        except (OSError, UnicodeDecodeError):
            return default

    def remove(self, name: str) -> None:
        """Remove a file of the folder (no error when it is not there)."""
        self.path(name).unlink(missing_ok=True)
