"""The HTML report card in real headless Chromium: it renders, its plots load, and a screenshot is kept
in tests/artifacts/report.png. Skipped when Playwright or Chromium is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from picochat.report import build_report

sync_api = pytest.importorskip("playwright.sync_api")


def fake_run(root: Path) -> None:
    """A run directory with the files the pretrain and eval stages write."""
    (root / "pretrain").mkdir(parents=True)
    (root / "eval").mkdir()
    records = [{"step": s, "train/loss": 9.0 - s / 20} for s in range(1, 60, 5)]
    records += [{"step": s, "val/loss": 8.5 - s / 25, "val/bpb": 3.5 - s / 60} for s in (20, 40, 60)]
    (root / "pretrain" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (root / "pretrain" / "summary.json").write_text(
        json.dumps({"steps": 60, "val/loss": 6.1, "val/bpb": 2.5, "tok/s": 2000.0})
    )
    (root / "eval" / "summary.json").write_text(json.dumps({"lm": {"bigram/bpb": 2.7, "bigram/loss": 6.3}}))
    (root / "pipeline.json").write_text(
        json.dumps({"headline": {"val bits/byte (GPT)": 2.5}, "stages": {"pretrain": {"seconds": 12.0}}})
    )


def test_report_renders_with_plots(browser: sync_api.Browser, artifacts: Path, tmp_path: Path) -> None:
    fake_run(tmp_path)
    _, html_path = build_report(tmp_path)
    page = browser.new_page(viewport={"width": 1000, "height": 1400})
    page.goto(html_path.as_uri())
    assert "picochat report" in page.title()
    widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
    assert len(widths) >= 2 and all(w > 0 for w in widths)
    assert page.locator("table").count() >= 2
    assert "2.500" in page.inner_text("body")
    page.screenshot(path=str(artifacts / "report.png"), full_page=True)
    page.close()
    assert (artifacts / "report.png").stat().st_size > 10_000
