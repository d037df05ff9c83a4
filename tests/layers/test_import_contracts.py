"""The layer contracts of pyproject.toml (import-linter): the repository keeps them, and the same
contracts break on a planted wrong import, a service importing another, and a cycle."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path, env_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(env_path)}
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_repository_keeps_its_layers() -> None:
    result = _lint(ROOT, ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Contracts: 3 kept, 0 broken." in result.stdout


def _toy_tree(tmp_path: Path, extra: dict[str, str]) -> Path:
    """Every root package of the contracts, with the few modules their ignore lists name, plus
    ``extra`` (module path → source); the contracts copied from pyproject.toml."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    files = {f"{pkg}/__init__.py": "" for pkg in config["root_packages"]}
    files.update({
        "tool_servers/app.py": "", "reward_service/app.py": "", "reward_service/settings.py": "",
        "memory_service/app.py": "", "memory_service/settings.py": "",
        "trainer/embedded.py": "import tool_servers.app\nimport reward_service.app\nimport reward_service.settings\n"
                               "import memory_service.app\nimport memory_service.settings\n",
        "rlyard/domain.py": "", "trainer/runner.py": "import rlyard.domain\n",
    })
    files.update(extra)
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    lines = ["[tool.importlinter]", f"root_packages = {config['root_packages']!r}"]
    for contract in config["contracts"]:
        lines.append("[[tool.importlinter.contracts]]")
        lines += [f"{key} = {value!r}" for key, value in contract.items()]
    (tmp_path / "pyproject.toml").write_text("\n".join(lines).replace("'", '"') + "\n")
    return tmp_path


def test_the_contracts_pass_a_tree_that_keeps_them(tmp_path: Path) -> None:
    tree = _toy_tree(tmp_path, {})
    result = _lint(tree, tree)
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.parametrize(("planted", "broken"), [
    ({"rlyard/bad.py": "import trainer.runner\n"}, "rlyard is not allowed to import trainer"),
    ({"tool_servers/bad.py": "import reward_service.app\n"}, "tool_servers is not allowed to import reward_service"),
    ({"trainer/bad.py": "import envs\n"}, "trainer is not allowed to import envs"),
    ({"trainer/bad.py": "import tool_servers.app\n"}, "trainer is not allowed to import tool_servers"),
    ({"trainer/bad.py": "import memory_service.app\n"}, "trainer is not allowed to import memory_service"),
    ({"trainer/a.py": "import trainer.b\n", "trainer/b.py": "import trainer.a\n"},
     "No import cycles between the parts of a package BROKEN"),
])
def test_the_contracts_break_on_a_planted_wrong_import(tmp_path: Path, planted: dict[str, str], broken: str) -> None:
    tree = _toy_tree(tmp_path, planted)
    result = _lint(tree, tree)
    assert result.returncode != 0
    assert broken in " ".join(result.stdout.split()), result.stdout[-3000:]
