"""Reference-mode preprocessing (03_video) against ssvp_slt's own outputs in shared/golden/preprocess (semantics and
tolerances in its README): sliding windows (all 28 frame-count × fps cases: source indices and padding counts exact),
signer boxes (all 6: expanded detections, chosen float box, integer crop box, black border, crop size exact), 224×224
crops (within ±1 per pixel; same OpenCV bilinear resize and box), and the normalisation example (exact)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import SHARED
from sonar_thesis.config_sections import PRESETS, PreprocessConfig
from sonar_thesis.crop import crop_frame, reference_border, reference_expand, reference_int_box
from sonar_thesis.signer_box import reference_signer_box
from sonar_thesis.video_io import normalize, reference_pad_mask, reference_windows

GOLDEN = SHARED / "golden" / "preprocess"
if not GOLDEN.is_dir():
    pytest.skip(f"{GOLDEN} is missing: put a copy of the shared/ folder beside the repo (CI has one) to compare "
                "with the reference outputs", allow_module_level=True)

SONAR = PRESETS["sonar"]
REF = PreprocessConfig(mode="reference")            # expansion 1.5 / 1.0 / 3.0, as ssvp_slt's PreprocessingConfig
WINDOWS = json.loads((GOLDEN / "windows.json").read_text())
BOXES = json.loads((GOLDEN / "boxes.json").read_text())
CROPS = torch.load(GOLDEN / "crops.pt", weights_only=True)
NORM = json.loads((GOLDEN / "normalisation.json").read_text())


def test_golden_config_is_ours():
    """The golden files were made with the settings our sonar preset and PreprocessConfig use."""
    c = WINDOWS["config"]
    assert (c["num_frames"], c["sampling_rate"], c["target_fps"]) == (SONAR.num_frames, SONAR.sampling_rate,
                                                                      SONAR.target_fps)
    assert c["feature_extraction_stride"] * c["sampling_rate"] == SONAR.num_frames * SONAR.sampling_rate // 2
    e = BOXES["expansion"]
    assert (e["left_exp"], e["right_exp"], e["up_exp"], e["down_exp"]) == (
        REF.expand_left_right, REF.expand_left_right, REF.expand_up, REF.expand_down)
    assert REF.resolved_mode(SONAR) == "reference" and PreprocessConfig().resolved_mode(SONAR) == "reference"
    assert PreprocessConfig().resolved_mode(PRESETS["tiny"]) == "resample"


def test_all_window_cases_present():
    assert len(WINDOWS["cases"]) == 28


@pytest.mark.parametrize("case", sorted(WINDOWS["cases"]))
def test_windows(case):
    """Every window: start, end, the 128 source indices and the padding count, exactly."""
    ref = WINDOWS["cases"][case]
    ours = reference_windows(ref["n_frames"], ref["fps"], SONAR)
    assert len(ours) == len(ref["windows"]), f"{case}: {len(ours)} windows, reference {len(ref['windows'])}"
    for k, (w, r) in enumerate(zip(ours, ref["windows"])):
        assert w.start == r["start"], (case, k)
        assert abs(w.end_idx - r["end_idx"]) < 1e-3, (case, k, w.end_idx, r["end_idx"])
        assert w.indices.tolist() == r["indices"], (case, k)
        assert w.padding == r["padding"], (case, k, w.padding, r["padding"])
        mask = reference_pad_mask(w.padding, SONAR.num_frames)
        assert mask.sum() == r["padding"] and (np.asarray(r["indices"])[mask] == ref["n_frames"] - 1).all()


def test_all_box_cases_present():
    assert sorted(BOXES["cases"]) == sorted(CROPS["crops"]) and len(BOXES["cases"]) == 6


@pytest.mark.parametrize("case", sorted(BOXES["cases"]))
def test_boxes(case):
    """Expanded detections, the chosen float box, the integer crop box, the border and the crop size, exactly."""
    ref = BOXES["cases"][case]
    H, W = BOXES["frame_hw"]
    dets = [[tuple(b) for b in f] for f in ref["detections"]]
    assert [[list(reference_expand(b, REF)) for b in f] for f in dets] == ref["expanded"]
    box, how = reference_signer_box(dets, W, H, REF)
    assert list(box) == ref["bbox_float"], (box, ref["bbox_float"])
    assert how == ("center" if "no face" in ref["path"] else "mean")
    ib = reference_int_box(box)
    assert list(ib) == ref["int_box_x0y0x1y1_exclusive"]
    assert reference_border(ib, W, H) == ref["border_added"]
    assert [ib[3] - ib[1], ib[2] - ib[0]] == ref["crop_size_before_resize_hw"]


@pytest.mark.parametrize("case", sorted(BOXES["cases"]))
def test_crops(case):
    """The 224×224 crop of the stored test image with our box and bilinear resize: within ±1 of the reference."""
    img = CROPS["test_image"].numpy()                                     # uint8 [720, 1280, 3]
    ref = CROPS["crops"][case].numpy()                                    # uint8 [224, 224, 3]
    H, W = BOXES["frame_hw"]
    dets = [[tuple(b) for b in f] for f in BOXES["cases"][case]["detections"]]
    ours = crop_frame(img, reference_int_box(reference_signer_box(dets, W, H, REF)[0]), 224, bilinear=True)
    diff = np.abs(ours.astype(int) - ref.astype(int))
    assert ours.shape == ref.shape and ours.dtype == np.uint8
    assert diff.max() <= 1, f"{case}: max |diff| {diff.max()}, {int((diff > 1).sum())} values off by more than 1"


def test_normalisation():
    """uint8 0, 115, 255 → the reference's float32 values, exactly; layout [C, T, H, W] per window."""
    assert NORM["mean"] == [SONAR.mean] * 3 and NORM["std"] == [SONAR.std] * 3
    x = np.array([0, 115, 255], np.uint8).reshape(3, 1, 1, 1).repeat(3, axis=3)   # [T=3, H, W, C=3]
    out = normalize(x, SONAR)                                                         # [3, T, 1, 1]
    assert tuple(out.shape) == (3, 3, 1, 1)
    want = torch.tensor(NORM["example_uint8_0_115_255_to"], dtype=torch.float32)
    for c in range(3):
        assert torch.equal(out[c, :, 0, 0], want), (out[c, :, 0, 0].tolist(), want.tolist())
