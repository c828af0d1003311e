"""The geo collection: GeoTIFF embedding mosaics, every pixel searchable (issue 13).

mosaic (validate, read strip by strip as uint8 codes) -> store (all_embeddings.npy, nodata mask,
norms, metadata.json) -> the engine's sampled index over the grid sample -> alignment (the
blocking check) -> search (exact threshold scan over all valid pixels; answers as lat/lon,
GeoJSON, a similarity GeoTIFF, a PNG). coords turns pixels into places and back; metadata holds
the plan's metadata.json, the viewport id and skip-if-unchanged.
"""
