"""Keras for a machine without network or Keras (a lent GPU machine: JAX, PyTorch and CUDA only).

``download`` (here, with network) puts Keras and the pieces of it that a JAX/PyTorch machine lacks into
``bench/wheels/`` (git-ignored): Keras itself, optree (binary: one wheel per CPython 3.10–3.13), rich
with markdown-it-py, mdurl and Pygments, absl-py — the versions installed here (Keras imports these;
h5py and namex it does not need on JAX). About 6 MB. ``install`` (there) installs, from those files
only and without dependency resolution, each of them that is not importable yet::

    .venv/bin/python bench/offline_keras.py download
    python bench/offline_keras.py install        # on the GPU machine, then: python bench/gpu.py ...
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

WHEELS = Path(__file__).resolve().parent / "wheels"
# distribution -> the module that shows it is installed
PURE = {"keras": "keras", "rich": "rich", "markdown-it-py": "markdown_it", "mdurl": "mdurl", "pygments": "pygments",
        "absl-py": "absl"}
BINARY = {"optree": "optree"}
PYTHONS = ("3.10", "3.11", "3.12", "3.13")


def _pinned(dist: str) -> str:
    try:
        return f"{dist}=={version(dist)}"
    except PackageNotFoundError:
        return dist


def download() -> None:
    WHEELS.mkdir(exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(WHEELS)]
    subprocess.run([*pip, *(_pinned(d) for d in PURE)], check=True)
    for py in PYTHONS:
        subprocess.run([*pip, "--only-binary=:all:", "--platform", "manylinux_2_28_x86_64", "--platform",
                        "manylinux2014_x86_64", "--python-version", py, *(_pinned(d) for d in BINARY)], check=True)
    print(f"{len(list(WHEELS.glob('*.whl')))} wheels in {WHEELS}")


def install() -> None:
    missing = [d for d, module in {**PURE, **BINARY}.items() if importlib.util.find_spec(module) is None]
    if not missing:
        print("keras and its imports are already installed")
        return
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--find-links", str(WHEELS),
                    *missing], check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("download", "install"))
    {"download": download, "install": install}[p.parse_args().what]()


if __name__ == "__main__":
    main()
