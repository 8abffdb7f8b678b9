"""Plugin discovery and its errors, each run in a fresh interpreter (the registry is process-global)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from normfree_bench.core.registry import get_baseline, list_baselines, load_plugin
from normfree_bench.errors import BaselinePluginError, UserError

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
    from normfree_bench.core import registry

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


OLD_API_PLUGIN = '''
import torch
from torch import nn
from normfree_bench.api import Baseline
from normfree_bench.registry import register_baseline
from normfree_bench.layers import GatedResidual
from normfree_bench.invariants import branches_are_silent
from normfree_bench.model import Transformer


@register_baseline
class OldGate(Baseline):
    name = "old_gate"
    description = "written against the flat layout of 0.1"
    paper = "https://example.org"
    norm_free = True

    def norm(self, dim, site, layer_idx, n_layers):
        return nn.Identity()

    def residual(self, dim, branch, layer_idx, n_layers):
        return GatedResidual(nn.Parameter(torch.zeros(1)))

    def init_(self, model: Transformer) -> None:
        nn.init.zeros_(model.head.weight)   # the attribute paths of 0.1
        model.blocks[0].res_attn.gain.zero_()

    def learnable_scalars(self, model):    # a hook that no longer exists: ignored, not an error
        return {}

    def check_init(self, model, batch):
        return branches_are_silent(model, batch)
'''


def test_a_plugin_written_against_the_old_flat_layout_still_loads_and_checks(tmp_path):
    path = write(tmp_path, "old_gate.py", OLD_API_PLUGIN)
    code = (f"import warnings; warnings.simplefilter('ignore')\n"
            "from normfree_bench.core.registry import load_plugin\n"
            "from normfree_bench.models.contract import check_baseline\n"
            f"print(load_plugin({str(path)!r}))\nprint(all(c.ok for c in check_baseline('old_gate')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["['old_gate']", "True"]


def test_old_module_paths_are_the_new_modules_with_a_deprecation_warning():
    code = ("import warnings, importlib\n"
            "import normfree_bench.core.layers as new\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    old = importlib.import_module('normfree_bench.layers')\n"
            "print(old is new, new.__spec__.name, [str(w.message) for w in caught])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert out.startswith("True normfree_bench.core.layers") and "moved to normfree_bench.core.layers" in out


def test_public_imports_and_a_lazy_convert():
    code = ("import sys\n"
            "from normfree_bench import build_model, ModelConfig, Baseline, register_baseline, list_baselines, "
            "get_baseline\n"
            "import normfree_bench\n"
            "list_baselines()\n"
            "print('normfree_bench.models.convert' in sys.modules)\n"
            "print(normfree_bench.convert.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout.split()
    assert out == ["False", "normfree_bench.models.convert"]  # loading every plugin did not import convert


@pytest.mark.parametrize("name, values, message", [
    ("dyt", {"alpha_init": "abc"}, "hparams.dyt.alpha_init must be a number, got 'abc'"),
    ("dyt", {"alpha_init": float("nan")}, "hparams.dyt.alpha_init must be a finite number"),
    ("dyt", {"sites_with_layernorm": ["fnal"]}, "invalid hparams.dyt.sites_with_layernorm[0] 'fnal'; valid: attn"),
    ("nf", {"final": "rms"}, "invalid hparams.nf.final 'rms'; valid: scale, layernorm"),
    ("rezero", {"per_branch": 1}, "hparams.rezero.per_branch must be true or false, got 1"),
    ("fixup", {"scalar_lr_scale": [0.1]}, "hparams.fixup.scalar_lr_scale must be a number, got [0.1]"),
    ("layerscale", {"init": "small"}, "hparams.layerscale.init must be a number, got 'small'"),
    ("rezero", {"alpha": 0.0}, "unknown hyperparameter 'alpha' for baseline 'rezero'; valid: alpha_init, per_branch"),
])
def test_hyperparameters_are_typed(name, values, message):
    with pytest.raises(UserError) as err:
        get_baseline(name).check_hparams(values)
    assert message in str(err.value)


def test_typed_hyperparameters_accept_and_convert_valid_values():
    assert get_baseline("dyt").check_hparams({"alpha_init": 1, "alpha_init_attn": None}) == {
        "alpha_init": 1.0, "alpha_init_attn": None}
    assert get_baseline("layerscale").check_hparams({"init": 0.1}) == {"init": 0.1}
