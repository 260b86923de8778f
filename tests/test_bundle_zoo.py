"""The MONAI Model Zoo's acceptance checks of a bundle, written again here so that they run offline, on every bundle.

What the Model Zoo runs on a bundle pull request (Project-MONAI/model-zoo: ``ci/verify_bundle.py`` in ``full``
mode, ``ci/unit_tests/``, and the keys CONTRIBUTING.md asks for), and where each is checked here:

- necessary files (``configs/metadata.json``, ``LICENSE``) and preferred ones (``models/model.pt``, an inference
  config ``configs/inference.{json,yaml,yml}``), at most 25 MB a file: ``test_bundle_files``
- ``version`` and ``changelog`` in the metadata, the version listed in the changelog: ``test_version_and_changelog``
- the metadata against its schema (``monai.bundle.verify_metadata``): ``test_metadata_schema``
- ``configs/inference.json`` alone gives ``network_def``, ``preprocessing``, ``inferer``, ``postprocessing`` and the
  keys the Zoo names (``bundle_root``, ``device``, ``output_dir``, ...), and a ``model.pt`` loads into its network:
  ``test_inference_json_stands_alone``
- MONAI's bundle properties (``ConfigWorkflow.check_properties``, as ``verify_bundle_properties`` and the Zoo's unit
  tests call it) and the inference workflow run from ``inference.json`` alone on a tiny input:
  ``test_inference_workflow_runs_alone``
- ``verify_net_in_out`` of ``network_def`` against the metadata's ``network_data_format``: ``test_verify_net_in_out``
- ``ckpt_export`` of ``models/model.pt`` to TorchScript, loaded back: ``test_ckpt_export``
- the train config's keys (CONTRIBUTING.md) and each workflow's merged files: ``test_workflow_configs``,
  ``test_train_and_validation_preprocessing_keep_the_label``; the repository's overlays: ``test_overlays_merge``
- what MONAI Label's ``BundleInferTask`` reads of a bundle (``inference.json`` alone through ``ConfigParser``:
  ``network_def``, ``preprocessing``, ``inferer``, ``postprocessing``, run by hand on a volume):
  ``test_inference_json_parts_segment_a_volume``

Not run here: downloads (``large_files.yml``, the official schema the metadata names: the schema shipped in
``bundles/schemas`` stands in for it), the Zoo's ``model_info.json`` registry of published versions (a version
already published is refused there), TensorRT export (CUDA and TensorRT), multi-GPU unit tests, and the code-format
checks of ``.py`` files inside a bundle (these bundles hold none).

The checks that need weights run on a copy of each bundle as shipped: with its own ``models/model.pt`` and
``model.contract.json`` where it ships them (``SHIPPING``: the brain bundle; the nodule bundle as soon as its model
lands), otherwise (the whole-CT lung bundle) given a ``models/model.pt``: the state dict of ``network_def`` built
from ``inference.json`` alone (what the Zoo's ``_produce_fake_weights`` does) with a contract written by the
package's contract writer. ``test_shipped_weights`` and ``test_eval_metrics_are_measured`` check what ships;
``test_nodule_bundle_is_the_lung_bundle_but_its_declared_ids`` keeps the nodule bundle's copy of the lung bundle's
configs from drifting.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import random
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import BRAIN_BUNDLE, LUNG_BUNDLE, NODULE_BUNDLE, ROOT, shared

# verify_metadata finds the schema already in place and says it has no hash to check it against
pytestmark = pytest.mark.filterwarnings("ignore:No hash value provided")

BUNDLES = {"lung": LUNG_BUNDLE, "brain": BRAIN_BUNDLE, "nodule": NODULE_BUNDLE}


def ships_weights(bundle: Path) -> bool:
    """The bundle ships trained weights (``models/model.pt``, the file the Zoo's verify_bundle requires)."""
    return (bundle / "models" / "model.pt").is_file()


# the bundles that ship weights: every check that needs weights runs on their own model.pt (the nodule bundle joins
# as soon as its models/model.pt lands)
SHIPPING = sorted(name for name, path in BUNDLES.items() if ships_weights(path))
SCHEMA = ROOT / "bundles" / "schemas" / "meta_schema.json"
NECESSARY_FILES = ["configs/metadata.json", "LICENSE"]
PREFERRED_FILES = ["models/model.pt", "configs/inference.json"]
ZOO_FILE_LIMIT = 25 * 2**20  # CONTRIBUTING.md, "Model storage"
# what the Zoo asks of an inference config (CONTRIBUTING.md), what verify_bundle reads from it (network_def), and
# what its unit tests override (datalist, handlers#0 = the CheckpointLoader, disabled to run without weights)
INFERENCE_KEYS = ["imports", "bundle_root", "device", "network_def", "network", "inferer", "output_dir", "ckpt_dir",
                  "dataset_dir", "datalist", "preprocessing", "dataset", "dataloader", "postprocessing", "handlers",
                  "evaluator", "initialize", "run"]
# CONTRIBUTING.md, "In train config file": the ids a train config defines
TRAIN_KEYS = ["bundle_root", "device", "dataset_dir", "output_dir", "val_interval",
              "train#trainer", "train#trainer#max_epochs", "train#dataset", "train#dataset#data", "train#handlers",
              "train#preprocessing", "train#postprocessing", "train#inferer", "train#key_metric",
              "validate#evaluator", "validate#handlers", "validate#dataset", "validate#dataset#data",
              "validate#preprocessing", "validate#postprocessing", "validate#inferer", "validate#key_metric"]
# sizes that make a run take seconds (as conftest.TINY and BRAIN_TINY)
# (shipped weights bind their own spacing or image size: a bundle that ships weights runs with its model's)
SMALL = {"lung": {"patch_size": [32, 32, 16], "pixdim": [4.0, 4.0, 5.0], "num_workers": 0, "sw_batch_size": 2},
         "brain": {"image_size": [64, 64], "num_workers": 0}}
SMALL["nodule"] = SMALL["lung"]


def small(name: str) -> dict:
    """SMALL of a bundle, less the settings its shipped model's contract binds."""
    bundle = BUNDLES[name]
    if not ships_weights(bundle):
        return dict(SMALL[name])
    bound = json.loads((bundle / "models" / "model.contract.json").read_text())["binding"]
    return {k: v for k, v in SMALL[name].items() if k not in bound}


# --------------------------------------------------------------------------------------- helpers
def configs(bundle: Path, *names: str) -> list[str]:
    return [str(bundle / "configs" / name) for name in names]


def merged(bundle: Path, *names: str) -> dict:
    """The config of files ``names`` merged as ``monai.bundle run --config_file`` merges them."""
    from monai.bundle import ConfigParser

    return ConfigParser.load_config_files(configs(bundle, *names))


def workflow_files() -> dict[str, list[str]]:
    """Every workflow's config files: the package's WORKFLOW_FILES and the multi-process inference."""
    from monai_pipeline.app.bundles import WORKFLOW_FILES

    return {**WORKFLOW_FILES, "multi_gpu_inference": ["inference.json", "multi_gpu_inference.json"]}


def dangling_refs(config: dict) -> list[str]:
    """The references (``@id``, ``$...@id...``) and macros (``%id``) in ``config`` to ids it does not define, and
    the macros that copy from another file (``%file#id`` reads a path relative to the current directory)."""
    from monai.bundle import ConfigParser
    from monai.bundle.reference_resolver import ReferenceResolver

    parser = ConfigParser(config)
    found: list[str] = []

    def walk(node, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{where}#{key}" if where else str(key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}#{i}")
        elif isinstance(node, str):
            if node.startswith("%"):
                target = node[1:]
                if re.match(r"[^#]*\.(json|ya?ml)(#|$)", target):
                    found.append(f"{where}: {node} (another file)")
                elif target not in parser:
                    found.append(f"{where}: {node}")
            for ref in ReferenceResolver.match_refs_pattern(node):
                if ref not in parser:
                    found.append(f"{where}: @{ref}")

    walk(config, "")
    return found


def property_problems(config: dict, properties: dict) -> list[str]:
    """MONAI's bundle property check (``ConfigWorkflow.check_properties``), on the config's text: each required
    property's id exists, and where an optional property's id is referenced (``REF_ID``) the reference names that
    id. Reads the config's text only, so it also checks configs that cannot be built here (and a broken config in
    ``test_the_checks_catch_broken_bundles``); :func:`test_monai_own_property_check` runs MONAI's own check."""
    from monai.bundle import ConfigParser
    from monai.utils import BundleProperty, BundlePropertyConfig

    parser = ConfigParser(config)
    problems = []
    for name, prop in properties.items():
        pid, ref_id = prop[BundlePropertyConfig.ID], prop.get(BundlePropertyConfig.REF_ID)
        if prop.get(BundleProperty.REQUIRED, False):
            if pid not in parser:
                problems.append(f"{name}: {pid} missing")
            continue
        if ref_id is None:
            continue
        if name in ("evaluator", "val_interval"):  # arguments of the ValidationHandler among the train handlers
            handlers = parser.get("train#handlers", [])
            refs = [h.get(ref_id) for h in handlers if isinstance(h, dict) and h.get("_target_") == "ValidationHandler"]
        else:
            refs = [parser.get(ref_id)] if ref_id in parser else []
        wanted = "@" + pid.replace("::", "#")
        for ref in refs:
            if isinstance(ref, str) and not ref.startswith("$") and ref.replace("::", "#") != wanted:
                problems.append(f"{name}: {ref_id.replace('::', '#')} is {ref!r}, not {wanted}")
    return problems


def inference_parser(bundle: Path, **overrides):
    """A ConfigParser of ``configs/inference.json`` alone, with the metadata, as verify_bundle reads it."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(configs(bundle, "inference.json"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser.update({"bundle_root": str(bundle), **overrides})
    return parser


def fake_input(meta: dict, n: int = 1) -> torch.Tensor:
    """A batch of one input shaped as the metadata's ``network_data_format`` says (``"16*n"`` -> 16 n)."""
    image = meta["network_data_format"]["inputs"]["image"]
    shape = []
    for size in image["spatial_shape"]:
        factor = re.fullmatch(r"(\d+)\*n", str(size))
        shape.append(int(factor.group(1)) * n if factor else int(size))
    return torch.rand(1, image["num_channels"], *shape, generator=torch.Generator().manual_seed(0))


@contextlib.contextmanager
def in_process_workflow():
    """Leave this test process as it was around a bundle workflow run in it: the random states and cuDNN flags
    (the bundles' ``set_determinism``), ``sys.path`` (MONAI adds the bundle folder) and the root logger
    (``configs/logging.conf``)."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    flags = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    path, root = list(sys.path), logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags
        sys.path[:] = path
        root.handlers[:] = handlers
        root.setLevel(level)


# --------------------------------------------------------------------------------------- fixtures
def _shipped_files(folder: str, names: list[str]) -> list[str]:
    """copytree's ignore: run outputs (eval/, data/) and anything in models/ but the shipped model and contract."""
    if Path(folder).name == "models":
        return [n for n in names if n not in ("model.pt", "model.contract.json")]
    return [n for n in names if n in ("eval", "data")]


def copy_bundle(name: str, dest: Path) -> Path:
    """A copy of bundle ``name`` as shipped: configs, docs, LICENSE and the shipped models/model.pt and contract."""
    shutil.copytree(BUNDLES[name], dest, ignore=_shipped_files)
    return dest


def give_fake_weights(bundle: Path, **overrides) -> None:
    """``models/model.pt`` for a bundle without weights: network_def's initial weights built from inference.json
    alone (the Zoo's ``_produce_fake_weights``), with a contract written by the package's own contract writer (as
    training writes it, recording ``overrides``' spacing and window)."""
    from monai_pipeline.engine import new_contract, write_contract

    parser = inference_parser(bundle, **overrides)
    if "network_def" not in parser:  # verify_bundle's "missing expected key in the config: network_def"
        pytest.fail(f"{bundle.name}: configs/inference.json alone has no network_def")
    torch.manual_seed(0)
    settings = parser.get_parsed_content("contract_settings")
    (bundle / "models").mkdir()
    torch.save(settings["binding"]["network_def"].state_dict(), bundle / "models" / "model.pt")
    write_contract(bundle / "models" / "model.pt", new_contract(settings, bundle))


@pytest.fixture(scope="module", params=sorted(BUNDLES))
def zoo_bundle(request, tmp_path_factory) -> Path:
    """A copy of the bundle with a ``models/model.pt``: the one it ships, else fake weights (:func:`give_fake_weights`)."""
    dest = copy_bundle(request.param, tmp_path_factory.mktemp("zoo") / BUNDLES[request.param].name)
    if not ships_weights(dest):
        give_fake_weights(dest, **SMALL[request.param])
    return dest


def short_name(bundle: Path) -> str:
    return next(k for k, v in BUNDLES.items() if v.name == bundle.name)


@pytest.fixture(scope="module")
def zoo_brain_slices(tmp_path_factory) -> Path:
    """2 phantom patients of 4 slices each (64 x 64) in the LGG layout."""
    from monai_pipeline.app.synthetic import write_brain_slices

    return write_brain_slices(tmp_path_factory.mktemp("zoo_lgg") / "lgg", num_patients=2, seed=5, num_slices=4)


@pytest.fixture(scope="module")
def tiny_lidc(tmp_path_factory) -> Path:
    """The first 10 real LIDC-IDRI nodule crops (10 patients) in the lidc_nodules layout (index.csv + crops)."""
    import csv

    source = shared("lidc_nodules", "index.csv")
    out = tmp_path_factory.mktemp("lidc") / "lidc_nodules"
    out.mkdir()
    with open(source, newline="") as fh:
        rows = list(csv.DictReader(fh))[:10]
    with open(out / "index.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        for key in ("image", "mask"):
            shutil.copy(source.parent / row[key], out / row[key])
    return out


def dataset_for(bundle: Path, request) -> Path:
    return request.getfixturevalue({"lung": "tiny_msd", "brain": "zoo_brain_slices", "nodule": "tiny_lidc"}[
        short_name(bundle)])


# --------------------------------------------------------------------------------------- verify_bundle
def test_bundle_files(zoo_bundle):
    for name in NECESSARY_FILES + PREFERRED_FILES + ["docs/README.md"]:
        assert (zoo_bundle / name).is_file(), f"{name} missing"
    inference = [p.name for p in (zoo_bundle / "configs").glob("inference.*") if p.suffix in (".json", ".yaml", ".yml")]
    assert inference == ["inference.json"], inference  # one inference config, found the way the Zoo looks for it
    big = [str(p) for p in zoo_bundle.rglob("*") if p.is_file() and p.stat().st_size > ZOO_FILE_LIMIT]
    assert not big, f"over the Model Zoo's 25 MB per file: {big}"
    # no config file is left that no workflow reads (a stale shared file would be loaded by no command)
    used = {f for files in workflow_files().values() for f in files} | {"metadata.json", "logging.conf"}
    assert {p.name for p in (zoo_bundle / "configs").iterdir()} <= used


def test_version_and_changelog(zoo_bundle):
    meta = json.loads((zoo_bundle / "configs" / "metadata.json").read_text())
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"]), meta["version"]
    assert meta["version"] in meta["changelog"], "the version has no changelog entry"
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(meta["version"]) == max(map(as_tuple, meta["changelog"])), "the version is not the newest entry"
    assert all(isinstance(text, str) and text.strip() for text in meta["changelog"].values())


@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_eval_metrics_are_measured(name):
    """A bundle that ships weights states figures measured with them: every number in ``eval_metrics`` is the
    result file's (``source``, in benchmarks/results) rounded to 3 places, none is null. Only a bundle without
    weights may leave its figure null, with a ``note`` that says why."""
    meta = json.loads((BUNDLES[name] / "configs" / "metadata.json").read_text())
    metrics = meta["eval_metrics"]
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if not ships_weights(BUNDLES[name]):
        assert all(v is None for k, v in metrics.items() if k not in ("note", "source", "protocol", "device")), metrics
        assert "no weights" in metrics.get("note", "") or "not shipped" in metrics.get("note", ""), metrics
        return
    assert numbers and not [k for k, v in metrics.items() if v is None], f"{name}: ships weights, eval_metrics {metrics}"
    result = json.loads((ROOT / metrics["source"]).read_text())
    for key, value in numbers.items():
        assert round(result[key], 3) == value, (key, value, result[key])
    assert metrics["protocol"] and metrics["device"]


@pytest.mark.parametrize("name", SHIPPING)
def test_shipped_weights(name):
    """What a bundle ships in models/: model.pt (Zoo limit 25 MB) and its contract, the contract's sha256 that of
    the weights, written for this bundle; read_contract accepts it and the network loads it strictly."""
    from monai_pipeline.engine import read_contract

    models = BUNDLES[name] / "models"
    assert (models / "model.pt").stat().st_size < ZOO_FILE_LIMIT
    contract = read_contract(models)  # DataError when the sha256 is not that of model.pt
    assert contract is not None, f"{models}: model.pt ships without model.contract.json"
    meta = json.loads((BUNDLES[name] / "configs" / "metadata.json").read_text())
    assert contract.data["bundle"]["name"] == meta["name"]
    net = inference_parser(BUNDLES[name]).get_parsed_content("network_def")
    net.load_state_dict(torch.load(models / "model.pt", map_location="cpu", weights_only=True), strict=True)
    # the metadata describes the shipped model's input (verify_net_in_out feeds it)
    in_channels = contract.settings["network_def"]["in_channels"]
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == in_channels
    # and so does the contract's own copy of it (written at training time from the metadata of that day)
    assert contract.data["inputs"]["image"]["num_channels"] == in_channels, f"{models}/model.contract.json inputs"


def test_metadata_schema(zoo_bundle):
    from monai.bundle import verify_metadata

    schema = zoo_bundle / "eval" / "schema.json"  # where the Zoo's prepare_schema puts the schema it downloaded
    schema.parent.mkdir(exist_ok=True)
    shutil.copy(SCHEMA, schema)
    verify_metadata(meta_file=str(zoo_bundle / "configs" / "metadata.json"), filepath=str(schema))


def test_inference_json_stands_alone(zoo_bundle):
    from monai.inferers import Inferer
    from monai.transforms import Compose

    config = json.loads((zoo_bundle / "configs" / "inference.json").read_text())
    assert dangling_refs(config) == []
    assert [k for k in INFERENCE_KEYS if k not in config] == []
    loader = config["handlers"][0]
    assert loader["_target_"] == "CheckpointLoader" and "@ckpt_dir + '/model.pt'" in loader["load_path"]

    parser = inference_parser(zoo_bundle)
    assert isinstance(parser.get_parsed_content("device"), torch.device)
    assert Path(parser.get_parsed_content("output_dir")).parent == zoo_bundle
    assert isinstance(parser.get_parsed_content("preprocessing"), Compose)
    assert isinstance(parser.get_parsed_content("postprocessing"), Compose)
    assert isinstance(parser.get_parsed_content("inferer"), Inferer)
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, torch.nn.Module)
    state = torch.load(zoo_bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)  # every weight of model.pt has its place in network_def, and back
    assert len(state) == len(net.state_dict())


def test_inference_workflow_runs_alone(zoo_bundle, request, tmp_path):
    """What the Zoo's unit tests do with an inference config: ConfigWorkflow on inference.json alone,
    check_properties (MONAI's InferProperties and MetaProperties), initialize, run, finalize; here with the
    bundle's CheckpointLoader left on, loading models/model.pt."""
    from monai.bundle import ConfigWorkflow

    dataset, out = dataset_for(zoo_bundle, request), tmp_path / "out"
    with in_process_workflow():
        workflow = ConfigWorkflow(
            workflow_type="infer",
            config_file=configs(zoo_bundle, "inference.json"),
            meta_file=str(zoo_bundle / "configs" / "metadata.json"),
            logging_file=str(zoo_bundle / "configs" / "logging.conf"),
            bundle_root=str(zoo_bundle), dataset_dir=str(dataset), output_dir=str(out),
            **small(short_name(zoo_bundle)),
        )
        workflow.initialize()
        assert workflow.check_properties() == []
        assert workflow.bundle_root == str(zoo_bundle) and workflow.dataset_dir == str(dataset)
        workflow.run()
        workflow.finalize()

    if short_name(zoo_bundle) in ("lung", "nodule"):
        import nibabel as nib

        from monai_pipeline.data import lidc_images

        sources = (sorted((dataset / "imagesTs").glob("*.nii.gz")) if short_name(zoo_bundle) == "lung"
                   else [Path(p) for p in lidc_images(dataset)])  # the nodule bundle: the test patients' crops
        assert sources
        for src in sources:
            mask = nib.load(str(out / src.name.replace(".nii.gz", "_seg.nii.gz")))
            assert mask.shape == nib.load(str(src)).shape
            assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
    else:
        from PIL import Image

        slices = sorted(p for p in dataset.rglob("*.tif") if not p.stem.endswith("_mask"))
        assert len(slices) == 8
        for src in slices:
            mask = Image.open(out / f"{src.stem}_mask.png")
            assert mask.size == Image.open(src).size
            assert set(np.unique(np.asarray(mask))) <= {0, 255}


def test_inference_json_parts_segment_a_volume(zoo_bundle, request, tmp_path):
    """What MONAI Label's ``BundleInferTask`` reads of a bundle, with MONAI alone (monailabel 0.8.5 does not import
    beside torch 2.13.0 here: its torchvision import fails): ``configs/inference.json`` alone through ConfigParser
    gives ``network_def`` (loaded with models/model.pt), ``preprocessing``, ``inferer`` and ``postprocessing``, which,
    run by hand on one input as a dict ``{"image": path}``, write its mask on the input's own grid."""
    from monai.data import decollate_batch, list_data_collate

    name = short_name(zoo_bundle)
    dataset = dataset_for(zoo_bundle, request)
    if name == "lung":
        source = sorted((dataset / "imagesTs").glob("*.nii.gz"))[0]
    elif name == "nodule":
        from monai_pipeline.data import lidc_images

        source = Path(lidc_images(dataset)[0])
    else:
        source = sorted(p for p in dataset.rglob("*.tif") if not p.stem.endswith("_mask"))[0]
    parser = inference_parser(zoo_bundle, output_dir=str(tmp_path), **small(name))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(zoo_bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    net.eval()
    pre, inferer = parser.get_parsed_content("preprocessing"), parser.get_parsed_content("inferer")
    post = parser.get_parsed_content("postprocessing")
    batch = list_data_collate([pre({"image": str(source)})])  # a batch of one, as MONAI Label's loader gives it
    with torch.no_grad():
        batch["pred"] = inferer(batch["image"], net)
    post(decollate_batch(batch)[0])
    written = sorted(tmp_path.glob(f"{source.name.split('.')[0]}_*"))
    assert written, sorted(tmp_path.iterdir())
    if name == "brain":
        from PIL import Image

        mask = Image.open(tmp_path / f"{source.stem}_mask.png")
        assert mask.size == Image.open(source).size and set(np.unique(np.asarray(mask))) <= {0, 255}
    else:
        import nibabel as nib

        mask = nib.load(str(tmp_path / source.name.replace(".nii.gz", "_seg.nii.gz")))
        assert mask.shape == nib.load(str(source)).shape and set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}


def test_tta_flips_override_averages_the_flipped_passes(zoo_bundle):
    """``tta_flips`` (flip test-time augmentation, off by default) reaches the bundle's inferer: by default the
    logits pass through untouched; with ``[[0]]`` the output is the mean of the plain and the flipped-back
    probabilities (as log-probabilities)."""
    from monai_pipeline.engine import FlipInferer

    name = short_name(zoo_bundle)
    meta = json.loads((zoo_bundle / "configs" / "metadata.json").read_text())
    plain = inference_parser(zoo_bundle, **small(name))
    net = plain.get_parsed_content("network_def").eval()
    x = fake_input(meta, n=2)
    if name == "brain":  # the brain bundle's SliceInferer runs a stack of 2D slices (B, C, H, W, slices)
        x = torch.stack([x, x.flip(3)], dim=-1)
    x = x + torch.linspace(0, 1, x.shape[2]).view(1, 1, -1, *([1] * (x.ndim - 3)))  # not symmetric along axis 0
    with torch.no_grad():
        default = plain.get_parsed_content("inferer")
        assert isinstance(default, FlipInferer) and default.flips == []
        base = default(x, net)
        tta = inference_parser(zoo_bundle, tta_flips=[[0]], **small(name)).get_parsed_content("inferer")
        assert isinstance(tta, FlipInferer) and tta.flips == [(0,)]
        out = tta(x, net)
        flipped = torch.flip(plain.get_parsed_content("inferer")(torch.flip(x, [2]), net), [2])
    expected = torch.log((torch.softmax(base.float(), 1) + torch.softmax(flipped.float(), 1)) / 2)
    assert torch.allclose(out, expected, atol=1e-4) and not torch.allclose(out, base.float(), atol=1e-4)


def test_verify_net_in_out(zoo_bundle):
    from monai.bundle import verify_net_in_out

    meta_file = zoo_bundle / "configs" / "metadata.json"
    verify_net_in_out(net_id="network_def", meta_file=str(meta_file), config_file=configs(zoo_bundle, "inference.json"),
                      bundle_root=str(zoo_bundle), device="cpu")
    # and what verify_net_in_out leaves out: a segmentation comes out on its input's grid
    meta = json.loads(meta_file.read_text())
    net = inference_parser(zoo_bundle).get_parsed_content("network_def").eval()
    x = fake_input(meta, n=2)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (1, meta["network_data_format"]["outputs"]["pred"]["num_channels"], *x.shape[2:])


def test_ckpt_export(zoo_bundle):
    """verify_torchscript: models/model.pt exported with network_def from inference.json alone; the TorchScript
    module carries inference.json and the metadata, and computes what the checkpoint does."""
    from monai.bundle import ckpt_export
    from monai.data import load_net_with_metadata

    ts = zoo_bundle / "models" / "verify_model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(zoo_bundle / "models" / "model.pt"),
                meta_file=str(zoo_bundle / "configs" / "metadata.json"),
                config_file=configs(zoo_bundle, "inference.json"), bundle_root=str(zoo_bundle))
    module, meta, extra = load_net_with_metadata(str(ts), map_location="cpu", more_extra_files=("inference.json",))
    assert meta["version"] == json.loads((zoo_bundle / "configs" / "metadata.json").read_text())["version"]
    assert json.loads(extra["inference.json"]) == json.loads((zoo_bundle / "configs" / "inference.json").read_text())
    net = inference_parser(zoo_bundle).get_parsed_content("network_def").eval()
    net.load_state_dict(torch.load(zoo_bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    x = fake_input(meta)
    with torch.no_grad():
        np.testing.assert_allclose(module(x).numpy(), net(x).numpy(), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------- the other workflows
@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_workflow_configs(name):
    """Each workflow's files, merged as its --config_file list merges them, define every id they reference; the
    train config has the ids CONTRIBUTING.md asks for; MONAI's bundle properties hold for each workflow."""
    from monai.bundle import ConfigParser
    from monai.bundle.properties import InferProperties, TrainProperties

    bundle = BUNDLES[name]
    for workflow, files in workflow_files().items():
        assert files[0] == "inference.json", workflow  # every workflow builds on the self-contained config
        assert dangling_refs(merged(bundle, *files)) == [], workflow
    assert property_problems(merged(bundle, "inference.json"), InferProperties) == []
    assert property_problems(merged(bundle, *workflow_files()["evaluate"]), InferProperties) == []
    train = merged(bundle, *workflow_files()["train"])
    assert property_problems(train, TrainProperties) == []
    parser = ConfigParser(train)
    assert [k for k in TRAIN_KEYS if k not in parser] == []
    validation = [h for h in train["train"]["handlers"] if isinstance(h, dict) and h["_target_"] == "ValidationHandler"]
    assert [(h["validator"], h["interval"]) for h in validation] == [("@validate#evaluator", "@val_interval")]


@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_monai_own_property_check(name, tmp_path, request):
    """MONAI's own ``ConfigWorkflow.check_properties`` (what the Zoo's unit tests call) passes on the train and
    inference workflows: every train handler is written as a dict, none as a reference."""
    from monai.bundle import ConfigWorkflow

    from monai_pipeline.io.atomic import held_locks, release_locks

    bundle = BUNDLES[name]
    before = held_locks()
    from monai_pipeline.app.synthetic import PhantomSpec, write_brain_slices, write_msd_dataset

    if name == "brain":  # MONAI's check builds the datalists: give it a tiny dataset
        write_brain_slices(tmp_path / "data", num_patients=3, seed=0, size=64, num_slices=4)
    elif name == "nodule":  # LIDC-IDRI crops (index.csv layout)
        shutil.copytree(request.getfixturevalue("tiny_lidc"), tmp_path / "data")
    else:
        write_msd_dataset(tmp_path / "data", num_train=3, num_test=1, seed=0, spec=PhantomSpec((24, 24, 12), (5.0, 5.0, 8.0)))
    for workflow, kind in (("train", "train"), ("inference", "infer")):
        with in_process_workflow():
            flow = ConfigWorkflow(config_file=configs(bundle, *workflow_files()[workflow]), workflow_type=kind,
                                  meta_file=str(bundle / "configs" / "metadata.json"),
                                  logging_file=str(bundle / "configs" / "logging.conf"),
                                  **{"bundle_root": str(bundle), "output_dir": str(tmp_path / "eval"),
                                     "ckpt_dir": str(tmp_path / "models"), "dataset_dir": str(tmp_path / "data"),
                                     # no weights here: inference's initialize would refuse to start without them
                                     **({"load_pretrain": False} if kind == "infer" else {})})
            flow.initialize()
            try:
                assert not flow.check_properties(), (workflow, flow.check_properties())
            finally:
                release_locks(keep=before)


@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_train_and_validation_preprocessing_keep_the_label(name, request):
    """inference.json transforms the image alone (image_keys ["image"]); merged over it, train.json sets the keys
    back, so training and validation resample image and label together, and evaluation scores against the label
    file as it is."""
    from monai.bundle import ConfigParser

    bundle = BUNDLES[name]
    dataset = request.getfixturevalue({"lung": "tiny_msd", "brain": "zoo_brain_slices", "nodule": "tiny_lidc"}[name])
    overrides = {"bundle_root": str(bundle), "dataset_dir": str(dataset), **SMALL[name]}
    if name == "brain":  # 2 patients, one for validation; slices resized to 32 x 32, away from their own 64 x 64
        overrides.update(val_fraction=0.5, image_size=[32, 32], num_samples=2)

    parser = ConfigParser(merged(bundle, *workflow_files()["train"]))
    parser.update(overrides)
    case = parser.get_parsed_content("val_datalist")[0]
    item = parser.get_parsed_content("validate#preprocessing")(copy.deepcopy(case))
    assert item["label"].shape[1:] == item["image"].shape[1:]
    assert set(torch.unique(item["label"]).tolist()) <= {0.0, 1.0}
    train_case = parser.get_parsed_content("train_datalist")[0]
    samples = parser.get_parsed_content("train#preprocessing")(copy.deepcopy(train_case))
    samples = samples if isinstance(samples, list) else [samples]
    assert samples and all(s["label"].shape[1:] == s["image"].shape[1:] for s in samples)

    parser = ConfigParser(merged(bundle, *workflow_files()["evaluate"]))
    parser.update(overrides)
    # the lung and brain bundles score the validation split training held out, the nodule bundle its test patients
    held_out = "val_datalist" if name != "nodule" else "eval_datalist"
    assert parser.get_parsed_content("data") == parser.get_parsed_content(held_out)
    if name == "nodule":
        assert {c["patient"] for c in parser.get_parsed_content("data")}.isdisjoint(
            c["patient"] for c in parser.get_parsed_content("train_datalist") + parser.get_parsed_content("val_datalist"))
    item = parser.get_parsed_content("preprocessing")(copy.deepcopy(case))
    assert "label" in item and item["image"].shape[1:] != item["label"].shape[1:]  # the label on its own grid


@pytest.mark.parametrize("name, workflow, overlay", [
    ("lung", "inference", "network_segresnet.json"),
    ("lung", "train", "network_segresnet.json"),
    ("brain", "inference", "network_segresnet_2d.json"),
    ("brain", "train", "network_segresnet_2d.json"),
    ("brain", "train", "loss_dicefocal.json"),
])
def test_overlays_merge(name, workflow, overlay, tmp_path):
    """The repository's configs/ overlays, merged after a workflow's files, leave no dangling reference and
    override what they name (with a ckpt_dir holding no model: a shipped model's contract names its own network)."""
    from monai.bundle import ConfigParser

    bundle = BUNDLES[name]
    files = [*configs(bundle, *workflow_files()[workflow]), str(ROOT / "configs" / overlay)]
    config = ConfigParser.load_config_files(files)
    assert dangling_refs(config) == []
    parser = ConfigParser(config)
    parser.update({"bundle_root": str(bundle), "ckpt_dir": str(tmp_path)})
    if overlay.startswith("network_segresnet"):
        net = parser.get_parsed_content("network_def").eval()
        assert type(net).__name__ == "SegResNet"
        if name == "lung":
            x = torch.rand(1, 1, 16, 16, 16)
        else:  # brain: its channels, each with its context slices (FLAIR of slices n-1, n, n+1 by default)
            depth = 2 * parser.get_parsed_content("context_slices") + 1
            x = torch.rand(1, len(parser.get_parsed_content("channels")) * depth, 32, 32)
        with torch.no_grad():
            assert net(x).shape == (1, 2, *x.shape[2:])
    else:
        assert overlay == "loss_dicefocal.json"
        assert type(parser.get_parsed_content("loss")).__name__ == "DiceFocalLoss"


# the ids in which the nodule bundle's configs may differ from the lung bundle's (its data, grid, window, crop,
# sliding window, split and schedule); every other id of every config file is the lung bundle's, byte for byte
NODULE_OWN_KEYS = {"dataset_dir", "pixdim", "patch_size", "hu_window", "body_threshold_hu", "crop_lungs", "sw_batch_size",
                   "sw_overlap", "datalist", "train_datalist", "val_datalist", "eval_datalist", "split_mode", "fold",
                   "num_folds", "val_fraction", "test_fraction", "epochs", "val_interval", "batch_size", "num_samples",
                   "early_stop_patience"}


def config_differences(a: Path, b: Path) -> set[str]:
    """The top-level ids whose values differ between two config files (one defining an id the other does not
    counts)."""
    first, second = json.loads(a.read_text()), json.loads(b.read_text())
    return {k for k in first.keys() | second.keys() if first.get(k, KeyError) != second.get(k, KeyError)}


def test_nodule_bundle_is_the_lung_bundle_but_its_declared_ids():
    """The nodule bundle was made from the lung bundle (+ the former configs/lidc_nodules.json): its configs may
    differ from the lung bundle's only in NODULE_OWN_KEYS, so a fix to one copy cannot silently miss the other."""
    lung, nodule = LUNG_BUNDLE / "configs", NODULE_BUNDLE / "configs"
    assert sorted(p.name for p in lung.iterdir()) == sorted(p.name for p in nodule.iterdir())
    for name in ("inference.json", "train.json", "evaluate.json", "multi_gpu_train.json", "multi_gpu_inference.json"):
        undeclared = config_differences(lung / name, nodule / name) - NODULE_OWN_KEYS
        assert not undeclared, f"{name}: the nodule and lung bundles differ in undeclared ids {sorted(undeclared)}"
    assert (lung / "logging.conf").read_text() == (nodule / "logging.conf").read_text()
    # what the nodule bundle is for: its own grid, window and split reach the merged configs
    parser = inference_parser(NODULE_BUNDLE)
    assert tuple(parser.get_parsed_content("sw_inferer").roi_size) == (48, 48, 16)
    config = merged(NODULE_BUNDLE, *workflow_files()["evaluate"])
    assert (config["eval_datalist"]["_target_"], config["eval_datalist"]["split"]) == ("monai_pipeline.data.lidc_split", "test")
    assert (config["train_datalist"]["_target_"], config["train_datalist"]["split"]) == ("monai_pipeline.data.lidc_split", "train")


def test_config_differences_catches_a_drift(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"x": 1, "net": {"channels": [16, 32]}, "pixdim": [1, 1, 1]}))
    b.write_text(json.dumps({"x": 1, "net": {"channels": [16, 64]}, "pixdim": [2, 2, 2], "extra": 0}))
    assert config_differences(a, b) - NODULE_OWN_KEYS == {"net", "extra"}


# --------------------------------------------------------------------------------------- the checks can fail
def test_the_checks_catch_broken_bundles(tmp_path):
    """Each check above fails on a bundle broken the way it guards against."""
    from monai.bundle import verify_metadata, verify_net_in_out
    from monai.bundle.properties import InferProperties

    bundle = tmp_path / LUNG_BUNDLE.name
    shutil.copytree(LUNG_BUNDLE, bundle, ignore=shutil.ignore_patterns("models", "eval", "data"))
    inference = json.loads((bundle / "configs" / "inference.json").read_text())

    # inference.json without a key it references, or reading another file, does not stand alone
    broken = {k: v for k, v in inference.items() if k != "base_transforms"}
    assert any("@base_transforms" in p for p in dangling_refs(broken))
    assert dangling_refs({**inference, "preprocessing": "%configs/train.json#validate#preprocessing"})
    # a required property missing, or an optional one referenced under another id
    assert property_problems({k: v for k, v in inference.items() if k != "inferer"}, InferProperties) == [
        "inferer: inferer missing"]
    moved = {**inference, "post": inference["postprocessing"]}
    moved["evaluator"] = {**inference["evaluator"], "postprocessing": "@post"}
    assert property_problems(moved, InferProperties) == [
        "postprocessing: evaluator#postprocessing is '@post', not @postprocessing"]

    meta_file = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    schema = tmp_path / "schema.json"
    shutil.copy(SCHEMA, schema)
    meta_file.write_text(json.dumps({k: v for k, v in meta.items() if k != "version"}))
    with pytest.raises(ValueError, match="version"):
        verify_metadata(meta_file=str(meta_file), filepath=str(schema))
    wrong = copy.deepcopy(meta)
    wrong["network_data_format"]["outputs"]["pred"]["num_channels"] = 3
    meta_file.write_text(json.dumps(wrong))
    with pytest.raises(ValueError, match="output channel number"):
        verify_net_in_out(net_id="network_def", meta_file=str(meta_file), config_file=configs(bundle, "inference.json"),
                          bundle_root=str(bundle), device="cpu")
