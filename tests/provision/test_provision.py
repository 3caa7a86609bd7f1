"""Provisioning with the real `nvflare provision`, then our overlay of each kit."""

import json
import stat
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import padding

from ai4hi_sdk.cli.main import main
from ai4hi_sdk.config.consortium import load_consortium
from ai4hi_sdk.provision.provision import (CONSORTIUM_FILE, EGRESS_FILTER, LOG_STREAMER, SERVER_CLASSES,
                                          SITE_CLASSES, project_yml, provision)

EXAMPLE = Path(__file__).resolve().parents[2] / "site_templates" / "consortium.example.yaml"


@pytest.fixture(scope="module")
def kits(tmp_path_factory):
    out = tmp_path_factory.mktemp("prov")
    return out, provision(load_consortium(EXAMPLE), out)


def test_project_yml_lists_every_participant():
    project = project_yml(load_consortium(EXAMPLE))
    names = {p["name"]: p for p in project["participants"]}
    assert names["localhost"]["type"] == "server" and names["localhost"]["fed_learn_port"] == 8102
    assert names["hospital-2"]["type"] == "client" and names["hospital-2"]["org"] == "hospital_2"
    assert names["lead@consortium.example.org"]["role"] == "lead"
    assert names["it@hospital-1.example.org"]["role"] == "org_admin"


def test_site_certificates_are_signed_by_the_consortium_root(kits):
    _, info = kits
    for site, entry in info["sites"].items():
        startup = Path(entry["kit"]) / "startup"
        root = x509.load_pem_x509_certificate((startup / "rootCA.pem").read_bytes())
        cert = x509.load_pem_x509_certificate((startup / "client.crt").read_bytes())
        assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == site
        root.public_key().verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(),
                                 cert.signature_hash_algorithm)
        assert (startup / "start.sh").is_file()


def test_sites_are_overlaid_with_sdk_config(kits):
    _, info = kits
    for site, entry in info["sites"].items():
        local = Path(entry["kit"]) / "local"
        privacy = json.loads((local / "privacy.json").read_text())
        scope = privacy["scopes"][0]
        assert privacy["default_scope"] == scope["name"]
        assert [f["path"] for f in scope["task_result_filters"]] == [EGRESS_FILTER]
        resources = json.loads((local / "resources.json").read_text())
        # a job can run nothing at a site but the SDK's site runtime and its egress guard
        assert resources["class_allow_list"] == SITE_CLASSES
        # and no channel uploads the site's logs to the server
        assert resources["allow_log_streaming"] is False
        assert LOG_STREAMER not in json.dumps(resources)
        # nobody, lead and project admin included, may bring NVFlare custom code to a site
        authz = json.loads((local / "authorization.json").read_text())["permissions"]
        assert all(rights["byoc"] == "none" for rights in authz.values() if isinstance(rights, dict))
        assert authz["project_admin"] != "any"
        members = json.loads((Path(entry["kit"]) / CONSORTIUM_FILE).read_text())
        assert members["sites"] == ["hospital-1", "hospital-2", "hospital-3"]
        gpus = [c["args"]["num_of_gpus"] for c in resources["components"] if c["id"] == "resource_manager"]
        assert gpus == [1 if site == "hospital-2" else 0]
        policy = yaml.safe_load((Path(entry["kit"]) / "ai4hi" / "site_policy.yaml").read_text())
        assert policy["max_epsilon_per_dataset"] == 10.0 and policy["require_dp"] is True
        settings = yaml.safe_load((Path(entry["kit"]) / "ai4hi" / "site.yaml").read_text())
        assert settings["data_dir"] == {"hospital-1": "/data/cxr", "hospital-2": "/srv/dicom/cxr",
                                        "hospital-3": "/data/dicom"}[site]


def test_server_storage_stays_inside_the_kit(kits):
    _, info = kits
    server = Path(info["server"])
    text = (server / "local" / "resources.json").read_text()
    assert "/tmp/nvflare" not in text
    assert str(server / "storage") in text
    assert set(SERVER_CLASSES) <= set(json.loads(text)["class_allow_list"])


def test_private_keys_are_owner_only_and_custody_is_recorded(kits):
    out, info = kits
    keys = list(out.rglob("*.key")) + list(out.rglob("state/cert.json"))
    assert len(keys) >= 8 and info["private_keys"] == len(keys)
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    # the folder with the root CA's key stays with the lead; each site's kit names its admin
    assert Path(info["lead_only"]).name == "state" and (Path(info["lead_only"]) / "cert.json").is_file()
    assert info["sites"]["hospital-2"]["admin"] == "it@hospital-2.example.org"


def test_reprovisioning_keeps_a_sites_policy_and_ledger(kits):
    out, info = kits
    kit = Path(info["sites"]["hospital-1"]["kit"])
    policy = kit / "ai4hi" / "site_policy.yaml"
    policy.write_text(policy.read_text().replace("max_epsilon_per_dataset: 10.0", "max_epsilon_per_dataset: 3.0"))
    (kit / "ai4hi" / "privacy_ledger.jsonl").write_text('{"seq": 0}\n')
    settings = kit / "ai4hi" / "site.yaml"
    settings.write_text("data_dir: /mnt/moved/cxr\n")
    again = provision(load_consortium(EXAMPLE), out)
    new_kit = Path(again["sites"]["hospital-1"]["kit"])
    assert new_kit != kit and "kept" in again["sites"]["hospital-1"]["policy"]
    # a kept site setting that differs from the consortium file is named, not silently kept
    assert again["sites"]["hospital-1"]["kept"] == ("kept the site's data_dir /mnt/moved/cxr "
                                                     "(the consortium file says /data/cxr)")
    assert "kept" not in again["sites"]["hospital-2"]
    assert "max_epsilon_per_dataset: 3.0" in (new_kit / "ai4hi" / "site_policy.yaml").read_text()
    assert (new_kit / "ai4hi" / "privacy_ledger.jsonl").read_text() == '{"seq": 0}\n'


def test_cli_reports_bad_consortium_without_traceback(tmp_path, capsys):
    bad = tmp_path / "c.yaml"
    bad.write_text("name: x\n")
    assert main(["provision", str(bad), "--out", str(tmp_path / "ws")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "c.yaml" in err and "server" in err and "Traceback" not in err
