"""lora_lab.course: the map points at real notebooks; the environment check works here."""

import importlib.metadata as md

import pytest

from lora_lab.course import (
    CHAPTERS,
    KEY_PACKAGES,
    LOCK_FILE,
    check_bnb_4bit,
    check_environment,
    normalize_name,
    pinned_versions,
    public_version,
    version_drift,
)


def test_every_chapter_notebook_exists():
    missing = [c.notebook for c in CHAPTERS if not c.exists]
    assert not missing, f"course map lists notebooks that do not exist: {missing}"


def test_environment_check():
    report = check_environment()
    assert not report.missing
    assert report.bnb_4bit_ok, report.bnb_4bit_detail
    assert "4096 values -> 2048 bytes" in report.bnb_4bit_detail


def test_bnb_check_reports_failure_instead_of_raising():
    ok, detail = check_bnb_4bit(device="no-such-device")
    assert not ok and detail


# --- the pinned environment (requirements-lock.txt) ---------------------------------------

def _lock(tmp_path, text):
    path = tmp_path / "requirements-lock.txt"
    path.write_text(text)
    return path


def test_the_repository_lock_pins_the_key_packages_exactly():
    assert LOCK_FILE.name == "requirements-lock.txt" and LOCK_FILE.parent.joinpath("lora_lab").is_dir()
    pins = pinned_versions()
    assert set(KEY_PACKAGES) <= set(pins)
    assert pins["torch"] == "2.13.0"  # no local build label: pip picks the platform's build
    assert all("+" not in v for v in pins.values())


def test_pinned_versions_parses_names_comments_and_options(tmp_path):
    lock = _lock(tmp_path, "# made by make lock\n\n--find-links /wheels\nFoo_Bar.baz==1.2.3  # note\n"
                           "torch==2.13.0\nextra[x]==0.1 ; python_version >= '3.10'\n")
    assert pinned_versions(lock) == {"foo-bar-baz": "1.2.3", "torch": "2.13.0", "extra": "0.1"}


def test_pinned_versions_without_a_lock_is_empty(tmp_path):
    assert pinned_versions(tmp_path / "absent.txt") == {}
    assert version_drift(lock=tmp_path / "absent.txt") == {}


def test_pinned_versions_names_the_bad_line(tmp_path):
    with pytest.raises(ValueError, match=r"requirements-lock.txt:2: expected 'name==version', got 'numpy>=1'"):
        pinned_versions(_lock(tmp_path, "pytest==8\nnumpy>=1\n"))


def test_version_drift_reports_what_differs_and_what_is_missing(tmp_path):
    running = md.version("pytest")
    lock = _lock(tmp_path, f"pytest=={running}\nnumpy==0.0.1\nno-such-package-xyz==1.0\n")
    drift = version_drift(lock=lock)
    assert drift == {"numpy": ("0.0.1", md.version("numpy")), "no-such-package-xyz": ("1.0", None)}
    assert version_drift(["pytest"], lock=lock) == {}
    assert version_drift(["NumPy"], lock=lock) == {"numpy": ("0.0.1", md.version("numpy"))}
    with pytest.raises(ValueError, match=r"\['scipy'\] are not pinned"):
        version_drift(["scipy"], lock=lock)


def test_local_build_labels_are_ignored(tmp_path):
    assert public_version("2.13.0+cpu") == "2.13.0" and public_version("1.0") == "1.0"
    assert normalize_name("Jupyter_Server.Terminals") == "jupyter-server-terminals"
    torch_running = md.version("torch")
    lock = _lock(tmp_path, f"torch=={public_version(torch_running)}\n")
    assert version_drift(lock=lock) == {}
