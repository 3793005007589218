"""Original and latent space connectivity of image classifiers."""

from importlib.metadata import PackageNotFoundError, version

from connectivity.api import connect, connect_all
from connectivity.engine.decisions import PairRecord, Verdict
from connectivity.engine.options import PathOptions
from connectivity.engine.search import connect_points, find_paths
from connectivity.engine.split import layer_names, split
from connectivity.errors import ConnectivityError

__all__ = [
    "ConnectivityError",
    "PairRecord",
    "PathOptions",
    "Verdict",
    "connect",
    "connect_all",
    "connect_points",
    "find_paths",
    "layer_names",
    "split",
]
try:
    __version__ = version("connectivity")  # one source: pyproject.toml's [project] version
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
