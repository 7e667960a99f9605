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
              "jaxgen.rendezvous", "jaxgen.parallel", "jaxgen.checkpoint", "jaxgen.losses",
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
