"""ImageFolderDataset and ManifestDataset over real PNG/JPEG files written with Pillow."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from al_lib.data import (
    ActiveLearningDataset,
    ImageDecodeError,
    ImageFolderDataset,
    ManifestDataset,
    ManifestError,
    image_to_tensor,
)


def write_image(path, mode, value=100, size=(5, 4)):
    """A solid image of ``size`` (W, H) in Pillow ``mode``; format from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":
        image = Image.new("P", size, 1)
        image.putpalette([0, 0, 0, value, value, value] + [0] * 762)
    else:
        fill = {"L": value, "RGB": (value, 0, 255), "RGBA": (value, 0, 255, 128)}[mode]
        image = Image.new(mode, size, fill)
    image.save(path)
    return path


@pytest.fixture
def class_folder(tmp_path):
    root = tmp_path / "images"
    write_image(root / "dog" / "b.png", "L", 10)
    write_image(root / "dog" / "a.PNG", "L", 20)
    write_image(root / "cat" / "nested" / "c.png", "L", 30)
    write_image(root / "cat" / "z.png", "L", 40)
    write_image(root / "cat" / ".hidden.png", "L")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    return root


def test_class_folder_layout(class_folder):
    ds = ImageFolderDataset(class_folder)
    assert ds.classes == ["cat", "dog"]
    assert ds.ids == ["cat/nested/c.png", "cat/z.png", "dog/a.PNG", "dog/b.png"]
    assert ds.targets.tolist() == [0, 0, 1, 1]
    assert ds.mode == "L"
    x, y = ds[2]
    assert x.shape == (1, 4, 5) and x.dtype == torch.float32 and y == 1
    assert torch.allclose(x, torch.full((1, 4, 5), 20 / 255))


def test_flat_folder_has_no_labels(tmp_path):
    write_image(tmp_path / "b.png", "RGB")
    write_image(tmp_path / "a.jpg", "RGB")
    ds = ImageFolderDataset(tmp_path)
    assert ds.classes is None and ds.targets is None
    assert ds.ids == ["a.jpg", "b.png"]
    x = ds[1]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 4, 5)
    assert torch.allclose(x[:, 0, 0], torch.tensor([100 / 255, 0.0, 1.0]))
    assert ds.mode == "RGB"


@pytest.mark.parametrize(
    "source_mode, target_mode, channels",
    [("L", "RGB", 3), ("RGB", "L", 1), ("RGBA", "RGB", 3), ("RGBA", "L", 1), ("P", "RGB", 3),
     ("P", "L", 1), ("RGBA", "RGBA", 4), ("L", None, 1), ("RGBA", None, 3), ("P", None, 3)],
)
def test_modes_are_converted(tmp_path, source_mode, target_mode, channels):
    write_image(tmp_path / "img.png", source_mode, 200)
    x = ImageFolderDataset(tmp_path, mode=target_mode)[0]
    assert x.shape == (channels, 4, 5)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_jpeg_grayscale_and_rgb(tmp_path):
    write_image(tmp_path / "grey" / "g.jpg", "L", 128, size=(16, 16))
    write_image(tmp_path / "colour" / "c.jpeg", "RGB", 128, size=(16, 16))
    ds = ImageFolderDataset(tmp_path)  # first image (colour/c.jpeg) decides: RGB
    assert ds.mode == "RGB"
    assert [ds[i][0].shape for i in range(2)] == [(3, 16, 16), (3, 16, 16)]
    assert abs(float(ds[1][0].mean()) - 128 / 255) < 0.02  # JPEG is lossy


def test_first_image_decides_default_mode(tmp_path):
    write_image(tmp_path / "a.png", "L")
    write_image(tmp_path / "b.png", "RGB")
    ds = ImageFolderDataset(tmp_path)
    assert ds.mode == "L" and ds[1].shape == (1, 4, 5)


def test_transform_receives_pil_image_in_mode(class_folder):
    ds = ImageFolderDataset(class_folder, mode="RGB", transform=lambda im: (im.mode, im.size))
    assert ds[0] == (("RGB", (5, 4)), 0)


def test_corrupt_file_error_names_it(tmp_path):
    write_image(tmp_path / "good.png", "L")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    truncated = tmp_path / "cut.png"
    write_image(truncated, "RGB", size=(64, 64))
    truncated.write_bytes(truncated.read_bytes()[:60])
    ds = ImageFolderDataset(tmp_path, mode="L")
    for index, name in [(0, "bad.png"), (1, "cut.png")]:
        with pytest.raises(ImageDecodeError, match=name) as info:
            ds[index]
        assert info.value.path.endswith(name)
    assert ds[2].shape == (1, 4, 5)


def test_folder_errors(tmp_path):
    with pytest.raises(NotADirectoryError):
        ImageFolderDataset(tmp_path / "missing")
    with pytest.raises(ValueError, match="no image files"):
        ImageFolderDataset(tmp_path)
    write_image(tmp_path / "top.png", "L")
    write_image(tmp_path / "cls" / "x.png", "L")
    with pytest.raises(ValueError, match="both"):
        ImageFolderDataset(tmp_path)
    with pytest.raises(ValueError, match="mode"):
        ImageFolderDataset(tmp_path / "cls", mode="CMYK")


def test_folder_in_active_learning_dataset_with_dataloader(class_folder):
    ds = ImageFolderDataset(class_folder)
    al = ActiveLearningDataset(ds, ids=ds.ids, classes=ds.classes)
    al.label(["dog/b.png", "cat/z.png"])
    assert al.history()["label"].tolist() == ["cat", "dog"]
    xs, ys = next(iter(DataLoader(al.labelled, batch_size=8)))
    assert xs.shape == (2, 1, 4, 5) and ys.tolist() == [0, 1]
    assert next(iter(DataLoader(al.pool, batch_size=8))).shape == (2, 1, 4, 5)


# ---------------------------------------------------------------- manifest


def write_manifest(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def workspace(tmp_path):
    write_image(tmp_path / "raw" / "one.png", "L", 10)
    write_image(tmp_path / "raw" / "two.png", "RGB", 20)
    write_image(tmp_path / "raw" / "three.png", "L", 30)
    return tmp_path


def test_manifest_relative_to_explicit_root(workspace):
    csv = write_manifest(
        workspace / "data" / "pool" / "manifest.csv",
        "id,path,label,split\n"
        "s1,raw/one.png,10,train\n"
        "s2, raw/sub/../two.png ,2,test\n"
        "\n"
        "s3,raw/three.png,,train\n",
    )
    ds = ManifestDataset(csv, root=workspace)
    assert ds.ids == ["s1", "s2", "s3"]
    assert ds.paths[1] == workspace / "raw" / "two.png"
    assert ds.classes == ["2", "10"]  # numeric order
    assert ds.targets.tolist() == [1, 0, -1]
    assert ds.splits == ["train", "test", "train"]
    x, y = ds[1]
    assert ds.mode == "L" and x.shape == (1, 4, 5) and y == 0


def test_manifest_root_defaults_to_csv_directory(workspace):
    csv = write_manifest(workspace / "raw" / "m.csv", "id,path\na,one.png\nb,two.png\n")
    ds = ManifestDataset(csv, mode="RGB", classes=None)
    assert ds.targets is None and ds.classes is None and ds.splits is None
    assert ds[1].shape == (3, 4, 5)


def test_manifest_with_given_classes_and_active_learning(workspace):
    text = "path,id,label,source\nraw/one.png,a,cat,x\nraw/two.png,b,dog,y\n"  # any column order
    csv = write_manifest(workspace / "m.csv", text)
    ds = ManifestDataset(csv, classes=["dog", "cat"])
    assert ds.targets.tolist() == [1, 0]
    al = ActiveLearningDataset(ds, ids=ds.ids, classes=ds.classes)
    al.label(["b"])
    assert al.label_of("b") == "dog" and al.labelled[0][1] == 0


@pytest.mark.parametrize(
    "text, row, field, match",
    [
        ("id,label\na,x\n", 1, "path", "missing required column 'path'"),
        ("path\nx.png\n", 1, "id", "missing required column 'id'"),
        ("", 1, None, "empty"),
        ("id,path,id\n", 1, None, "duplicate column"),
        ("id,path\n", None, None, "no data rows"),
        ("id,path\na,x.png\nb,y.png\na,z.png\n", 4, "id", "duplicate id 'a' \\(first at row 2\\)"),
        ("id,path\na,x.png\n,y.png\n", 3, "id", "empty id"),
        ("id,path\na,x.png\nb,\n", 3, "path", "empty path"),
        ("id,path\na,/etc/passwd\n", 2, "path", "absolute"),
        ("id,path\na,C:/x.png\n", 2, "path", "absolute"),
        ("id,path\na,../outside.png\n", 2, "path", "escapes"),
        ("id,path\na,raw/../../outside.png\n", 2, "path", "escapes"),
        ("id,path\na,raw\\..\\..\\x.png\n", 2, "path", "'\\\\'"),
        ("id,path\na,x.png,extra\n", 2, None, "expected 2 fields"),
        ("id,path,label\na,x.png,cat\nb,y.png,cow\n", 3, "label", "'cow' is not one of"),
    ],
)
def test_manifest_errors_name_file_row_and_field(tmp_path, text, row, field, match):
    csv = write_manifest(tmp_path / "manifest.csv", text)
    with pytest.raises(ManifestError, match=match) as info:
        ManifestDataset(csv, classes=["cat", "dog"] if "label" in text else None)
    error = info.value
    assert (error.row, error.field) == (row, field)
    assert str(csv) in str(error)
    if row is not None:
        assert f"row {row}" in str(error)


def test_manifest_decode_error_names_file(workspace):
    (workspace / "raw" / "broken.png").write_bytes(b"not a png at all")
    csv = write_manifest(workspace / "m.csv", "id,path\na,raw/broken.png\nb,raw/missing.png\n")
    ds = ManifestDataset(csv, mode="L")  # construction does not decode
    with pytest.raises(ImageDecodeError, match="broken.png"):
        ds[0]
    with pytest.raises(ImageDecodeError, match="missing.png"):
        ds[1]


def test_manifest_non_utf8_is_reported(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_bytes("id,path\n\xe9,x.png\n".encode("latin-1"))
    with pytest.raises(ManifestError, match="UTF-8"):
        ManifestDataset(csv)


def test_image_to_tensor_values():
    image = Image.fromarray(np.array([[0, 255]], dtype=np.uint8))
    assert image_to_tensor(image).tolist() == [[[0.0, 1.0]]]
