"""Signature-preserving super-resolution: θ per upscaler on scikit-learn's sample photos.

    python examples/sig_check.py        # needs Pillow (pip install 'anet-lite[image]')

Each photo is enlarged 2x with Pillow's nearest/bilinear/bicubic/lanczos, and once with
lanczos followed by a Gaussian blur (a "smoothing" upscaler); θ compares the noise fingerprint
of the original with that of the upscale brought back to the original size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from anet_lite.image import (
    compare_upscalers,
    format_comparison,
    sample_images,
    signature_consistency,
    upscale,
    verdict,
)

print(format_comparison(compare_upscalers()))
for name, img in sample_images():
    blurred = np.asarray(
        Image.fromarray(upscale(img, 2, "lanczos")).filter(ImageFilter.GaussianBlur(3))
    )
    theta = signature_consistency(img, blurred)
    print(f"{name} lanczos+blur: θ = {theta:.4f}: {verdict(theta)}")
