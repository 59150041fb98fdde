"""Every GPU a deploy can land on is checked: ``gpu = "H100"`` may boot on an H200, and a cache
warm on one is cold on the other. The real command, on a real root and manifest; the only thing
planted is what boots on an H100 and an H200 would have recorded (their fingerprints)."""

from __future__ import annotations

import json
import sys

import pytest

import cachekeeper.modal as ckm
from cachekeeper.deploy import contradictions, is_gpu_fact, landing_of
from cachekeeper.errors import UsageError
from cachekeeper.manifest import Manifest
from cachekeeper.prune import PrunePolicy, plan_prune
from cachekeeper.records import Kind, Record
from cachekeeper.store import Roots
from cachekeeper.target import load_target

from .adversary import invoke
from .helpers import facts, put, run_cli, write_target

H200 = {"gpu__type": "H200", "gpu__name": "NVIDIA H200", "gpu__memory_mib": 143771}
A100 = {"gpu__type": "A100-80GB", "gpu__name": "NVIDIA A100-SXM4-80GB", "gpu__arch": "sm_80"}
SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def fleet(root, sqlite_url) -> Manifest:
    """The root's own manifest, holding what one boot on an H100 and one on an H200 observed."""
    manifest = Manifest.open(sqlite_url)
    observed = [Record.new(Kind.OBSERVED, facts=facts(), host="h100:1")]
    observed.append(Record.new(Kind.OBSERVED, facts=facts(**H200), host="h200:1"))
    manifest.fold(observed, [], {})
    return manifest


def target(tmp_path, gpu: str = '"H100"', extra: str = "", name: str = "cachekeeper.toml"):
    body = f'[target]\ngpu = {gpu}\nlayers = ["compile"]\n{extra}\n[target.packages]\nvllm = "0.33.0"\n'
    return write_target(tmp_path / name, body)


def check(root, path, *args: str):
    result = run_cli("check", "--target", str(path), "--json", *args, env={"CACHEKEEPER_ROOT": str(root)})
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def rows(report) -> dict[str, str]:
    return {f"{row['layer']} on {row['gpu']}": row["status"] for row in report["layers"]}


def test_h100_warm_and_h200_cold_is_not_ready_and_any_makes_it_ready(root, tmp_path, fleet):
    path = target(tmp_path)
    code, cold = check(root, path)
    assert code == 1 and rows(cold) == {"compile on H100": "cold", "compile on H200": "cold"}
    h100, h200 = cold["landings"]
    # Each landing inherits from a fingerprint seen on its own GPU type, never a sibling's.
    assert (h100["observation"]["gpu_type"], h100["facts"]["gpu.name"]["value"]) == ("H100", "NVIDIA H100 80GB HBM3")
    assert (h200["observation"]["gpu_type"], h200["facts"]["gpu.name"]["value"]) == ("H200", "NVIDIA H200")
    keys = {row["gpu"]: row["key"] for row in cold["layers"]}
    assert keys["H100"] != keys["H200"] and all(row["unverified"] == [] for row in cold["layers"])

    put(root, fleet, keys["H100"], age_days=0)  # what a boot on the H100 published
    code, report = check(root, path)
    assert code == 1 and report["ready"] is False
    assert rows(report) == {"compile on H100": "warm", "compile on H200": "cold"}
    assert [(row["gpu"], row["gpu_count"], row["key"]) for row in report["layers"]] == [
        ("H100", 1, keys["H100"]),
        ("H200", 1, keys["H200"]),
    ]
    code, anyway = check(root, path, "--any")
    assert code == 0 and anyway["ready"] is True and anyway["any"] is True

    human = run_cli("check", "--target", str(path), env={"CACHEKEEPER_ROOT": str(root)})
    assert human.returncode == 1 and 'gpu = "H100" lands on H100, H200' in human.stdout
    assert "not ready: not warm: compile on H200" in human.stdout
    assert "Inherited from the fingerprint seen on H200" in human.stdout


def test_a_pinned_h100_is_one_landing_and_warm_alone(root, tmp_path, fleet):
    _, report = check(root, target(tmp_path, gpu='"H100"'))
    put(root, fleet, report["layers"][0]["key"], age_days=0)
    code, pinned = check(root, target(tmp_path, gpu='"H100!"', name="pinned.toml"))
    assert code == 0 and rows(pinned) == {"compile on H100": "warm"}


def test_a_fallback_never_observed_is_unverified_and_the_weights_are_one_row(root, tmp_path, fleet):
    extra = f'model = "org/m"\nrevision = "{SHA}"\nlayers = ["weights", "compile"]'
    path = write_target(
        tmp_path / "cachekeeper.toml",
        f'[target]\ngpu = ["H100!", "A100-80GB"]\n{extra}\n[target.packages]\nvllm = "0.33.0"\n',
    )
    _, report = check(root, path)
    assert [(row["layer"], row["gpu"]) for row in report["layers"]] == [
        ("weights", None),  # keyed by model and sha alone: the same on every landing
        ("compile", "H100"),
        ("compile", "A100-80GB"),
    ]
    h100, a100 = report["layers"][1:]
    assert h100["unverified"] == [] and {"gpu.name", "driver.branch"} <= set(a100["unverified"])
    assert report["landings"][1]["observation"] is None  # no A100 ever booted: nothing inherited
    assert a100["key"].startswith("compile-sm80-")


def test_a_boot_on_any_landing_contradicts_nothing_its_target_declares(tmp_path):
    deploy = load_target(target(tmp_path))  # "H100": an H200 is where Modal may put it
    on_h200 = facts(**H200)
    assert landing_of(deploy, on_h200).label == "H200"

    def gpu_changes(observed):
        changes = contradictions(deploy.declared_facts(landing_of(deploy, observed)), observed)
        return {(c.name, c.old, c.new) for c in changes if is_gpu_fact(c.name)}

    assert gpu_changes(on_h200) == set()
    on_a100 = facts(**A100)  # not a landing of this deploy: loud
    assert gpu_changes(on_a100) == {("gpu.type", "H100", "A100-80GB"), ("gpu.arch", "sm_90", "sm_80")}


def test_rebuild_runs_the_warmup_once_per_cold_landing_with_its_gpu(root, tmp_path, fleet):
    record = tmp_path / "warmed"
    script = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"
    warmup = f"warmup = {json.dumps([sys.executable, '-c', script, str(record), '{gpu}'])}"
    path = target(tmp_path, extra=warmup)
    code, report = check(root, path, "--rebuild")
    assert code == 1 and rows(report["before_rebuild"]) == {"compile on H100": "cold", "compile on H200": "cold"}
    # "H100!": the Modal value that lands on an H100 alone, where "H100" might get an H200 again.
    assert record.read_text().splitlines() == ["H100!", "H200"]

    put(root, fleet, report["layers"][0]["key"], age_days=0)
    record.unlink()
    code, report = check(root, path, "--rebuild")
    assert code == 1 and record.read_text().splitlines() == ["H200"]  # only the cold one
    code, report = check(root, path, "--rebuild", "--any")
    assert code == 0 and "before_rebuild" not in report
    assert record.read_text().splitlines() == ["H200"]  # ready with --any: nothing ran


def test_a_warmup_without_a_gpu_runs_once_as_before(root, tmp_path, fleet):
    record = tmp_path / "warmed"
    script = "import sys; open(sys.argv[1], 'a').write('ran\\n')"
    path = target(tmp_path, extra=f"warmup = {json.dumps([sys.executable, '-c', script, str(record)])}")
    code, _ = check(root, path, "--rebuild")
    assert code == 1 and record.read_text() == "ran\n"


def test_snapshot_tag_gives_a_tag_per_landing_and_the_first_goes_in_the_image(tmp_path):
    path = target(tmp_path, gpu='"B200+"')
    result = run_cli("snapshot-tag", "--target", str(path))
    tags = ckm.snapshot_tags(path)
    assert result.returncode == 0 and list(tags) == ["B200", "B300"] and tags["B200"] != tags["B300"]
    assert result.stdout.splitlines() == [f"B200  {tags['B200']}", f"B300  {tags['B300']}"]
    assert tags["B200"].startswith("snapshot-sm100-") and tags["B300"].startswith("snapshot-sm103-")
    assert "holds one tag" in result.stderr
    data = json.loads(run_cli("snapshot-tag", "--target", str(path), "--json").stdout)
    assert data["tags"] == tags and data["key"] == tags["B200"] == data["env"][ckm.SNAPSHOT_KEY_ENV]

    assert ckm.snapshot_tag(path, gpu="B300") == tags["B300"] and ckm.snapshot_tag(path) == tags["B200"]
    assert ckm.snapshot_facts(path, gpu="b300").value("gpu.arch") == "sm_103"
    # Restored on either landing, a process must match: the facts to verify are those both share.
    shared = json.loads(ckm.snapshot_env(path)[ckm.SNAPSHOT_FACTS_ENV])
    assert "gpu.arch" not in shared and shared["vllm"] == "0.33.0"
    assert json.loads(ckm.snapshot_env(path, gpu="B300")[ckm.SNAPSHOT_FACTS_ENV])["gpu.arch"] == "sm_103"
    with pytest.raises(UsageError, match="never lands on 'H100'"):
        ckm.snapshot_tag(path, gpu="H100")


def test_a_deploy_on_one_gpu_type_prints_its_tag_alone(tmp_path):
    path = target(tmp_path, gpu='"H100!"')
    result = run_cli("snapshot-tag", "--target", str(path))
    assert result.returncode == 0 and result.stdout.strip() == ckm.snapshot_tag(path) and result.stderr == ""


def test_prune_stale_keeps_the_keys_of_every_landing(root, tmp_path, fleet):
    fleet.fold([Record.new(Kind.OBSERVED, facts=facts(**A100), host="a100:1")], [], {})
    path = target(tmp_path, gpu='["H100", "A100-80GB"]')
    _, report = check(root, path)
    for row in report["layers"]:
        put(root, fleet, row["key"], age_days=30)
    stale = put(root, fleet, "compile-sm90-00000000000000ee", age_days=30)
    planned = plan_prune(fleet, Roots.at(root), PrunePolicy.of(stale=True, targets=[load_target(path)]))
    assert [a.key for a in planned.removals] == [stale.key]
    for row in report["layers"]:  # the H200 and the A100-80GB fallback too
        assert planned.reasons[row["key"]] == ("a target still derives this key",), row["gpu"]


@pytest.mark.parametrize("gpu", ['"H100!!"', '"!H100"', '"B200++"', "[]", '["H100", 3]', '["H100", "L5"]'])
def test_bad_gpu_spellings_are_usage_errors_naming_the_file_and_the_setting(root, tmp_path, gpu):
    path = target(tmp_path, gpu=gpu)
    for command in (("check",), ("snapshot-tag",)):
        outcome = invoke("--root", str(root), *command, "--target", str(path))
        outcome.assert_usage_error()
        assert str(path) in outcome.err and "[target] gpu" in outcome.err
