"""NVFlare POC deployment with homomorphic encryption (``secagg_vs_he.py --poc``); returns a dict.

Everything lives in a fresh temporary directory: ``nvflare poc prepare --he -i project.yml`` (3 sites,
HEBuilder defaults; the server participant is named ``localhost`` so that its service target is a
loopback address and NVFlare binds 127.0.0.1 only), then the server and the 3 clients are started
directly (``python -m nvflare.private.fed.app.{server.server_train,client.client_train}``, each in its
own process group, stopped by that group's id at the end), and NVFlare's ``FedAvgRecipeWithHE`` job
(the demo's DenseNet, 11,362 parameters; a Client-API script that adds a small random update and
reports ``NUM_STEPS_CURRENT_ROUND``) is submitted with ``ProdEnv`` and the admin startup kit.
Per-round seconds come from the server log (``Round N started.`` -> ``Round N finished.``), the HE
filters' own timings from the site logs.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path

TRAIN_SCRIPT = '''
import time
import numpy as np
import torch
import nvflare.client as flare

flare.init()
rng = np.random.default_rng(abs(hash(flare.get_site_name())) % 2**32)
while flare.is_running():
    model = flare.receive()
    params = {}
    for k, v in model.params.items():
        arr = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
        upd = arr + rng.normal(0, 0.01, arr.shape).astype(arr.dtype)
        params[k] = torch.as_tensor(upd) if hasattr(v, "detach") else upd
    flare.send(flare.FLModel(params=params, meta={"NUM_STEPS_CURRENT_ROUND": 10}))
'''

PROJECT = """api_version: 3
name: he_bench
description: HE benchmark POC (loopback only)
participants:
  - name: localhost
    type: server
    org: bench
    fed_learn_port: {port}
  - name: admin@nvidia.com
    type: admin
    org: bench
    role: project_admin
  - name: site-1
    type: client
    org: bench
  - name: site-2
    type: client
    org: bench
  - name: site-3
    type: client
    org: bench
builders:
  - path: nvflare.lighter.impl.workspace.WorkspaceBuilder
    args:
      template_file: master_template.yml
  - path: nvflare.lighter.impl.static_file.StaticFileBuilder
    args:
      config_folder: config
  - path: nvflare.lighter.impl.cert.CertBuilder
  - path: nvflare.lighter.impl.he.HEBuilder
  - path: nvflare.lighter.impl.signature.SignatureBuilder
"""

ENC_RE = re.compile(r"Encryption time for (\d+) of (\d+) params.* ([\d.e-]+) seconds")
DEC_RE = re.compile(r"Decryption time for (\d+) of (\d+) params ([\d.e-]+) seconds")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stamp(text: str) -> float:
    for fmt in ("%Y-%m-%d %H:%M:%S,%f", "%Y-%m-%d %H:%M:%S.%f", "%m/%d/%Y %H:%M:%S"):
        try:
            return datetime.strptime(text, fmt).timestamp()
        except ValueError:
            continue
    raise ValueError(text)


def _logs(root: Path, name: str) -> str:
    return "\n".join(p.read_text(errors="replace") for p in root.rglob(name) if p.is_file())


def run_poc(timeout_s: float = 900.0, rounds: int = 3) -> dict:
    out: dict = {"steps": []}
    # under $AI4HI_BENCH_TMP if set (else the system temp dir); removed at the end unless AI4HI_KEEP_POC=1
    tmp = Path(tempfile.mkdtemp(prefix="ai4hi_he_poc_", dir=os.environ.get("AI4HI_BENCH_TMP")))
    out["workspace"] = str(tmp)
    procs: list[subprocess.Popen] = []
    env = {**os.environ, "NVFLARE_POC_WORKSPACE": str(tmp / "poc"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    started = time.monotonic()
    try:
        port = _free_port()
        (tmp / "project.yml").write_text(PROJECT.format(port=port))
        prep = subprocess.run([sys.executable, "-m", "nvflare.cli", "poc", "prepare", "-i", str(tmp / "project.yml"),
                               "--he", "--force"], env=env, capture_output=True, text=True, timeout=180)
        out["steps"].append({"poc_prepare_rc": prep.returncode, "tail": (prep.stdout + prep.stderr)[-600:]})
        if prep.returncode:
            out["result"] = "poc prepare failed"
            return out
        prod = next((tmp / "poc").glob("*/prod_00"))
        kits = {p.name: p for p in prod.iterdir() if p.is_dir()}
        out["kits"] = sorted(kits)
        out["he_files"] = sorted(str(p.relative_to(prod)) for p in prod.rglob("*.tenseal"))
        server = kits["localhost"]
        cmds = {"localhost": [sys.executable, "-u", "-m", "nvflare.private.fed.app.server.server_train", "-m",
                              str(server), "-s", "fed_server.json", "--set", "secure_train=true", "org=bench",
                              "config_folder=config"]}
        for site in ("site-1", "site-2", "site-3"):
            cmds[site] = [sys.executable, "-u", "-m", "nvflare.private.fed.app.client.client_train", "-m",
                          str(kits[site]), "-s", "fed_client.json", "--set", "secure_train=true", f"uid={site}",
                          "org=bench", "config_folder=config"]
        for name, cmd in cmds.items():
            log = open(tmp / f"{name}.out", "w")
            procs.append(subprocess.Popen(cmd, cwd=kits[name], env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
            if name == "localhost":
                time.sleep(8)
        out["pids"] = [p.pid for p in procs]
        time.sleep(10)
        listening = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout
        out["listeners"] = [ln.split()[3] for ln in listening.splitlines()
                            if any(f"pid={p.pid}," in ln for p in procs)]

        job_dir = tmp / "job_src"
        job_dir.mkdir()
        (job_dir / "client.py").write_text(TRAIN_SCRIPT)
        sys.path.insert(0, str(job_dir))
        from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe
        from nvflare.app_opt.pt.recipes.fedavg_he import FedAvgRecipeWithHE
        from nvflare.recipe.prod_env import ProdEnv

        model = {"class_path": "monai.networks.nets.DenseNet",
                 "args": {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "init_features": 16,
                          "growth_rate": 8, "block_config": [2, 2, 2], "bn_size": 2, "dropout_prob": 0.0}}
        prod_env = ProdEnv(startup_kit_location=str(kits["admin@nvidia.com"]), login_timeout=30)
        slog_path = tmp / "localhost.out"  # the server's and its job processes' log lines
        out["jobs"] = {}
        for label, cls in (("he", FedAvgRecipeWithHE), ("plain", FedAvgRecipe)):
            cwd = os.getcwd()
            os.chdir(job_dir)
            try:
                recipe = cls(name=f"bench_{label}", model=model, min_clients=3, num_rounds=rounds,
                             train_script="client.py")
                submitted = time.time()
                run = recipe.execute(prod_env)
            finally:
                os.chdir(cwd)
            job_id = run.get_job_id()
            status = None
            while time.monotonic() - started < timeout_s:
                status = run.get_status()
                if status and ("FINISHED" in status or "ABORTED" in status or "FAILED" in status):
                    break
                time.sleep(5)
            # jobs run one after the other: this job's lines are those after its submission; FedAvg logs
            # "Round N started." on a line of its own, under the stamped line of its log record
            starts, ends, last = {}, [], None
            for line in slog_path.read_text(errors="replace").splitlines():
                if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", line):
                    last = _stamp(line[:23])
                if last is None or last < submitted - 1:
                    continue
                m = re.search(r"Round (\d+) started\.", line)
                if m:
                    starts.setdefault(int(m.group(1)), last)
                if "Finished ScatterAndGather" in line or "Finished FedAvg" in line:
                    ends.append(last)
            if ends:
                starts[max(starts, default=-1) + 1] = ends[-1]
            order = sorted(starts)
            out["jobs"][label] = {"recipe": cls.__name__, "job_id": job_id, "status": status,
                                  "round_seconds_start_to_start": [starts[b] - starts[a]
                                                                   for a, b in zip(order, order[1:])]}
        slog = slog_path.read_text(errors="replace")
        clog = "\n".join(_logs(kits[s], "log.txt") for s in ("site-1", "site-2", "site-3"))
        out["site_encrypt_seconds"] = [float(m.group(3)) for m in ENC_RE.finditer(clog)]
        out["site_decrypt_seconds"] = [float(m.group(3)) for m in DEC_RE.finditer(clog)]
        out["encrypted_params"] = [int(m.group(2)) for m in ENC_RE.finditer(clog)][:1]
        errs = [ln for ln in (slog + "\n" + clog).splitlines() if "ERROR" in ln or "Traceback" in ln]
        out["errors"] = errs[:12]
        out["result"] = "ok" if all(j["round_seconds_start_to_start"] for j in out["jobs"].values()) else \
            "some job has no timed rounds"
        return out
    except Exception as exc:  # report what happened; the caller prints it
        out["result"] = f"failed: {type(exc).__name__}: {exc}"
        return out
    finally:
        out["seconds"] = time.monotonic() - started
        for p in procs:  # only the process groups started here
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(3)
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=10)
        if os.environ.get("AI4HI_KEEP_POC") != "1":
            shutil.rmtree(tmp, ignore_errors=True)
            out["workspace_removed"] = True


if __name__ == "__main__":
    import json

    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)  # the Flare API prints progress on stdout: keep stdout JSON only
    try:
        result = run_poc(timeout_s=float(sys.argv[1]) if len(sys.argv) > 1 else 900.0)
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
    print(json.dumps(result, indent=2, default=str))
