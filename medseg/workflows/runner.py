"""Declarative pipelines: YAML lists of medseg commands, run in order and resumed step by step.

A pipeline file names variables and steps. Each step runs one ``medseg`` command (the same words as on the command
line) and declares the files it reads (``inputs``) and writes (``outputs``)::

    name: demo
    vars:
      work: runs/demo
      epochs: 12
    steps:
      - name: plan
        run: [plan, "${work}/data/dataset.json", -o, "${work}/plans.json"]
        inputs: ["${work}/data/dataset.json"]
        outputs: ["${work}/plans.json"]

A step may list ``ok_exit_codes`` besides 0 that still count as done — say ``[3]`` for a batch prediction that
reports failed cases in its ledger and exit code but should not stop the report that follows.

A step may also list ``clean`` paths: folders or files deleted before the step runs on changed inputs (say, a
training run folder that must start afresh after the plans changed), but kept when the step runs again after an
interruption with the same inputs, so that a command given ``--resume`` continues where it stopped. A pipeline
deletes nothing outside its lane: each ``clean`` path must lie strictly inside the ``work`` folder or inside a
declared output, after resolving ``..`` and symbolic links; any other is refused before a step runs.

``${name}`` is replaced by a variable (``vars``, overridden with ``--set name=value``) or a built-in: ``${device}``
(``cuda`` when a CUDA device is present, else ``cpu``), ``${pipeline_dir}`` (the folder of the pipeline file) and
``${presets}`` (the folder of the training presets shipped with medseg), which ``--set`` overrides like any
variable. Variables may refer to each other; a cycle (``out: ${out}/x``) is an error. Relative paths are relative to
the folder the pipeline is run from.

A step is skipped when it finished before with the same command and the same input files (paths, sizes and
modification times; every file of an input folder), and all its outputs still exist. Otherwise it runs, and so does
every later step whose inputs it rewrites. The record lives in ``state`` (default
``${work}/pipeline_state.json`` when a ``work`` variable exists, else beside the pipeline file), written after each
step, so an interrupted pipeline resumes at the step that was running.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.config import parse_overrides, read_yaml
from medseg.errors import ConfigError, MedsegError
from medseg.presets import PRESETS_DIR
from medseg.utils.files import atomic_json, read_json, state_digest

STATE_VERSION = 1
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class PipelineError(MedsegError):
    """A pipeline file is malformed, or one of its steps failed."""


@dataclass(frozen=True)
class Step:
    """One resolved step: its name, the medseg command words, and the files it reads and writes."""

    name: str
    run: tuple[str, ...]
    inputs: tuple[Path, ...] = ()
    outputs: tuple[Path, ...] = ()
    clean: tuple[Path, ...] = ()
    ok_exit_codes: tuple[int, ...] = (0,)


@dataclass
class Pipeline:
    """A resolved pipeline: variables substituted, paths made absolute."""

    name: str
    source: Path
    variables: dict[str, str]
    steps: list[Step]
    state_path: Path
    description: str = ""
    skipped: list[str] = field(default_factory=list)


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


#: Longest text a variable may expand to (nested references can otherwise grow exponentially).
MAX_EXPANSION = 100_000


def resolve_variables(variables: Mapping[str, str], where: str | Path) -> dict[str, str]:
    """Expand the references among variables (``b: ${a}/x``), refusing cycles and runaway expansions.

    Raises:
        PipelineError: A variable refers to itself through others (``out: ${out}/x``), refers to an unknown
            variable, or expands beyond :data:`MAX_EXPANSION` characters.
    """
    resolved: dict[str, str] = {}

    def expand(name: str, chain: list[str]) -> str:
        if name in resolved:
            return resolved[name]
        if name in chain:
            cycle = " → ".join([*chain[chain.index(name):], name])
            raise PipelineError(f"variables refer to each other in a cycle: {cycle}", where)

        def replace(match: re.Match[str]) -> str:
            key = match.group(1)
            if key not in variables:
                raise PipelineError(f"variable {name}: unknown variable ${{{key}}} (known: "
                                    f"{', '.join(sorted(variables))})", where)
            return expand(key, [*chain, name])

        text = _VARIABLE.sub(replace, variables[name])
        if len(text) > MAX_EXPANSION:
            raise PipelineError(f"variable {name} expands to more than {MAX_EXPANSION} characters", where)
        resolved[name] = text
        return text

    for name in variables:
        expand(name, [])
    return resolved


def _substitute(text: str, variables: Mapping[str, str], where: str) -> str:
    """Replace each ``${name}`` in ``text`` by its (already resolved) variable."""

    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in variables:
            known = ", ".join(sorted(variables))
            raise PipelineError(f"{where}: unknown variable ${{{key}}} (known: {known})")
        return variables[key]

    return _VARIABLE.sub(replace, text)


def _as_strings(value: Any, key: str, where: Path) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str | int | float) and not isinstance(v, bool)
                                              for v in value):
        raise PipelineError(f"{key} must be a list of words or paths", where)
    return [str(v) for v in value]


def load_pipeline(path: str | Path, overrides: Iterable[str] = ()) -> Pipeline:
    """Read a pipeline file, apply ``--set name=value`` overrides to its variables, and resolve every step.

    Raises:
        PipelineError: Unknown keys, steps without a command, duplicate step names, unknown variables.
        ConfigError: The file is not valid YAML.
    """
    path = Path(path).resolve()
    data = read_yaml(path)
    unknown = sorted(set(data) - {"name", "description", "vars", "steps", "state"})
    if unknown:
        raise PipelineError(f"unknown key {unknown[0]!r} (known: name, description, vars, steps, state)", path)
    raw_vars = data.get("vars") or {}
    if not isinstance(raw_vars, dict):
        raise PipelineError("vars must be a mapping of names to values", path)
    variables = {str(k): str(v) for k, v in raw_vars.items()}
    variables.setdefault("pipeline_dir", str(path.parent))
    variables.setdefault("presets", str(PRESETS_DIR))
    variables.setdefault("device", _device())
    for key, value in parse_overrides(overrides).items():
        if isinstance(value, dict):
            raise ConfigError(f"override of {key!r}: pipeline variables are plain values", "--set")
        if key not in variables:
            raise ConfigError(f"unknown variable {key!r} (known: {', '.join(sorted(variables))})", "--set")
        variables[key] = str(value)
    variables = resolve_variables(variables, path)
    steps_data = data.get("steps")
    if not isinstance(steps_data, list) or not steps_data:
        raise PipelineError("steps must be a non-empty list", path)
    steps: list[Step] = []
    for index, entry in enumerate(steps_data):
        if not isinstance(entry, dict):
            raise PipelineError(f"step {index + 1} must be a mapping", path)
        extra = sorted(set(entry) - {"name", "run", "inputs", "outputs", "clean", "ok_exit_codes"})
        if extra:
            known = "name, run, inputs, outputs, clean, ok_exit_codes"
            raise PipelineError(f"step {index + 1}: unknown key {extra[0]!r} (known: {known})", path)
        name = str(entry.get("name") or f"step{index + 1}")
        if any(s.name == name for s in steps):
            raise PipelineError(f"two steps are named {name!r}", path)
        where = f"step {name}"
        words = [_substitute(w, variables, where) for w in _as_strings(entry.get("run"), f"{where}: run", path)]
        if not words:
            raise PipelineError(f"{where} has no command (run: [COMMAND, ARGS…])", path)
        files = {
            key: tuple(Path(_substitute(p, variables, where)).resolve()
                       for p in _as_strings(entry.get(key), f"{where}: {key}", path))
            for key in ("inputs", "outputs", "clean")
        }
        codes = entry.get("ok_exit_codes", [0])
        if not isinstance(codes, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in codes):
            raise PipelineError(f"{where}: ok_exit_codes must be a list of integers", path)
        steps.append(Step(name=name, run=tuple(words), inputs=files["inputs"], outputs=files["outputs"],
                          clean=files["clean"], ok_exit_codes=tuple(sorted({0, *codes}))))
    _check_clean_paths(steps, variables, path)
    state = data.get("state")
    if state is not None:
        state_path = Path(_substitute(str(state), variables, "state")).resolve()
    elif "work" in variables:
        state_path = Path(variables["work"]).resolve() / "pipeline_state.json"
    else:
        state_path = path.with_suffix(".state.json")
    return Pipeline(name=str(data.get("name") or path.stem), source=path, variables=variables, steps=steps,
                    state_path=state_path, description=str(data.get("description") or ""))


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _check_clean_paths(steps: Sequence[Step], variables: Mapping[str, str], where: Path) -> None:
    """Refuse ``clean`` paths outside the pipeline's lane: strictly inside ``${work}`` or inside a declared output.

    Paths are compared after resolving ``..`` and symbolic links, so ``${work}/../../victim`` is refused before any
    step runs.

    Raises:
        PipelineError: A clean path outside the work folder and the declared outputs.
    """
    work = Path(variables["work"]).resolve() if "work" in variables else None
    outputs = [p for step in steps for p in step.outputs]
    for step in steps:
        for target in step.clean:
            inside_work = work is not None and work in target.parents
            if not inside_work and not any(_inside(target, out) for out in outputs):
                lane = f"the work folder {work} or" if work is not None else ""
                raise PipelineError(f"step {step.name}: clean path {target} is outside {lane} the declared outputs; "
                                    "a pipeline deletes nothing else", where)


def _digest(step: Step) -> str:
    """Hash of the command and of every input file's path, size and modification time."""
    return state_digest(step.inputs, extra=json.dumps(list(step.run)))


def _read_state(path: Path) -> dict[str, Any]:
    """The pipeline state; a missing or unreadable one starts afresh (every step runs again)."""
    try:
        state = read_json(path, "pipeline state")
    except MedsegError:
        return {"version": STATE_VERSION, "steps": {}}
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION or not isinstance(state.get("steps"), dict):
        return {"version": STATE_VERSION, "steps": {}}
    return state


def _write_state(path: Path, state: Mapping[str, Any]) -> None:
    atomic_json(path, state)


def run_pipeline(
    pipeline: Pipeline,
    execute: Callable[[Sequence[str]], int],
    *,
    only: Sequence[str] | None = None,
    force: bool = False,
    echo: Callable[[str], None] = print,
) -> list[tuple[str, str, float]]:
    """Run the steps in order, skipping those already done with unchanged inputs.

    Args:
        pipeline: From :func:`load_pipeline`.
        execute: Runs one medseg command (its words) and returns its exit code.
        only: Run just these steps (others are neither run nor checked).
        force: Run every selected step even when it is up to date.
        echo: Where progress lines go.

    Returns:
        ``(step, "ran" | "skipped", seconds)`` for each selected step.

    Raises:
        PipelineError: A step failed (its exit code), or did not write a declared output.
    """
    state = _read_state(pipeline.state_path)
    selected = [s for s in pipeline.steps if only is None or s.name in only]
    if only is not None:
        unknown = sorted(set(only) - {s.name for s in pipeline.steps})
        if unknown:
            raise PipelineError(f"no step named {unknown[0]!r} (steps: {', '.join(s.name for s in pipeline.steps)})",
                                pipeline.source)
    results: list[tuple[str, str, float]] = []
    for number, step in enumerate(selected, start=1):
        header = f"[{number}/{len(selected)}] {step.name}"
        digest = _digest(step)
        record = state["steps"].get(step.name, {})
        up_to_date = record.get("digest") == digest and record.get("status") == "done" and all(
            p.exists() for p in step.outputs)
        if up_to_date and not force:
            echo(f"{header}: up to date, skipped")
            results.append((step.name, "skipped", 0.0))
            continue
        echo(f"{header}: medseg {' '.join(step.run)}")
        if record.get("digest") != digest or force:
            for stale in step.clean:
                if stale.is_dir():
                    shutil.rmtree(stale)
                elif stale.exists():
                    stale.unlink()
        state["steps"][step.name] = {"status": "running", "digest": digest, "started": time.time()}
        _write_state(pipeline.state_path, state)
        start = time.perf_counter()
        code = execute(list(step.run))
        seconds = time.perf_counter() - start
        if code not in step.ok_exit_codes:
            state["steps"][step.name].update(status="failed", exit_code=code)
            _write_state(pipeline.state_path, state)
            raise PipelineError(f"step {step.name!r} failed with exit code {code}", pipeline.source)
        missing = [str(p) for p in step.outputs if not p.exists()]
        if missing:
            state["steps"][step.name].update(status="failed")
            _write_state(pipeline.state_path, state)
            raise PipelineError(f"step {step.name!r} did not write {', '.join(missing)}", pipeline.source)
        state["steps"][step.name] = {"status": "done", "digest": digest, "seconds": round(seconds, 2),
                                     "finished": time.time(), "exit_code": code}
        _write_state(pipeline.state_path, state)
        accepted = f" (exit code {code}, accepted)" if code else ""
        echo(f"{header}: done in {seconds:.1f} s{accepted}")
        results.append((step.name, "ran", seconds))
    return results
