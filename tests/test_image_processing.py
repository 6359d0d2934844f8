"""Checks of the image processor against the contract's worked examples and against plain array arithmetic, written
without calling the module's own helpers where the point is to check them."""

import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from media_samples import random_image
from PIL import Image
from transformers import AutoImageProcessor

import megrezo.image_processing_megrezo as image_processing
from megrezo.image_processing_megrezo import (
    MegrezOImageProcessor,
    image_to_patch_strip,
    load_image,
    pad_slices,
    slice_image,
)

RELEASE_PREPROCESSOR_CONFIG = Path(__file__).parent / "fixtures" / "release" / "preprocessor_config.json"
PACKAGE_DIR = Path(image_processing.__file__).parent
PATCH = 14


def release_config() -> dict:
    """The released preprocessor_config.json, as the checkpoint ships it."""
    return json.loads(RELEASE_PREPROCESSOR_CONFIG.read_text())


@pytest.mark.parametrize(
    ("width", "height", "grid", "source_size", "tile_size", "num_slices"),
    [
        (1000, 750, (2, 2), (28, 37), (28, 37), 5),
        (300, 200, None, (26, 39), None, 1),
        (1920, 1080, (4, 2), (24, 43), (34, 30), 9),
        (448, 448, None, (32, 32), None, 1),
        (720, 1480, (2, 3), (46, 22), (37, 27), 7),
    ],
)
def test_worked_examples(width, height, grid, source_size, tile_size, num_slices):
    processed = MegrezOImageProcessor().process_image(Image.new("RGB", (width, height)))
    assert processed.grid == grid
    assert processed.num_slices == num_slices
    assert processed.tgt_sizes[0] == source_size
    assert processed.tgt_sizes[1:] == [tile_size] * (num_slices - 1)
    for strip, (rows, cols) in zip(processed.strips, processed.tgt_sizes, strict=True):
        assert strip.shape == (3, PATCH, rows * cols * PATCH)


def test_720x1480_fills_448_image_positions():
    processed = MegrezOImageProcessor().process_image(Image.new("RGB", (720, 1480)))
    assert processed.num_slices * 64 == 448


def test_hand_computed_1000x750():
    width, height = 1000, 750
    assert width * height / 448**2 == pytest.approx(3.737, abs=1e-3)
    multiple = math.ceil(width * height / 448**2)
    assert multiple == 4
    errors = {
        (cols, rows): abs(math.log(width / height) - math.log(cols / rows))
        for cols, rows in [(1, 3), (3, 1), (1, 4), (2, 2), (4, 1), (1, 5), (5, 1)]
    }
    assert min(errors, key=errors.get) == (2, 2)
    source_height = int(448 / math.sqrt(width / height))
    assert source_height == 387
    source_width = int(source_height * width / height)
    assert source_width == 516
    assert (round(source_height / PATCH), round(source_width / PATCH)) == (28, 37)
    cell_width, cell_height = width / 2, height / 2
    assert (cell_width, cell_height) == (500, 375)
    cell_resized_height = int(448 / math.sqrt(cell_width / cell_height))
    cell_resized_width = int(cell_resized_height * cell_width / cell_height)
    assert (cell_resized_width, cell_resized_height) == (516, 387)
    assert (round(cell_resized_height / PATCH), round(cell_resized_width / PATCH)) == (28, 37)

    source, tiles, grid = slice_image(Image.new("RGB", (width, height)))
    assert grid == (2, 2)
    assert source.size == (37 * PATCH, 28 * PATCH)
    assert [tile.size for tile in tiles] == [(37 * PATCH, 28 * PATCH)] * 4


def test_hand_computed_300x200_upscales():
    width, height = 300, 200
    assert math.ceil(width * height / 448**2) == 1
    resized_height = int(448 / math.sqrt(width / height))
    resized_width = int(resized_height * width / height)
    assert (resized_width, resized_height) == (547, 365)
    assert (round(resized_height / PATCH), round(resized_width / PATCH)) == (26, 39)
    source, tiles, grid = slice_image(Image.new("RGB", (width, height)))
    assert (source.size, tiles, grid) == ((39 * PATCH, 26 * PATCH), [], None)


def test_tiles_cover_the_refined_image():
    image = random_image(1000, 750)
    _, tiles, grid = slice_image(image)
    cols, rows = grid
    tile_arrays = [np.asarray(tile) for tile in tiles]
    grid_rows = [np.concatenate(tile_arrays[row * cols : (row + 1) * cols], axis=1) for row in range(rows)]
    reassembled = np.concatenate(grid_rows, axis=0)
    refined = np.asarray(image.resize((2 * 37 * PATCH, 2 * 28 * PATCH), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(reassembled, refined)


def test_source_slice_is_bicubic_resize_of_the_original():
    image = random_image(1000, 750, seed=1)
    source, _, _ = slice_image(image)
    expected = image.resize((37 * PATCH, 28 * PATCH), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(np.asarray(source), np.asarray(expected))


def test_strip_layout_is_row_major_patches():
    pixels = np.random.default_rng(2).integers(0, 256, size=(3 * PATCH, 4 * PATCH, 3), dtype=np.uint8)
    strip, size = image_to_patch_strip(Image.fromarray(pixels))
    assert size == (3, 4)
    assert strip.dtype == torch.float32
    assert strip.shape == (3, PATCH, 12 * PATCH)
    for k in range(12):
        row, col = k // 4, k % 4
        crop = pixels[row * PATCH : (row + 1) * PATCH, col * PATCH : (col + 1) * PATCH].transpose(2, 0, 1)
        np.testing.assert_array_equal(strip[:, :, k * PATCH : (k + 1) * PATCH].numpy(), crop.astype(np.float32))


def test_strip_rejects_size_not_multiple_of_patch():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        image_to_patch_strip(Image.new("RGB", (30, 28)))


def test_pad_slices_masks_and_zero_pads():
    sizes = [(2, 3), (1, 2), (3, 3)]
    strips = [torch.rand(3, PATCH, rows * cols * PATCH) * 255 + 1 for rows, cols in sizes]
    encoding = pad_slices(strips, sizes)
    assert set(encoding) == {"pixel_values", "tgt_sizes", "patch_attention_mask"}
    assert encoding["pixel_values"].shape == (3, 3, PATCH, 9 * PATCH)
    assert encoding["tgt_sizes"].dtype == torch.long
    assert encoding["tgt_sizes"].tolist() == [[2, 3], [1, 2], [3, 3]]
    mask = encoding["patch_attention_mask"]
    assert mask.dtype == torch.bool
    assert mask.shape == (3, 1, 9)
    assert mask[:, 0].tolist() == [[True] * 6 + [False] * 3, [True] * 2 + [False] * 7, [True] * 9]
    for index, strip in enumerate(strips):
        width = strip.shape[-1]
        assert torch.equal(encoding["pixel_values"][index, :, :, :width], strip)
        assert not encoding["pixel_values"][index, :, :, width:].any()


def test_pad_slices_rejects_inconsistent_input():
    with pytest.raises(ValueError, match="sizes"):
        pad_slices([torch.zeros(3, PATCH, PATCH)], [])
    with pytest.raises(ValueError, match="shape"):
        pad_slices([torch.zeros(3, PATCH, PATCH)], [(1, 2)])


def test_preprocess_batches_every_slice_of_every_image():
    processor = MegrezOImageProcessor()
    images = [random_image(1000, 750), random_image(300, 200, seed=3)]
    encoding = processor(images)
    assert encoding["pixel_values"].shape == (6, 3, PATCH, 28 * 37 * PATCH)
    assert encoding["tgt_sizes"].tolist() == [[28, 37]] * 5 + [[26, 39]]
    assert encoding["patch_attention_mask"][5, 0].sum() == 26 * 39
    assert 0 <= encoding["pixel_values"].min() and encoding["pixel_values"].max() <= 255
    second = processor.process_image(images[1])
    assert torch.equal(encoding["pixel_values"][5, :, :, : 26 * 39 * PATCH], second.strips[0])


def test_per_call_overrides():
    processor = MegrezOImageProcessor()
    image = random_image(1000, 750)
    assert processor.process_image(image, max_slice_nums=1).num_slices == 1
    assert processor.process_image(image, max_slice_nums=1).tgt_sizes == [(28, 37)]
    assert processor(image, max_slice_nums=1)["pixel_values"].shape[0] == 1
    not_sliced = processor.process_image(image, slice_mode=False)
    assert not_sliced.grid is None
    assert torch.equal(not_sliced.strips[0], processor.process_image(image, max_slice_nums=1).strips[0])
    assert processor.process_image(image, scale_resolution=224).tgt_sizes[0] == (14, 18)
    assert MegrezOImageProcessor(slice_mode=False).process_image(image).num_slices == 1


def test_save_and_auto_load_round_trip(tmp_path):
    processor = MegrezOImageProcessor(**release_config())
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["auto_map"] == {"AutoImageProcessor": "image_processing_megrezo.MegrezOImageProcessor"}
    assert (saved["scale_resolution"], saved["max_slice_nums"], saved["patch_size"]) == (448, 9, 14)
    assert (saved["slice_mode"], saved["image_feature_size"]) == (True, 64)
    assert (tmp_path / "image_processing_megrezo.py").exists() and (tmp_path / "batch_format.py").exists()

    loaded = AutoImageProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(loaded).__name__ == "MegrezOImageProcessor"
    image = random_image(1920, 1080, seed=4)
    expected, actual = processor([image]), loaded([image])
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key])
    assert loaded.process_image(image, max_slice_nums=1).num_slices == 1


def test_auto_load_from_release_config(tmp_path):
    config = {**release_config(), "auto_map": {"AutoImageProcessor": "image_processing_megrezo.MegrezOImageProcessor"}}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    for name in ("image_processing_megrezo.py", "batch_format.py", "audio_lengths.py"):
        shutil.copyfile(PACKAGE_DIR / name, tmp_path / name)
    loaded = AutoImageProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    settings = (loaded.scale_resolution, loaded.max_slice_nums, loaded.patch_size, loaded.slice_mode)
    assert settings == (448, 9, 14, True)
    assert loaded.image_feature_size == 64
    assert loaded.process_image(Image.new("RGB", (1920, 1080))).num_slices == 9
    overridden = AutoImageProcessor.from_pretrained(tmp_path, trust_remote_code=True, max_slice_nums=4)
    assert overridden.max_slice_nums == 4
    sliced = overridden.process_image(Image.new("RGB", (1920, 1080)))
    assert (sliced.grid, sliced.num_slices) == ((3, 1), 4)


def test_missing_file_names_path(tmp_path):
    missing = tmp_path / "nowhere.jpg"
    with pytest.raises(FileNotFoundError, match="not found") as caught:
        load_image(missing)
    assert str(missing) in str(caught.value)


def test_corrupt_file_names_problem_and_path(tmp_path):
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not a jpeg at all" * 10)
    with pytest.raises(ValueError, match="corrupt or unsupported image") as caught:
        load_image(str(garbage))
    assert str(garbage) in str(caught.value)


def test_truncated_file_is_reported_as_corrupt(tmp_path):
    buffer = io.BytesIO()
    random_image(64, 64).save(buffer, format="JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ValueError, match="corrupt or unsupported image"):
        load_image(truncated)


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ValueError, match="not a file"):
        load_image(tmp_path)


@pytest.mark.parametrize(("source", "type_name"), [(42, "int"), ({"image": "x.jpg"}, "dict"), (None, "NoneType")])
def test_unsupported_type_names_the_type(source, type_name):
    with pytest.raises(ValueError, match=f"unsupported image input type {type_name}"):
        load_image(source)


def test_garbage_bytes_are_corrupt():
    with pytest.raises(ValueError, match="corrupt or unsupported image"):
        load_image(b"\x00\x01not an image")


@pytest.mark.parametrize(
    "array", [np.zeros((4, 4, 3), dtype=np.float32), np.zeros((4, 4, 4), dtype=np.uint8)], ids=["float", "rgba"]
)
def test_unsupported_arrays_are_rejected(array):
    with pytest.raises(ValueError, match="unsupported image array"):
        load_image(array)


@pytest.mark.parametrize("mode", ["P", "RGBA", "L", "LA", "1", "CMYK"])
def test_modes_are_converted_to_rgb(mode):
    image = random_image(20, 10).convert(mode)
    loaded = load_image(image)
    assert loaded.mode == "RGB"
    assert loaded.size == (20, 10)
    np.testing.assert_array_equal(np.asarray(loaded), np.asarray(image.convert("RGB")))


def test_palette_png_with_transparency_from_bytes():
    palette_image = Image.new("P", (8, 6), 1)
    palette_image.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    buffer = io.BytesIO()
    palette_image.save(buffer, format="PNG", transparency=0)
    loaded = load_image(buffer.getvalue())
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == (200, 100, 50)


def test_grayscale_and_rgb_arrays():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    loaded = load_image(gray)
    assert loaded.mode == "RGB" and loaded.size == (4, 3)
    np.testing.assert_array_equal(np.asarray(loaded), np.repeat(gray[:, :, None], 3, axis=2))
    rgb = np.random.default_rng(5).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(load_image(rgb)), rgb)


def test_path_kinds_load_the_same_pixels(tmp_path):
    image = random_image(16, 12, seed=6).convert("RGBA")
    path = tmp_path / "image.png"
    image.save(path)
    from_path, from_str = load_image(path), load_image(str(path))
    from_bytes = load_image(path.read_bytes())
    for loaded in (from_path, from_str, from_bytes):
        assert loaded.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(loaded), np.asarray(image.convert("RGB")))
