"""Build glue: the C extension and package discovery. Metadata lives in pyproject.toml.

Packages are discovered under each mapped folder (runtime/ -> cvahash, export/ ->
cvahash.export), so a new subpackage always reaches the wheel a station installs.
"""

from setuptools import find_packages, setup

MAPPED = {"cvahash": "runtime", "cvahash.export": "export"}


def discover() -> list[str]:
    found = []
    for name, folder in MAPPED.items():
        found.append(name)
        found += [f"{name}.{sub}" for sub in find_packages(folder)]
    return found


setup(packages=discover(), cffi_modules=["csrc/build_hamming.py:ffibuilder"])
