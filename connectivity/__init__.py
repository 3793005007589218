"""Original and latent space connectivity of image classifiers."""

from importlib.metadata import PackageNotFoundError, version

from connectivity.api import connect, connect_all
from connectivity.engine.decisions import PairRecord, Verdict
from connectivity.engine.options import PathOptions, SurfaceOptions
from connectivity.engine.search import connect_points, find_paths
from connectivity.engine.split import layer_names, split
from connectivity.engine.surfaces import SurfaceRecord, fill_loops
from connectivity.errors import ConnectivityError
from connectivity.fill import fill_loop
from connectivity.maps import PlaneMap, plane_map

__all__ = [
    "ConnectivityError",
    "PairRecord",
    "PathOptions",
    "PlaneMap",
    "SurfaceOptions",
    "SurfaceRecord",
    "Verdict",
    "connect",
    "connect_all",
    "connect_points",
    "fill_loop",
    "fill_loops",
    "find_paths",
    "layer_names",
    "plane_map",
    "split",
]
try:
    __version__ = version("connectivity")  # one source: pyproject.toml's [project] version
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
