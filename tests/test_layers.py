"""The package's modules import one way: core, then metrics, then training, then runs, then the
command line. A module may import from its own layer or a lower one, never from a higher one,
never in a circle, and only at module level."""

import ast
import os

import jaxgen

PACKAGE = os.path.dirname(jaxgen.__file__)
# The layers, lowest first; a module belongs to the first layer whose prefix it starts with.
LAYERS = [
    ("core", ("jaxgen.errors", "jaxgen.config", "jaxgen.keys", "jaxgen.workdir", "jaxgen.data",
              "jaxgen.rendezvous", "jaxgen.parallel", "jaxgen.runtime", "jaxgen.checkpoint",
              "jaxgen.checkpoint_reports", "jaxgen.losses",
              "jaxgen.viz", "jaxgen.tensorboard", "jaxgen.models")),
    ("metrics", ("jaxgen.metrics",)),
    ("train", ("jaxgen.train",)),
    ("runs", ("jaxgen.runs",)),
    ("cli", ("jaxgen.cli",)),
]


def _modules() -> dict:
    found = {}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                parts = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join(parts)] = path
    return found


def _layer(module: str) -> int:
    if module == "jaxgen":
        return 0
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def _imports(path: str, modules: dict) -> list:
    """(imported jaxgen module, whether at module level) for every import in the file."""
    tree = ast.parse(open(path).read())
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                     else node.module for a in node.names]
        for name in names:
            if name.split(".")[0] == "jaxgen":
                out.append((name, id(node) in top))
    return out


def test_every_module_imports_down_or_across_at_module_level():
    modules = _modules()
    problems = []
    for module, path in modules.items():
        for imported, at_top in _imports(path, modules):
            if not at_top:
                problems.append(f"{module} imports {imported} inside a function")
            elif _layer(imported) > _layer(module):
                problems.append(f"{module} ({LAYERS[_layer(module)][0]}) imports {imported} "
                                f"({LAYERS[_layer(imported)][0]})")
    assert not problems, "\n".join(problems)


def test_no_import_circle():
    modules = _modules()
    graph = {m: {i for i, _ in _imports(p, modules) if i in modules and i != m}
             for m, p in modules.items()}
    done, path = set(), []

    def visit(module):
        if module in path:
            raise AssertionError("import circle: " + " -> ".join(
                path[path.index(module):] + [module]))
        if module in done:
            return
        path.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


IMPORT_PROBE = r"""
import logging, os, pkgutil, importlib, sys, warnings
import jax, flax, optax, orbax.checkpoint, matplotlib, numpy, PIL.Image, tqdm  # their own effects
matplotlib.use("svg")


def snapshot():
    loggers = [logging.getLogger()] + [logging.getLogger(n) for n in
                                       sorted(logging.root.manager.loggerDict)]
    return {
        "backend": matplotlib.get_backend(),
        # a logger new with a library module (matplotlib.figure's, say) counts if filtered
        "loggers": {l.name: (l.level, list(map(id, l.filters)), list(map(id, l.handlers)))
                    for l in loggers if l.name in known or l.filters},
        "hooks": (id(sys.unraisablehook), id(sys.excepthook)),
        "environ": dict(os.environ),
        "warnings": list(map(repr, warnings.filters)),
        "jax_config": {k: repr(v) for k, v in jax.config.values.items()},
    }


known = set(logging.root.manager.loggerDict) | {"root"}
before = snapshot()
import jaxgen
names = [m.name for m in pkgutil.walk_packages(jaxgen.__path__, "jaxgen.")]
for name in names:
    importlib.import_module(name)
after = snapshot()
changed = [k for k in before if before[k] != after[k]]
for k in changed:
    if isinstance(before[k], dict):
        keys = sorted(set(before[k]) | set(after[k]))
        print(k, [x for x in keys if before[k].get(x) != after[k].get(x)][:10])
    else:
        print(k, before[k], after[k])
print("imported", len(names))
"""


def test_importing_any_module_changes_nothing_outside_jaxgen():
    """A notebook that imports jaxgen keeps its matplotlib backend, logging, hooks, environment,
    warning filters and JAX configuration: jaxgen's scripts set what they need at start-up."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(jaxgen.__file__)), env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("imported ") and int(lines[-1].split()[1]) > 30
    assert lines[:-1] == [], lines[:-1]
