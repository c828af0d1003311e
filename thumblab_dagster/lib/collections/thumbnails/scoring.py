"""Scoring an upload (an image or a title) against a niche: the pipeline's embedder, then the library.

``thumbnail_library`` is the query side configured for thumbnails (the five niches, ``video_id``,
the columns a similar reference shows, the views-per-hour weighting, the word "niche"). The CLI
and the HTTP service both go through ``UploadScorer``, so an upload is embedded exactly as the
pipeline embeds thumbnails (same model, same preprocessing, ``embed_images`` / ``embed_texts``)
and refused when the niche's index was built with another model. The service passes
``ClipBatchers`` so concurrent requests share CLIP forwards; the rows are the same.
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from thumblab_dagster.lib.collections.thumbnails.niches import NICHES
from thumblab_dagster.lib.collections.thumbnails.pipeline import PERCENTILE_K, PERCENTILE_WEIGHT, TITLES_KEY
from thumblab_dagster.lib.embed.batching import ClipBatchers
from thumblab_dagster.lib.embed.clip import LoadedClip, describe_weights, embed_images, embed_texts, weights_identity
from thumblab_dagster.lib.query import (
    EmbeddingMismatchError,
    LibrarySpec,
    ModelIdentity,
    Pinned,
    ReferenceLibrary,
    RemoteSearch,
    ScoreResult,
    SideIndex,
    SimilarResult,
)

THUMBNAILS = LibrarySpec(
    names=NICHES, id_key="video_id", columns=("title", "thumbnail_url", "views_per_hour"),
    weightings=(PERCENTILE_WEIGHT,), noun="niche", missing_hint="run the pipeline, or check THUMBLAB_PUBLISH_DIR",
    side=SideIndex(key=TITLES_KEY, label="title"),  # CLIP text-tower vectors of the titles (pipeline.title_side_index)
    # CLIP model + loaded weights; also right for indices written before the embedder recorded an identity
    model=ModelIdentity(identity=weights_identity, describe=describe_weights,
                        hint="Load the same model and weights (THUMBLAB_CLIP_MODEL / THUMBLAB_CLIP_PRETRAINED) "
                             "or rebuild the index"))


def thumbnail_library(root: str | os.PathLike, remote: RemoteSearch | None = None, *,
                      min_references: int | None = None) -> ReferenceLibrary:
    """The published niche indices under ``root`` (``faiss_indices/``), with an optional fallback.

    ``min_references``: percentiles ranked against fewer references are flagged not confident
    (THUMBLAB_MIN_REFERENCES; default its default).
    """
    spec = THUMBNAILS if min_references is None else replace(THUMBNAILS, min_references=min_references)
    return ReferenceLibrary(root, spec, remote=remote)


@dataclass
class ImageScore:
    percentile: ScoreResult
    similar: SimilarResult

    def as_dict(self) -> dict:
        return {**self.percentile.as_dict(name_key="niche"), "similar": list(self.similar),
                "similar_source": self.similar.source}


def _done(value) -> Future:
    done: Future = Future()
    done.set_result(value)
    return done


class UploadScorer:
    """Embeds an upload and scores it against a niche. Pass one ``pin(niche)`` to every call of a request
    (model check, each image, the title) and they all answer from one version of the niche; without
    it each call pins its own.

    ``batchers`` (the service's): uploads are embedded through cross-request micro-batches of the
    same model instead of one forward each; without them (the CLI) each call runs its own forward."""

    def __init__(self, library: ReferenceLibrary, clip: LoadedClip, batchers: ClipBatchers | None = None):
        if batchers is not None and batchers.clip is not clip:
            raise ValueError("UploadScorer: the batchers must embed with the scorer's own CLIP model")
        self.library, self.clip, self.batchers = library, clip, batchers

    def pin(self, niche: str) -> Pinned:
        """The niche's serving version, taken once for a whole request."""
        return self.library.pinned(niche)

    def check_model(self, niche: str, pinned: Pinned | None = None) -> None:
        """Raise ``EmbeddingMismatchError`` if the niche's local index came from another model."""
        pinned = pinned or self.pin(niche)
        if pinned.snapshot is None:
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
        pinned.snapshot.check_model(self.clip.weights.as_dict())

    def image_vector(self, image: Image.Image, niche: str, pinned: Pinned | None = None) -> np.ndarray:
        self.check_model(niche, pinned)
        return self.batchers.embed_image(image) if self.batchers is not None else embed_images(self.clip, [image])[0]

    def image_vector_soon(self, image: Image.Image) -> Future:
        """The image's vector, started now (check the model first): with batchers all of a request's
        images join one batch; without them it is embedded before this returns."""
        if self.batchers is not None:
            return self.batchers.embed_image_soon(image)
        return _done(embed_images(self.clip, [image])[0])

    def title_vector(self, title: str) -> np.ndarray:
        return self.batchers.embed_text(title) if self.batchers is not None else embed_texts(self.clip, [title])[0]

    def title_vector_soon(self, title: str) -> Future:
        """The title's vector, started now: with batchers it joins the next text batch while the caller
        goes on (fetching the thumbnails); without them it is embedded before this returns."""
        if self.batchers is not None:
            return self.batchers.embed_text_soon(title)
        return _done(self.title_vector(title))

    def score_image(self, image: Image.Image, niche: str, *, similar_k: int = 5,
                    weight: str | None = None, pinned: Pinned | None = None) -> ImageScore:
        pinned = pinned or self.pin(niche)  # the percentile and the similar references from one version
        return self.score_vector(self.image_vector(image, niche, pinned), pinned, similar_k=similar_k, weight=weight)

    @staticmethod
    def score_vector(vector: np.ndarray, pinned: Pinned, *, similar_k: int = 5,
                     weight: str | None = None) -> ImageScore:
        """An image vector (embedded with the checked model) scored against one pinned version."""
        return ImageScore(pinned.similarity_percentile(vector, PERCENTILE_K, weight),
                          pinned.similar(vector, similar_k) if similar_k else
                          SimilarResult([], source="none", reason="not asked for"))

    def similar_images(self, image: Image.Image, niche: str, k: int = 10,
                       pinned: Pinned | None = None) -> SimilarResult:
        pinned = pinned or self.pin(niche)
        return pinned.similar(self.image_vector(image, niche, pinned), k)

    def score_title(self, title: str, niche: str, pinned: Pinned | None = None,
                    vector: Future | None = None) -> ScoreResult:
        """``vector``: ``title_vector_soon(title)``, when the title was started earlier."""
        pinned = pinned or self.pin(niche)
        self.check_model(niche, pinned)
        return pinned.side_percentile(self.title_vector(title) if vector is None else vector.result(), PERCENTILE_K)
