"""Policy files on disk: the policies in force, kept across broken edits, and their errors.

Reading files (`load_policy_paths`) and keeping the policies in force across edits
(`PolicyRegistry`) do file I/O and nothing else: no web, no database. A file is all or
nothing: a file with an error contributes no policy of its new version, and the
registry keeps its previous version in force.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from controlplane.rollout.policy import Policy, PolicyError
from controlplane.rollout.policy_loader import parse_policy_text

POLICY_FILE_SUFFIXES = (".yaml", ".yml")
# A policy folder is a few kilobytes; a larger file is a mistake, and reading it whole would cost memory.
MAX_POLICY_FILE_BYTES = 1 << 20


@dataclass(frozen=True)
class FileLoad:
    """What one policy file contributes: its policies in force and the errors of its current text."""

    path: Path
    policies: tuple[Policy, ...]
    errors: tuple[PolicyError, ...] = ()
    stale: bool = False  # the policies are an earlier version of the file, kept because this one is broken


@dataclass(frozen=True)
class PolicySet:
    """The policies of a file or folder, file by file in name order, and every error found."""

    path: Path
    files: tuple[FileLoad, ...] = ()
    path_errors: tuple[PolicyError, ...] = ()  # the path itself: missing, unreadable

    @property
    def policies(self) -> tuple[Policy, ...]:
        return tuple(policy for file in self.files for policy in file.policies)

    @property
    def errors(self) -> tuple[PolicyError, ...]:
        return self.path_errors + tuple(error for file in self.files for error in file.errors)

    @property
    def ok(self) -> bool:
        return not self.errors


def policy_files(path: Path) -> list[Path]:
    """The policy files at `path`: the file itself, or the folder's *.yaml and *.yml in name order.

    Names starting with `..` are skipped: in a Kubernetes ConfigMap volume they are the
    kubelet's own (`..data`, `..2026_12_01_10_00_00.123`, `..data_tmp`), and the files
    are symlinks through `..data` into them.
    """
    if path.is_dir():
        return sorted(
            p for p in path.iterdir()
            if p.suffix in POLICY_FILE_SUFFIXES and not p.name.startswith("..") and p.is_file()
        )
    return [path]


def load_policy_paths(path: Path, *, previous: PolicySet | None = None) -> PolicySet:
    """Read and check the policy file or folder at `path`.

    A file with errors contributes no policy of its current text; with `previous`,
    the policies that file had there stay in force instead (so do all of them when
    the path itself has gone). Names must be unique across files: a file that
    repeats an earlier file's name is in error.
    """
    kept = {file.path: file.policies for file in previous.files} if previous is not None else {}
    if not path.exists():
        error = PolicyError(str(path), 0, "", "no such file or folder")
        files = tuple(FileLoad(p, policies, stale=True) for p, policies in kept.items() if policies)
        return PolicySet(path, files, (error,))
    loads: list[FileLoad] = []
    defined_at: dict[str, str] = {}
    for file in policy_files(path):
        policies, errors = _read_file(file)
        if not errors:
            errors = _duplicates(policies, defined_at)
        if errors:
            policies = tuple(p for p in kept.get(file, ()) if p.name not in defined_at)
        defined_at.update((policy.name, policy.source) for policy in policies)
        loads.append(FileLoad(file, policies, tuple(errors), stale=bool(errors and policies)))
    return PolicySet(path, tuple(loads))


def _read_file(path: Path) -> tuple[tuple[Policy, ...], list[PolicyError]]:
    try:
        if path.stat().st_size > MAX_POLICY_FILE_BYTES:
            return (), [PolicyError(str(path), 0, "", f"larger than {MAX_POLICY_FILE_BYTES} bytes: "
                                    "is this a policy file?")]
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return (), [PolicyError(str(path), 0, "", f"cannot read: {exc}")]
    try:
        return parse_policy_text(text, source=str(path))
    except Exception as exc:  # RecursionError and MemoryError included
        # The parser answers every input it was tested with; should one still escape, it is
        # this file's error, not the end of the reload loop or of the process starting.
        return (), [PolicyError(str(path), 0, "", f"could not be parsed ({type(exc).__name__}: {exc})")]


def _duplicates(policies: tuple[Policy, ...], defined_at: dict[str, str]) -> list[PolicyError]:
    errors = []
    for index, policy in enumerate(policies):
        if policy.name in defined_at:
            file, _, line = policy.source.rpartition(":")
            errors.append(PolicyError(file, int(line), f"policies[{index}].name",
                                      f"{policy.name!r} is already defined at {defined_at[policy.name]}"))
    return errors


Fingerprint = tuple[tuple[str, int, int, int, int], ...]


def _fingerprint(path: Path) -> Fingerprint:
    """Names, mtimes, sizes and inodes of the policy files: any edit, addition or removal changes it.

    Through symlinks: a ConfigMap update (the kubelet writes a new directory and swaps the
    `..data` symlink to it) leaves every name as it was and changes the file behind it, a
    new inode, even when the size and the coarse mtime are the same.
    """
    if not path.exists():
        return (("<missing>", 0, 0, 0, 0),)
    stats = []
    for file in policy_files(path):
        try:
            stat = file.stat()
        except OSError:
            continue
        stats.append((str(file), stat.st_mtime_ns, stat.st_size, stat.st_dev, stat.st_ino))
    return tuple(stats)


class PolicyRegistry:
    """The policies in force from `AEGIS_POLICIES`, and the errors of the files as they are now.

    A watcher calls `changed_since_last_check()` every couple of seconds and
    `reload()` when it says so; a file broken by an edit is reported in `errors`
    while its previous policies stay in force.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._current = PolicySet(path)
        self._fingerprint: Fingerprint | None = None

    @property
    def policies(self) -> tuple[Policy, ...]:
        return self._current.policies

    @property
    def errors(self) -> tuple[PolicyError, ...]:
        return self._current.errors

    @property
    def current(self) -> PolicySet:
        return self._current

    def reload(self) -> bool:
        """Read every file again; True when all of them loaded without an error. Never raises:
        whatever goes wrong is in `errors`, and the policies in force stay."""
        try:
            self._fingerprint = _fingerprint(self.path)  # taken first: an edit while reading shows next time
            self._current = load_policy_paths(self.path, previous=self._current)
        except Exception as exc:  # a folder that cannot be listed, or worse: never the end of reloading
            error = PolicyError(str(self.path), 0, "", f"reload failed ({type(exc).__name__}: {exc}); "
                                "the policies in force stay")
            kept = tuple(FileLoad(f.path, f.policies, stale=True) for f in self._current.files if f.policies)
            self._current = PolicySet(self.path, kept, (error,))
        return self._current.ok

    def changed_since_last_check(self) -> bool:
        """Whether a policy file was edited, added or removed since the last check or reload."""
        fingerprint = _fingerprint(self.path)
        changed = fingerprint != self._fingerprint
        self._fingerprint = fingerprint
        return changed
