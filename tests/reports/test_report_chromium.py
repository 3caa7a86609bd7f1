"""The HTML report rendered by a real browser: Debian's headless Chromium (``.ci/run`` installs it).

Two runs of the same page:

* ``--dump-dom`` of an instrumented copy: a script added after the report reads, once the page has
  loaded, what the browser made of every ``<img>`` (decoded size, laid-out box) and writes it into
  the DOM, so the test sees that each embedded PNG was decoded and laid out, not just present;
* ``--screenshot`` of the unmodified page at its full height: the pixels inside each plot's box must
  be a drawn plot (varied, with coloured marks), not a blank or broken-image area.

Without Chromium the test skips, unless ``AI4HI_REQUIRE_CHROMIUM=1`` (set by ``.ci/run``) makes that
a failure, so CI can never pass by skipping it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from ai4hi_sdk.reports.report import generate_reports

from .test_report import result_dir  # noqa: F401  (fixture: a loop result folder built from the real cores)

_BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
if _BROWSER is None and os.environ.get("AI4HI_REQUIRE_CHROMIUM") == "1":
    raise RuntimeError("AI4HI_REQUIRE_CHROMIUM=1 but no chromium on PATH (Debian package 'chromium')")
pytestmark = pytest.mark.skipif(_BROWSER is None, reason="headless Chromium not installed (Debian package 'chromium')")

WIDTH = 1280
_PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images].map(i => {
    const r = i.getBoundingClientRect();
    return {alt: i.alt, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight,
            box: [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height]};
  });
  // the safety panel's verdict cells, with their laid-out boxes and computed background colours
  const cells = [...document.querySelectorAll("#safety td.pass, #safety td.fail")].map(c => {
    const r = c.getBoundingClientRect();
    return {cls: c.className, text: c.textContent, bg: getComputedStyle(c).backgroundColor,
            box: [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height]};
  });
  const safety = document.getElementById("safety");
  const first = safety ? safety.getBoundingClientRect().top + window.scrollY : -1;
  const out = document.createElement("pre");
  out.id = "ai4hi-probe";
  out.textContent = JSON.stringify({imgs, cells, safety_top: first, height: document.documentElement.scrollHeight});
  document.body.appendChild(out);
});
</script>"""


def _chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    # flags: no sandbox as root in CI; no background networking (the machine has no internet);
    # a fresh profile inside the test's tmp dir so nothing is written elsewhere
    profile = tmp_path / "chromium-profile"
    cmd = [_BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--hide-scrollbars", "--force-device-scale-factor=1", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, check=True, timeout=120, capture_output=True, text=True,
                          env={**os.environ, "HOME": str(tmp_path)})


def test_report_renders_in_headless_chromium(result_dir, tmp_path):  # noqa: F811
    generate_reports(result_dir)
    page = result_dir / "report.html"
    probe_page = result_dir / "report_probe.html"
    probe_page.write_text(page.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8")

    dom = _chromium(tmp_path, f"--window-size={WIDTH},900", "--dump-dom", probe_page.as_uri()).stdout
    found = re.search(r'<pre id="ai4hi-probe">(.*?)</pre>', dom, re.S)
    assert found, "the page's load handler never ran in Chromium"
    probe = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    imgs = probe["imgs"]
    alts = [i["alt"] for i in imgs]
    for wanted in ("forest plot", "subgroup gaps", "calibration curves", "drift tests per site", "drift over time",
                   "net benefit curves", "robustness panel"):
        assert any(wanted in a for a in alts), alts
    # the safety panel comes first, above every plot, with red FAIL and green PASS cells
    assert 0 <= probe["safety_top"] < min(i["box"][1] for i in imgs)
    cells = probe["cells"]
    assert any(c["cls"] == "fail" for c in cells) and any(c["cls"] == "pass" for c in cells)
    assert {c["bg"] for c in cells if c["cls"] == "fail"} == {"rgb(248, 215, 218)"}
    assert {c["bg"] for c in cells if c["cls"] == "pass"} == {"rgb(212, 237, 218)"}
    for img in imgs:  # every PNG decoded by the browser and laid out at a readable size
        assert img["complete"] and img["w"] >= 300 and img["h"] >= 150, img
        assert img["box"][2] >= 300 and img["box"][3] >= 100, img

    height = int(probe["height"]) + 20
    shot = tmp_path / "report.png"
    _chromium(tmp_path, f"--window-size={WIDTH},{height}", f"--screenshot={shot}", page.as_uri())
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]  # float RGB in [0, 1], shape (height, WIDTH, 3)
    assert pixels.shape[1] == WIDTH and pixels.shape[0] >= height - 5, pixels.shape
    for img in imgs:
        x, y, w, h = (int(round(v)) for v in img["box"])
        area = pixels[y:y + h, x:x + w]
        assert area.shape[0] >= 0.9 * h and area.shape[1] >= 0.9 * w, (img["alt"], area.shape)
        ink = (area.min(axis=2) < 0.85).mean()  # anything drawn: axes, text, marks
        colour = (area.max(axis=2) - area.min(axis=2) > 0.25).mean()  # saturated marks (matplotlib's palette)
        assert ink > 0.01, f"{img['alt']}: the plot's box is blank in the screenshot ({ink:.4f} inked)"
        assert colour > 0.001, f"{img['alt']}: no coloured marks in the screenshot ({colour:.4f})"
    for cell in cells:  # painted: the median pixel of a FAIL cell is red-tinted, of a PASS cell green-tinted
        x, y, w, h = (int(round(v)) for v in cell["box"])
        r, g, _ = np.median(pixels[y:y + h, x:x + w].reshape(-1, 3), axis=0)
        assert (r - g > 0.08) if cell["cls"] == "fail" else (g - r > 0.06), (cell["text"], r, g)
