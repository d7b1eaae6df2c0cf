"""The matrix file: models × hook points × SAEs × scorers, validated with errors that name the key.

Every problem a user can put in the file (bad YAML, a wrong type, an unknown plugin name, an SAE
bound to a model or hook point the matrix does not declare, a missing checkpoint) is raised as a
ConfigError whose ``where`` is ``FILE: key.path``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from saebench import plugin_manager
from saebench.errors import ConfigError, validation_error
from saebench.interp.records import RecordConfig
from saebench.models import devices
from saebench.run.rayspec import RayExecutor, RaySpec, StageResources  # noqa: F401 - the matrix's executor key
from saebench.run.sources import check_plugin as _plugin
from saebench.run.sources import check_source
from saebench.run.sweep import expand_sweeps, in_sweep
from saebench.run.transcoders import check_hookpoint_out, dump_entry


class DataSpec(BaseModel):
    """Where the text comes from and how much of it: ``tokens`` evaluation tokens in contexts of ``context_length``."""

    model_config = ConfigDict(extra="allow")  # the rest are the data source's own options

    source: str = "python-stdlib"
    tokens: PositiveInt = 20000
    context_length: int = Field(128, ge=2)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    adapter: str = "hf-causal-lm"
    path: str
    hookpoints: list[str] = Field(min_length=1)
    options: dict[str, Any] = Field(default_factory=dict, description="adapter options: device, dtype...")
    device: str | None = Field(None, description="auto, cpu, cuda, cuda:N or mps; default: the matrix's device")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="the model's weights (part of its cache keys); default: the matrix's dtype"
    )


class SAESpec(BaseModel):
    """An SAE to evaluate: a checkpoint (``path``, any loader format, local or ``hf://``), a published one
    (``release`` + ``sae_id``), one to train (``train``) or a baseline to build (``baseline``, see
    saebench.training.baselines). See saebench.run.sources."""

    model_config = ConfigDict(extra="forbid")

    name: str
    model: str
    hookpoint: str = Field("", description="omitted (empty): the hook point the checkpoint names")
    hookpoint_out: str | None = Field(None, description="transcoders: the hook point written (see run.transcoders)")
    path: str | None = None
    release: str | None = Field(None, description="a release of SAELens's directory, with sae_id")
    sae_id: str | None = None
    format: str = "auto"
    allow_pickle: bool = False
    train: dict[str, Any] | None = None
    baseline: dict[str, Any] | None = None
    _hook_name: str | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _one_source(self) -> SAESpec:
        checkpoint = self.path is not None or self.release is not None  # a release fills in path when checked
        if sum((checkpoint, self.train is not None, self.baseline is not None)) != 1:
            raise ValueError(
                "give exactly one of 'path' (a checkpoint), 'release' with 'sae_id' (a published SAE), "
                "'train' (a training config) or 'baseline' (a baseline)"
            )
        return self

    _dump = dump_entry  # an SAE's entry dumps as it did before transcoders: no hookpoint_out

    def inferred_from(self, hook_name: str) -> None:
        self._hook_name = hook_name

    @property
    def hook_name(self) -> str | None:
        """The checkpoint's own name of the hook point, when ``hookpoint`` was taken from it."""
        return self._hook_name


class ScorerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    llm: str | None = Field(None, description="key of ``llms`` for scorers that call an LLM (default: see resolve_llm)")
    options: dict[str, Any] = Field(default_factory=dict)


class ExplainerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    llm: str | None = Field(None, description="key of ``llms`` (default: see resolve_llm)")
    options: dict[str, Any] = Field(default_factory=dict)


COMPARISONS = ("decoder", "activations", "explanations")


class CompareSpec(BaseModel):
    """SAE-to-SAE comparison cells (saebench.compare.similarity): ``compare: true``, a list of comparisons, or this."""

    model_config = ConfigDict(extra="forbid")

    metrics: list[Literal[COMPARISONS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(COMPARISONS), min_length=1, description="decoder, activations, explanations"
    )
    across_hookpoints: bool = Field(False, description="also pair SAEs of one model at different hook points")
    latents: PositiveInt = Field(64, description="explanation_similarity: A's latents explained, with their matches")
    embedding_model: str = Field("embedded:all-minilm-l6-v2", description="embeds explanations (sentence-transformers)")

    @model_validator(mode="before")
    @classmethod
    def _short_forms(cls, data: Any) -> Any:
        if isinstance(data, list):
            return {"metrics": data}
        return {} if data is True else data


class LLMSpec(BaseModel):
    """An LLM endpoint: ``client`` names the plugin, every other key is that client's option."""

    model_config = ConfigDict(extra="allow")

    client: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Matrix(BaseModel):
    """One evaluation: every SAE is scored by every scorer on its model's hook point."""

    model_config = ConfigDict(extra="forbid")

    name: str
    output: str
    seed: int = 0
    seeds: list[int] | None = Field(
        None,
        min_length=1,
        description="repeat the stochastic cells (latent sample, examples, judge sampling, probe splits) once per "
        "seed, as cells with the seed in their label (detection@s1); the first seed also runs everything else",
    )
    cache_dir: str | None = Field(None, description="activation cache; default OUTPUT/cache (share it across matrices)")
    cache_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="cached activations' dtype: bfloat16 halves the disk (scorers read float32)"
    )
    data: DataSpec = Field(default_factory=DataSpec)
    models: list[ModelSpec] = Field(min_length=1)
    saes: list[SAESpec] = Field(min_length=1)
    scorers: list[ScorerSpec] = Field(default_factory=list, description="none: only train the SAEs")
    llms: dict[str, LLMSpec] = Field(default_factory=dict, description="named LLM endpoints for explainers and judges")
    explainers: list[ExplainerSpec] = Field(
        default_factory=list, description="default: [top-tokens] when an interp scorer is set"
    )
    interp: dict[str, Any] = Field(
        default_factory=dict, description="which latents and examples (saebench.interp.records.RecordConfig)"
    )
    executor: str | dict[str, Any] = Field("local", description="local, or {ray: {address: auto}} (see RaySpec)")
    compare: CompareSpec | None = Field(None, description="pairwise SAE-to-SAE cells (see CompareSpec)")
    device: str = Field("cpu", description="where the models run: auto (CUDA when present), cpu, cuda, cuda:N, mps")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="the models' weights dtype (default: the adapter's own, float32)"
    )

    @field_validator("compare", mode="before")
    @classmethod
    def _no_compare(cls, v: Any) -> Any:
        return None if v is False else v

    @property
    def ray(self) -> RaySpec | None:
        """The Ray executor's settings; None for the local executor."""
        return None if self.executor == "local" else RayExecutor.model_validate(self.executor).ray

    @model_validator(mode="after")
    def _one_seed_setting(self) -> Matrix:
        if self.seeds is None:
            return self
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: each seed once")
        if "seed" in self.model_fields_set or "seed" in self.interp:
            raise ValueError("give 'seeds' or 'seed' (and interp.seed), not both: seeds[0] is the run's seed")
        return self

    @property
    def run_seed(self) -> int:
        """The seed of everything that is not repeated (training, and the first repeat)."""
        return self.seeds[0] if self.seeds else self.seed

    @field_validator("scorers", "explainers", mode="before")
    @classmethod
    def _short_names(cls, v: Any) -> Any:
        return [{"name": s} if isinstance(s, str) else s for s in v] if isinstance(v, list) else v


#: the component kinds that may name an LLM, and the ``llms`` key each uses when it names none
DEFAULT_LLM = {"explainer": "explainer", "scorer": "judge"}


def resolve_llm(m: Matrix, kind: str, given: str | None, where: str) -> str:
    """The ``llms`` key a component uses: the one it names; else ``explainer`` (explainers) or ``judge``
    (scorers) when defined; else the only one defined. ConfigError otherwise."""
    if given is not None:
        if given not in m.llms:
            known = ", ".join(m.llms) or "none defined"
            raise ConfigError(f"unknown llm {given!r}; llms: {known}", f"{where}.llm")
        return given
    if DEFAULT_LLM[kind] in m.llms:
        return DEFAULT_LLM[kind]
    if len(m.llms) == 1:
        return next(iter(m.llms))
    if not m.llms:
        raise ConfigError("needs an LLM: add an 'llms:' section and name one with 'llm: NAME'", where)
    raise ConfigError(f"needs an LLM: name one of {', '.join(m.llms)} with 'llm: NAME'", where)


def interp_scorers(m: Matrix) -> list[ScorerSpec]:
    registry = plugin_manager.get_registry()
    return [s for s in m.scorers if getattr(registry.get("scorer", s.name), "family", "") == "interp"]


def effective_explainers(m: Matrix) -> list[ExplainerSpec]:
    """The explainers of the matrix; [top-tokens] when interpretability scorers are set and none is."""
    if m.explainers or not interp_scorers(m):
        return list(m.explainers)
    return [ExplainerSpec(name="top-tokens")]


def adapter_options(m: Matrix, spec: ModelSpec) -> dict[str, Any]:
    """A model's adapter options as its cache keys hash them: ``options`` with the entry's (else the
    matrix's) ``dtype``. The device is not among them: activations do not depend on where they ran."""
    dtype = spec.dtype or m.dtype
    return {**spec.options, "dtype": dtype} if dtype is not None else dict(spec.options)


def model_device(m: Matrix, spec: ModelSpec, path: str | Path, index: int) -> str | None:
    """The torch device model ``index`` runs on (``device`` of the entry, else of the matrix, ``auto``
    resolved), or None where ``options.device`` sets it the old way. ConfigError when this machine lacks it."""
    where = f"{path}: models[{index}]"
    dtype = spec.dtype or m.dtype
    if "dtype" in spec.options and dtype is not None and spec.options["dtype"] != dtype:
        raise ConfigError(f"options.dtype {spec.options['dtype']!r} contradicts dtype {dtype!r}", f"{where}.dtype")
    if "device" in spec.options:
        if spec.device is not None:
            raise ConfigError("give the device once: device or options.device, not both", f"{where}.device")
        return None
    return devices.resolve(spec.device or m.device, f"{where}.device" if spec.device else f"{path}: device")


def load_matrix(path: str | Path) -> Matrix:
    """Parse and check a matrix file. Relative paths in it (output, checkpoints, globs) are relative
    to the current working directory, as with any command-line tool."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("no such matrix file", path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"invalid YAML{at}: {getattr(exc, 'problem', None) or exc}", path) from None
    except UnicodeDecodeError:
        raise ConfigError("not a text file", path) from None
    if raw is None:
        raise ConfigError("the matrix file is empty", path)
    return parse_matrix(raw, path)


def parse_matrix(raw: Any, where: str | Path) -> Matrix:
    """A checked Matrix from parsed YAML (or a dict built in code); ``where`` names it in errors."""
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping at the top level, got {type(raw).__name__}", where)
    origin: list[tuple[int, str | None]] = []
    if isinstance(raw.get("saes"), list):
        saes, origin = expand_sweeps(raw["saes"], where)
        raw = {**raw, "saes": saes}
    try:
        try:
            matrix = Matrix.model_validate(raw)  # not Matrix(**raw): YAML keys need not be strings
        except ValidationError as exc:
            raise validation_error(exc, where) from None
        check_matrix(matrix, where)
    except ConfigError as exc:
        raise in_sweep(exc, origin) from None
    return matrix


def check_matrix(m: Matrix, path: str | Path) -> None:
    """Cross-references and plugin names, checked before any work starts."""
    for items, what in ((m.models, "model"), (m.saes, "sae"), (m.scorers, "scorer")):
        seen: set[str] = set()
        for i, item in enumerate(items):
            if item.name in seen:
                raise ConfigError(f"duplicate {what} name {item.name!r}", f"{path}: {what}s[{i}].name")
            seen.add(item.name)
    _plugin("data_source", m.data.source, path, "data.source")
    for i, mod in enumerate(m.models):
        _plugin("model_adapter", mod.adapter, path, f"models[{i}].adapter")
        if m.executor == "local":  # on Ray, its workers, not this driver, are where a model's device must exist
            model_device(m, mod, path, i)
    for i, s in enumerate(m.scorers):
        _plugin("scorer", s.name, path, f"scorers[{i}].name")
    models = {mod.name: mod for mod in m.models}
    for i, sae in enumerate(m.saes):
        where = f"saes[{i}]"
        if sae.model not in models:
            raise ConfigError(f"unknown model {sae.model!r}; models: {', '.join(models)}", f"{path}: {where}.model")
        check_source(sae, models[sae.model], path, where)  # before the check below: it may fill in the hook point
        if sae.hookpoint not in models[sae.model].hookpoints:
            raise ConfigError(
                f"hook point {sae.hookpoint!r} is not among model {sae.model!r}'s hookpoints "
                f"({', '.join(models[sae.model].hookpoints)})",
                f"{path}: {where}.hookpoint",
            )
        check_hookpoint_out(sae, models[sae.model], path, where)
    check_interp(m, path)
    if isinstance(m.executor, str) and m.executor != "local":
        raise ConfigError(
            f"unknown executor {m.executor!r}; use local or {{ray: {{address: auto}}}}", f"{path}: executor"
        )
    if m.executor != "local":
        try:
            RayExecutor.model_validate(m.executor)
        except ValidationError as exc:
            raise validation_error(exc, f"{path}: executor") from None


def check_interp(m: Matrix, path: str | Path) -> None:
    """LLM clients, explainers, interp scorers and the ``interp`` options: names, references, options."""
    registry = plugin_manager.get_registry()
    for key, spec in m.llms.items():
        _plugin("llm_client", spec.client, path, f"llms.{key}.client")
    for i, e in enumerate(m.explainers):
        _plugin("explainer", e.name, path, f"explainers[{i}].name")
        if registry.get("explainer", e.name).needs_llm:
            resolve_llm(m, "explainer", e.llm, f"{path}: explainers[{i}]")
    names = [e.name for e in m.explainers]
    if len(set(names)) != len(names):
        raise ConfigError("each explainer may appear once", f"{path}: explainers")
    interp = {s.name for s in interp_scorers(m)}
    for i, s in enumerate(m.scorers):
        if s.name in interp and getattr(registry.get("scorer", s.name), "needs_llm", False):
            resolve_llm(m, "scorer", s.llm, f"{path}: scorers[{i}]")
        elif s.llm is not None:
            raise ConfigError(f"scorer {s.name!r} does not use an LLM", f"{path}: scorers[{i}].llm")
    naming = [s for s in m.scorers if getattr(registry.get("scorer", s.name), "uses_explanations", False)]
    explained = m.compare is not None and "explanations" in m.compare.metrics
    if m.explainers and not interp and not naming and not explained:
        raise ConfigError(
            "explainers are set but no scorer uses them "
            "(add e.g. detection, fuzzing, embedding or treeprobe to scorers)",
            f"{path}: explainers",
        )
    try:
        RecordConfig(**m.interp)
    except ValidationError as exc:
        raise validation_error(exc, f"{path}: interp") from None
