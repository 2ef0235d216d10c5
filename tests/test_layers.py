"""The import graph of the project's packages, read with `ast` (lazy imports inside functions
count too): no circle, and no import from a lower layer into a higher one.

    pipeline/models  <  pipeline  <  eval  <  tune  <  report  <  genbench

pipeline/models imports torch and the standard library only. eval/ood/ is part of eval; report
sits above tune because it reads sweeps (tune/summary.py names their artifacts) and scaling runs.
"""
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "eval", "tune", "report", "genbench")
LAYERS = ("pipeline.models", "pipeline", "eval", "tune", "report", "genbench")  # low to high
MODELS_MAY_IMPORT = {"torch"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported_names(path: Path, name: str) -> list[tuple[str, int]]:
    """(module, line) for every import statement in the file, anywhere in it."""
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            # `from a import b` imports the submodule a.b when there is one, else names from a
            out += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
            out.append((base, node.lineno))
    return out


def project_edges() -> dict[str, set[tuple[str, int]]]:
    modules = project_modules()
    edges: dict[str, set[tuple[str, int]]] = {m: set() for m in modules}
    for name, path in modules.items():
        for target, line in imported_names(path, name):
            while target and target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]   # a name inside a module: the module
            if target in modules and target != name:
                # `from pkg import sub` seen as both pkg.sub and pkg: keep the most precise
                edges[name].add((target, line))
    # drop the package edge added beside a precise submodule edge from the same line
    for name, targets in edges.items():
        precise = {(t.rsplit(".", 1)[0], line) for t, line in targets if "." in t}
        edges[name] = {(t, line) for t, line in targets
                       if (t, line) not in precise or t == name}
    return edges


def layer(module: str) -> int:
    """Index in LAYERS of the longest layer name that contains the module."""
    found = [i for i, name in enumerate(LAYERS)
             if module == name or module.startswith(name + ".")]
    assert found, f"{module} is in no layer"
    return max(found, key=lambda i: len(LAYERS[i]))


def cycles(edges: dict[str, set[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w, _ in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_every_package():
    edges = project_edges()
    assert {"pipeline.loop", "pipeline.schema", "eval.run", "eval.ood", "eval.ood.scores",
            "tune.sweep", "report.render", "report.sweeps", "genbench.cli"} <= set(edges)
    assert any(t == "pipeline.config" for t, _ in edges["pipeline.loop"])
    assert any(t == "tune.sweep" for t, _ in edges["genbench.sweeping"])  # lazy imports count
    assert any(t == "pipeline.models.layers" for t, _ in edges["pipeline.models.vae"])
    # the report reads the sweep's artifact names from tune, which sits below it
    assert any(t == "tune.summary" for t, _ in edges["report.sweeps"])


def test_the_layer_order():
    assert layer("pipeline.schema") == LAYERS.index("pipeline")
    assert layer("eval.ood.bayes") == LAYERS.index("eval")
    assert layer("eval.run") < layer("tune.summary") < layer("report.sweeps") \
        < layer("genbench.reporting")


def test_no_import_points_up_a_layer():
    edges = project_edges()
    upward = [f"{src} (line {line}) imports {dst}: {LAYERS[layer(src)]} sits below "
              f"{LAYERS[layer(dst)]}"
              for src, targets in sorted(edges.items()) for dst, line in sorted(targets)
              if layer(dst) > layer(src)]
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    found = cycles(project_edges())
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_models_import_torch_and_the_standard_library_only():
    modules = project_modules()
    bad = []
    for name, path in modules.items():
        if layer(name) != 0:
            continue
        for target, line in imported_names(path, name):
            top = target.split(".")[0]
            if not top or top in sys.stdlib_module_names or top == "__future__":
                continue
            if target.startswith("pipeline.models") or top in MODELS_MAY_IMPORT:
                continue
            if top == "pipeline" and target in ("pipeline", "pipeline.models"):
                continue
            bad.append(f"{name} (line {line}) imports {target}")
    assert not bad, "\n".join(bad)


def test_a_circle_and_an_upward_import_are_caught():
    """The checks themselves: a made-up graph with both faults."""
    edges = {"pipeline.loop": {("eval.run", 1)}, "eval.run": {("pipeline.loop", 2)}}
    assert cycles(edges) == [["eval.run", "pipeline.loop"]]
    assert layer("eval.run") > layer("pipeline.loop")
    assert layer("pipeline.models.vae") < layer("pipeline.data") < layer("genbench.cli")
