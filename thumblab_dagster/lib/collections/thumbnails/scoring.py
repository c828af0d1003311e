"""Scoring an upload (an image or a title) against a niche: the pipeline's embedder, then the library.

The CLI and the HTTP service both go through ``UploadScorer``, so an upload is embedded exactly
as the pipeline embeds thumbnails (same model, same preprocessing, ``embed_images`` /
``embed_texts``) and refused when the niche's index was built with another model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from thumblab_dagster.lib.collections.thumbnails.pipeline import PERCENTILE_K
from thumblab_dagster.lib.embed.clip import LoadedClip, embed_images, embed_texts
from thumblab_dagster.lib.query.library import (
    EmbeddingMismatchError,
    NicheUnavailable,
    ReferenceLibrary,
    ScoreResult,
    SimilarResult,
)


@dataclass
class ImageScore:
    percentile: ScoreResult
    similar: SimilarResult

    def as_dict(self) -> dict:
        return {**self.percentile.as_dict(), "similar": list(self.similar),
                "similar_source": self.similar.source}


class UploadScorer:
    def __init__(self, library: ReferenceLibrary, clip: LoadedClip):
        self.library, self.clip = library, clip

    def check_model(self, niche: str) -> None:
        """Raise ``EmbeddingMismatchError`` if the niche's local index came from another model."""
        try:
            entry = self.library.entry(niche)
        except NicheUnavailable:
            # nothing local: the remote answers, so its rows must come from the same model
            check = getattr(self.library.remote, "check_model", None)
            if check is not None:
                try:
                    check(niche, self.clip.weights.as_dict())
                except EmbeddingMismatchError:
                    raise
                except Exception:  # the remote being down is the fallback chain's business, not ours
                    pass
            return
        entry.check_model(self.clip.weights.as_dict())

    def image_vector(self, image: Image.Image, niche: str) -> np.ndarray:
        self.check_model(niche)
        return embed_images(self.clip, [image])[0]

    def score_image(self, image: Image.Image, niche: str, *, similar_k: int = 5,
                    weight: str | None = None) -> ImageScore:
        vector = self.image_vector(image, niche)
        return ImageScore(self.library.similarity_percentile(vector, niche, PERCENTILE_K, weight),
                          self.library.similar(vector, niche, similar_k) if similar_k else
                          SimilarResult([], source="none", reason="not asked for"))

    def similar_images(self, image: Image.Image, niche: str, k: int = 10) -> SimilarResult:
        return self.library.similar(self.image_vector(image, niche), niche, k)

    def score_title(self, title: str, niche: str) -> ScoreResult:
        self.check_model(niche)
        return self.library.title_percentile(embed_texts(self.clip, [title])[0], niche, PERCENTILE_K)
