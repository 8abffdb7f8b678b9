"""The HTML report of a run directory: self-contained, complete, and every image renders in a real browser.

Usage: ``pytest -q tests/test_report.py`` (the browser tests need Debian's ``chromium``; they skip without it)
"""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from normfree_bench.errors import UserError
from normfree_bench.report.html import PNG_MAGIC, REPORT_NAME, write_report

IMG_SRC = re.compile(r'<img\b[^>]*\bsrc="([^"]*)"')
IMG_ALT = re.compile(r'<img\b[^>]*\balt="([^"]*)"')

# Injected before </body>: on load, count the images that decoded (complete and naturalWidth > 0).
IMG_CHECK = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (img) { return !(img.complete && img.naturalWidth > 0); });
  var div = document.createElement("div");
  div.id = "imgcheck";
  div.textContent = (bad.length ? "bad " : "ok ") + (imgs.length - bad.length) + "/" + imgs.length
    + (bad.length ? " " + bad.map(function (img) { return img.alt; }).join(",") : "");
  document.body.appendChild(div);
});
</script>"""


def copy_run(smoke_dir: Path, dest: Path) -> Path:
    """A private copy of the shared smoke run (never written to), without any earlier report."""
    shutil.copytree(smoke_dir, dest, ignore=shutil.ignore_patterns(REPORT_NAME, f".{REPORT_NAME}.*"))
    return dest


def pngs(run_dir: Path) -> list[Path]:
    plots = run_dir / "plots"
    return sorted(p for p in plots.rglob("*") if p.is_file() and p.suffix.lower() == ".png") if plots.is_dir() else []


def section(page: str, sid: str) -> str:
    match = re.search(rf'<section id="{re.escape(sid)}">(.*?)</section>', page, re.S)
    assert match, f"no section {sid}"
    return match.group(1)


def section_ids(page: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)">', page)


@pytest.fixture(scope="module")
def report(smoke_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    run_dir = copy_run(smoke_dir, tmp_path_factory.mktemp("report") / "run")
    path = write_report(run_dir)
    return {"dir": run_dir, "path": path, "html": path.read_text(encoding="utf-8")}


def test_report_is_written_atomically_into_the_run_dir(report: dict[str, Any]) -> None:
    assert report["path"] == report["dir"] / "report.html"
    assert not list(report["dir"].glob(".report.html.*")), "a temporary file was left behind"
    assert report["html"].startswith("<!DOCTYPE html>") and report["html"].rstrip().endswith("</html>")


def test_report_is_self_contained(report: dict[str, Any]) -> None:
    page = report["html"]
    for bad in ('src="http', "src='http", 'src="file', 'src="//', 'href="http', 'href="file', "<link", "<script",
                "url(", "@import"):
        assert bad not in page, bad
    sources = IMG_SRC.findall(page)
    assert sources
    for src in sources:
        assert src.startswith("data:image/png;base64,"), src[:60]
        assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(PNG_MAGIC)


def test_report_has_one_image_per_png(report: dict[str, Any]) -> None:
    run_dir = report["dir"]
    names = [p.relative_to(run_dir / "plots").as_posix() for p in pngs(run_dir)]
    assert "loss_vs_lr.png" in names
    assert sorted(IMG_ALT.findall(report["html"])) == sorted(names)
    assert len(IMG_SRC.findall(report["html"])) == len(names)


def test_report_has_every_leaderboard_row(report: dict[str, Any]) -> None:
    rows = json.loads((report["dir"] / "leaderboard.json").read_text())
    board = section(report["html"], "leaderboard")
    assert rows
    for row in rows:
        match = re.search(rf"<tr><td>\s*{re.escape(row['baseline'])}\s*</td>(.*?)</tr>", board)
        assert match, row["baseline"]
        assert f"{row['best_val_loss']:.4f}" in match.group(1)
    assert board.count("<tr>") == len(rows) + 1  # the header and one row per baseline


def test_report_has_title_toc_provenance_and_config(report: dict[str, Any]) -> None:
    page, run_dir = report["html"], report["dir"]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert f"<h1>normfree-bench run {config['run_name']}</h1>" in page
    assert config["description"] in page
    ids = section_ids(page)
    assert ids[0] == "leaderboard" and ids[-1] == "provenance" and {"sweep", "curves"} <= set(ids)
    for sid in ids:
        assert f'<a href="#{sid}">' in page
    prov = section(page, "provenance")
    assert provenance["corpus_sha256"] in prov and provenance["git_sha"] in prov
    assert "<td>packages.torch</td>" in prov and f"config_hash: {config['config_hash']}" in prov


def test_report_texts_are_derived_from_the_run_files(report: dict[str, Any]) -> None:
    run_dir = report["dir"]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    provenance = json.loads((run_dir / "provenance.json").read_text())
    with (run_dir / "trials.csv").open() as fh:
        trials = list(csv.DictReader(fh))
    n_lrs = len({float(t["lr"]) for t in trials})
    steps, batch, ctx = config["train"]["steps"], config["data"]["batch_size"], config["model"]["context_length"]
    expected = [f"{len(config['baselines'])} baselines x {n_lrs} learning rates",
                f"= {len(trials)} trials", f"d_model={config['model']['d_model']}",
                f"{config['model']['n_layers']} layers", f"{steps} steps of batch {batch} x {ctx} tokens",
                f"({steps * batch * ctx:,} training tokens per trial)", f"on the {config['data']['corpus']} corpus",
                f"sha256 {provenance['corpus_sha256'][:12]}", f"device {provenance['device']}"]
    header = report["html"].split('<nav class="toc">', 1)[0]
    for text in expected:
        assert text in header, text
    diverged = sum(t["diverged"] == "True" for t in trials)
    assert f"({diverged} of them diverged)" in section(report["html"], "leaderboard")


def fake_analysis(run_name: str) -> dict[str, Any]:
    """A hand-made analysis.json in the documented schema (two trials, one with a skipped mode)."""

    def trial(baseline: str, number: int, alpha: dict[str, Any]) -> dict[str, Any]:
        return {"baseline": baseline, "trial": number, "lr": 0.01, "seed": 0, "val_loss": 3.123456,
                "stored_val_loss": 3.1234,
                "outliers": {"n_outlier_dims": 2, "outlier_dims": [3, 17], "max_kurtosis": 12.345678,
                             "max_max_over_rms": 9.87654,
                             "per_site": [{"layer": 0, "site": "attn", "kurtosis": 1.5, "max_over_rms": 4.25}]},
                "ptq": {"fp32": 3.0, "int8_weights": 3.0125, "int8_w_act_tensor": 3.5, "int8_w_act_token": 3.25,
                        "fp8_e4m3": None},
                "low_precision": {"bf16-mixed": {"val_loss": 3.01, "delta": 0.01, "diverged": False},
                                  "bf16-true": {"skipped": "needs <bf16> hardware"}},
                "alpha_vs_inv_std": alpha}

    return {"run_name": run_name, "scope": "best", "batch": {"sequences": 16, "tokens": 1024}, "device": "cpu",
            "trials": [trial("layernorm", 1, {}), trial("dyt", 4, {"layers.0.attn": {"r": 0.912345, "points": 8}})],
            "notes": ["fp8 is <not> available here"]}


def test_report_with_analysis_json_and_analysis_plots(smoke_dir: Path, tmp_path: Path) -> None:
    run_dir = copy_run(smoke_dir, tmp_path / "run")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    (run_dir / "analysis.json").write_text(json.dumps(fake_analysis(config["run_name"])))
    plots = run_dir / "plots"
    src = plots / "loss_vs_lr.png"
    extra = {"analysis_alpha_vs_inv_std.png": "alpha", "analysis_s_curves_dyt.png": "s-curves",
             "analysis_curves_above_best.png": "curves", "analysis_ptq.png": "outliers",
             "analysis_outliers.png": "outliers", "analysis_diagnostics.png": "diagnostics",
             "zz_unknown <plot>.png": "other"}
    for name in extra:
        shutil.copyfile(src, plots / name)
    page = write_report(run_dir).read_text()

    ids = section_ids(page)
    order = ["leaderboard", "sweep", "curves", "diagnostics", "outliers", "low-precision", "alpha", "s-curves",
             "other", "provenance"]
    assert ids == order
    for name, sid in extra.items():
        assert f'alt="{name.replace("<", "&lt;").replace(">", "&gt;")}"' in section(page, sid), name
    assert len(IMG_SRC.findall(page)) == len(pngs(run_dir))

    outliers = section(page, "outliers")
    assert "<td>12.35</td>" in outliers and "<td>9.877</td>" in outliers and "<td>3, 17</td>" in outliers
    assert "<td>+0.0125</td>" in outliers and "<td>+0.5</td>" in outliers and "<td>n/a</td>" in outliers
    assert "16 validation sequences (1,024 tokens)" in outliers
    low = section(page, "low-precision")
    assert "<td>bf16-mixed</td>" in low and "<td>+0.01</td>" in low
    assert "skipped: needs &lt;bf16&gt; hardware" in low
    alpha = section(page, "alpha")
    assert "<td>layers.0.attn</td><td>0.9123</td><td>8</td>" in alpha
    assert "<li>fp8 is &lt;not&gt; available here</li>" in section(page, "provenance")
    assert "<not>" not in page and "<plot>" not in page


def test_report_without_optional_files(smoke_dir: Path, tmp_path: Path) -> None:
    run_dir = copy_run(smoke_dir, tmp_path / "run")
    for name in ("provenance.json", "trials.csv", "analysis.json", "curves.csv", "diagnostics.csv"):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "plots")
    (run_dir / "leaderboard.json").write_text("{not json")
    page = write_report(run_dir).read_text()
    assert section_ids(page) == ["provenance"]
    assert "<img" not in page
    assert "leaderboard.json could not be read" in page
    assert "run_name:" in section(page, "provenance")


@pytest.mark.parametrize("kind", ["missing", "empty", "file", "not-a-run"])
def test_not_a_run_directory_is_a_user_error(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "target"
    if kind == "empty":
        target.mkdir()
    elif kind == "file":
        target.write_text("x")
    elif kind == "not-a-run":
        target.mkdir()
        (target / "config.yaml").write_text("model: {d_model: 8}\n")
    with pytest.raises(UserError) as info:
        write_report(target)
    message = str(info.value)
    assert "\n" not in message and "valid:" in message and str(target) in message
    assert not (target / "report.html").exists()


# ------------------------------------------------------------------------------------------ real browser


def chromium_binary() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("Chromium is not installed (no chromium or chromium-browser on PATH); "
                    "install Debian's package: apt-get install chromium")
    return binary


def rendered_images(page: str, tmp_path: Path) -> str:
    """Load ``page`` (with the image check injected) in headless Chromium; return the check's marker text."""
    binary = chromium_binary()
    assert "</body>" in page
    check = tmp_path / "imgcheck.html"
    head, tail = page.rsplit("</body>", 1)
    check.write_text(head + IMG_CHECK + "\n</body>" + tail, encoding="utf-8")
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           "--no-default-browser-check", "--disable-extensions", f"--user-data-dir={profile}",
           "--virtual-time-budget=10000", "--dump-dom", check.as_uri()]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"Chromium did not finish in 60 s: {exc}")
    marker = re.search(r'<div id="imgcheck">([^<]*)</div>', proc.stdout)
    assert marker, f"no image-check marker (exit {proc.returncode}); stderr: {proc.stderr[-2000:]}"
    return marker.group(1)


def test_every_image_renders_in_chromium(report: dict[str, Any], tmp_path: Path) -> None:
    n = len(pngs(report["dir"]))
    assert n > 0
    assert rendered_images(report["html"], tmp_path) == f"ok {n}/{n}"


def test_chromium_check_catches_a_broken_image(report: dict[str, Any], tmp_path: Path) -> None:
    page = report["html"]
    first = IMG_SRC.search(page)
    assert first
    broken = page.replace(first.group(1), "data:image/png;base64," + base64.b64encode(b"not a png").decode(), 1)
    n = len(IMG_SRC.findall(page))
    marker = rendered_images(broken, tmp_path)
    assert marker.startswith(f"bad {n - 1}/{n} "), marker
