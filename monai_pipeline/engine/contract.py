"""A model's contract: what defines its input and output, written as JSON beside its weights.

Beside each ``<stem>.pt`` that :class:`~monai_pipeline.engine.checkpoints.CheckpointSaver` writes with a
``contract`` (the bundles' best model ``model.pt``), ``<stem>.contract.json`` records, right after the weights
are written: the settings that bind the model (spacing, orientation, intensity window or normalisation,
channels, network definition with plain values, classes and labels), the settings it only suggests (the
training patch size as the default sliding window), the bundle's name and version, software versions, the
sha256 of the weights, the creation time and the git revision. ``model.pt`` itself is unchanged, so MONAI's
and MONAI Label's strict ``CheckpointLoader`` load it as before.

A bundle config reads it back (``configs/inference.json``; ``train.json`` reads it only to resume)::

    "contract": "$monai_pipeline.engine.read_contract(@ckpt_dir)",
    "contract_override": false,
    "pixdim": "$monai_pipeline.engine.contract_value(@contract, 'pixdim', [1.5, 1.5, 2.0])",
    "network_def": {"_target_": "monai_pipeline.engine.contract_network", "contract": "@contract",
                    "default": {"_target_": "UNet", "_mode_": "callable", ...}},
    "contract_settings": {"binding": {"pixdim": "@pixdim", ...}, "defaults": {"patch_size": "@patch_size"}},
    "contract_check": "$monai_pipeline.engine.check_contract(@contract, @contract_settings, @bundle_root, @contract_override)"

so a setting nobody overrides takes the model's value, and one given on the command line or in an overlay that
contradicts a binding entry is refused (:class:`~monai_pipeline.errors.DataError`), unless ``contract_override``
is true (then a warning names each difference). Weights without a contract (older runs) load with one warning
and the bundle's own settings.
"""

from __future__ import annotations

import copy
import datetime
import functools
import hashlib
import json
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from monai_pipeline.data.validate import check_contract_conflicts, check_contract_weights, read_model_contract
from monai_pipeline.engine.runtime import bundle_metadata, git_revision
from monai_pipeline.io.atomic import atomic_write_text

__all__ = ["ModelContract", "SCHEMA_VERSION", "contract_path", "read_contract", "contract_value", "contract_network",
           "network_definition", "new_contract", "write_contract", "contract_conflicts", "check_contract",
           "file_sha256"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CONTRACT_SUFFIX = ".contract.json"
WEIGHTS_NAME = "model.pt"
REQUIRED_FIELDS = ("schema", "weights", "created", "bundle", "binding", "defaults", "settings", "software")
NETWORK_DEF_ATTR = "network_definition"  # a network built by contract_network carries its plain definition here
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off", ""}


@dataclass(frozen=True)
class ModelContract:
    """A contract read from disk (:func:`read_contract`): its file and its JSON object."""

    path: Path
    data: Mapping[str, Any]

    @property
    def settings(self) -> Mapping[str, Any]:
        """Every recorded setting (binding ones and defaults), by config id."""
        return self.data["settings"]

    @property
    def binding(self) -> list[str]:
        """The config ids whose recorded value a run must use."""
        return list(self.data["binding"])


# ------------------------------------------------------------------------------------------------- helpers
def contract_path(weights: str | os.PathLike) -> Path:
    """``<stem>.contract.json`` beside the weights file ``<stem>.pt``."""
    weights = Path(weights)
    return weights.with_name(weights.stem + CONTRACT_SUFFIX)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(functools.partial(fh.read, 1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _plain(value: Any, what: str) -> Any:
    """``value`` as JSON gives it back (tuples become lists); TypeError naming ``what`` when it is not JSON."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} cannot be recorded in a model contract: {err}") from None


def _text(value: Any) -> str:
    return json.dumps(value)


def _as_bool(value: bool | str | int | None) -> bool:
    """``contract_override`` as given: a bool, or true/false text (``--contract_override true``)."""
    if isinstance(value, str):
        if value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"contract_override must be true or false, got {value!r}")
    return bool(value)


def _labels(metadata: Mapping[str, Any]) -> list[dict] | None:
    """Label values and names from the metadata's output channels (``channel_def`` of ``pred``), or None."""
    channels = metadata.get("network_data_format", {}).get("outputs", {}).get("pred", {}).get("channel_def")
    if not channels:
        return None
    return [{"value": int(k), "name": str(v)} for k, v in sorted(channels.items(), key=lambda kv: int(kv[0]))]


def _software() -> dict[str, str]:
    import monai
    import numpy

    import monai_pipeline

    return {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
            "numpy": numpy.__version__, "monai_pipeline": monai_pipeline.__version__}


# ------------------------------------------------------------------------------------------------- network
def network_definition(factory: Callable[..., torch.nn.Module]) -> dict:
    """The plain definition ``{"_target_": "<module>.<Class>", <argument>: <value>, ...}`` of a network factory:
    a MONAI config component written with ``"_mode_": "callable"`` (a ``functools.partial`` of resolved values)."""
    if not isinstance(factory, functools.partial) or factory.args:
        raise TypeError(f"network_def#default must be a network class with keyword arguments and \"_mode_\": "
                        f"\"callable\", got {factory!r}")
    target = f"{factory.func.__module__}.{factory.func.__qualname__}"
    return {"_target_": target, **_plain(dict(factory.keywords), "network_def")}


def _build_network(definition: Mapping[str, Any]) -> torch.nn.Module:
    from monai.bundle import ConfigComponent

    return ConfigComponent(copy.deepcopy(dict(definition))).instantiate()


def _unwrapped(net: torch.nn.Module) -> torch.nn.Module:
    return net.module if isinstance(net, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)) else net


def _definition_of(net: Any) -> dict | None:
    """The plain definition a network carries (built by :func:`contract_network`), or None."""
    return getattr(_unwrapped(net), NETWORK_DEF_ATTR, None) if isinstance(net, torch.nn.Module) else None


def _summary(definition: Mapping[str, Any]) -> str:
    args = ", ".join(f"{k}={_text(v)}" for k, v in definition.items() if k != "_target_")
    return f"{str(definition.get('_target_')).rsplit('.', 1)[-1]}({args})"


def contract_network(contract: ModelContract | None, default: Callable[..., torch.nn.Module]) -> torch.nn.Module:
    """The network of the model in ``ckpt_dir``: its contract's ``network_def``, else ``default()`` (the bundle's
    network, a ``"_mode_": "callable"`` component). The network carries its plain definition, which
    :func:`new_contract` records."""
    own = network_definition(default)
    recorded = contract.settings.get("network_def") if contract is not None else None
    if recorded is None:
        net = default()
    else:
        if recorded != own:
            logger.info("%s: the network is the model's own %s (the config's network_def#default, %s, is for "
                        "models without a contract)", contract.path, _summary(recorded), _summary(own))
        net = _build_network(recorded)
    setattr(net, NETWORK_DEF_ATTR, copy.deepcopy(recorded if recorded is not None else own))
    return net


# ------------------------------------------------------------------------------------------------- writing
def new_contract(settings: Mapping[str, Mapping[str, Any]], bundle_root: str | os.PathLike | None = None) -> dict:
    """The contract of a model trained with ``settings`` (``{"binding": {id: value}, "defaults": {id: value}}``,
    the config's effective values; ``network_def`` the network itself), less its weights' checksum and time.

    Labels, bundle name and version and what the inputs hold come from ``<bundle_root>/configs/metadata.json``.
    """
    meta = bundle_metadata(bundle_root)
    binding, defaults = dict(settings.get("binding", {})), dict(settings.get("defaults", {}))
    if "network_def" in binding:
        definition = _definition_of(binding["network_def"])
        if definition is None:
            logger.warning("network_def is written as a plain component, so the model's contract leaves it out: "
                           "inference builds the network its config gives; write it as the bundle does "
                           "(monai_pipeline.engine.contract_network with a \"_mode_\": \"callable\" default) to record it")
            del binding["network_def"]
        else:
            binding["network_def"] = definition
    labels = _labels(meta)
    if labels is not None:
        binding["labels"] = labels
    return {
        "schema": SCHEMA_VERSION,
        "bundle": {"name": meta.get("name"), "version": meta.get("version")},
        "binding": list(binding),
        "defaults": list(defaults),
        "settings": _plain({**binding, **defaults}, "a setting"),
        "inputs": _plain(_inputs(meta, binding), "the metadata's inputs"),
        "software": _software(),
        "git_revision": git_revision(),
    }


def _inputs(metadata: Mapping[str, Any], binding: Mapping[str, Any]) -> Any:
    """What the model's input holds: the metadata's ``network_data_format`` inputs, made the model's own where its
    bound settings say more. ``num_channels`` is the network's ``in_channels``; with bound ``channels`` (which
    channels of the source, in order) each input channel is described by the source channel it holds and, with
    ``context_slices`` k (channel blocks of slices n - k .. n + k, as ``SliceContextd`` stacks them), its slice
    offset. The metadata describes the bundle's default model only: a model trained with other channels must not
    carry its description."""
    inputs = copy.deepcopy(metadata.get("network_data_format", {}).get("inputs"))
    image = inputs.get("image") if isinstance(inputs, dict) else None
    network = binding.get("network_def")
    in_channels = network.get("in_channels") if isinstance(network, Mapping) else None
    if not isinstance(image, dict) or in_channels is None:
        return inputs
    image["num_channels"] = in_channels
    channels = binding.get("channels")
    if channels is not None:
        k = int(binding.get("context_slices") or 0)
        roles = [f"channel {c} of the source" + (f", slice offset {b - k:+d}" if k else "")
                 for b in range(2 * k + 1) for c in channels]
        if len(roles) == in_channels:
            image["channel_def"] = {str(i): role for i, role in enumerate(roles)}
        else:
            logger.warning("the network's in_channels (%s) is not len(channels) x (2 x context_slices + 1) (%s): "
                           "the model's contract describes its input channels by number only", in_channels, len(roles))
            image["channel_def"] = {str(i): f"input channel {i}" for i in range(in_channels)}
    return inputs


def write_contract(weights: str | os.PathLike, contract: Mapping[str, Any],
                   content: str | os.PathLike | None = None) -> Path:
    """Write ``contract`` (:func:`new_contract`) atomically beside ``weights``, with the sha256 and size of the
    weights file as it is now and the time; returns the contract's path.

    ``content``: the file whose bytes the weights will be (a staged copy not yet renamed to ``weights``), so the
    contract can be in place before the weights it describes are; None: ``weights`` itself.
    """
    weights = Path(weights)
    content = Path(content) if content is not None else weights
    body = dict(contract)
    data = {"schema": body.pop("schema", SCHEMA_VERSION),
            "weights": {"file": weights.name, "sha256": file_sha256(content), "bytes": content.stat().st_size},
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **body}
    path = atomic_write_text(contract_path(weights), json.dumps(data, indent=2) + "\n")
    logger.debug("model contract written: %s", path)
    return path


# ------------------------------------------------------------------------------------------------- reading
def read_contract(ckpt_dir: str | os.PathLike | None, weights_name: str = WEIGHTS_NAME,
                  check_weights: bool = True) -> ModelContract | None:
    """The contract of ``<ckpt_dir>/<weights_name>``, checked against the weights' sha256; None when there are no
    weights yet, or (with one warning) when the weights have no contract.

    ``check_weights`` False (a resumed training, which takes only the settings and loads its checkpoint, not these
    weights): a contract whose sha256 is not that of the weights gives a warning instead of an error. A run killed
    between writing a new contract and renaming the weights it describes over the old ones leaves that pair.
    """
    if ckpt_dir is None:
        return None
    weights = Path(ckpt_dir).resolve() / weights_name
    path = contract_path(weights)
    if not weights.is_file():
        return None
    if not path.is_file():
        logger.warning("%s has no contract (%s): saved before models carried one, it runs with the bundle's own "
                       "settings (spacing, window, patch size...); give the overrides it was trained with, or retrain",
                       weights, path.name)
        return None
    data = read_model_contract(path, SCHEMA_VERSION, REQUIRED_FIELDS)
    recorded, actual = str(data["weights"].get("sha256")), file_sha256(weights)
    if recorded != actual and not check_weights:
        logger.warning("%s describes other weights than %s (a run killed while saving them): its settings resume "
                       "the training; until the next best model rewrites both, inference refuses %s",
                       path, weights.name, weights.name)
    else:
        check_contract_weights(path, weights, recorded, actual)
    shown = {k: v for k, v in data["settings"].items() if k not in ("network_def", "labels")}
    logger.info("%s: the model's settings are used unless overridden: %s", path,
                ", ".join(f"{k}={_text(v)}" for k, v in shown.items()))
    return ModelContract(path, data)


def contract_value(contract: ModelContract | None, key: str, default: Any) -> Any:
    """The contract's value of config id ``key``, else ``default`` (the bundle's own)."""
    if contract is None or key not in contract.settings:
        return default
    return copy.deepcopy(contract.settings[key])


def _network_conflict(recorded: Mapping[str, Any], net: Any) -> list[str]:
    definition = _definition_of(net)
    if definition is None:  # network_def replaced by a plain component: compare the networks themselves
        if repr(_build_network(recorded)) == repr(_unwrapped(net)):
            return []
        return [f"network_def {type(_unwrapped(net)).__name__} (a component of its own) given, the model's contract "
                f"has {_summary(recorded)}"]
    if definition.get("_target_") != recorded.get("_target_"):
        return [f"network_def {_summary(definition)} given, the model's contract has {_summary(recorded)}"]
    keys = [k for k in {**recorded, **definition} if definition.get(k) != recorded.get(k)]
    return [f"network_def#{k} {_text(definition.get(k))} given, the model's contract has {_text(recorded.get(k))}"
            for k in keys]


def contract_conflicts(contract: ModelContract, settings: Mapping[str, Mapping[str, Any]],
                       bundle_root: str | os.PathLike | None = None) -> list[str]:
    """The binding entries of ``contract`` that this run's ``settings`` contradict, one line each."""
    meta = bundle_metadata(bundle_root)
    current = dict(settings.get("binding", {}))
    labels = _labels(meta)
    if labels is not None:
        current["labels"] = labels
    conflicts = []
    theirs, ours = (contract.data.get("bundle") or {}).get("name"), meta.get("name")
    if theirs and ours and theirs != ours:
        conflicts.append(f"bundle {_text(ours)} given, the model's contract has {_text(theirs)}")
    for key in contract.binding:
        if key not in current:
            continue
        if key == "network_def":
            conflicts += _network_conflict(contract.settings[key], current[key])
        elif _plain(current[key], key) != contract.settings[key]:
            conflicts.append(f"{key} {_text(_plain(current[key], key))} given, the model's contract has "
                             f"{_text(contract.settings[key])}")
    return conflicts


def check_contract(contract: ModelContract | None, settings: Mapping[str, Mapping[str, Any]],
                   bundle_root: str | os.PathLike | None = None, allow_override: bool | str = False) -> None:
    """Refuse this run's ``settings`` where they contradict the model's contract (DataError naming both values and
    the contract file), or with ``allow_override`` log them as a warning and go on. No contract: nothing to do."""
    if contract is None:
        return
    conflicts = contract_conflicts(contract, settings, bundle_root)
    if conflicts and _as_bool(allow_override):
        logger.warning("%s: contract_override: running with settings the model was not trained with: %s",
                       contract.path, "; ".join(conflicts))
        return
    check_contract_conflicts(contract.path, conflicts)
