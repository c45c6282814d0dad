"""lora_lab.course: the map points at real notebooks; the environment check works here."""

from lora_lab.course import CHAPTERS, check_bnb_4bit, check_environment


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
