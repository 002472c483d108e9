"""The package layout: every top-level library folder installs under the one import root.

The repository keeps the folders the product is made of at its top (`outbox/`, `inbox/`,
`relay/`, `migrations/`, `brokers/`); they install as `outboxkit.outbox`, `outboxkit.inbox`,
… next to the CLI package `outboxkit/` (setuptools `package_dir`), so the wheel holds one
top-level name. Subpackages are found here, so a new broker folder needs no entry. In a
checkout, the links `outboxkit/<folder> -> ../<folder>` give tools run from the repository
(pytest, mypy, import-linter) the same `outboxkit.*` names. Everything else is in
pyproject.toml.
"""

from setuptools import find_packages, setup

LIBRARY = ("outbox", "inbox", "relay", "migrations", "brokers")

packages = ["outboxkit"] + [
    f"outboxkit.{name}"
    for name in find_packages("outboxkit", exclude=[*LIBRARY, *(f"{n}.*" for n in LIBRARY)])
]
package_dir = {"outboxkit": "outboxkit"}
for folder in LIBRARY:
    package_dir[f"outboxkit.{folder}"] = folder
    packages += [f"outboxkit.{folder}"] + [
        f"outboxkit.{folder}.{sub}" for sub in find_packages(folder)
    ]

setup(packages=packages, package_dir=package_dir)
