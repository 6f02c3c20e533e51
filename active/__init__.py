"""Active learning and subset selection: selectors, scalable clustering and active covering.

The selector API lives in `active.selectors`; `active.clustering` clusters a pool once for
Cluster-Margin; `active.covering` finds all positives with few queries.
"""

from active.clustering import cluster_margin_clusters
from active.selectors import (
    SELECTORS,
    Pool,
    Selection,
    Selector,
    gradient_embeddings,
    make_selector,
)

__all__ = [
    "SELECTORS",
    "Pool",
    "Selection",
    "Selector",
    "cluster_margin_clusters",
    "gradient_embeddings",
    "make_selector",
]
