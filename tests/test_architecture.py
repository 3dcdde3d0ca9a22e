"""The package graph points one way, checking a sweep imports no heavy library, and every
declared method has a builder that takes exactly its declared hyperparameters."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("adapters", "jobs", "pipeline", "dashboards")
# What each package may import of the others (and itself): adapters at the bottom, jobs (the
# worker) above it, pipeline (the driver) above that, dashboards (rendering) beside pipeline.
MAY_IMPORT = {
    "adapters": {"adapters"},
    "jobs": {"jobs", "adapters"},
    "dashboards": {"dashboards"},
    "pipeline": {"pipeline", "jobs", "adapters", "dashboards"},
}
# Programs run with `python -m`: they sit on top of the graph (any package below them), and no
# module imports them. `if __name__ == "__main__":` blocks are programs in the same way.
ENTRY_POINTS = {"adapters.bench", "dashboards.__main__", "pipeline.__main__", "pipeline.bench"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module of ours that `path` imports, at module level or inside a function."""
    tree = ast.parse(path.read_text())
    main_blocks = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
    skipped = {id(n) for block in main_blocks for n in ast.walk(block)}
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {name for name in found if name.split(".")[0] in PACKAGES}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        # `from jobs import tracking` names a module; `from jobs.contract import Cell` names its module
        graph[name] = {m if m in modules else m.rpartition(".")[0] for m in _imports(path)} - {name}
        graph[name] = {m for m in graph[name] if m in modules}
    return graph


def test_no_import_cycle_among_modules_counting_function_local_imports():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]) if nxt in trail else nxt)
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_packages_are_layered_and_nothing_imports_a_program():
    wrong = []
    for module, imported in _graph().items():
        package = module.split(".")[0]
        for target in imported:
            if target in ENTRY_POINTS:
                wrong.append(f"{module} imports the program {target}")
            elif module not in ENTRY_POINTS and target.split(".")[0] not in MAY_IMPORT[package]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong
    # the worker never reaches the driver; package-level `__init__`s stay import-light
    assert not any(t.startswith("pipeline") for m, ts in _graph().items() if m.startswith("jobs") for t in ts)


def test_validate_and_plan_import_no_torch_deepspeed_lm_eval_or_ray(tmp_path):
    heavy = ("torch", "deepspeed", "lm_eval", "peft", "transformers", "ray")
    code = (
        "import sys, json; from pipeline.__main__ import main; "
        f"codes = [main(['validate', 'configs/nightly.yaml']), main(['plan', 'configs/quickstart.yaml', '--tracking-uri', 'sqlite:///{tmp_path}/m.db'])]; "
        f"print(json.dumps([codes, sorted(m for m in {heavy!r} if m in sys.modules)]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    codes, loaded = json.loads(out.strip().splitlines()[-1])
    assert codes == [0, 0] and loaded == []


def test_every_declared_method_has_a_builder_taking_exactly_its_hyperparameters():
    from adapters import catalog, registry

    for name in catalog.available():
        takes, opens = registry.takes_hparams(registry.builder(name))
        assert takes == set(catalog.hyperparameters(name)), name
        assert opens == (catalog.method(name).open_fields is not None), name  # **kwargs only for a method of open fields


def test_the_console_script_takes_the_same_subcommands(tmp_path):
    script = Path(sys.executable).parent / "peftbench"
    assert script.exists(), "pip install -e . puts the peftbench console script beside the interpreter"
    ok = subprocess.run([str(script), "validate", "configs/quickstart.yaml"], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0 and "ok, 6 cells" in ok.stdout
    bad = subprocess.run([str(script), "validate", str(tmp_path / "missing.yaml")], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.strip().endswith("no such file")


@pytest.mark.parametrize(
    "hparams, message",
    [
        ("{reading: nonsense}", "methods.1.hparams.reading: must be one of paper, fixed, got 'nonsense'"),
        ("{lora_dropout: 1.5}", "methods.1.hparams.lora_dropout: must be a probability in [0, 1), got 1.5"),
        ("{target_modules: [nonexistent_proj]}", "methods.1.hparams.target_modules: tiny-llama has no linear module 'nonexistent_proj'"),
    ],
)
def test_bad_hyperparameter_values_fail_at_validate(write_spec, capsys, hparams, message):
    from pipeline.__main__ import main
    from tests.helpers import TINY_SWEEP

    text = TINY_SWEEP.replace("name: lora\n    hparams: {r: 4}", f"name: lr_lora\n    hparams: {hparams}")
    assert main(["validate", str(write_spec(text))]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err, err


@pytest.mark.parametrize("method, hparams", [("lora", "{lora_alpha: 0.5}"), ("adalora", "{init_r: 8, target_r: 4}"), ("lora_shift", "{shift: cyclic}")])
def test_valid_hyperparameter_values_pass_validate(write_spec, method, hparams):
    from pipeline.__main__ import main
    from tests.helpers import TINY_SWEEP

    assert main(["validate", str(write_spec(TINY_SWEEP.replace("name: lora\n    hparams: {r: 4}", f"name: {method}\n    hparams: {hparams}")))]) == 0


def test_adalora_target_above_init_and_lora_shift_bad_shift_fail_at_validate(write_spec, capsys):
    from pipeline.__main__ import main
    from tests.helpers import TINY_SWEEP

    for method, hparams, message in [
        ("adalora", "{init_r: 4, target_r: 8}", "methods.1.hparams.target_r: (8) must not exceed init_r (4)"),
        ("lora_shift", "{shift: nonsense}", "methods.1.hparams.shift: must be one of linear, cyclic, learned"),
    ]:
        assert main(["validate", str(write_spec(TINY_SWEEP.replace("name: lora\n    hparams: {r: 4}", f"name: {method}\n    hparams: {hparams}")))]) == 2
        assert message in capsys.readouterr().err
