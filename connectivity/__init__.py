"""Original and latent space connectivity of image classifiers."""

from connectivity.api import connect
from connectivity.split import layer_names, split
from connectivity.verdicts import PairRecord, PathOptions, Verdict

__all__ = ["PairRecord", "PathOptions", "Verdict", "connect", "layer_names", "split"]
__version__ = "0.1.0"
