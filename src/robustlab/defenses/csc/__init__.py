"""Convolutional sparse coding (CSC) purification.

- :mod:`.tikhonov`: low-pass / high-pass split;
- :mod:`.cbpdn`: the batched CBPDN ADMM solver;
- :mod:`.dictionary`: dictionary learning and files;
- :mod:`.stratified`: autoencoder + PCA + k-means clusters, one dictionary each;
- :mod:`.purifier`: :class:`CSCPurifier`, the nn.Module to put before a classifier.
"""

from robustlab.defenses.csc.cbpdn import CBPDNOptions, CBPDNResult, cbpdn, objective, reconstruct
from robustlab.defenses.csc.dictionary import (
    LearnedDictionary,
    LearnOptions,
    StratifiedDictionary,
    learn_dictionary,
    load_dictionary,
    save_dictionary,
)
from robustlab.defenses.csc.purifier import CSCPurifier
from robustlab.defenses.csc.stratified import ClusterModel, fit_clusters
from robustlab.defenses.csc.tikhonov import tikhonov_split

__all__ = [
    "CBPDNOptions",
    "CBPDNResult",
    "CSCPurifier",
    "ClusterModel",
    "LearnOptions",
    "LearnedDictionary",
    "StratifiedDictionary",
    "cbpdn",
    "fit_clusters",
    "learn_dictionary",
    "load_dictionary",
    "objective",
    "reconstruct",
    "save_dictionary",
    "tikhonov_split",
]
