"""Policy files on disk: reloading keeps a broken file's policies in force; `aegis policy validate`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controlplane.rollout.policy import Pause, SetWeight, Step
from controlplane.rollout.policy_files import PolicyRegistry, load_policy_paths
from controlplane.rollout.policy_schemas import PolicyStatus
from tests.configmap_volume import ConfigMapVolume

ROOT = Path(__file__).resolve().parents[2]

ALPHA = """\
policies:
  - name: alpha
    models: ["a-*"]
    steps:
      - setWeight: 10
"""
ALPHA_BROKEN = """\
policies:
  - name: alpha
    models: ["a-*"]
    steps:
      - setWeight: 10
      - setweight: 20
  - name: alpha-two
    models: ["a2-*"]
    steps:
      - pause: {duration: 5}
"""
ALPHA_FIXED = """\
policies:
  - name: alpha
    models: ["a-*"]
    steps:
      - setWeight: 20
      - pause: {}
  - name: alpha-two
    models: ["a2-*"]
    steps:
      - setWeight: 50
"""
BETA = """\
policies:
  - name: beta
    models: ["*"]
    steps:
      - setWeight: 30
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "10-alpha.yaml").write_text(ALPHA)
    (tmp_path / "policies" / "20-beta.yml").write_text(BETA)
    (tmp_path / "policies" / "notes.txt").write_text("not a policy file")
    return tmp_path / "policies"


def names(registry: PolicyRegistry) -> list[str]:
    return [policy.name for policy in registry.policies]


def steps_of(registry: PolicyRegistry, name: str) -> tuple[Step, ...]:
    return next(policy.steps for policy in registry.policies if policy.name == name)


def test_folder_loads_every_yaml_file_in_name_order(folder: Path) -> None:
    registry = PolicyRegistry(folder)

    assert registry.reload() is True
    assert names(registry) == ["alpha", "beta"]
    assert registry.policies[0].source == f"{folder / '10-alpha.yaml'}:2"
    assert registry.errors == ()


def test_broken_file_keeps_its_old_policies_until_it_is_fixed(folder: Path) -> None:
    registry = PolicyRegistry(folder)
    registry.reload()
    alpha = folder / "10-alpha.yaml"

    alpha.write_text(ALPHA_BROKEN)
    assert registry.reload() is False

    assert names(registry) == ["alpha", "beta"]
    assert steps_of(registry, "alpha") == (SetWeight(10),)
    assert [str(error) for error in registry.errors] == [
        f"{alpha}:6: policies[0].steps[1].setweight: unknown key (did you mean 'setWeight'?); "
        "allowed: setWeight, pause",
        f'{alpha}:10: policies[1].steps[0].pause.duration: must be a duration above 0 such as "30s", "1m", '
        '"500ms" or "1h30m", got 5',
    ]
    status = PolicyStatus.of(registry).model_dump(mode="json")
    assert status["ok"] is False
    assert [policy["name"] for policy in status["policies"]] == ["alpha", "beta"]
    assert status["policies"][0]["source"] == f"{alpha}:2"
    assert status["errors"][0] | {"message": "…"} == {
        "file": str(alpha), "line": 6, "field": "policies[0].steps[1].setweight", "message": "…",
        "text": str(registry.errors[0]),
    }
    assert status["files"][0] == {"file": str(alpha), "policies": ["alpha"], "stale": True, "errors": 2}

    alpha.write_text(ALPHA_FIXED)
    assert registry.reload() is True

    assert names(registry) == ["alpha", "alpha-two", "beta"]
    assert steps_of(registry, "alpha") == (SetWeight(20), Pause(None))
    assert registry.errors == ()
    assert PolicyStatus.of(registry).files[0].stale is False


def test_a_file_broken_before_it_ever_loaded_contributes_nothing(folder: Path) -> None:
    (folder / "30-gamma.yaml").write_text(ALPHA_BROKEN.replace("alpha", "gamma"))

    policy_set = load_policy_paths(folder)

    assert [policy.name for policy in policy_set.policies] == ["alpha", "beta"]
    assert {error.file for error in policy_set.errors} == {str(folder / "30-gamma.yaml")}


def test_a_name_defined_in_an_earlier_file_is_an_error_in_the_later_one(folder: Path) -> None:
    registry = PolicyRegistry(folder)
    registry.reload()

    (folder / "20-beta.yml").write_text(BETA + ALPHA.removeprefix("policies:\n"))
    assert registry.reload() is False

    assert names(registry) == ["alpha", "beta"]
    (error,) = registry.errors
    assert (error.file, error.line, error.field) == (str(folder / "20-beta.yml"), 6, "policies[1].name")
    assert f"'alpha' is already defined at {folder / '10-alpha.yaml'}:2" in error.message


def test_deleting_a_file_retires_its_policies(folder: Path) -> None:
    registry = PolicyRegistry(folder)
    registry.reload()

    (folder / "10-alpha.yaml").unlink()
    assert registry.changed_since_last_check() is True
    assert registry.reload() is True

    assert names(registry) == ["beta"]


def test_a_vanished_path_is_reported_and_the_policies_stay_in_force(folder: Path) -> None:
    registry = PolicyRegistry(folder)
    registry.reload()

    folder.rename(folder.with_name("moved"))
    assert registry.reload() is False

    assert names(registry) == ["alpha", "beta"]
    assert [str(error) for error in registry.errors] == [f"{folder}: no such file or folder"]


def test_a_missing_path_is_an_error(tmp_path: Path) -> None:
    policy_set = load_policy_paths(tmp_path / "absent.yaml")

    assert policy_set.policies == ()
    assert [str(error) for error in policy_set.errors] == [
        f"{tmp_path / 'absent.yaml'}: no such file or folder"
    ]


def test_changes_are_noticed_by_mtime_size_and_the_set_of_files(folder: Path) -> None:
    registry = PolicyRegistry(folder)
    assert registry.changed_since_last_check() is True  # never loaded
    registry.reload()
    assert registry.changed_since_last_check() is False

    beta = folder / "20-beta.yml"
    stat = beta.stat()
    os.utime(beta, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # same size, touched
    assert registry.changed_since_last_check() is True
    assert registry.changed_since_last_check() is False

    (folder / "40-delta.yaml").write_text(BETA.replace("beta", "delta"))
    assert registry.changed_since_last_check() is True
    (folder / "ignored.json").write_text("{}")
    assert registry.changed_since_last_check() is False


def validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controlplane.cli", "policy", "validate", *map(str, paths)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )


def test_cli_validate_accepts_good_files(folder: Path) -> None:
    result = validate(folder / "10-alpha.yaml", ROOT / "deploy" / "policies" / "default.yaml")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"ok {folder / '10-alpha.yaml'}: 1 policies (alpha)",
        f"ok {ROOT / 'deploy' / 'policies' / 'default.yaml'}: 1 policies (default)",
    ]
    assert result.stderr == ""


def test_cli_validate_prints_every_error_with_file_line_and_field(folder: Path) -> None:
    broken = folder / "10-alpha.yaml"
    broken.write_text(ALPHA_BROKEN)

    result = validate(broken, folder / "20-beta.yml")

    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{broken}:6: policies[0].steps[1].setweight: unknown key (did you mean 'setWeight'?); "
        "allowed: setWeight, pause",
        f'{broken}:10: policies[1].steps[0].pause.duration: must be a duration above 0 such as "30s", "1m", '
        '"500ms" or "1h30m", got 5',
    ]
    assert result.stdout.splitlines() == [f"ok {folder / '20-beta.yml'}: 1 policies (beta)"]


def test_cli_validate_fails_on_a_missing_file(tmp_path: Path) -> None:
    result = validate(tmp_path / "nope.yaml")

    assert result.returncode == 1
    assert result.stderr.strip() == f"{tmp_path / 'nope.yaml'}: no such file or folder"


def test_a_configmap_update_is_noticed_and_the_kubelets_own_entries_are_not_policies(tmp_path: Path) -> None:
    volume = ConfigMapVolume(tmp_path / "configmap")
    # The kubelet may write both versions within one tick of the coarse file clock: the
    # same mtime, and here the same size too. Only the file behind the symlink changes.
    same_time = time.time_ns()
    first = volume.write({"default.yaml": ALPHA}, mtime_ns=same_time)
    (first / "stray.yaml").write_text(BETA)  # inside the kubelet's directory: not a file of the volume
    registry = PolicyRegistry(volume.root)
    registry.reload()
    assert names(registry) == ["alpha"]
    assert registry.changed_since_last_check() is False
    assert steps_of(registry, "alpha") == (SetWeight(10),)

    volume.write({"default.yaml": ALPHA.replace("setWeight: 10", "setWeight: 20")}, mtime_ns=same_time)
    assert registry.changed_since_last_check() is True
    registry.reload()
    assert steps_of(registry, "alpha") == (SetWeight(20),)
    assert registry.changed_since_last_check() is False
    hidden = sorted(p.name for p in volume.root.iterdir() if p.name.startswith(".."))
    assert hidden == [(volume.root / "..data").resolve().name, "..data"]  # the old version is gone

    # A key added and one removed: the set of files changes through the swap too.
    volume.write({"20-beta.yaml": BETA})
    assert registry.changed_since_last_check() is True
    registry.reload()
    assert (names(registry), registry.errors) == (["beta"], ())
    (volume.root / "..stray.yaml").write_text(BETA.replace("beta", "stray"))
    assert registry.changed_since_last_check() is False
