from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from monai.transforms import Randomizable
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from ai4hi_sdk.data.transforms import classification_transforms, load_pixels
from ai4hi_sdk.errors import UserError


def _read(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def _first_synth_file(consortium: Path) -> Path:
    return sorted((consortium / "hospital-2" / "dicom").rglob("*.dcm"))[0]


def test_ct_modality_lut_matches_pydicom():
    path = get_testdata_file("CT_small.dcm")
    ds = _read(path)
    expected = apply_modality_lut(ds.pixel_array, ds)
    got = load_pixels(path)
    assert got.dtype == np.float32 and got.shape == (ds.Rows, ds.Columns)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3)
    assert got.min() < -500  # HU, not stored values


def test_window_matches_pydicom(consortium):
    path = _first_synth_file(consortium)
    ds = _read(path)
    assert "WindowCenter" in ds
    expected = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    np.testing.assert_allclose(load_pixels(path), expected, atol=1e-2)
    raw = load_pixels(path, apply_voi=False)
    np.testing.assert_allclose(raw, ds.pixel_array.astype(np.float32))
    assert not np.allclose(raw, load_pixels(path))  # the window does something


def test_monochrome1_is_inverted(consortium, tmp_path):
    path = _first_synth_file(consortium)
    ds = _read(path)
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = tmp_path / "mono1.dcm"
    ds.save_as(inverted)
    normal = load_pixels(path)
    # windowed 12-bit unsigned output lies in [0, 4095]; inversion maps x -> 4095 - x
    np.testing.assert_allclose(load_pixels(inverted), 4095.0 - normal, atol=1e-2)
    np.testing.assert_allclose(load_pixels(inverted, apply_voi=False),
                               4095.0 - load_pixels(path, apply_voi=False))


def test_broken_window_falls_back_to_modality_values(consortium, tmp_path):
    ds = _read(_first_synth_file(consortium))
    ds.WindowWidth = 0
    path = tmp_path / "badwindow.dcm"
    ds.save_as(path)
    with pytest.warns(UserWarning, match="VOI LUT not applied"):
        out = load_pixels(path)
    np.testing.assert_allclose(out, ds.pixel_array.astype(np.float32))


def test_colour_and_multiframe():
    rgb = load_pixels(get_testdata_file("SC_rgb_small_odd.dcm"))
    assert rgb.ndim == 2
    path = get_testdata_file("SC_rgb_rle_2frame.dcm")
    f0, f1 = load_pixels(path, frame=0), load_pixels(path, frame=1)
    assert f0.shape == f1.shape == (100, 100) and not np.array_equal(f0, f1)
    with pytest.raises(UserError, match="frame 2 out of range"):
        load_pixels(path, frame=2)


def test_undecodable_raises_user_error(tmp_path):
    (tmp_path / "x.dcm").write_text("not dicom")
    with pytest.raises(UserError, match="cannot decode"):
        load_pixels(tmp_path / "x.dcm")


def test_eval_pipeline_shape_range_and_robustness():
    rng = np.random.default_rng(0)
    img = rng.normal(1000.0, 100.0, size=(1, 100, 80)).astype(np.float32)
    img[0, 0, 0] = 1e6  # a burned-in marker must not squash the anatomy
    pipe = classification_transforms(32, train=False, augment=True)
    out = pipe(img)
    assert isinstance(out, torch.Tensor) and type(out) is torch.Tensor  # no MetaTensor
    assert out.shape == (1, 32, 32) and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert float(out.std()) > 0.05
    assert torch.equal(out, pipe(img))  # no randomness outside training
    assert not any(isinstance(t, Randomizable) for t in pipe.flatten().transforms)


def test_train_pipeline_augments_reproducibly():
    img = np.random.default_rng(1).random((1, 64, 64)).astype(np.float32)
    off = classification_transforms(32, train=True, augment=False)
    assert torch.equal(off(img), off(img))
    pipe = classification_transforms(32, train=True, augment=True)
    pipe.set_random_state(seed=3)
    a = [pipe(img) for _ in range(4)]
    pipe.set_random_state(seed=3)
    b = [pipe(img) for _ in range(4)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert any(not torch.equal(x, off(img)) for x in a)
    assert all(x.shape == (1, 32, 32) for x in a)


@pytest.mark.parametrize(
    "name",
    ["RG3_UNCR.dcm", "RG1_J2KR.dcm", "US1_UNCR.dcm", "examples_palette.dcm", "examples_ybr_color.dcm",
     "SC_rgb_rle_2frame.dcm", "SC_rgb_jpeg_dcmtk.dcm", "MR_small_jp2klossless.dcm", "color3d_jpeg_baseline.dcm"],
)
def test_frame_wise_decoding_equals_pydicom_full_decode(name):
    """load_pixels decodes only the frame it needs; that frame equals pydicom's full decode of it
    (colour converted the same way), for real CR films, palette, YBR, RLE, JPEG and a 120-frame cine."""
    from ai4hi_sdk.data.dicomio import read_frame

    path = get_testdata_file(name)
    ds = _read(path)
    full = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    for index in sorted({0, frames - 1}):
        expected = full[index] if frames > 1 else full
        np.testing.assert_array_equal(read_frame(path, index, raw=False), expected)
