"""Original and latent space connectivity of image classifiers."""

from importlib.metadata import PackageNotFoundError, version

from connectivity.api import connect, connect_all
from connectivity.split import layer_names, split
from connectivity.verdicts import PairRecord, PathOptions, Verdict

__all__ = ["PairRecord", "PathOptions", "Verdict", "connect", "connect_all", "layer_names", "split"]
try:
    __version__ = version("connectivity")  # one source: pyproject.toml's [project] version
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
