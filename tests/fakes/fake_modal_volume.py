"""Test doubles of a Modal Volume and of the containers that mount it, with the visibility Modal documents.

Modelled on (cited text abridged):
- modal.com/docs/guide/volumes, "Volume commits and reloads": "At container creation time the latest state of
  an attached Volume is mounted. If the Volume is then subsequently modified by a commit operation in another
  running container, that Volume modification won't become available until the original container does a
  .reload()"; "any volume changes made within a container need to be committed for those the changes to become
  visible outside the current container".
- the modal 1.6.4 SDK, modal/volume.py: `_Volume` ("you need to explicitly reload the volume to see changes made
  since it was mounted ... explicitly commit any changes you make to the volume for the changes to become
  visible outside the current container"; "Last write wins in case of concurrent modification of the same
  file"; "nor is distributed file locking supported"); `commit()` reloads after a successful commit
  ("Reload changes on successful commit"); `reload()`: "Any uncommitted changes ... may implicitly be committed".

Not modelled: Modal's background commits. The SDK asks for them on every mount (`allow_background_commits=True`
in modal/volume.py `_volume_to_mount_proto`), but nothing documents WHEN one happens relative to a function's
return, so this double takes the case code must survive: a container's changes leave it only at commit() (or
at a reload, which Modal says may commit them). Nor the open-files check of reload().

A volume's durable state is a folder (`committed`); each container has its own copy (its view) taken when the
container starts or reloads. commit() writes the files that container changed since its last view, one by
one over the durable state (last write wins per file, other containers' commits stay), then reloads.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

from modal.exception import NotFoundError


def _scan(root: Path) -> dict[str, tuple]:
    """relpath -> ("d",) | ("f", sha256) | ("l", target) for everything under root."""
    found = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(base) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                found[rel] = ("l", os.readlink(path))
            elif path.is_dir():
                found[rel] = ("d",)
            else:
                found[rel] = ("f", hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def _copy_tree(source: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, symlinks=True)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


class FakeModalVolume:
    """One named volume: its durable (committed) state, plus the launcher-side calls upload_dataset makes."""

    def __init__(self, root: Path, name: str):
        self.name = name
        self.committed = root / "volumes" / name
        self.committed.mkdir(parents=True)
        self.commits = 0

    def mount(self, container_dir: Path) -> VolumeView:
        """The volume in a container that starts now: the latest committed state."""
        return VolumeView(self, container_dir)

    # --- from outside any container (the launcher): these act on the durable state directly ---------------
    def listdir(self, path: str, recursive: bool = False) -> list:
        folder = self.committed / path
        if not folder.is_dir():
            raise NotFoundError(f"{path} not found")  # what modal.Volume.listdir raises for a missing path
        paths = folder.rglob("*") if recursive else folder.iterdir()
        return [SimpleNamespace(path=p.relative_to(self.committed).as_posix()) for p in sorted(paths)]

    @contextmanager
    def batch_upload(self, force: bool = False):
        def put_file(local, remote):
            target = self.committed / remote
            if target.exists() and not force:
                raise FileExistsError(remote)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, target)
        yield SimpleNamespace(put_file=put_file)


class VolumeView:
    """A volume as one container sees it; what a modal.Volume handle acts on inside that container."""

    def __init__(self, volume: FakeModalVolume, path: Path):
        self.volume, self.path = volume, path
        self.commits = self.reloads = 0
        self._take_latest()

    def _take_latest(self) -> None:
        _copy_tree(self.volume.committed, self.path)
        self._base = _scan(self.path)

    def commit(self) -> None:
        now, base, durable = _scan(self.path), self._base, self.volume.committed
        for rel in sorted(set(base) - set(now), reverse=True):  # removed here since the last view
            _remove(durable / rel)
        for rel, entry in sorted(now.items()):
            if base.get(rel) == entry:
                continue  # unchanged here: another container's newer commit of it stays
            source, target = self.path / rel, durable / rel
            if entry[0] != "d" or not target.is_dir():
                _remove(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            if entry[0] == "d":
                target.mkdir(exist_ok=True)
            elif entry[0] == "l":
                target.symlink_to(entry[1])
            else:
                shutil.copyfile(source, target)
        self.commits += 1
        self.volume.commits += 1
        self._take_latest()  # modal/volume.py commit(): "Reload changes on successful commit"

    def reload(self) -> None:
        if _scan(self.path) != self._base:
            self.commit()  # "uncommitted changes ... may implicitly be committed when reloading"
        else:
            self._take_latest()
        self.reloads += 1


class FakeContainer:
    """One container of a function: its own view of every mounted volume and its own local disk."""

    _ids = itertools.count(1)

    def __init__(self, root: Path, function: str, mounts: dict[str, FakeModalVolume]):
        self.id = next(self._ids)
        self.function = function
        self.dir = root / "containers" / f"{function}-{self.id}"
        self.local = self.dir / "local"  # the container's own filesystem (e.g. /tmp)
        self.local.mkdir(parents=True)
        self.views = {mount: volume.mount(self.dir / "mounts" / mount.strip("/")) for mount, volume in mounts.items()}
        self.calls = 0
        self.log = io.StringIO()

    @contextmanager
    def running(self):
        """While a call runs, its container's folder lies at `<root>/running`: every container of an app sees its
        mounts and local disk at the same paths, as on Modal (a volume mounts where the function says), so a
        stage's paths, and the plan made of them, do not depend on which container runs it. Calls run one at a
        time here; an orchestrator's container, which mounts nothing, stays where it is."""
        if not self.views:
            yield
            return
        home, stable = self.dir, self.dir.parent.parent / "running"
        os.rename(home, stable)
        self._move(home, stable)
        try:
            yield
        finally:
            os.rename(stable, home)
            self._move(stable, home)

    def _move(self, old: Path, new: Path) -> None:
        self.dir, self.local = new, new / self.local.relative_to(old)
        for view in self.views.values():
            view.path = new / view.path.relative_to(old)

    def path(self, container_path: str, local_prefixes: tuple[str, ...] = ()) -> str:
        """Where a path inside the container lies on this machine: under a mount's view, or local disk."""
        for mount, view in self.views.items():
            if container_path == mount or container_path.startswith(mount + "/"):
                return str(view.path) + container_path[len(mount):]
        for prefix in local_prefixes:
            if container_path.startswith(prefix):
                return str(self.local) + container_path
        return container_path

    def handles(self, volumes: dict | None) -> dict[str, VolumeView]:
        """Volume handles passed in as arguments act on THIS container's mount of that volume (as Modal's
        commit/reload, made inside a container, act on its mount)."""
        by_volume = {id(view.volume): view for view in self.views.values()}
        return {mount: by_volume[id(volume)] for mount, volume in (volumes or {}).items()}


class FakeFunctionCall:
    """A spawned call: it runs when its result is first asked for (get), in the container it was given."""

    def __init__(self, function: FakeFunction, container: FakeContainer, args: tuple):
        self.function, self.container, self.args = function, container, args
        self._done, self._result, self._error = False, None, None

    def get(self, timeout=None):
        if not self._done:
            try:
                with self.container.running():
                    self._result = self.function.body(self.container, *self.args)
            except Exception as exc:  # the function's exception travels back to the caller, as Modal's does
                self._error = exc
            self._done = True
            self.container.calls += 1
            self.function.idle.append(self.container)  # a warm container: the next call may reuse it
        if self._error is not None:
            raise self._error
        return self._result


class FakeFunction:
    """A Modal Function: spawn() gets a container (a warm idle one, else a new one that mounts the latest
    committed state of its volumes) and returns the call. `body(container, *args)` runs the call."""

    def __init__(self, root: Path, name: str, mounts: dict[str, FakeModalVolume], body):
        self.root, self.name, self.mounts, self.body = root, name, mounts, body
        self.idle: list[FakeContainer] = []
        self.containers: list[FakeContainer] = []

    def spawn(self, *args) -> FakeFunctionCall:
        if self.idle:
            container = self.idle.pop()
        else:
            container = FakeContainer(self.root, self.name, self.mounts)
            self.containers.append(container)
        return FakeFunctionCall(self, container, args)
