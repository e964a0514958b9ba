"""Import a file of scripts/ as a module (scripts are not a package)."""

import importlib.util

from conftest import REPO_ROOT


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
