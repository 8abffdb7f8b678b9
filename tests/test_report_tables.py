"""The report's tables and sentences, parsed back from the page of a committed run and checked cell by cell
against the run's files with the test's own formatting (fast: no training; the report tests that train are slow).

Usage: ``.venv/bin/python -m pytest tests/test_report_tables.py -q``
"""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from normfree_bench.report import write_report
from tests.conftest import html_tables

REPO = Path(__file__).resolve().parents[1]


def four(x: float) -> str:
    return f"{x:.4g}"


@pytest.fixture
def page(tmp_path: Path) -> dict:
    """Built for each test (not once per module): a mutation tool that runs only the tests which called a
    function must see each test render the page itself."""
    run = tmp_path / "default"
    shutil.copytree(REPO / "results" / "default", run)
    (run / "report.html").unlink()
    html = write_report(run).read_text()
    return {"html": html, "tables": html_tables(html), "run": run,
            "analysis": json.loads((run / "analysis.json").read_text()),
            "provenance": json.loads((run / "provenance.json").read_text()),
            "config": yaml.safe_load((run / "config.yaml").read_text())}


def table(page: dict, first_headers: list[str]) -> list[list[str]]:
    found = [t for t in page["tables"] if t and t[0][:len(first_headers)] == first_headers]
    assert len(found) == 1, [t[0] for t in page["tables"]]
    return found[0]


def test_the_outlier_table_is_the_analysis_formatted(page: dict) -> None:
    rows = table(page, ["baseline", "trial", "lr", "seed", "val_loss", "outlier dims", "which", "max kurtosis",
                        "max max/RMS"])
    trials = page["analysis"]["trials"]
    assert len(rows) == 1 + len(trials)
    for row, t in zip(rows[1:], trials):
        o = t["outliers"]
        dims = o["outlier_dims"]
        which = ", ".join(map(str, dims[:8])) + (f", … ({len(dims)})" if len(dims) > 8 else "") if dims else "–"
        assert row == [t["baseline"], str(t["trial"]), row[2], str(t["seed"]), four(t["val_loss"]),
                       f"{o['n_outlier_dims']:,}", which, four(o["max_kurtosis"]), four(o["max_max_over_rms"])]
    sites = table(page, ["baseline", "trial", "layer", "site", "kurtosis", "max/RMS"])
    want = [[t["baseline"], str(t["trial"]), f"{s['layer']:,}", s["site"], four(s["kurtosis"]),
             four(s["max_over_rms"])] for t in trials for s in t["outliers"]["per_site"]]
    assert sites[1:] == want


def test_the_ptq_table_is_each_schemes_increase_over_fp32(page: dict) -> None:
    trials = page["analysis"]["trials"]
    schemes = [k for k in trials[0]["ptq"] if k != "fp32"]
    rows = table(page, ["baseline", "trial", "lr", "seed", "fp32 loss", *[f"Δ {s}" for s in schemes]])
    for row, t in zip(rows[1:], trials):
        base = t["ptq"]["fp32"]
        assert row[4:] == [four(base), *[f"{t['ptq'][s] - base:+.4g}" for s in schemes]]


def test_the_alpha_table_lists_each_sites_correlation(page: dict) -> None:
    rows = table(page, ["baseline", "trial", "lr", "seed", "site", "r", "points"])
    want = [[t["baseline"], str(t["trial"]), str(t["seed"]), site, four(r["r"]), f"{r['points']:,}"]
            for t in page["analysis"]["trials"] for site, r in t["alpha_vs_inv_std"].items()]
    assert [[r[0], r[1], r[3], r[4], r[5], r[6]] for r in rows[1:]] == want
    assert want  # DyT's sites are there


def test_tables_have_one_header_cell_per_column(page: dict) -> None:
    heads = re.findall(r"<thead><tr>(.*?)</tr></thead>", page["html"])
    assert heads and all(re.fullmatch(r"(<th>[^<]*</th>)+", h) for h in heads)


def test_the_scale_and_provenance_sentences_read_from_the_files(page: dict) -> None:
    config, prov = page["config"], page["provenance"]
    text = html.unescape(re.sub(r"<[^>]+>", "", page["html"]))
    n_lrs = len(config["sweep"]["lrs"])
    assert f"{len(config['baselines'])} baselines x {n_lrs} learning rates (3e-4 .. 3e-1) x " in text
    assert (f"Run created {prov['created']}, on host {prov['host']}, git SHA {prov['git_sha']}, Python "
            f"{prov['python']}, {prov['torch_threads']} torch threads; the full provenance.json:") in text
    model = config["model"]
    assert f"model d_model={model['d_model']}, {model['n_layers']} layers, {model['n_heads']} heads" in text
    assert f"{config['train']['steps']:,} steps of batch {config['data']['batch_size']} x " \
           f"{model['context_length']} tokens" in text
    assert f"on the stdlib corpus (sha256 {prov['corpus_sha256'][:12]}..)" in text
    analysis = page["analysis"]
    assert f"Scale: {len(analysis['trials'])} trials analysed (each baseline's best trial), one batch of " \
           f"{analysis['batch']['sequences']} validation sequences ({analysis['batch']['tokens']:,} tokens), device " \
           f"{analysis['device']}." in text
    assert f"on {config['data']['val_windows']} validation windows." in text
    assert "; the initial loss l0 = ln(256) = 5.545 nats." in text
    assert "; n/a where a scheme was not available." in text
    assert "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in analysis["notes"]) + "</ul>" in page["html"]


def test_numbers_and_flags_are_formatted_one_way() -> None:
    from normfree_bench.report.html import fmt_num

    assert [fmt_num(True), fmt_num(False), fmt_num(None), fmt_num(1234), fmt_num(2.55108)] == [
        "yes", "no", "–", "1,234", "2.551"]
