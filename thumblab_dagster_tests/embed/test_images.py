import io

from PIL import Image

from thumblab_dagster.lib.collections.thumbnails.sample_source import FETCH_SCHEMES
from thumblab_dagster.lib.embed.images import fetch_images
from thumblab_dagster_tests.fakes.youtube import jpeg


def _png(size, mode="1") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


def test_fetch_images_keeps_order_and_skips_each_kind_of_bad_thumbnail(youtube):
    youtube.thumbs["good.jpg"] = (200, "image/jpeg", jpeg(1))
    youtube.thumbs["good2.jpg"] = (200, "image/jpeg", jpeg(2))
    youtube.thumbs["page.jpg"] = (200, "text/html", b"<html>consent page</html>")
    youtube.thumbs["garbage.jpg"] = (200, "image/jpeg", b"\x00not really a jpeg" * 10)
    youtube.thumbs["bomb.png"] = (200, "image/png", _png((12000, 12000)))
    youtube.thumbs["tiny.png"] = (200, "image/png", _png((2, 2), "RGB"))
    base = youtube.thumb_base
    names = ["good.jpg", "missing.jpg", "page.jpg", "garbage.jpg", "oversized.jpg", "bomb.png", "tiny.png",
             "good2.jpg"]
    results = fetch_images([f"{base}/{n}" for n in names], max_workers=4, max_bytes=512 * 1024)
    assert [r.url.rsplit("/", 1)[1] for r in results] == names
    errors = {n: r.error for n, r in zip(names, results)}
    assert results[0].ok and results[-1].ok and results[0].image.mode == "RGB"
    assert errors["missing.jpg"] == "HTTP 404"
    assert "not an image" in errors["page.jpg"]
    assert "not a readable image" in errors["garbage.jpg"]
    assert "cap" in errors["oversized.jpg"]
    assert "too large" in errors["bomb.png"] or "bomb" in errors["bomb.png"]
    assert "too small" in errors["tiny.png"]


def test_local_files_and_sample_thumbnails(tmp_path):
    path = tmp_path / "thumb.jpg"
    path.write_bytes(jpeg(3))
    results = fetch_images([str(path), f"file://{path}", "sample://gaming/abcdefghijk.png",
                            str(tmp_path / "nope.jpg"), "ftp://example.invalid/x.jpg"], schemes=FETCH_SCHEMES)
    assert [r.ok for r in results] == [True, True, True, False, False]
    assert results[3].error == "file not found"
    assert "unsupported URL scheme" in results[4].error
