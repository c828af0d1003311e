"""Dagster definitions, one folder per collection, autoloaded by ``thumblab_dagster.definitions``.

Imported before any module below it, so the one place that accepts Dagster's preview/beta
warnings for features we rely on (partitioned asset checks, MultiPartitionMapping and its window's
allow_nonexistent_upstream_partitions, the defs folder's module loader) is here.
"""

import warnings

import dagster as dg

warnings.filterwarnings("ignore", message=".*partitions_def on an AssetCheckSpec.*", category=dg.PreviewWarning)
warnings.filterwarnings("ignore", message=".*MultiPartitionMapping.*", category=dg.BetaWarning)
warnings.filterwarnings("ignore", message=".*MultiPartitionMapping.*", category=dg.PreviewWarning)
warnings.filterwarnings("ignore", message=".*load_definitions_from_module.*", category=dg.PreviewWarning)
warnings.filterwarnings("ignore", message=".*allow_nonexistent_upstream_partitions.*", category=dg.BetaWarning)
