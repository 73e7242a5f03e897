"""The package's layering, checked on its source: a module imports only from its own floor or below,
the modes and the tools do not import each other, and data, augment and models stand apart.

Every module must be placed on a floor here, so a new module is a decision, not an accident.
"""

import ast
import fnmatch
import os

from conftest import ROOT

# Bottom to top. A pattern names modules relative to bloodcell_jax ("data.*": every module of data/).
FLOORS = (
    ("infrastructure", ("", "errors", "atomic_files", "classes", "distributed", "platform_setup", "compilation_cache",
                        "preemption", "tensorboard_writer", "metrics", "plots", "exported_model", "integrity",
                        "run_lock", "neighbours", "calibration", "open_set", "cpu_info")),
    ("data, augmentation, models", ("data", "data.*", "augment", "augment.*", "models", "models.*")),
    ("steps and transfer", ("losses", "optim", "ema", "tta", "steps", "explain", "pretrained", "pretrained.*")),
    ("config", ("config", "config.*")),
    ("run services", ("evaluation", "checkpointing", "progress", "report", "robustness", "trust")),
    ("modes", ("train", "inference", "export", "benchmark", "preview", "verify")),
    ("tools", ("tools", "tools.*", "pretrained.__main__", "cli")),
)
# Groups on one floor that must not import each other (by first name component, or whole module name).
INDEPENDENT = {
    "data, augmentation, models": ("data", "augment", "models"),
    "modes": ("train", "inference", "export", "benchmark", "preview", "verify"),
    "tools": ("tools.clean", "tools.compare", "tools.download", "tools.oversample", "pretrained.__main__"),
}
# Exceptions, each with its reason: (importer, imported).
ALLOWED = {
    ("tools.clean", "tools.oversample"),  # clean --balance_target oversamples what it kept
}


def package_modules(root: str) -> dict[str, str]:
  """{module name relative to bloodcell_jax: source path}."""
  package = os.path.join(root, "bloodcell_jax")
  modules = {}
  for directory, _, files in os.walk(package):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(directory, name)
        module = os.path.relpath(path, package)[:-3].replace(os.sep, ".")
        modules[module.removesuffix("__init__").rstrip(".")] = path
  return modules


def imports_of(path: str, modules: dict[str, str]) -> set[str]:
  """Package modules that the file imports, anywhere in it (function-level imports included)."""
  def relative(name: str) -> str | None:
    if name != "bloodcell_jax" and not name.startswith("bloodcell_jax."):
      return None
    name = name.removeprefix("bloodcell_jax").lstrip(".")
    return name if name in modules else None

  found = set()
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import):
      found.update(relative(alias.name) for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for alias in node.names:  # `from package import module` imports the module, else the package
        found.add(relative(f"{node.module}.{alias.name}") or relative(node.module))
  return found - {None}


def floor_of(module: str) -> int | None:
  """The floor that names `module` exactly, else the first whose pattern matches it."""
  exact = [i for i, (_, patterns) in enumerate(FLOORS) if module in patterns]
  matching = [i for i, (_, patterns) in enumerate(FLOORS) if any(fnmatch.fnmatchcase(module, p) for p in patterns)]
  return (exact or matching or [None])[0]


def group_of(module: str, groups: tuple[str, ...]) -> str | None:
  return next((g for g in groups if module == g or module.startswith(g + ".")), None)


def layering_violations(root: str) -> list[str]:
  modules = package_modules(root)
  problems = [f"bloodcell_jax.{m} is on no floor of tests/test_layers.py" for m in sorted(modules)
              if floor_of(m) is None]
  for module, path in sorted(modules.items()):
    floor = floor_of(module)
    if floor is None:
      continue
    for target in sorted(imports_of(path, modules)):
      target_floor = floor_of(target)
      if target == module or (module, target) in ALLOWED or target_floor is None:
        continue
      if target_floor > floor:
        problems.append(f"{module} ({FLOORS[floor][0]}) imports {target} ({FLOORS[target_floor][0]}), a floor above")
      groups = INDEPENDENT.get(FLOORS[floor][0], ())
      mine, theirs = group_of(module, groups), group_of(target, groups)
      if target_floor == floor and mine and theirs and mine != theirs:
        problems.append(f"{module} imports {target}: both {FLOORS[floor][0]}, which stand apart")
  return problems


def test_every_module_imports_only_its_floor_or_below():
  assert layering_violations(ROOT) == []


def test_the_check_sees_a_model_that_imports_the_train_step(tmp_path):
  """The check itself: a copy of the package where a model imports the steps and a mode imports
  another mode is refused, naming both."""
  import shutil
  shutil.copytree(os.path.join(ROOT, "bloodcell_jax"), tmp_path / "bloodcell_jax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  with open(tmp_path / "bloodcell_jax" / "models" / "cnn.py", "a") as f:
    f.write("\nfrom bloodcell_jax.steps import AXIS  # noqa\n")
  with open(tmp_path / "bloodcell_jax" / "inference.py", "a") as f:
    f.write("\n\ndef _late():\n  from bloodcell_jax import train  # noqa\n")
  (tmp_path / "bloodcell_jax" / "newthing.py").write_text("")
  problems = layering_violations(str(tmp_path))
  assert problems == [
      "bloodcell_jax.newthing is on no floor of tests/test_layers.py",
      "inference imports train: both modes, which stand apart",
      "models.cnn (data, augmentation, models) imports steps (steps and transfer), a floor above",
  ]
