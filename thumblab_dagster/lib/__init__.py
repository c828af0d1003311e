"""Pure-Python core of thumblab: no Dagster import anywhere below this package.

The scoring service, the CLI and the Dagster assets all call into these modules.
"""
