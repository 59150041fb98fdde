"""Landing sets: every GPU type (and count) a Modal ``gpu`` request may boot on, as Modal documents
it (https://modal.com/docs/guide/gpu): "H100" may run on an H200, "H100!" may not, "A100" may run
on an A100-80GB, "B200+" on a B300, and a list falls back from one entry to the next."""

from __future__ import annotations

import pytest

from cachekeeper.errors import UsageError
from cachekeeper.gpus import CPU, modal_gpu_type, parse_gpu, parse_request


def lands(value) -> list[tuple[str, str, int]]:
    return [(each.gpu.name, each.gpu.arch, each.gpu_count) for each in parse_request(value).landings]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("H100", [("H100", "sm_90", 1), ("H200", "sm_90", 1)]),  # Modal may upgrade it
        ("H100!", [("H100", "sm_90", 1)]),  # "!" forbids the upgrade
        ("h100!:8", [("H100", "sm_90", 8)]),  # case does not matter; counts keep working
        ("H100:2", [("H100", "sm_90", 2), ("H200", "sm_90", 2)]),
        ("H200", [("H200", "sm_90", 1)]),
        ("B200", [("B200", "sm_100", 1)]),
        ("B200+", [("B200", "sm_100", 1), ("B300", "sm_103", 1)]),  # the family: maybe a B300
        ("B300", [("B300", "sm_103", 1)]),
        ("A100", [("A100-40GB", "sm_80", 1), ("A100-80GB", "sm_80", 1)]),  # may get 80 GB
        ("A100-40GB", [("A100-40GB", "sm_80", 1)]),  # asks for the 40 GB card alone
        ("A10G", [("A10", "sm_86", 1)]),
        ("cpu", [("cpu", "none", 0)]),
        (["H100", "A100-80GB"], [("H100", "sm_90", 1), ("H200", "sm_90", 1), ("A100-80GB", "sm_80", 1)]),
        (
            ["H100:8", "H100:4"],
            [("H100", "sm_90", 8), ("H200", "sm_90", 8), ("H100", "sm_90", 4), ("H200", "sm_90", 4)],
        ),
        (["H100", "H100!"], [("H100", "sm_90", 1), ("H200", "sm_90", 1)]),  # the union, without repeats
        (["B200+", "H200"], [("B200", "sm_100", 1), ("B300", "sm_103", 1), ("H200", "sm_90", 1)]),
    ],
)
def test_a_request_lands_on_what_modal_may_give_it_in_order(value, expected):
    assert lands(value) == expected


def test_each_landing_names_the_modal_value_that_lands_there_alone():
    exact = {each.label: each.exact for each in parse_request(["H100:2", "A100", "B200+", "A10G"]).landings}
    assert exact == {
        "H100:2": "H100!:2",
        "H200:2": "H200:2",
        "A100-40GB": "A100-40GB",
        "A100-80GB": "A100-80GB",
        "B200": "B200",
        "B300": "B300",
        "A10": "A10",
    }
    assert parse_request("cpu").first.exact == "cpu" and parse_request("cpu").is_cpu


def test_a_landing_is_chosen_by_gpu_type_or_label():
    request = parse_request(["H100:8", "A100-80GB"])
    assert request.landing("h200").label == "H200:8" and request.landing("A100-80GB").gpu_count == 1
    assert request.landing(None) == request.first
    with pytest.raises(UsageError, match=r'gpu = \["H100:8", "A100-80GB"\] never lands on .B300.'):
        request.landing("B300")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("H100!!", "Modal takes '!' only after H100"),
        ("!H100", "unknown GPU type '!H100'"),
        ("B200++", "'\\+' only after B200"),
        ("T4!", "write T4"),
        ("H101", "unknown GPU type 'H101'.*B200\\+, B300, cpu"),
        ("H100:0", "at least 1"),
        ("cpu:1", "cpu takes no count"),
        ([], "empty list"),
        (["H100", 3], "entry 2 of the list must be a GPU type"),
        (["H100", "H101"], "entry 2 of the list: unknown GPU type 'H101'"),
        (["H100", "cpu"], '"cpu" cannot be a fallback'),
        ([["H100"]], "entry 1 of the list must be a GPU type"),
        (8, 'must be a GPU type such as "H100"'),
    ],
)
def test_bad_spellings_say_what_is_wrong_in_one_line(value, message):
    with pytest.raises(UsageError, match=message) as raised:
        parse_request(value)
    assert "\n" not in str(raised.value)


def test_parse_gpu_gives_the_first_landing():
    assert parse_gpu("B200+:2") == (parse_request("B200").first.gpu, 2)
    assert parse_gpu("cpu") == (CPU, 0)


@pytest.mark.parametrize(
    ("device", "modal_type"),
    [
        ("NVIDIA B300 SXM6 AC", "B300"),
        ("NVIDIA B200", "B200"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA H100 80GB HBM3", "H100"),
    ],
)
def test_nvml_names_map_to_the_concrete_type_a_container_landed_on(device, modal_type):
    assert modal_gpu_type(device) == modal_type
