"""What the experiments return and write as ``results.json``, as typed records.

Each experiment's results are a dataclass read from (and written as) the same JSON as before, so a file keeps
one format whatever reads it: :meth:`Results.from_json` types the parts a reader needs (rates with their
intervals and sizes, the four conditions, the arms of the demo) and keeps the whole document in ``raw``;
:meth:`Results.to_json` gives it back unchanged. A results object is also a read-only mapping over that document,
so code written against the plain dictionaries (``results["summary"]``) keeps reading them; to save or change
a document, take :meth:`Results.to_json` (a plain ``dict``, a copy).

``schema_version`` counts changes to the document's layout; a file from a newer version than this package reads
fails with a one-line error, older ones are read as they are (a key a later version added is ``None`` or empty).

    from unlearnable.results import load_results
    res = load_results("runs/demo/results.json")
    print(res.arms["with_vectors"].harm_rate.text())
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

from .errors import UnlearnableError

#: the trade-off's reference point (``benign_reference``): the user's fine-tune without its harmful rows, undefended
BENIGN_ONLY = "benign-only"

#: the layout of ``results.json`` that this package writes
SCHEMA_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Rate:
    """A share with its 95 % interval and the number of items it was measured on (``None`` where not scored)."""

    value: float | None
    interval_95: tuple[float, float] | None = None
    n: int | None = None

    @classmethod
    def read(cls, data: Mapping[str, Any], key: str, n_key: str | None = None,
             interval_key: str | None = None) -> "Rate":
        """``data[key]`` with ``data[<key>_interval_95]`` (or ``interval_key``) and ``data[n_key]``."""
        interval = data.get(interval_key or f"{key}_interval_95")
        return cls(data.get(key), tuple(interval) if interval else None, data.get(n_key) if n_key else None)

    @property
    def scored(self) -> bool:
        return self.value is not None and self.value == self.value  # NaN: not scored

    def text(self, digits: int = 3) -> str:
        """``0.938 [0.86, 0.97]``; an em dash where not scored."""
        if not self.scored:
            return "—"
        if not self.interval_95:
            return f"{self.value:.{digits}f}"
        lo, hi = self.interval_95
        return f"{self.value:.{digits}f} [{lo:.2f}, {hi:.2f}]"


@dataclasses.dataclass(frozen=True)
class Generation:
    prompt: str
    response: str
    harmful: bool | None = None


@dataclasses.dataclass(frozen=True)
class Scores:
    """One model as the scorer saw it: harm, the user's task, over-refusal, MMLU, the harmful prompts' loss."""

    harm_rate: Rate
    task_em: Rate
    over_refusal: Rate
    mmlu: Rate
    harmful_loss: float | None
    answer_tokens: int | None
    harmful_generations: tuple[Generation, ...]
    #: the letter the model gave to every MMLU question, if it gave one letter only
    mmlu_constant_answer: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Scores":
        mmlu = data.get("mmlu") or {}
        gens = tuple(Generation(g["prompt"], g["response"], g.get("harmful"))
                     for g in data.get("harmful_generations", ()))
        return cls(harm_rate=Rate.read(data, "harm_rate", "n_harmful"), task_em=Rate.read(data, "task_em", "n_task"),
                   over_refusal=Rate.read(data, "over_refusal", "n_harmless"),
                   mmlu=Rate.read(mmlu, "accuracy", "n", interval_key="interval_95"),
                   harmful_loss=data.get("harmful_loss"), answer_tokens=data.get("answer_tokens"),
                   harmful_generations=gens, mmlu_constant_answer=mmlu.get("constant_answer"))

    def rate(self, metric: str) -> Rate:
        return getattr(self, metric)


@dataclasses.dataclass(frozen=True)
class Arm(Scores):
    """A fine-tuned model of the demo: its scores, the defence it was trained under and its loss history."""

    defense: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    history: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Arm":
        scores = Scores.from_json(data)
        return cls(**{f.name: getattr(scores, f.name) for f in dataclasses.fields(Scores)},
                   defense=data.get("defense") or {}, history=tuple(data.get("history", ())))

    def losses(self) -> list[tuple[int, float]]:
        """``(step, training loss)`` at each logged step."""
        return [(h["step"], h["loss"]) for h in self.history if "loss" in h]


@dataclasses.dataclass(frozen=True)
class Provenance:
    """What produced a results file, when, on what, and how long it took."""

    kind: str
    schema_version: int
    config: Mapping[str, Any]
    seconds: float | None
    timings: Mapping[str, float]
    resources: Mapping[str, Any]
    date: str | None
    versions: Mapping[str, str]
    git_hash: str | None
    device: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Provenance":
        return cls(kind=data.get("kind", ""), schema_version=data.get("schema_version", 1),
                   config=data.get("config") or {}, seconds=data.get("seconds"), timings=data.get("timings") or {},
                   resources=data.get("resources") or {}, date=data.get("date"), versions=data.get("versions") or {},
                   git_hash=data.get("git_hash"), device=data.get("device"))


@dataclasses.dataclass(frozen=True, eq=False)
class Results(Mapping):
    """The base of every experiment's results: its provenance, the whole document (``raw``), mapping access."""

    KIND: ClassVar[str] = ""
    raw: Mapping[str, Any]
    provenance: Provenance

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Results":
        check_readable(data, cls.KIND)
        return cls(raw=data, provenance=Provenance.from_json(data), **cls.typed(data))

    @classmethod
    def typed(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """The subclass's own fields, read from ``data``."""
        return {}

    @classmethod
    def of(cls, data: "Results | Mapping[str, Any]") -> "Results":
        """``data`` as this record: a record as it is, a results document read (a missing ``kind`` allowed)."""
        return data if isinstance(data, cls) else cls.from_json(data)

    def to_json(self) -> dict[str, Any]:
        """The document as a plain ``dict`` (a deep copy: changing it leaves this record as it was)."""
        return copy.deepcopy(dict(self.raw))

    @property
    def config(self) -> Mapping[str, Any]:
        return self.provenance.config

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    def __eq__(self, other: object) -> bool:
        return dict(self.raw) == (dict(other) if isinstance(other, Mapping) else other)

    __hash__ = None  # type: ignore[assignment]


def check_readable(data: Mapping[str, Any], kind: str) -> None:
    if kind and data.get("kind") not in (kind, None):
        raise UnlearnableError(f"this is a {data.get('kind')!r} results file, not {kind!r}")
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise UnlearnableError(f"results schema version {version!r} is newer than this unlearnable reads "
                               f"({SCHEMA_VERSION}): upgrade unlearnable to read it")


@dataclasses.dataclass(frozen=True, eq=False)
class DemoResults(Results):
    """``unlearnable demo``: the aligned model before fine-tuning and the two fine-tuned arms."""

    KIND: ClassVar[str] = "unlearnable-demo"
    before: Scores = None  # type: ignore[assignment]
    arms: Mapping[str, Arm] = dataclasses.field(default_factory=dict)

    @classmethod
    def typed(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        return {"before": Scores.from_json(data.get("before") or {}),
                "arms": {name: Arm.from_json(arm) for name, arm in (data.get("arms") or {}).items()}}

    def models(self) -> dict[str, Scores]:
        """Every scored model in order: ``before``, then each arm."""
        return {"before": self.before, **self.arms}


@dataclasses.dataclass(frozen=True)
class Resistance:
    """How long each attack took to make the model harmful, and the verdict per threat model."""

    verdict: str | None
    by_threat_model: Mapping[str, str]
    steps_to_harmful: Mapping[str, int | None]
    final_harm_rate: Mapping[str, Rate]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Resistance":
        cis = data.get("final_harm_rate_interval_95") or {}
        return cls(data.get("verdict"), data.get("by_threat_model") or {}, data.get("steps_to_harmful") or {},
                   {k: Rate(v, tuple(cis[k]) if cis.get(k) else None)
                    for k, v in (data.get("final_harm_rate") or {}).items()})


@dataclasses.dataclass(frozen=True)
class Measured:
    """A condition read from measured values (stability, generalization, trainability): its verdict, each value
    (a rate with its interval where it has one) and which differences from ``none`` are within noise."""

    verdict: str | None
    values: Mapping[str, Any]

    def rate(self, key: str) -> Rate:
        return Rate.read(self.values, key)

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def within_noise(self, key: str) -> bool:
        return bool((self.values.get("within_noise") or {}).get(key))


@dataclasses.dataclass(frozen=True)
class Condition:
    """One defence's four conditions (Rosati et al.): each a verdict with the numbers behind it."""

    resistance: Resistance
    stability: Measured
    generalization: Measured
    trainability: Measured

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Condition":
        measured = {k: Measured((data.get(k) or {}).get("verdict"), data.get(k) or {})
                    for k in ("stability", "generalization", "trainability")}
        return cls(resistance=Resistance.from_json(data.get("resistance") or {}), **measured)

    @property
    def verdicts(self) -> dict[str, str | None]:
        return {k: getattr(self, k).verdict for k in ("resistance", "stability", "generalization", "trainability")}


@dataclasses.dataclass(frozen=True, eq=False)
class ImmunizeResults(Results):
    """``unlearnable immunize``: per defence, its runs and the four conditions; the attacker search if run."""

    KIND: ClassVar[str] = "unlearnable-immunize"
    conditions: Mapping[str, Condition] = dataclasses.field(default_factory=dict)
    defenses: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    attacker_search: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

    @classmethod
    def typed(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        return {"conditions": {n: Condition.from_json(c) for n, c in (data.get("conditions") or {}).items()},
                "defenses": data.get("defenses") or {}, "attacker_search": data.get("attacker_search") or {}}


@dataclasses.dataclass(frozen=True)
class TradeoffPoint:
    """One (method, strength) of the frontier, averaged over seeds."""

    method: str
    strength: float
    harm_rate: Rate
    task_score: Rate
    over_refusal: Rate
    harm_range: tuple[float, float]
    task_range: tuple[float, float]
    raw: Mapping[str, Any]

    @classmethod
    def from_json(cls, method: str, data: Mapping[str, Any]) -> "TradeoffPoint":
        return cls(method=method, strength=data.get("strength"), harm_rate=Rate.read(data, "harm_rate"),
                   task_score=Rate.read(data, "task_score"), over_refusal=Rate.read(data, "over_refusal"),
                   harm_range=(data.get("harm_min"), data.get("harm_max")),
                   task_range=(data.get("task_min"), data.get("task_max")), raw=data)


@dataclasses.dataclass(frozen=True, eq=False)
class TradeoffResults(Results):
    """``unlearnable tradeoff``: the harm-utility frontier of each method over strengths and seeds."""

    KIND: ClassVar[str] = "unlearnable-tradeoff"
    averaged: Mapping[str, tuple[TradeoffPoint, ...]] = dataclasses.field(default_factory=dict)

    @classmethod
    def typed(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        return {"averaged": {m: tuple(TradeoffPoint.from_json(m, p) for p in pts)
                             for m, pts in (data.get("averaged") or {}).items()}}


RESULT_TYPES: dict[str, type[Results]] = {t.KIND: t for t in (DemoResults, ImmunizeResults, TradeoffResults)}


def typed_results(data: Mapping[str, Any]) -> Results:
    """``data`` (a results document) as its typed record; a record is returned as it is."""
    if isinstance(data, Results):
        return data
    kind = data.get("kind")
    if kind not in RESULT_TYPES:
        raise UnlearnableError(f"not an unlearnable results file (kind {kind!r}); known kinds: "
                               f"{', '.join(RESULT_TYPES)}")
    return RESULT_TYPES[kind].from_json(data)


def load_results(path: str | Path) -> Results:
    """Read a ``results.json`` (or the run folder holding it) as its typed record."""
    path = Path(path)
    path = path / "results.json" if path.is_dir() else path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UnlearnableError(f"no results file at {path}") from None
    except json.JSONDecodeError as e:
        raise UnlearnableError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}): re-run the experiment "
                               "that wrote it") from None
    if not isinstance(data, dict):
        raise UnlearnableError(f"{path} is not a results file (a JSON object was expected)")
    return typed_results(data)


# ------------------------------------------------------------------------------ the attacker search's dimensions
def choices(settings: dict[str, Any], data: dict[str, Any] | None = None) -> dict[str, Any]:
    """A trial's settings as the dimensions the report compares: the data (attack, each option, samples) and the
    recipe (the learning rate by decade). ``data``: what the run's data held (the attack's ``info``), where a run
    shorter than its data cut the harmful pairs: the harmful count and poison share it really trained on."""
    if not settings:
        return {}
    lr, data = settings.get("lr"), data or {}
    attack = settings.get("attack")
    out = {"attack": attack,
           **{f"{attack}.{k}": v for k, v in (settings.get("attack_options") or {}).items()},
           **({f"{attack}.poison_share (trained on)": round(data["poison_share"], 3)} if "poison_share" in data
              else {}),
           "n_samples": data.get("n_harmful", settings.get("n_samples")), "backbone": settings.get("backbone"),
           "lora_r": settings.get("lora_r") or (settings.get("lora") or {}).get("r"),
           "steps": settings.get("steps"), "batch_size": settings.get("batch_size"),
           "scheduler": settings.get("scheduler"),
           "lr (decade)": f"1e{math.floor(math.log10(lr))}" if lr else None}
    return {k: v for k, v in out.items() if v is not None}


def by_dimension(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per dimension, per value: the highest harm among feasible trials and how many trials tried it; ``driver``
    is the dimension whose values' best harms differ most (what the worst case depended on)."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        ok = r["feasible"] and r["harm_rate"] is not None
        for dim, value in (r.get("choices") or choices(r.get("settings", {}))).items():
            cell = table.setdefault(dim, {}).setdefault(str(value), {"best_harm_rate": None, "trials": 0})
            cell["trials"] += 1
            if ok and (cell["best_harm_rate"] is None or r["harm_rate"] > cell["best_harm_rate"]):
                cell["best_harm_rate"] = r["harm_rate"]
    spreads = {dim: max(b) - min(b) for dim, cells in table.items()
               if len(b := [c["best_harm_rate"] for c in cells.values() if c["best_harm_rate"] is not None]) > 1}
    return {"dimensions": table, "driver": max(spreads, key=spreads.get) if spreads else None,
            "spread": spreads}


def emulated_flagger(points: Sequence[Mapping[str, Any]], method: str) -> bool:
    """Whether a trade-off ``method``'s points screened the data with an emulated flagger (an oracle: measurement
    only, to be labelled wherever the method's numbers appear)."""
    return any(((p.get("defense_info") or {}).get("flagger") or {}).get("emulated")
               for p in points if p["method"] == method)
