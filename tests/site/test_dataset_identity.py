"""A dataset's privacy identity follows its studies, not its folder: copied or re-mounted data
keeps its spend, grown data inherits it, and nothing identifying leaves without the site's salt."""

from __future__ import annotations

import shutil
import stat

import pydicom
import pytest

from ai4hi_sdk.data.synth import synth_site
from ai4hi_sdk.errors import RoundRefused
from ai4hi_sdk.site.dataset_identity import SALT_FILE, DatasetRegistry, identify_dataset, site_salt
from ai4hi_sdk.site.gate import SiteGate
from tests.site.conftest import write_policy


@pytest.fixture(scope="module")
def dicom_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("identity")
    synth_site(root / "a", site_index=0, n_studies=6, seed=11)
    return root / "a"


def test_same_studies_in_another_folder_have_the_same_id(dicom_site, tmp_path):
    salt = site_salt(tmp_path / "ws")
    copy = tmp_path / "mounted" / "elsewhere"
    shutil.copytree(dicom_site, copy)
    a, b = identify_dataset(dicom_site, salt), identify_dataset(copy, salt)
    assert a.dataset_id == b.dataset_id and a.dataset_id.startswith("ds-") and len(a.study_keys) == 6
    # another site (another salt) sees other ids for the same studies
    assert identify_dataset(dicom_site, site_salt(tmp_path / "other")).dataset_id != a.dataset_id


def test_the_salt_is_secret_and_kept(tmp_path):
    first = site_salt(tmp_path)
    assert stat.S_IMODE((tmp_path / SALT_FILE).stat().st_mode) == 0o600
    assert site_salt(tmp_path) == first and len(first) == 32


def test_copied_data_keeps_its_spend_and_grown_data_inherits_it(dicom_site, tmp_path):
    """The same DICOM copied to another folder keeps its spend (issue 12, test 4)."""
    ws = tmp_path / "ws"
    write_policy(ws, max_epsilon_per_dataset=10.0)
    gate = SiteGate(ws, "job-1")
    gate.bind_dataset(dicom_site)
    gate.budget.commit_round(gate.dataset_id, 1.0, 0.05, 100,
                             write_ahead=lambda d: gate.ledger.record_decision(d, job_id="job-1", round_index=0))
    spent = gate.position()["epsilon_spent"]
    assert spent > 0

    copy = tmp_path / "copy"
    shutil.copytree(dicom_site, copy)
    again = SiteGate(ws, "job-2")
    again.bind_dataset(copy)
    assert again.dataset_id == gate.dataset_id and again.position()["epsilon_spent"] == pytest.approx(spent)

    grown = tmp_path / "grown"
    shutil.copytree(dicom_site, grown)
    synth_site(tmp_path / "new", site_index=0, n_studies=2, seed=99)
    shutil.copytree(tmp_path / "new" / "dicom", grown / "dicom" / "new_studies")
    later = SiteGate(ws, "job-3")
    later.bind_dataset(grown)
    assert later.dataset_id != gate.dataset_id and later.related == [gate.dataset_id]
    assert later.position()["epsilon_spent"] == pytest.approx(spent)
    assert set(DatasetRegistry(ws)._read()) == {gate.dataset_id, later.dataset_id}


def test_the_registry_holds_no_uid(dicom_site, tmp_path):
    ws = tmp_path / "ws"
    identity = identify_dataset(dicom_site, site_salt(ws))
    DatasetRegistry(ws).register(identity)
    text = (ws / "ai4hi" / "datasets.json").read_text()
    uids = {pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in dicom_site.rglob("*.dcm")}
    assert uids and not any(uid in text for uid in uids)


def test_a_folder_without_dicom_falls_back_to_its_path(tmp_path):
    (tmp_path / "tensors").mkdir()
    identity = identify_dataset(tmp_path / "tensors", b"s" * 32)
    assert identity.dataset_id.startswith("path-") and not identity.study_keys
    assert "no DICOM" in identity.source


def test_an_unreadable_registry_refuses(dicom_site, tmp_path):
    ws = tmp_path / "ws"
    write_policy(ws)
    (ws / "ai4hi" / "datasets.json").write_text("{not json")
    with pytest.raises(RoundRefused, match="dataset registry"):
        SiteGate(ws, "j").bind_dataset(dicom_site)
