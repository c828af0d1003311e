"""Features analysed elsewhere: CSV/parquet tables become ids, a matrix and metadata, or one clear line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from thumblab_dagster.lib.collections.music.features_table import FeatureTableError, read_features
from thumblab_dagster.lib.collections.music.library import MusicLibrary, build_music_index


def table() -> pd.DataFrame:
    return pd.DataFrame({"track_id": ["007", "008", "009", "010"], "title": ["A", "B", "C", "D"],
                         "tempo": [120.0, 95.5, 170.0, 60.0], "danceability": [0.8, 0.4, 0.9, 0.1],
                         "mode": [1, 0, 1, 1], "explicit": [True, False, False, True], "genre": ["pop", "jazz", "pop", "folk"]})


def write(tmp_path, frame: pd.DataFrame, name: str = "features.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False) if name.endswith(".csv") else frame.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("name", ["features.csv", "features.parquet"])
def test_numeric_columns_are_features_and_the_rest_metadata(tmp_path, name):
    ids, matrix, names, metadata = read_features(write(tmp_path, table(), name), "track_id")
    assert ids.tolist() == ["007", "008", "009", "010"]                   # a CSV's ids stay text: 007 is not 7
    assert names == ("tempo", "danceability", "mode", "explicit")         # any dimension, table order, bools as 0/1
    assert matrix.dtype == np.float32 and matrix.shape == (4, 4) and matrix[0].tolist() == [120.0, 0.800000011920929, 1, 1]
    assert list(metadata.columns) == ["track_id", "title", "genre"] and metadata["genre"].tolist()[1] == "jazz"


def test_excluded_columns_are_not_features_but_stay_as_metadata(tmp_path):
    table_ = read_features(write(tmp_path, table()), "track_id", exclude_columns=["mode", "explicit"])
    assert table_.names == ("tempo", "danceability") and table_.matrix.shape == (4, 2)
    assert list(table_.metadata.columns) == ["track_id", "title", "mode", "explicit", "genre"]


def test_without_an_id_column_rows_are_numbered(tmp_path):
    table_ = read_features(write(tmp_path, table().drop(columns="track_id")), None)
    assert table_.ids.tolist() == ["0", "1", "2", "3"] and table_.metadata.columns[0] == "row"


@pytest.mark.parametrize(("change", "id_column", "exclude", "message"), [
    (lambda f: f, "id", None, r"^features\.csv: no id column 'id'; columns: track_id, title, tempo, .*: pass --id-column"),
    (lambda f: f[["track_id", "title", "genre"]], "track_id", None,
     r"^features\.csv: no numeric feature columns besides the id 'track_id' \(other columns: title, genre\)"),
    (lambda f: f.assign(track_id=["1", "2", "2", "3"]), "track_id", None,
     r"^features\.csv: id '2' appears 2 times in column 'track_id' \(1 repeated id\(s\) in all\): ids must be unique"),
    (lambda f: f.assign(tempo=[120.0, np.nan, 100.0, np.nan]), "track_id", None,
     r"^features\.csv: column 'tempo' has a missing or infinite value for id '008' \(and 1 more row\(s\)\): .*"
     r"--exclude-columns tempo$"),
    (lambda f: f.assign(danceability=[0.1, np.inf, 0.2, 0.3]), "track_id", None,
     r"column 'danceability' has a missing or infinite value for id '008':"),
    (lambda f: f.iloc[:0], "track_id", None, r"^features\.csv: the table has no rows"),
    (lambda f: f, "track_id", ["tempo", "bpm"], r"--exclude-columns names 'bpm', which the table does not have"),
    (lambda f: f.assign(track_id=["a", None, "c", "d"]), "track_id", None, r"id column 'track_id' is empty in row\(s\) \[1\]"),
    (lambda f: pd.concat([f] * 3, ignore_index=True).assign(track_id=[str(i) for i in range(12)],
                                                             tempo=["120"] * 11 + ["fast"]), "track_id", None,
     r"column 'tempo' is numbers except 'fast' for id '11': fix that value, or pass --exclude-columns tempo"),
])
def test_bad_tables_are_one_line_naming_the_file_and_what_to_do(tmp_path, change, id_column, exclude, message):
    path = write(tmp_path, change(table()))
    with pytest.raises(FeatureTableError, match=message) as caught:
        read_features(path, id_column, exclude)
    assert "\n" not in str(caught.value)


def test_unreadable_files_say_so(tmp_path):
    with pytest.raises(FeatureTableError, match=r"features\.xlsx: not a \.csv or \.parquet file"):
        read_features(tmp_path / "features.xlsx", "id")
    with pytest.raises(FeatureTableError, match="no such file"):
        read_features(tmp_path / "missing.csv", "id")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(FeatureTableError, match=r"broken\.parquet: cannot read it as parquet \("):
        read_features(tmp_path / "broken.parquet", "id")


def test_an_imported_table_is_searchable_by_its_own_ids(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"song": [f"s{i}" for i in range(30)], "artist": [f"band {i % 5}" for i in range(30)],
                          **{f"f{j}": rng.normal(0, 1, 30) for j in range(9)}})
    frame.loc[7, [f"f{j}" for j in range(9)]] = frame.loc[3, [f"f{j}" for j in range(9)]].to_numpy()  # a copy of s3
    ids, matrix, names, metadata = read_features(write(tmp_path, frame), "song")
    build_music_index(tmp_path / "imported", matrix, ids, names, metadata=metadata, id_column="song")
    library = MusicLibrary.load(tmp_path / "imported", name="imported")
    found = library.similar("s3", top_n=4)
    assert [hit["id"] for hit in found][:1] != ["s7"] and "s7" not in {hit["id"] for hit in found}
    assert found[0]["artist"].startswith("band ") and found[0]["path"] is None
    assert library.statistics()["vector_dimension"] == 9
