"""Shared fixtures: one corpus cache for the whole session, quiet Lightning, CPU threads."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from normfree_bench.cli import main

# Fixtures that run a whole sweep, analysis or report, and tests that start a fresh interpreter (a few
# seconds each): they make up the slow tier; `pytest -m "not slow"` runs everything else.
SLOW_FIXTURES = {"smoke", "smoke_dir", "analyzed", "report", "plugin_run", "uninterrupted", "tracked"}
SLOW_TESTS = {
    "test_console_script_bad_input", "test_baselines_list_subprocess",
    "test_baselines_check_plugin_whose_forward_raises",
    "test_python_m_entry_point_help", "test_readme_plugin_example_passes_the_contract",
    "test_readme_convert_example_prints_its_report", "test_builtin_folder_override_and_entry_points",
    "test_a_plugin_written_against_the_old_flat_layout_still_loads_and_checks",
    "test_old_module_paths_are_the_new_modules_with_a_deprecation_warning", "test_public_imports_and_a_lazy_convert",
    "test_vision_smoke_suite_end_to_end", "test_compiled_layer_benchmark_reports_compile_time",
    "test_the_patch_init_example_plugin_isolates_the_patch_convolution",
    "test_the_standard_library_trains_through_run_on_bpe_tokens", "test_two_gloo_ranks_train_the_single_process_curve",
    "test_run_trains_on_a_saved_dataset_with_bpe", "test_a_ladder_logs_each_rungs_trials_under_its_run_directory",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        name = getattr(item, "originalname", item.name)
        if name in SLOW_TESTS or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) \
                or item.module.__name__.endswith("test_resilience"):
            item.add_marker(pytest.mark.slow)


def _import_builtins_under_their_file_names() -> None:
    """Under mutation testing only (mutmut sets MUTANT_UNDER_TEST): import each built-in baseline as
    ``baselines.<stem>``, the module name mutmut derives from its path, so that its mutants are traced
    to the tests that run them (the registry would import it as ``normfree_bench_plugins.<stem>_<hash>``)."""
    import importlib.util

    from normfree_bench.core import registry

    for path in sorted(registry.builtin_dir().glob("*.py")):
        name = f"baselines.{path.stem}"
        if path.name.startswith("_") or name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        registry._LOADED_FILES.add(path.resolve())  # discover() then finds it loaded


def pytest_configure(config: pytest.Config) -> None:
    if "MUTANT_UNDER_TEST" in os.environ:
        _import_builtins_under_their_file_names()
    # One on-disk corpus cache per test session, outside the user's cache.
    if "NORMFREE_BENCH_CACHE" not in os.environ:
        import tempfile

        os.environ["NORMFREE_BENCH_CACHE"] = tempfile.mkdtemp(prefix="nfb-cache-")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny_cfg():
    from normfree_bench.models.contract import tiny_config

    return tiny_config()


@contextmanager
def private_cache(root: Path) -> Iterator[Path]:
    """A corpus cache of its own under ``root`` (for in-process and subprocess runs) and the
    built-in baselines folder; the in-process corpus memo is cleared on entry and exit."""
    from normfree_bench.data import text as data

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NORMFREE_BENCH_CACHE", str(root / "cache"))
        mp.delenv("NORMFREE_BENCH_BASELINES", raising=False)
        data.clear_loaded()
        yield root
    data.clear_loaded()


def write_word_corpus(path: Path, n_words: int = 6000) -> Path:
    """A small seeded text corpus, big enough for tiny models and quick to cache."""
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog while alpha beta gamma delta\n".split(" ")
    path.write_text(" ".join(rng.choice(words) for _ in range(n_words)))
    return path


@pytest.fixture(scope="session")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The real smoke suite (every main baseline, the stdlib corpus) run once per session through the
    CLI in a fresh process; the sweep tests check its files, the analysis tests analyze it."""
    out = tmp_path_factory.mktemp("smoke-run") / "smoke"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "normfree_bench", "run", "--suite", "smoke", "--out", str(out),
                           "--no-progress"], capture_output=True, text=True, timeout=900,
                          cwd=Path(__file__).resolve().parents[1])
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    provenance = json.loads((out / "provenance.json").read_text())
    return {"dir": out, "proc": proc, "wall": wall, "provenance": provenance}


@pytest.fixture(scope="session")
def smoke_dir(smoke: dict[str, Any]) -> Path:
    return smoke["dir"]


# A plugin whose norm raises in forward: `baselines check` reports it, `run` refuses it before any trial.
BOOM_PLUGIN = (
    "from torch import nn\nfrom normfree_bench import Baseline, register_baseline\n\n\n"
    "class Boom(nn.Module):\n    def forward(self, x):\n        raise RuntimeError('boom in forward')\n\n\n"
    "@register_baseline\nclass BoomNorm(Baseline):\n    name = 'boomnorm'\n    description = 'forward raises'\n"
    "    paper = 'https://example.org/boom'\n\n    def norm(self, dim, site, layer_idx, n_layers):\n"
    "        return Boom()\n")


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every path under root with its bytes (files) and mtime."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>", p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


# Config keys added after runs were recorded, with the defaults that the config hash leaves out
# (normfree_bench.config.schema._hashed), so that old run directories keep their hash and resume.
LATER_KEYS = {("model", "norm_impl"): "eager", ("model", "placement"): None, ("model", "input_scale"): 1.0,
              ("sweep", "lrs_by_baseline"): {}, ("train", "compile"): None, ("train", "devices"): 1,
              ("train", "strategy"): "auto", ("data", "vocab_size"): None, ("data", "tokenizer"): "bytes",
              ("data", "text_field"): None}


def without_later_keys(data: dict[str, Any]) -> dict[str, Any]:
    """A default config's dict as recorded before the later keys existed; each must be at its default."""
    for (section, key), default in LATER_KEYS.items():
        assert data[section].pop(key) == default, f"{section}.{key}"
    return data


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return rc, out, err


def html_tables(page: str) -> list[list[list[str]]]:
    """Every <table> of an HTML page as rows of cell texts (header row first)."""
    from html.parser import HTMLParser

    class Tables(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tables: list[list[list[str]]] = []
            self.cell: list[str] | None = None

        def handle_starttag(self, tag: str, attrs: list) -> None:
            if tag == "table":
                self.tables.append([])
            elif tag == "tr":
                self.tables[-1].append([])
            elif tag in ("td", "th"):
                self.cell = []

        def handle_endtag(self, tag: str) -> None:
            if tag in ("td", "th") and self.cell is not None:
                self.tables[-1][-1].append("".join(self.cell).strip())
                self.cell = None

        def handle_data(self, data: str) -> None:
            if self.cell is not None:
                self.cell.append(data)

    parser = Tables()
    parser.feed(page)
    return parser.tables
