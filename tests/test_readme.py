"""The README's "Add a baseline" example is real: it loads, passes the contract and trains."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def plugin_example() -> str:
    section = README.read_text().split("## Add a baseline", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_plugin_example_passes_the_contract(tmp_path):
    path = tmp_path / "scalenorm.py"
    path.write_text(plugin_example())
    out = subprocess.run([sys.executable, "-m", "normfree_bench", "baselines", "check", str(path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "scalenorm" in out.stdout and "FAIL" not in out.stdout


def test_readme_quickstart_commands_exist():
    text = README.read_text()
    makefile = (README.parent / "Makefile").read_text()
    for target in ("bench", "test"):
        assert f"make {target}" in text and f"\n{target}:" in makefile
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci


def test_readme_convert_example_prints_its_report():
    section = README.read_text().split("## Vision", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    expected = re.search(r"print\(report\)  # (.*)", code).group(1)
    assert out.stdout.strip() == expected


def test_every_leaderboard_column_is_documented_in_the_readme():
    from normfree_bench.tables.leaderboard import LEADERBOARD_COLUMNS

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = text[text.index("### Leaderboard columns"):text.index("## Baselines")]
    documented = set(re.findall(r"^\| `([a-z_0-9]+)` \|", table, re.M))
    assert set(LEADERBOARD_COLUMNS) <= documented, sorted(set(LEADERBOARD_COLUMNS) - documented)
