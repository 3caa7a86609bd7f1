"""A site's explanation page rendered by headless Chromium: every saliency figure decoded and laid
out (the same probe as the report's test). Skips without Chromium unless AI4HI_REQUIRE_CHROMIUM=1."""

from __future__ import annotations

import json
import re

import pytest

from ai4hi_sdk.reports.explanations import PAGE, render_explanations

from .test_explanations import TOP_LEFT, Images, Quadrant
from .test_report_chromium import _BROWSER, _PROBE, WIDTH, _chromium

pytestmark = pytest.mark.skipif(_BROWSER is None, reason="headless Chromium not installed (Debian package 'chromium')")


def test_explanation_page_renders_with_its_images_decoded(tmp_path):
    out = tmp_path / "site-ws" / "explanations"
    render_explanations(Quadrant((0, 0)), Quadrant((16, 16)), Images(8), out, n_images=6, mask_size=4,
                        masks=lambda i: TOP_LEFT, min_count=10)
    page = out / PAGE
    probe_page = out / "probe.html"
    probe_page.write_text(page.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    dom = _chromium(tmp_path, f"--window-size={WIDTH},900", "--dump-dom", probe_page.as_uri()).stdout
    found = re.search(r'<pre id="ai4hi-probe">(.*?)</pre>', dom, re.S)
    assert found, "the page's load handler never ran in Chromium"
    imgs = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))["imgs"]
    assert len(imgs) == 6
    for img in imgs:
        assert img["complete"] and img["w"] >= 300 and img["h"] >= 100, img
        assert img["box"][2] >= 300 and img["box"][3] >= 100, img
        assert "candidate P(positive)" in img["alt"]
