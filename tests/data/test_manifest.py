"""al_lib.data.manifest: the one reader of the pool manifest format."""

import pytest

from al_lib.data import ManifestDataset, ManifestError, read_manifest


def write(tmp_path, text, name="manifest.csv", encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def test_columns_are_strings_stripped_and_paths_normalised(tmp_path):
    path = write(tmp_path, "id,path,split,extra\n 007 , a/./b.png ,test,x\nx,c.png,,y\n")
    table = read_manifest(path)
    assert list(table.columns) == ["id", "path", "split"]
    assert table["id"].tolist() == ["007", "x"] and table["path"].tolist() == ["a/b.png", "c.png"]
    assert table.index.tolist() == [2, 3]  # the CSV line of each row, for messages


def test_bom_and_crlf_are_accepted(tmp_path):
    path = write(tmp_path, "\ufeffid,path\r\na,a.png\r\nb,b.png\r\n")
    assert read_manifest(path)["id"].tolist() == ["a", "b"]


@pytest.mark.parametrize("text, row, field, needle", [
    ("id,path\na,a.png\na,b.png\n", 3, "id", "duplicate id 'a' (first at row 2)"),
    ("id,path\n,a.png\n", 2, "id", "empty id"),
    ("id,path\na,../a.png\n", 2, "path", "escapes"),
    ("id,path\na,/etc/passwd\n", 2, "path", "absolute"),
    ("id,name\na,a.png\n", 1, "path", "missing required column 'path'"),
    ("id,path\na,a.png,extra\n", 2, None, "expected 2 fields, got 3"),
    ("id,path\n", None, None, "has no data rows"),
])
def test_bad_manifests_name_row_and_field(tmp_path, text, row, field, needle):
    path = write(tmp_path, text)
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    assert (info.value.row, info.value.field) == (row, field)
    assert needle in str(info.value) and str(path) in str(info.value)


def test_not_utf8_is_named(tmp_path):
    path = write(tmp_path, "id,path\né,a.png\n", encoding="latin-1")
    with pytest.raises(ManifestError, match="not UTF-8"):
        read_manifest(path)


def test_dataset_over_a_table_already_read_does_not_read_again(tmp_path):
    path = write(tmp_path, "id,path,label\na,a.png,cat\nb,b.png,dog\n")
    table = read_manifest(path)
    path.unlink()  # the dataset must not need the file again
    ds = ManifestDataset(path, table=table)
    assert ds.ids == ["a", "b"] and ds.classes == ["cat", "dog"] and ds.targets.tolist() == [0, 1]
