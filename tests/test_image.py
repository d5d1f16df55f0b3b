"""Signature-preserving super-resolution: image fingerprints, θ per upscaler, `sig-check`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anet_lite.cli import main
from anet_lite.image import image_fingerprint, signature_consistency

Image = pytest.importorskip("PIL.Image")
ImageFilter = pytest.importorskip("PIL.ImageFilter")
pytest.importorskip("sklearn")

from anet_lite.image import compare_upscalers, sample_images, upscale, verdict  # noqa: E402


@pytest.fixture(scope="module")
def china():
    return dict(sample_images())["china.jpg"]


def test_fingerprint_is_a_distribution_and_self_theta_is_one(china):
    fp = image_fingerprint(china)
    assert fp.shape == (8,) and np.all(fp >= 0) and abs(fp.sum() - 1) < 1e-12
    assert signature_consistency(china, china) == 1.0
    assert image_fingerprint(np.full((40, 40), 7.0)) is None  # no noise at all


def test_image_names_stay_importable_from_fingerprint():
    from anet_lite import fingerprint, image

    assert fingerprint.signature_consistency is image.signature_consistency
    assert fingerprint.image_fingerprint is image.image_fingerprint
    with pytest.raises(AttributeError):
        fingerprint.no_such_name  # noqa: B018


def test_brightness_scaling_invariance(china):
    x = china.astype(np.float64)
    assert signature_consistency(x, x * 0.6) == pytest.approx(1.0, abs=1e-9)
    up = upscale(china, 2, "bicubic").astype(np.float64)
    assert signature_consistency(x * 1.7, up * 1.7) == pytest.approx(
        signature_consistency(x, up), abs=1e-6
    )


def test_blurred_upscale_scores_clearly_lower_than_lanczos(china):
    lanczos = upscale(china, 2, "lanczos")
    blurred = np.asarray(Image.fromarray(lanczos).filter(ImageFilter.GaussianBlur(3)))
    t_lanczos = signature_consistency(china, lanczos)
    t_blur = signature_consistency(china, blurred)
    assert t_lanczos > 0.95
    assert t_blur < 0.6 and t_lanczos - t_blur > 0.3


def test_compare_upscalers_on_sample_photos():
    rows = compare_upscalers()
    assert {r["image"] for r in rows} == {"china.jpg", "flower.jpg"}
    theta = {(r["image"], r["method"]): r["theta"] for r in rows}
    for img in ("china.jpg", "flower.jpg"):
        # BOX-downscaling undoes pixel replication exactly; smoother kernels lose more grain
        assert theta[img, "nearest"] == pytest.approx(1.0)
        assert theta[img, "lanczos"] > theta[img, "bicubic"] > theta[img, "bilinear"] > 0.9


@pytest.mark.parametrize(
    "orig, up, match",
    [
        (np.zeros((40, 40, 2)), np.zeros((80, 80)), "original must be"),
        (np.zeros(40), np.zeros((80, 80)), "original must be"),
        (np.zeros((20, 40)), np.zeros((40, 80)), "original is too small"),
        (np.zeros((40, 40)), np.zeros((10, 10)), "upscaled is too small"),
        (np.zeros((40, 40)), np.zeros((80, 80, 5)), "upscaled must be"),
        (np.zeros((40, 40)), np.zeros((40, 39)), "upscaled"),
        (np.zeros((40, 40)), np.zeros((80, 120)), "upscaled.*aspect"),
        (np.full((40, 40), np.nan), np.zeros((80, 80)), "original holds NaN"),
    ],
)
def test_bad_inputs_name_the_argument(orig, up, match):
    with pytest.raises(ValueError, match=match):
        signature_consistency(orig, up)


def test_bad_types_and_parameters():
    with pytest.raises(TypeError, match="original"):
        signature_consistency(np.array([["a"] * 40] * 40), np.zeros((40, 40)))
    with pytest.raises(ValueError, match="bands"):
        image_fingerprint(np.zeros((40, 40)), bands=1)
    with pytest.raises(ValueError, match="beta"):
        signature_consistency(np.zeros((40, 40)), np.zeros((40, 40)), beta=0)
    with pytest.raises(ValueError, match="method"):
        upscale(np.zeros((40, 40), np.uint8), 2, "magic")
    assert verdict(0.95).startswith("signature preserved")
    assert verdict(0.7, "ja").startswith("署名劣化") and verdict(0.1).startswith("signature lost")


def test_cli_sig_check_files_and_compare(tmp_path, capsys, china):
    orig, up = tmp_path / "o.png", tmp_path / "u.png"
    Image.fromarray(china).save(orig)
    Image.fromarray(upscale(china, 2, "lanczos")).save(up)
    assert main(["sig-check", str(orig), str(up)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("θ = 0.99") and "signature preserved" in out
    assert main(["sig-check", str(orig), str(up), "--json", "--lang", "ja"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["theta"] > 0.95 and d["verdict"].startswith("署名保全")

    assert main(["sig-check", "--compare"]) == 0
    out = capsys.readouterr().out
    assert "china.jpg" in out and "lanczos x2" in out and "flower.jpg" in out

    assert main(["sig-check", str(orig), str(tmp_path / "missing.png")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "bad.png").write_text("not an image")
    assert main(["sig-check", str(orig), str(tmp_path / "bad.png")]) == 2
    assert "not a readable image" in capsys.readouterr().err
    assert main(["sig-check", str(up), str(orig)]) == 2  # "upscaled" smaller than the original
    assert "upscaled" in capsys.readouterr().err
    assert main(["sig-check", str(orig)]) == 2


def test_example_runs():
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, os.path.join(root, "examples", "sig_check.py")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "lanczos+blur" in out.stdout
