"""The catalogue collection: product images with metadata, a sharded CLIP index, alignment proven (issue 15).

source (a Supabase table, a CSV/parquet file or the bundled sample) -> embeddings (only new or changed
products are fetched and embedded, merged with the previous vectors) -> shards (the seed's
``<prefix>_shard_00000.index`` ... and ``id_map_<name>.json``) -> checker (re-encode a sample, expect
each product back as itself). ``sample`` draws a few hundred products in-process, so all of it runs
offline; ``ray_backend`` spreads embedding and shard building over Ray when configured.
"""
