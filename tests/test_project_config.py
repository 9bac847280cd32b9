"""pyproject.toml says true things: package data exists, the checkers agree on Python."""
import glob
import os

import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_every_package_data_glob_matches_a_file():
    data = _pyproject()["tool"]["setuptools"]["package-data"]
    for package, patterns in data.items():
        for pattern in patterns:
            hits = [p for p in glob.glob(os.path.join(ROOT, package, pattern))
                    if os.path.isfile(p)]
            assert hits, f"package-data {package}: {pattern!r} matches no file"


def test_ruff_mypy_and_requires_python_name_the_same_python():
    conf = _pyproject()
    ruff = conf["tool"]["ruff"]["target-version"]  # "py310"
    mypy = conf["tool"]["mypy"]["python_version"]  # "3.10"
    floor = conf["project"]["requires-python"]     # ">=3.10"
    assert ruff == "py" + mypy.replace(".", "")
    assert floor == ">=" + mypy
