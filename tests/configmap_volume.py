"""A Kubernetes ConfigMap volume on disk, updated the way the kubelet's atomic writer does it.

kubernetes/pkg/volume/util/atomic_writer.go: the files of each version are written to a
new hidden directory `..<timestamp>`; `..data_tmp` is made a symlink to it and renamed
over `..data` (the one atomic step); each visible name is a symlink `name -> ..data/name`,
made once; the previous version's directory is then removed. A file is never written in
place, so its name keeps its symlink and only what is behind it changes.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path


class ConfigMapVolume:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._versions = 0

    def write(self, files: dict[str, str], *, mtime_ns: int | None = None) -> Path:
        """Publish a new version holding exactly `files`; returns its hidden directory.

        `mtime_ns` stamps every file with the same time (a kubelet writing within one tick
        of the file system's coarse clock), so only the inode can tell versions apart.
        """
        self._versions += 1
        stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime())
        version_dir = self.root / f"..{stamp}.{self._versions:09d}"
        version_dir.mkdir()
        for name, text in files.items():
            (version_dir / name).write_text(text)
            if mtime_ns is not None:
                os.utime(version_dir / name, ns=(mtime_ns, mtime_ns))
        data = self.root / "..data"
        previous = data.resolve() if data.is_symlink() else None
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(version_dir.name)
        os.rename(tmp, data)
        for name in files:
            visible = self.root / name
            if not visible.is_symlink():
                visible.symlink_to(f"..data/{name}")
        for stale in self.root.iterdir():
            if not stale.name.startswith("..") and stale.name not in files:
                stale.unlink()
        if previous is not None:
            shutil.rmtree(previous)
        return version_dir
