"""A Python import path that holds only some distributions and what they require, as a fresh venv
with `pip install <them>` would: symlinks to their installed packages in one directory, to be used
with `python -S` (no site-packages) and PYTHONPATH set to it."""

import os
import re
from importlib import metadata


def _requirements(name: str) -> list[str]:
  found = []
  for requirement in metadata.requires(name) or []:
    spec, _, marker = requirement.partition(";")
    if "extra" in marker:
      continue
    found.append(re.match(r"[A-Za-z0-9_.\-]+", spec.strip()).group(0))
  return found


def closure(names: list[str]) -> set[str]:
  """The installed distributions `names` pull in (themselves included)."""
  seen, todo = set(), list(names)
  while todo:
    name = todo.pop()
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in seen:
      continue
    try:
      metadata.distribution(name)
    except metadata.PackageNotFoundError:
      continue  # an optional requirement that is not installed
    seen.add(key)
    todo += _requirements(name)
  return seen


def make_site(directory: str, names: list[str]) -> list[str]:
  """Links the top-level packages and modules of `names`' closure into `directory`; returns the
  distributions linked."""
  os.makedirs(directory, exist_ok=True)
  linked = sorted(closure(names))
  for name in linked:
    dist = metadata.distribution(name)
    tops = {str(f).split("/")[0] for f in dist.files or [] if not str(f).startswith("..")}
    for top in tops:
      source = os.path.join(str(dist.locate_file("")), top)
      target = os.path.join(directory, top)
      if top.endswith((".pth",)) or top == "__pycache__" or not os.path.exists(source) or os.path.exists(target):
        continue
      os.symlink(source, target)
  return linked
