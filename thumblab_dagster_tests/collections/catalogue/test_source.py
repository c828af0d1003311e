"""Products from a CSV file, a parquet file, a Supabase table (the loopback REST gateway fake, and a real
Postgres for the DB URL) or the sample: one frame shape, and one line for every source that cannot give it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import psycopg
import pytest

from thumblab_dagster.lib.collections.catalogue.sample import sample_catalogue
from thumblab_dagster.lib.collections.catalogue.source import (
    REQUIRED,
    CatalogueSourceError,
    describe_source,
    normalise_products,
    read_products,
    source_kind,
)
from thumblab_dagster.lib.collections.thumbnails.remote import SupabaseSettings
from thumblab_dagster.lib.stores.supabase_rest import RestStore
from thumblab_dagster.lib.stores.supabase_sql import SqlStore
from thumblab_dagster_tests.fakes.supabase import FakeSupabaseServer

KEY = "sb_secret_TEST-catalogue-key-0123456789"
N = 30


@pytest.fixture
def products():
    return sample_catalogue(N)


@pytest.fixture
def gateway(products):
    """The loopback REST gateway with a ``products`` table, serving at most 7 rows a page (keyset paging)."""
    rows = [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()}
            for r in products.to_dict("records")]
    with FakeSupabaseServer(KEY, max_rows=7, tables={"products": rows[::-1]}) as state:  # stored out of order
        yield state


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and KEY not in message
    return message


def test_csv_parquet_supabase_and_sample_give_the_same_frame(tmp_path, products, gateway):
    products.to_csv(tmp_path / "products.csv", index=False)
    products.to_parquet(tmp_path / "products.parquet", index=False)
    from_csv = read_products(str(tmp_path / "products.csv"))
    from_parquet = read_products(str(tmp_path / "products.parquet"))
    with RestStore(gateway.base_url, KEY, backoff_s=0.0) as store:
        from_rest = read_products("supabase", supabase=store)
    from_settings = read_products("supabase", supabase=SupabaseSettings(url=gateway.base_url, key=KEY))
    from_sample = read_products("sample", sample_size=N)
    for frame in (from_parquet, from_rest, from_settings, from_sample):
        pd.testing.assert_frame_equal(frame, from_csv)
    assert list(from_csv.columns[:3]) == list(REQUIRED)
    assert all(from_csv[c].map(type).eq(str).all() for c in REQUIRED)
    gets = [r for r in gateway.requests if r["path"] == "/rest/v1/products"]
    assert len(gets) == 2 * (N // 7 + 2)  # two reads, each paged by id until an empty page
    assert gets[1]["query"]["id"] == ["gt.p00006"] and gets[0]["query"]["order"] == ["id.asc"]


def test_the_sql_store_reads_the_table_over_the_database_url(db_url, products):
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("create table products (id bigint primary key, image_url text, brand text, price numeric)")
        conn.execute("insert into products values (12, 'sample-product://p00001.png', 'aw', 9.5), "
                     "(3, 'sample-product://p00002.png', 'tasman', 20)")
    read = read_products("supabase", table="products", supabase=SupabaseSettings(db_url=db_url))
    assert read["id"].tolist() == ["3", "12"] and read["brand"].tolist() == ["tasman", "aw"]
    assert list(read.columns) == ["id", "image_url", "brand", "price"]
    with SqlStore(db_url) as store, pytest.raises(CatalogueSourceError) as missing:
        read_products("supabase", table="nope", supabase=store)
    assert 'relation "nope" does not exist' in one_line(missing)


def test_ids_become_text_and_other_columns_are_kept(tmp_path):
    (tmp_path / "p.csv").write_text("sku,id,brand,image_url\nA,007,aw,x.png\nB, 12 ,aw,y.png\n")
    read = read_products(str(tmp_path / "p.csv"))
    assert read["id"].tolist() == ["007", "12"] and list(read.columns) == ["id", "image_url", "brand", "sku"]
    pd.DataFrame({"id": [5, 6], "image_url": ["a", "b"], "brand": ["x", None]}).to_parquet(tmp_path / "p.parquet")
    read = read_products(str(tmp_path / "p.parquet"))
    assert read["id"].tolist() == ["5", "6"] and read["brand"].tolist() == ["x", ""]
    assert normalise_products(pd.DataFrame({"id": [1.0, 2.0], "image_url": "u", "brand": "b"}))["id"].tolist() \
        == ["1", "2"]


@pytest.mark.parametrize("text, line", [
    ("id,brand\n1,aw\n", "products file {p} lacks the column image_url: a catalogue needs id, image_url and brand"),
    ("name\nx\n", "lacks the columns id, image_url, brand:"),
    ("id,image_url,brand\n", "products file {p} holds no products: add rows"),
    ("id,image_url,brand\n1,a,b\n,c,d\n2,e,f\n", "1 product has no id (row 2, counting from 1): give every product"),
    ("id,image_url,brand\n1,a,b\n1,c,d\n2,e,f\n2,g,h\n", "2 ids occur more than once ('1', '2'): ids must be unique"),
])
def test_a_file_that_is_not_a_catalogue_is_one_line(tmp_path, text, line):
    path = tmp_path / "products.csv"
    path.write_text(text)
    with pytest.raises(CatalogueSourceError) as err:
        read_products(str(path))
    assert line.format(p=path) in one_line(err)


def test_a_source_we_cannot_read_is_one_line(tmp_path, gateway):
    for source, line in [
        ("products.txt", "products source 'products.txt' is not one we read: use a .csv or .parquet file, supabase"),
        (str(tmp_path / "missing.csv"), "does not exist: give an existing .csv or .parquet file"),
    ]:
        with pytest.raises(CatalogueSourceError) as err:
            read_products(source)
        assert line in one_line(err)
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(CatalogueSourceError) as err:
        read_products(str(tmp_path / "broken.parquet"))
    assert "is not a readable parquet file (" in one_line(err) and one_line(err).endswith("fix or re-export it")
    with pytest.raises(CatalogueSourceError) as err:
        read_products("supabase")
    assert "Supabase is not configured: set SUPABASE_DB_URL, or SUPABASE_URL and SUPABASE_KEY" in one_line(err)
    with pytest.raises(CatalogueSourceError) as err:
        read_products("supabase", table="items", supabase=SupabaseSettings(url=gateway.base_url, key=KEY))
    assert "cannot read products from Supabase table 'items'" in one_line(err)
    assert 'relation "public.items" does not exist' in one_line(err) and "THUMBLAB_CATALOGUE_TABLE" in one_line(err)
    with pytest.raises(CatalogueSourceError) as err:
        read_products("supabase", table="products; drop", supabase=SupabaseSettings(url=gateway.base_url, key=KEY))
    assert "is not a plain identifier" in one_line(err)
    with pytest.raises(CatalogueSourceError) as err:
        read_products("supabase", supabase=SupabaseSettings(url=gateway.base_url, key="wrong-key"))
    assert "HTTP 401" in one_line(err) and "wrong-key" not in one_line(err)


def test_an_empty_table_is_one_line(gateway):
    gateway.tables["products"] = []
    with pytest.raises(CatalogueSourceError) as err:
        read_products("supabase", supabase=SupabaseSettings(url=gateway.base_url, key=KEY))
    assert "Supabase table 'products' holds no products" in one_line(err)


def test_sources_are_named_for_people():
    assert [source_kind(s) for s in ("sample", " Supabase ", "a/b.CSV", "x.parquet")] == \
        ["sample", "supabase", "csv", "parquet"]
    assert describe_source("supabase", "items") == "Supabase table 'items'"
    assert describe_source("sample") == "the sample catalogue"
