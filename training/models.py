"""Teacher and student by name: any timm classifier, or a torchvision one with a `tv/` prefix.

The CIFAR backbones of both papers (`cifar_resnet8x4`, `cifar_wrn_40_2`, ...) are registered with timm by
importing `training.backbones` here, so they take the same `timm.create_model` path.

Weights never come from the network unless asked (`pretrained=True`, timm's own mechanism). A teacher's
weights usually come from the files users have, read without running code from them:

- a file: a plain state dict (`torch.save(model.state_dict())`, torchvision's `.pth`), a training checkpoint
  (timm's `train.py` `.pth.tar`: `state_dict` + optional `state_dict_ema` + `args`; torchvision's reference
  `model` + `model_ema`; `{"model": ...}`), or safetensors. The format is read from the bytes, not the suffix.
- a folder: Accelerate's `save_model` / `save_state` (`model.safetensors`, sharded
  `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`, `pytorch_model.bin[.index.json]`), timm's
  `save_for_hf` layout (the same names + `config.json`), or a folder holding exactly one weights file.

EMA weights win when the file has them, as in timm's `load_checkpoint` (`weights="ema"|"plain"` to choose).
`module.` (DDP) and `_orig_mod.` (torch.compile) prefixes are removed. Pickled files are read with
`torch.load(weights_only=True)` and a short allowlist of harmless globals (`SAFE_GLOBALS`); anything else is
refused unless `trust=True` (config `model.trust_checkpoint`). Every failure is one `ModelError` line.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import timm
import torch
import torchvision
from torch import nn

from . import backbones  # noqa: F401  (registers the cifar_* models in timm's registry)
from .errors import UserError


class ModelError(UserError):
    """A model name or checkpoint problem, worded as one line."""


TV_PREFIX = "tv/"
WEIGHTS = ("auto", "ema", "plain")  # which weights of a checkpoint that has both (config: model.teacher_weights)
EMA_KEYS = ("state_dict_ema", "model_ema")  # timm's order; model_ema: DeiT, torchvision's references
PLAIN_KEYS = ("state_dict", "model")
# a folder: these names in this order (timm's load_state_dict_from_path, Accelerate's save_model), else the one
# file with a weights suffix
FOLDER_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "pytorch_model.pth",
    "model.pth",
)
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pth.tar", ".pt", ".bin", ".ckpt")
TRUST_KEY = "model.trust_checkpoint"


def _numpy_globals() -> list:
    """numpy scalars and arrays (a metric saved as np.float64): they rebuild numbers, nothing else. Files written
    with numpy 1.x name `numpy.core`, with 2.x `numpy._core`; both resolve to the same functions."""
    core = getattr(np, "_core", None) or np.core
    out: list = [np.dtype, np.ndarray]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out += [(core.multiarray.scalar, f"{mod}.scalar"), (core.multiarray._reconstruct, f"{mod}._reconstruct")]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 may pickle a dtype by its class
    if dtypes is not None:
        out += [
            getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType") and n not in ("ObjectDType", "VoidDType")
        ]
    return out


# What training checkpoints carry besides tensors: timm's train.py and torchvision's references save the
# command line as an argparse.Namespace (`args`); some trainers save paths and numpy numbers. None of them can
# run code when rebuilt. torch's own allowlist covers tensors, dicts, lists, tuples, torch.device/dtype.
SAFE_GLOBALS = [argparse.Namespace, pathlib.PosixPath, pathlib.PurePosixPath, *_numpy_globals()]


def create_model(
    name: str,
    num_classes: int,
    *,
    pretrained: bool = False,
    checkpoint: str = "",
    weights: str = "auto",
    trust: bool = False,
    log: Callable[[str], None] | None = print,
) -> nn.Module:
    """Build `name` with a `num_classes` head; load `checkpoint` (a file or a folder) if given, saying which
    weights were loaded through `log` (one line)."""
    if name.startswith(TV_PREFIX):
        tv_name = name[len(TV_PREFIX) :]
        if tv_name not in torchvision.models.list_models(module=torchvision.models):
            raise ModelError(f"unknown torchvision classifier '{tv_name}' (model name '{name}')")
        if pretrained:
            raise ModelError(
                f"model '{name}': pretrained=true is supported for timm names only; pass a local checkpoint instead"
            )
        model = torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes)
    else:
        if not timm.is_model(name):
            raise ModelError(f"unknown model '{name}': not a timm model (torchvision models take a 'tv/' prefix)")
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes)
    if checkpoint:
        line = load_checkpoint(model, checkpoint, name=name, weights=weights, trust=trust)
        if log is not None:
            log(line)
    return model


def load_checkpoint(
    model: nn.Module, path: str, *, name: str = "model", weights: str = "auto", trust: bool = False
) -> str:
    """Load weights strictly from a file or folder; returns one line saying which weights came from where.

    Every failure is a one-line ModelError that names the file, and the model keeps its weights."""
    if weights not in WEIGHTS:
        raise ModelError(f"weights={weights!r}: must be one of {', '.join(WEIGHTS)}")
    p = Path(path).expanduser()
    if p.is_dir():
        source, state, what, arch = _read_folder(p, weights, trust)
    elif p.is_file():
        if p.name.endswith(".index.json"):
            (state, what), arch = _read_shards(p, weights, trust), _hf_architecture(p.parent)
        else:
            state, what, arch = _pick(_read_file(p, trust), p, weights)
        source = p
    else:
        raise ModelError(f"checkpoint for {name} not found: {path}")

    own = model.state_dict()
    state, note = _clean_keys(state, own)
    expected = {k: tuple(v.shape) for k, v in own.items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    problem = state_mismatch(expected, found)
    if problem:
        hint = _head_hint(expected, found)
        if not hint and arch and arch not in (name, name.removeprefix(TV_PREFIX)):
            hint = f"; the file says it holds '{arch}'"
        raise ModelError(f"checkpoint {source} does not match {name}: {problem}{hint}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # names and shapes matched; e.g. a dtype that cannot be copied
        raise ModelError(f"checkpoint {source} could not be loaded into {name}: {_first_line(e)}") from None
    return f"{name}: loaded {what} from {source}{note}"


def state_mismatch(expected: dict[str, tuple], found: dict[str, tuple]) -> str | None:
    """How the tensors `found` in a file (name -> shape) differ from what a model `expected`, in one line
    naming the first mismatching keys and shapes; None if they match exactly."""
    wrong = [k for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    parts = []
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} shape mismatches (e.g. {k}: file {tuple(found[k])} vs model {tuple(expected[k])})")
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    return "; ".join(parts) or None


# ---------------------------------------------------------------------------------------------------------
# reading files


def shapes_mismatch(expected: dict[str, tuple], found: dict[str, tuple]) -> str | None:
    """`state_mismatch` of a file's tensors (name -> shape) against a model's, after the wrappers' prefixes are
    dropped from the file's names as a load would, with the classifier hint; None if they match."""
    found, _ = _clean_keys(found, expected)
    problem = state_mismatch(expected, found)
    return problem and problem + _head_hint(expected, found)


def _read_file(p: Path, trust: bool):
    """The object a weights file holds: safetensors (by its header, whatever the suffix) or torch.save."""
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise ModelError(f"checkpoint {p} could not be read: {type(e).__name__}: {e.strerror or e}") from None
    if size == 0:
        raise ModelError(f"checkpoint {p} could not be read: the file is empty (0 bytes; an unfinished copy?)")
    if p.suffix.lower() in (".npz", ".npy"):
        raise ModelError(
            f"checkpoint {p} is a NumPy archive (JAX/Flax weights): not supported here; "
            "convert it to a PyTorch state dict or safetensors first"
        )
    torch_magic = head.startswith((b"PK\x03\x04", b"\x80"))  # zip (torch>=1.6) or legacy pickle
    sniffed_safetensors = len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8
    try:
        if sniffed_safetensors or (p.suffix == ".safetensors" and not torch_magic):
            from safetensors.torch import load_file

            return load_file(str(p), device="cpu")
        return _torch_load(p, trust)
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise ModelError(f"checkpoint {p} could not be read: {type(e).__name__}: {_first_line(e)}") from None


def _torch_load(p: Path, trust: bool):
    if _is_torchscript(p):
        if trust:
            return torch.jit.load(str(p), map_location="cpu")
        raise ModelError(
            f"checkpoint {p} is a TorchScript archive: if you trust the file, set {TRUST_KEY}=true "
            "(read with torch.jit.load), or re-save its state_dict()"
        )
    # an open file, not the path: torch.load sends any path ending in .safetensors to safetensors
    if trust:  # the user vouched for the file: full unpickling, which can run any code it holds
        with open(p, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS), open(p, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        names = _unsafe_globals(p, e)
        if not names:
            raise
        shown = ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")
        module = any(n.startswith(("torch.nn.modules.", "torchvision.models.", "timm.models.")) for n in names)
        raise ModelError(
            f"checkpoint {p} needs {shown} to load, which safe loading (torch.load weights_only=True) "
            "refuses"
            + (" (it is a whole pickled model)" if module else "")
            + f": if you trust the file, set {TRUST_KEY}=true (full unpickling runs any code the file "
            "holds), or re-save its weights with torch.save(model.state_dict()) or safetensors"
        ) from None


def _unsafe_globals(p: Path, e: Exception) -> list[str]:
    """The globals weights_only refused: all of them for a zip file, the first one for the legacy format."""
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS if not isinstance(g, tuple)}
    allowed |= {g[1] for g in SAFE_GLOBALS if isinstance(g, tuple)}
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(p))
    except Exception:  # noqa: BLE001 - legacy (non-zip) files: only the message names the global
        names = re.findall(r"GLOBAL ([\w.]+)", str(e))[:1]
    return sorted((n for n in names if n not in allowed), key=lambda n: (n.startswith("torch."), n))


def _is_torchscript(p: Path) -> bool:
    """torch.jit.save's zip holds constants.pkl (torch.load's own test); torch.save's does not."""
    import zipfile

    try:
        with zipfile.ZipFile(p) as z:
            return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _pick(obj, p: Path, weights: str) -> tuple[dict, str, str]:
    """The state dict to load from what a file holds, a line saying which one, and the file's own model name."""
    if isinstance(obj, nn.Module):  # a whole pickled model or a TorchScript module (trust=True only)
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        raise ModelError(f"checkpoint {p} holds no state dict (a {type(obj).__name__})")
    arch = obj.get("arch") if isinstance(obj.get("arch"), str) else ""

    def entry(keys):  # the first of `keys` that holds tensors (timm: `state_dict_ema` may be None)
        for key in keys:
            value = obj.get(key)
            if isinstance(value, nn.Module):
                value = value.state_dict()
            if isinstance(value, dict):
                value = {k: v for k, v in value.items() if isinstance(v, torch.Tensor)}
                if value:
                    return key, value
        return None, None

    ema_key, ema = entry(EMA_KEYS)
    plain_key, plain = entry(PLAIN_KEYS)
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if ema is None and plain is None:
        if not tensors:
            keys = ", ".join(map(str, list(obj)[:6])) or "nothing"
            raise ModelError(
                f"checkpoint {p} holds no state dict: its keys are {keys} "
                f"(looked for tensors or {', '.join(PLAIN_KEYS + EMA_KEYS)})"
            )
        if weights == "ema":
            raise ModelError(
                f"checkpoint {p} is a plain state dict without EMA weights "
                "(model.teacher_weights=ema asks for them; auto or plain loads it)"
            )
        return tensors, "weights (a plain state dict)", arch
    if weights == "ema" or (weights == "auto" and ema is not None):
        if ema is None:
            raise ModelError(
                f"checkpoint {p} has no EMA weights (looked for {', '.join(EMA_KEYS)}; it has "
                f"'{plain_key}'): use model.teacher_weights=auto or plain"
            )
        return ema, f"EMA weights ['{ema_key}']", arch
    if plain is None:
        raise ModelError(
            f"checkpoint {p} has only EMA weights ['{ema_key}'] (looked for "
            f"{', '.join(PLAIN_KEYS)}): use model.teacher_weights=auto or ema"
        )
    also = f" (not its EMA weights ['{ema_key}'])" if ema is not None else ""
    return plain, f"weights ['{plain_key}']{also}", arch


def _read_folder(folder: Path, weights: str, trust: bool) -> tuple[Path, dict, str, str]:
    try:
        names = sorted(c.name for c in folder.iterdir() if c.is_file())
    except OSError as e:
        raise ModelError(
            f"checkpoint folder {folder} could not be read: {type(e).__name__}: {e.strerror or e}"
        ) from None
    chosen = next((n for n in FOLDER_FILES if n in names), None)
    if chosen is None:
        candidates = [n for n in names if n.lower().endswith(WEIGHT_SUFFIXES)]
        if len(candidates) > 1:
            raise ModelError(
                f"checkpoint folder {folder} holds several weights files ({', '.join(candidates[:6])}"
                f"{', ...' if len(candidates) > 6 else ''}): name one of them"
            )
        if not candidates:
            has = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "") if names else "no files"
            inner = sorted(
                c.name for c in folder.iterdir() if c.is_dir() and any((c / n).is_file() for n in FOLDER_FILES)
            )
            hint = f"; its subfolder {inner[0]}/ has weights" if inner else ""  # a run folder: final/
            raise ModelError(
                f"checkpoint folder {folder} holds no weights: looked for {', '.join(FOLDER_FILES)} "
                f"or one *{', *'.join(WEIGHT_SUFFIXES)} file; it has {has}{hint}"
            )
        chosen = candidates[0]
    p = folder / chosen
    arch = _hf_architecture(folder)
    if chosen.endswith(".index.json"):
        return (p, *_read_shards(p, weights, trust), arch)
    state, what, file_arch = _pick(_read_file(p, trust), p, weights)
    return p, state, what, file_arch or arch


def _read_shards(index: Path, weights: str, trust: bool) -> tuple[dict, str]:
    """A sharded checkpoint: `*.index.json` maps each tensor to its shard file in the same folder."""
    if weights == "ema":
        raise ModelError(
            f"checkpoint {index} is a sharded plain state dict without EMA weights "
            "(model.teacher_weights=ema asks for them; auto or plain loads it)"
        )
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelError(f"checkpoint index {index} could not be read: {type(e).__name__}: {_first_line(e)}") from None
    missing = [s for s in shards if not (index.parent / s).is_file()]
    if missing:
        raise ModelError(
            f"checkpoint index {index} lists {len(missing)} shard(s) that are not there (e.g. {missing[0]})"
        )
    state: dict = {}
    for shard in shards:
        part, _, _ = _pick(_read_file(index.parent / shard, trust), index.parent / shard, "plain")
        state.update(part)
    return state, f"weights (sharded, {len(shards)} files)"


def _hf_architecture(folder: Path) -> str:
    """The model a folder's config.json names (timm's save_for_hf: `architecture`; a transformers folder:
    `architectures`); used only to word a mismatch."""
    try:
        cfg = json.loads((folder / "config.json").read_text())
        arch = cfg.get("architecture") or (cfg.get("architectures") or [""])[0]
    except (OSError, ValueError, AttributeError, TypeError, IndexError, KeyError):
        return ""
    return arch if isinstance(arch, str) else ""


# ---------------------------------------------------------------------------------------------------------
# keys and shapes


def _clean_keys(state: dict, own: dict) -> tuple[dict, str]:
    """Drop DDP's `module.` and torch.compile's `_orig_mod.` (either order), unless the model's own keys use
    them; drop AveragedModel's `n_averaged` counter (torchvision's EMA) unless the model has one. A prefix every
    key shares (a wrapper's attribute: Lightning's `model.`) goes too, but only when the rest are exactly the
    model's keys; the note says so."""
    prefixes = tuple(q for q in ("module.", "_orig_mod.") if not any(k.startswith(q) for k in own))
    out = {}
    for key, value in state.items():
        if key == "n_averaged" and key not in own:
            continue
        while prefixes and key.startswith(prefixes):
            key = key[len(next(q for q in prefixes if key.startswith(q))) :]
        out[key] = value
    first = {k.split(".", 1)[0] for k in out}
    if out.keys() != own.keys() and len(first) == 1 and all("." in k for k in out):
        prefix = first.pop() + "."
        inner = {k[len(prefix) :]: v for k, v in out.items()}
        if inner.keys() == own.keys():
            return inner, f" (keys without their '{prefix}' prefix)"
    return out, ""


def _head_hint(expected: dict, found: dict) -> str:
    """When only the classifier differs (same keys, one module's tensors differ in their first dim only)."""
    if expected.keys() != found.keys():
        return ""
    wrong = [k for k in expected if found[k] != expected[k]]
    modules = {k.rsplit(".", 1)[0] for k in wrong}
    pairs = {(found[k][0], expected[k][0]) for k in wrong if found[k] and expected[k]}
    if (
        len(modules) != 1
        or len(pairs) != 1
        or any(len(found[k]) != len(expected[k]) or found[k][1:] != expected[k][1:] for k in wrong)
    ):
        return ""
    ((n_file, n_model),) = pairs
    return (
        f"; only the classifier ({modules.pop()}) differs: the file has {n_file} classes, the model "
        f"{n_model} (model.num_classes; 0 = one per class folder of the training set)"
    )


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or ["(no message)"])[0]
