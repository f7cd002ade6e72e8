"""Fuzzing the loaders users feed files to: random bytes and random JSON give pairs/configs or an
``UnlearnableError`` (never another exception), quickly (a deadline per example catches hangs)."""

import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unlearnable.config import from_dict, load_config_file
from unlearnable.data import Pair, load_pairs
from unlearnable.errors import UnlearnableError

# derandomized: the same examples every run, so a failure reproduces (and no example database is written)
FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture],
                derandomize=True, database=None)

# JSON values, including the shapes the loaders look for
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "x"]),
                                           "content": st.text(max_size=10) | json_values}), max_size=3)
records = (json_values
           | st.fixed_dictionaries({"prompt": st.text(max_size=10) | json_values},
                                   optional={"response": st.text(max_size=10) | json_values,
                                             "source": json_values, "category": json_values})
           | st.fixed_dictionaries({"messages": messages | json_values}))


def _load(path):
    try:
        pairs = load_pairs(path)
    except UnlearnableError as exc:
        assert str(exc) and "\n" not in str(exc)  # one line
        return None
    assert pairs and all(isinstance(p, Pair) and p.prompt.strip() and p.response.strip() for p in pairs)
    return pairs


@FUZZ
@given(data=st.binary(max_size=2000))
def test_load_pairs_random_bytes(tmp_path, data):
    path = tmp_path / "data.jsonl"
    path.write_bytes(data)
    _load(path)


@FUZZ
@given(lines=st.lists(records, min_size=0, max_size=6))
def test_load_pairs_random_json_lines(tmp_path, lines):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines), encoding="utf-8")
    pairs = _load(path)
    if pairs is not None:  # loaded only when every line is a usable example
        assert len(pairs) == len(lines)


@FUZZ
@given(text=st.text(alphabet=string.printable + "{}[]\":,\u00e9\u2019", max_size=300))
def test_load_pairs_random_text(tmp_path, text):
    path = tmp_path / "data.jsonl"
    path.write_text(text, encoding="utf-8")
    _load(path)


def test_load_pairs_pathological_lines(tmp_path):
    for text in ("[" * 100000, "1" * 5000, '{"prompt": "a", "response": ' + "9" * 5000 + "}", "NaN", "\x00" * 10):
        path = tmp_path / "data.jsonl"
        path.write_text(text + "\n", encoding="utf-8")
        with pytest.raises(UnlearnableError):
            load_pairs(path)


# ---------------------------------------------------------------------------------------------- configs


def _config_classes():
    from unlearnable.experiments.demo import DemoConfig
    from unlearnable.experiments.immunize import ImmunizeConfig
    from unlearnable.training import TrainConfig
    from unlearnable.vectors import VectorConfig

    return [DemoConfig, ImmunizeConfig, TrainConfig, VectorConfig]


def _config_dicts(cls, depth=0):
    """Dicts whose keys are mostly the class's real fields (to reach deep), some random; values random."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(cls)}
    value_for = {}
    for name, f in fields.items():
        nested = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(nested) and depth < 1:
            value_for[name] = _config_dicts(type(nested), depth + 1) | json_values
        else:
            value_for[name] = json_values
    keys = st.sampled_from(sorted(fields)) | st.text(max_size=6)
    return keys.flatmap(lambda k: st.tuples(st.just(k), value_for.get(k, json_values))).map(lambda kv: [kv]) \
        .flatmap(lambda first: st.lists(st.sampled_from(sorted(fields)).flatmap(
            lambda k: st.tuples(st.just(k), value_for[k])), max_size=3).map(lambda rest: dict(first + rest)))


@pytest.mark.parametrize("cls", _config_classes(), ids=lambda c: c.__name__)
def test_from_dict_random_values(cls):
    @FUZZ
    @given(data=_config_dicts(cls) | json_values)
    def check(data):
        try:
            cfg = from_dict(cls, data)
        except UnlearnableError as exc:
            assert str(exc) and "\n" not in str(exc)
            return
        assert isinstance(cfg, cls)

    check()


@pytest.mark.parametrize("suffix", [".yaml", ".toml", ".json"])
def test_load_config_file_random_bytes_and_text(tmp_path, suffix):
    from unlearnable.experiments.demo import DemoConfig

    @FUZZ
    @given(data=st.binary(max_size=500) | st.text(max_size=300).map(lambda t: t.encode("utf-8"))
           | json_values.map(lambda v: json.dumps(v).encode()))
    def check(data):
        path = tmp_path / f"cfg{suffix}"
        path.write_bytes(data)
        try:
            loaded = load_config_file(path)
            assert isinstance(loaded, dict)
            from_dict(DemoConfig, loaded)
        except UnlearnableError as exc:
            assert str(exc) and "\n" not in str(exc)

    check()
