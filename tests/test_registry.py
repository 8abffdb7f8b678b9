"""Plugin discovery and its errors, each run in a fresh interpreter (the registry is process-global)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from normfree_bench.errors import BaselinePluginError
from normfree_bench.registry import get_baseline, list_baselines, load_plugin

GOOD = '''
from torch import nn
from normfree_bench import Baseline, register_baseline

@register_baseline
class {cls}(Baseline):
    name = "{name}"
    description = "test plugin"
    paper = "https://example.org"

    def norm(self, dim, site, layer_idx, n_layers):
        return nn.RMSNorm(dim)
'''


@pytest.fixture(autouse=True)
def restore_registry():
    """Plugins loaded here must not leak into later tests (the registry is process-global)."""
    from normfree_bench import registry

    registry.discover()
    saved = dict(registry._REGISTRY), dict(registry._SOURCES), set(registry._LOADED_FILES)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved[0])
    registry._SOURCES.clear()
    registry._SOURCES.update(saved[1])
    registry._LOADED_FILES.clear()
    registry._LOADED_FILES.update(saved[2])


def write(tmp_path: Path, filename: str, body: str) -> Path:
    path = tmp_path / filename
    path.write_text(textwrap.dedent(body))
    return path


def test_unknown_name_lists_valid_names_and_closest_match():
    with pytest.raises(BaselinePluginError) as err:
        get_baseline("dytt")
    message = str(err.value)
    assert "did you mean 'dyt'" in message
    for name in ("layernorm", "fixup", "nf", "rezero", "skipinit", "rmsnorm"):
        assert name in message


def test_template_is_skipped_by_discovery():
    assert "mynorm" not in list_baselines()


def test_good_plugin_registers(tmp_path):
    path = write(tmp_path, "plugin_ok.py", GOOD.format(cls="PluginOk", name="plugin_ok_test"))
    assert load_plugin(path) == ["plugin_ok_test"]
    assert get_baseline("plugin_ok_test").description == "test plugin"
    assert load_plugin(path) == ["plugin_ok_test"]  # loading the same file twice is a no-op


def test_syntax_error_names_the_file(tmp_path):
    path = write(tmp_path, "broken.py", "def f(:\n    pass\n")
    with pytest.raises(BaselinePluginError, match=r"broken\.py failed to import: SyntaxError at line 1"):
        load_plugin(path)


def test_import_error_names_the_file(tmp_path):
    path = write(tmp_path, "needs_missing.py", "import no_such_module_xyz\n")
    with pytest.raises(BaselinePluginError, match=r"needs_missing\.py failed to import: ModuleNotFoundError"):
        load_plugin(path)


def test_file_that_registers_nothing(tmp_path):
    path = write(tmp_path, "empty_plugin.py", "X = 1\n")
    with pytest.raises(BaselinePluginError, match=r"empty_plugin\.py registers no baseline"):
        load_plugin(path)


def test_duplicate_name_names_both_files(tmp_path):
    path = write(tmp_path, "dup.py", GOOD.format(cls="Dup", name="dyt"))
    with pytest.raises(BaselinePluginError) as err:
        load_plugin(path)
    message = str(err.value)
    assert "registered twice" in message and "dup.py" in message and "dyt.py" in message


def test_invalid_name_is_refused(tmp_path):
    path = write(tmp_path, "badname.py", GOOD.format(cls="Bad", name="Bad-Name"))
    with pytest.raises(BaselinePluginError, match="invalid"):
        load_plugin(path)


def test_builtin_folder_override_and_entry_points(tmp_path):
    """$NORMFREE_BENCH_BASELINES replaces the built-in folder; checked in a fresh interpreter."""
    write(tmp_path, "only.py", GOOD.format(cls="Only", name="only"))
    write(tmp_path, "_skipped.py", GOOD.format(cls="Skipped", name="skipped"))
    code = "from normfree_bench import list_baselines; print(','.join(list_baselines()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "NORMFREE_BENCH_BASELINES": str(tmp_path)})
    assert out.stdout.strip() == "only"
