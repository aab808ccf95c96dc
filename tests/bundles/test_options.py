"""Typed options: a boolean given on the command line as `false` is False, never a truthy string, and a
value of the wrong type stops with an error naming the option (issue: `--activation_checkpointing false`
used to train WITH checkpointing). Values go through fire exactly as `python -m monai.bundle` parses them,
then through the bundle's own config to the component that uses them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import fire
import pytest
from monai.bundle import ConfigParser

from fedfms.bundle.options import BUNDLE_OPTIONS, check_options, fedfms_cause
from fedfms.core.options import OptionError, as_bool, as_float, as_int, as_names

REPO = Path(__file__).resolve().parents[2]
VALUES = ("false", "False", "0", "nonsense")


def _as_the_command_line_gives(option: str, text: str) -> object:
    """What `python -m monai.bundle run ... --OPTION TEXT` hands to the bundle (fire's parsing)."""
    return fire.Fire(lambda **kwargs: kwargs, command=[f"--{option}", text])[option]


def _parser(bundle: str, files: tuple[str, ...], **overrides: object) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles" / bundle / "configs" / f) for f in files])
    parser.update({"bundle_root": str(REPO / "bundles" / bundle), "device": "cpu", **overrides})
    return parser


def _option_error(error: BaseException) -> OptionError:
    """The OptionError in an error's chain (MONAI wraps errors raised while it builds a component)."""
    cause = fedfms_cause(error)
    assert isinstance(cause, OptionError), repr(error)
    return cause


def test_converters():
    assert [as_bool("b", v) for v in (True, 0, 1, "false", "False", "TRUE", "yes", " no ", "1", "0")] == \
        [True, False, True, False, False, True, True, False, True, False]
    for bad in ("maybe", "", 2, None, 0.5, "off"):
        with pytest.raises(OptionError, match=r"option b=.*: expected a boolean \(true/false, 1/0, yes/no\)"):
            as_bool("b", bad)
    assert [as_int("n", v) for v in (3, "3", 3.0, "1e2")] == [3, 3, 3, 100]
    for bad, why in ((True, "got a boolean"), ("three", "expected an integer"), (2.5, "expected an integer"),
                     (0, "expected an integer >= 1")):
        with pytest.raises(OptionError, match=why):
            as_int("n", bad, minimum=1)
    assert as_float("lr", "1e-4") == 1e-4
    for bad in ("nan", "inf", 0, "fast"):
        with pytest.raises(OptionError, match="option lr="):
            as_float("lr", bad, above=0)
    assert as_names("held_out", ["UCL"]) == ("UCL",)
    with pytest.raises(OptionError, match=r"held_out='UCL': expected a list of names"):
        as_names("held_out", "UCL")  # a bare string would silently become ('U', 'C', 'L')


@pytest.mark.parametrize("bundle", ["sam", "msa"])
@pytest.mark.parametrize("text", VALUES)
def test_activation_checkpointing_from_the_command_line(bundle, text):
    value = _as_the_command_line_gives("activation_checkpointing", text)
    parser = _parser(bundle, ("train.json",), model_type="vit_tiny", image_size=64, activation_checkpointing=value)
    if text == "nonsense":
        with pytest.raises(Exception) as info:
            parser.get_parsed_content("network_def")
        assert "option activation_checkpointing='nonsense': expected a boolean" in str(_option_error(info.value))
        with pytest.raises(Exception) as info:  # the bundle's first step, before anything is built
            parser.get_parsed_content("initialize")
        assert "activation_checkpointing='nonsense'" in str(_option_error(info.value))
    else:
        assert parser.get_parsed_content("network_def").activation_checkpointing is False
        parser.get_parsed_content("initialize")


@pytest.mark.parametrize("bundle", ["sam", "msa", "unet"])
@pytest.mark.parametrize("text", VALUES)
def test_inference_booleans_from_the_command_line(bundle, text, small_datalist, tiny_sam_checkpoint):
    options = {name: _as_the_command_line_gives(name, text) for name in ("write_overlays", "dicom_seg", "stop_on_error")}
    sam = {"sam_checkpoint": str(tiny_sam_checkpoint), "model_type": "vit_tiny"} if bundle != "unet" else {}
    standalone = _parser(bundle, ("inference.json",), image_size=64, ckpt_path="model.pt",
                         _meta_={"name": bundle}, **sam, **options)  # monai.bundle run reads _meta_ from metadata.json
    combined = _parser(bundle, ("train.json", "inference.json"), image_size=64, datalist=str(small_datalist),
                       **{k: v for k, v in sam.items() if k == "model_type"}, **options)
    if text == "nonsense":
        with pytest.raises(Exception) as info:
            standalone.get_parsed_content("initialize")
        assert str(_option_error(info.value)).startswith(("option dicom_seg='nonsense'", "option stop_on_error='nonsense'",
                                                          "option write_overlays='nonsense'"))
        with pytest.raises(Exception) as info:
            standalone.get_parsed_content("patient_inference")
        assert "expected a boolean" in str(_option_error(info.value))
        return
    standalone.get_parsed_content("initialize")
    inference = standalone.get_parsed_content("patient_inference")
    assert inference.dicom_seg is False and inference.stop_on_error is False
    writer = next(h for h in combined.get_parsed_content("datalist_inference#handlers") if hasattr(h, "write_overlays"))
    assert writer.write_overlays is False


def test_every_typed_option_of_every_bundle_is_checked_at_start():
    """Each bundle's initialize step names the typed options the bundle defines (and nothing it lacks)."""
    # nnunet's inference.json overrides its train.json (it is read with it), so only train.json alone
    for bundle, configs in (("sam", ("train.json", "inference.json")), ("msa", ("train.json", "inference.json")),
                            ("unet", ("train.json", "inference.json")), ("nnunet", ("train.json",))):
        for files in ((name,) for name in configs):
            parser = _parser(bundle, files)
            checked = {key for step in parser["initialize"] if isinstance(step, dict)
                       and step["_target_"] == "fedfms.bundle.options.check_options" for key in step if key != "_target_"}
            defined = {k for k in BUNDLE_OPTIONS if k in parser.get() and (files != ("inference.json",) or k not in (
                "image_size", "batch_size", "num_classes"))}  # inference.json takes those from train.json
            assert defined <= checked, (bundle, files, defined - checked)


def test_numbers_as_strings_and_bad_numbers():
    check_options(batch_size=_as_the_command_line_gives("batch_size", "8"), learning_rate="1e-4", image_size="64")
    with pytest.raises(OptionError, match="option batch_size='four': expected an integer"):
        check_options(batch_size="four")
    with pytest.raises(KeyError, match="not a typed bundle option"):
        check_options(batch_sise=4)


@pytest.mark.parametrize("option, text, expected", [
    ("use_mirroring", "sometimes", "expected a boolean"), ("batch_size", "four", "expected an integer"),
    ("iterations_per_epoch", "0", "expected an integer >= 1"), ("gpu_memory_target_gb", "lots", "expected a number")])
def test_nnunet_options_are_checked_at_start(option, text, expected):
    value = _as_the_command_line_gives(option, text)
    with pytest.raises(Exception) as info:
        _parser("nnunet", ("train.json",), **{option: value}).get_parsed_content("initialize")
    assert str(_option_error(info.value)).startswith(f"option {option}={value!r}: {expected}")


def test_nnunet_null_options_mean_not_set():
    """nnU-Net's batch size, learning rate and iterations per epoch default to null (the plan's batch size,
    nnU-Net's 1e-2, one pass over the data): null passes the start check; in other bundles it does not."""
    parser = _parser("nnunet", ("train.json",), use_mirroring=_as_the_command_line_gives("use_mirroring", "false"))
    assert [parser[k] for k in ("batch_size", "learning_rate", "iterations_per_epoch")] == [None, None, None]
    parser.get_parsed_content("initialize")
    with pytest.raises(Exception) as info:
        _parser("unet", ("train.json",), batch_size=None).get_parsed_content("initialize")
    assert str(_option_error(info.value)).startswith("option batch_size=None: expected an integer")


def test_the_command_line_stops_with_one_line_naming_the_option(small_datalist):
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(REPO / "bundles/msa/configs/train.json"),
         "--bundle_root", str(REPO / "bundles/msa"), "--datalist", str(small_datalist), "--model_type", "vit_tiny",
         "--image_size", "64", "--device", "cpu", "--activation_checkpointing", "maybe"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: option activation_checkpointing='maybe': expected a boolean (true/false, 1/0, yes/no) "
                      "(FEDFMS_TRACEBACK=1 shows the traceback)"], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
