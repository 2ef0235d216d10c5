"""Ray's private APIs are used in one module, pipeline/ray_private.py, each with a fallback: a
Ray release that moved one degrades what is built on it, never the run."""
import ast
from pathlib import Path

from pipeline import ray_private

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "eval", "tune", "report", "genbench", "benchmarks")
PRIVATE = ("_create_default_callbacks", "_TorchBackend", "_global_node")


def private_uses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ray.") \
                and any(part.startswith("_") for part in node.module.split(".")):
            found.append(f"{path}:{node.lineno} from {node.module}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ray.") \
                and any(alias.name.startswith("_") for alias in node.names):
            found.append(f"{path}:{node.lineno} {node.module}.{node.names[0].name}")
        elif isinstance(node, ast.Import) and any(
                alias.name.startswith("ray._") for alias in node.names):
            found.append(f"{path}:{node.lineno} import")
        elif isinstance(node, (ast.Attribute, ast.Constant)) and \
                (getattr(node, "attr", None) or getattr(node, "value", None)) in PRIVATE:
            found.append(f"{path}:{node.lineno} {getattr(node, 'attr', None) or node.value}")
    return found


def test_only_ray_private_touches_rays_private_apis():
    stray = [use for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
             if path.name != "ray_private.py" for use in private_uses(path)]
    assert not stray, "\n".join(stray)
    assert private_uses(ROOT / "pipeline" / "ray_private.py")  # the scan does see them


def test_a_trainer_without_the_private_hook_is_used_as_it_is():
    class OldTrainer:  # a Ray release without _create_default_callbacks
        pass

    assert ray_private.trainer_without_callbacks(OldTrainer, lambda t: ()) is OldTrainer

    class Trainer:
        def _create_default_callbacks(self):
            return [Keep(), Drop()]

    class Keep:
        pass

    class Drop:
        pass

    lean = ray_private.trainer_without_callbacks(Trainer, lambda t: ("Drop",))
    assert [type(cb).__name__ for cb in lean()._create_default_callbacks()] == ["Keep"]


def test_no_connected_node_before_ray_starts_here():
    import ray

    if not ray.is_initialized():
        assert ray_private.connected_node() is None
