"""DICOM scan: memory for a long cine, and files per second, on a folder built from pydicom's files.

The folder (``--out``, default a temporary one) holds ``--radiographs`` real CR films from
pydicom-data (RG1 / RG3, 1955 x 1841 and 1760 x 1760, uncompressed and lossless JPEG 2000) with
fresh UIDs, pydicom's CT and MR test slices, and a 360-frame colour ultrasound cine: the 120 JPEG
frames of pydicom-data's ``color3d_jpeg_baseline.dcm`` (480 x 640, YBR) repeated three times. Every
measurement runs in its own child process; "peak above start-up" is the child's peak resident
memory (``ru_maxrss``) minus its resident memory after the imports, before the measured call.

* ``scan_cine``: :func:`scan_directory` of a folder holding only the 360-frame cine (the target:
  <= 300 MiB above start-up);
* ``scan_folder``: the whole folder: wall time, files per second, peak memory;
* ``scan_folder_verify``: the same with ``verify_pixels`` (every frame decoded, one at a time);
* ``full_decode_cine`` (with ``--reference``): what the scan did before, ``ds.pixel_array`` of the
  cine (all frames, colour-converted), for comparison;
* ``baseline_*`` (with ``--baseline CHECKOUT``): ``scan_cine`` and ``scan_folder`` run with another
  checkout's ``ai4hi_sdk`` (e.g. the commit before this scan) on the same folder.

Prints one JSON object. Usage:
``python benchmarks/scan.py [--radiographs 24] [--reference] [--baseline DIR] [--out DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CINE_REPEATS = 3
RADIOGRAPHS = ("RG1_UNCR.dcm", "RG3_UNCR.dcm", "RG1_J2KR.dcm", "RG3_J2KR.dcm")
SLICES = ("CT_small.dcm", "MR_small.dcm")


def build_folder(out: Path, radiographs: int) -> dict:
    """Write the benchmark folder; returns what it holds."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.encaps import encapsulate, generate_fragmented_frames
    from pydicom.uid import generate_uid

    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cine = pydicom.dcmread(get_testdata_file("color3d_jpeg_baseline.dcm"))
        n = int(cine.NumberOfFrames)
        frames = [b"".join(f) for f in generate_fragmented_frames(cine.PixelData, number_of_frames=n)]
        cine.PixelData = encapsulate(frames * CINE_REPEATS, has_bot=True)
        cine.NumberOfFrames = n * CINE_REPEATS
        cine.SOPInstanceUID = cine.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        (out / "cine").mkdir(exist_ok=True)
        cine.save_as(out / "cine" / "us_cine_360.dcm")
        for k in range(radiographs):
            ds = pydicom.dcmread(get_testdata_file(RADIOGRAPHS[k % len(RADIOGRAPHS)]))
            ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.save_as(out / f"cr_{k:03d}.dcm")
        for name in SLICES:
            shutil.copy(get_testdata_file(name), out / name)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files),
            "cine_frames": n * CINE_REPEATS, "cine_bytes": (out / "cine" / "us_cine_360.dcm").stat().st_size}


def measure(kind: str, folder: Path) -> dict:
    """Child process: one measurement."""
    import psutil
    import pydicom

    from ai4hi_sdk.data.scan import scan_directory

    start = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    out: dict = {}
    if kind == "full_decode_cine":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = pydicom.dcmread(folder / "cine" / "us_cine_360.dcm").pixel_array
        out["array_mib"] = round(arr.nbytes / 2**20, 1)
    else:
        root = folder / "cine" if kind == "scan_cine" else folder
        report = scan_directory(root, verify_pixels=kind.endswith("verify"))
        out.update(files=report.files_seen, read=report.files_read, skipped=report.skipped_by_reason)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    out.update(wall_s=round(wall, 3), peak_above_startup_mib=round((peak - start) / 2**20, 1),
               startup_rss_mib=round(start / 2**20, 1))
    if "files" in out:
        out["files_per_s"] = round(out["files"] / wall, 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--radiographs", type=int, default=24)
    parser.add_argument("--reference", action="store_true", help="also measure the old full decode (~3 GB)")
    parser.add_argument("--out", type=Path, default=None, help="folder to build (default: a temporary one)")
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout whose scan to measure too")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], Path(args.child[1]))))
        return 0
    tmp = None if args.out else tempfile.mkdtemp(prefix="ai4hi-scan-bench-")
    folder = args.out or Path(tmp)
    try:
        result: dict = {"folder": build_folder(folder, args.radiographs), "load_before": os.getloadavg()[0]}
        kinds = ["scan_cine", "scan_folder", "scan_folder_verify"] + (["full_decode_cine"] if args.reference else [])
        runs = [(kind, kind, REPO) for kind in kinds]
        if args.baseline:
            runs += [(f"baseline_{kind}", kind, args.baseline.resolve()) for kind in ("scan_cine", "scan_folder")]
        for name, kind, checkout in runs:
            child = subprocess.run([sys.executable, __file__, "--child", kind, str(folder)], capture_output=True,
                                   text=True, check=True, env={**os.environ, "PYTHONPATH": str(checkout)})
            result[name] = json.loads(child.stdout.strip().splitlines()[-1])
        result["load_after"] = os.getloadavg()[0]
        result["cine_target_met"] = result["scan_cine"]["peak_above_startup_mib"] <= 300
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    if not os.environ.get("PYTHONPATH"):
        sys.path.insert(0, str(REPO))
    raise SystemExit(main())
