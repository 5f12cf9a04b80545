"""The emulated board: an aarch64 Debian bookworm rootfs run through qemu-user-static.

Built once and cached under a data directory (`--cache-dir`, FEDKEYS_ARM_CACHE, default
~/.cache/fedkeys/arm64). Every build step leaves a stamp; a step whose inputs did not change is
skipped, so `build` is idempotent and cheap when nothing changed. Layout::

    rootfs/                 the aarch64 userland (debootstrap, minbase + python3)
      opt/fedkeys/litert/   venv: requirements-edge.txt (ai-edge-litert)
      opt/fedkeys/tflite/   venv: the same with tflite-runtime==2.14.0 and numpy<2
    cpuinfo                 a Raspberry Pi 4 /proc/cpuinfo, bind-mounted over the guest's
    stamps/                 one file per finished step (content = hash of its inputs)
    work/                   scratch shared with the guest at the same absolute path

Commands run in a private mount namespace (`unshare --mount`): proc, sys, /dev, the repository
(read-only) and the work directory are mounted for that one command and vanish with it, even
when it is killed; an EXIT trap unmounts them as well. Nothing stays mounted on the host.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GUEST_VENVS = {"litert": "/opt/fedkeys/litert", "tflite": "/opt/fedkeys/tflite"}
INTERPRETER_OF = {"litert": "ai_edge_litert", "tflite": "tflite_runtime"}
QEMU_CPU = "cortex-a72"                  # the Raspberry Pi 4's core
SUITE = "bookworm"                       # Raspberry Pi OS bookworm: Debian 12, Python 3.11
HOST_PACKAGES = ("qemu-user-static", "debootstrap", "binfmt-support")
INCLUDE = "python3,python3-venv,python3-pip,ca-certificates"
DEFAULT_MIRROR = "http://deb.debian.org/debian"


class BoardError(RuntimeError):
    """The board cannot be built or used here; the message says why and what to do."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("FEDKEYS_ARM_CACHE") or Path.home() / ".cache" / "fedkeys" / "arm64")


def say(msg: str) -> None:
    print(f"[arm] {msg}", flush=True)


@contextmanager
def step(what: str) -> Iterator[None]:
    """Announce a (possibly slow) step and report how long it took."""
    say(f"{what} ...")
    t0 = time.monotonic()
    yield
    say(f"{what}: done in {fmt_s(time.monotonic() - t0)}")


def fmt_s(s: float) -> str:
    return f"{s:.1f} s" if s < 90 else f"{int(s // 60)} min {s % 60:04.1f} s"


def _sh(cmd: Sequence[str], *, quiet: bool = False, check: bool = True, **kw) -> subprocess.CompletedProcess:
    if quiet:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.STDOUT)
        kw.setdefault("text", True)
    r = subprocess.run(list(cmd), check=False, **kw)
    if check and r.returncode != 0:
        tail = "\n".join((r.stdout or "").splitlines()[-25:]) if quiet else ""
        raise BoardError(f"`{shlex.join(cmd)}` failed (exit {r.returncode})" + (f":\n{tail}" if tail else ""))
    return r


def cpuinfo_text(cores: int = 4) -> str:
    """A Raspberry Pi 4 /proc/cpuinfo. qemu-user passes the host's x86 one through, and
    ai-edge-litert's CPU detection segfaults on that when an interpreter is created."""
    per_core = ("processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
                "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\n"
                "CPU revision\t: 3\n\n")
    return "".join(per_core.format(i=i) for i in range(cores)) + (
        "Hardware\t: BCM2835\nRevision\t: c03111\nModel\t\t: Raspberry Pi 4 Model B Rev 1.1\n")


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:16]


def venv_requirements(kind: str) -> str:
    """The guest venv's requirements: requirements-edge.txt plus the test runner (the board runs
    the edge tests), or for `tflite` the same with tflite-runtime 2.14 (the last release)
    instead of ai-edge-litert and numpy<2 (it needs it)."""
    lines = (REPO / "requirements-edge.txt").read_text().splitlines()
    lines += [ln for ln in (REPO / "requirements-test.txt").read_text().splitlines()
              if ln.strip() and not ln.lstrip().startswith("#")]
    if kind == "litert":
        return "\n".join(lines) + "\n"
    out = []
    for line in lines:
        name = line.split("#")[0].strip().lower()
        if name.startswith("ai-edge-litert"):
            out.append("tflite-runtime==2.14.0")
        elif name.startswith("numpy"):
            out.append("numpy<2")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def host_mirror() -> str:
    """The Debian mirror the host's apt uses (deb822 `URIs:` or a classic `deb URL bookworm`)."""
    src = Path("/etc/apt/sources.list.d")
    for f in sorted(src.glob("*.sources")) if src.is_dir() else []:
        for line in f.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    classic = Path("/etc/apt/sources.list")
    if classic.exists():
        for line in classic.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
                return parts[1] if not parts[1].startswith("[") else parts[2]
    return DEFAULT_MIRROR


@dataclass
class Board:
    cache_dir: Path = field(default_factory=default_cache_dir)

    def __post_init__(self) -> None:
        self.cache_dir = Path(self.cache_dir).resolve()
        self.rootfs = self.cache_dir / "rootfs"
        self.stamps = self.cache_dir / "stamps"
        self.work = self.cache_dir / "work"
        self.cpuinfo = self.cache_dir / "cpuinfo"

    # --- preconditions -------------------------------------------------------------------

    def check_host(self) -> None:
        if platform.system() != "Linux":
            raise BoardError("the emulated board needs Linux (debootstrap, chroot, binfmt_misc)")
        if os.geteuid() != 0:
            raise BoardError("building and entering the emulated board needs root (debootstrap, mount, chroot); "
                             "run it with sudo, or use a real Raspberry Pi (see the README)")
        for tool in ("unshare", "chroot", "mount"):
            if not shutil.which(tool):
                raise BoardError(f"`{tool}` is missing on the host (util-linux / coreutils)")

    def _stamp(self, name: str) -> Path:
        return self.stamps / name

    def done(self, name: str, key: str) -> bool:
        p = self._stamp(name)
        return p.exists() and p.read_text().strip() == key

    def mark(self, name: str, key: str) -> None:
        self.stamps.mkdir(parents=True, exist_ok=True)
        self._stamp(name).write_text(key + "\n")

    @property
    def built(self) -> bool:
        return all(self.done(f"venv-{k}", self._venv_key(k)) for k in GUEST_VENVS) and self.done(
            "rootfs", self._rootfs_key())

    # --- build ---------------------------------------------------------------------------

    def build(self, *, force: bool = False) -> None:
        """Every step, skipping those already done with the same inputs."""
        self.check_host()
        t0 = time.monotonic()
        if force:
            for p in self.stamps.glob("*") if self.stamps.exists() else []:
                if p.name != "rootfs":          # keep the debootstrapped userland; redo the rest
                    p.unlink()
        self.host_packages()
        self.binfmt()
        self.debootstrap()
        self.configure()
        for kind in GUEST_VENVS:
            self.venv(kind)
        say(f"board ready in {self.cache_dir} (build step total {fmt_s(time.monotonic() - t0)})")

    def host_packages(self) -> None:
        native = platform.machine() in ("aarch64", "arm64")
        need = [] if native else [p for p, exe in (("qemu-user-static", "qemu-aarch64-static"),
                                                   ("debootstrap", "debootstrap"),
                                                   ("binfmt-support", "update-binfmts")) if not shutil.which(exe)]
        if native and not shutil.which("debootstrap"):
            need = ["debootstrap"]
        if not need:
            return
        if not shutil.which("apt-get"):
            raise BoardError(f"missing host packages {need} and no apt-get to install them: install them yourself")
        with step(f"installing host packages {' '.join(need)} (apt-get; waits for the dpkg lock)"):
            cmd = ["apt-get", "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=900", *need]
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            if _sh(cmd, quiet=True, check=False, env=env).returncode != 0:
                _sh(["apt-get", "update", "-q", "-o", "DPkg::Lock::Timeout=900"], quiet=True, check=False, env=env)
                r = _sh(cmd, quiet=True, check=False, env=env)
                if r.returncode != 0:
                    raise BoardError(f"cannot install host packages {need} with apt-get:\n"
                                     + "\n".join(r.stdout.splitlines()[-10:]))

    def binfmt(self) -> None:
        """aarch64 binaries must run through qemu (package default flags `PF`: works in a chroot)."""
        if platform.machine() in ("aarch64", "arm64"):
            return
        bm = Path("/proc/sys/fs/binfmt_misc")
        if not (bm / "register").exists():
            _sh(["mount", "-t", "binfmt_misc", "binfmt_misc", str(bm)], quiet=True, check=False)
        if not (bm / "qemu-aarch64").exists():
            _sh(["update-binfmts", "--enable", "qemu-aarch64"], quiet=True, check=False)
        entry = bm / "qemu-aarch64"
        if not entry.exists():
            raise BoardError("qemu-aarch64 is not registered with binfmt_misc (is the binfmt_misc filesystem "
                             "available in this container?); try: update-binfmts --enable qemu-aarch64")
        flags = next((ln.split(":", 1)[1].strip() for ln in entry.read_text().splitlines()
                      if ln.startswith("flags:")), "")
        if "F" not in flags:
            raise BoardError(f"qemu-aarch64 is registered without the F flag ({flags!r}), so it cannot run inside "
                             "a chroot; reinstall qemu-user-static from Debian bookworm")

    def _rootfs_key(self) -> str:
        return _digest(SUITE, INCLUDE, "arm64", "minbase")

    def debootstrap(self) -> None:
        key = self._rootfs_key()
        if self.done("rootfs", key) and (self.rootfs / "usr/bin/python3").exists():
            return
        partial = self.cache_dir / "rootfs.partial"
        for p in (partial, self.rootfs):
            self._remove_tree(p)
        self.stamps.mkdir(parents=True, exist_ok=True)
        for p in self.stamps.glob("*"):
            p.unlink()                      # a new rootfs invalidates everything built in it
        mirror = host_mirror()
        with step(f"debootstrap {SUITE} arm64 (minbase + python3) from {mirror} into {self.rootfs} "
                  "(one time; about 5-6 min, ~325 MB)"):
            # In a private mount namespace: whatever debootstrap mounts inside the target (proc,
            # sys) disappears with it, even if it is interrupted.
            r = _sh(["unshare", "--mount", "--propagation", "private", "debootstrap", "--arch=arm64",
                     "--variant=minbase", f"--include={INCLUDE}", SUITE, str(partial), mirror],
                    quiet=True, check=False)
            if r.returncode != 0:
                raise BoardError("debootstrap failed (can the host reach its Debian mirror?):\n"
                                 + "\n".join(r.stdout.splitlines()[-15:]))
            partial.rename(self.rootfs)
        arch = self.exec_root(["uname", "-m"], capture=True).stdout.strip()
        if arch != "aarch64":
            raise BoardError(f"the rootfs runs as {arch!r}, not aarch64: binfmt_misc/qemu are not set up")
        self.mark("rootfs", key)

    def _net_files(self) -> list[tuple[Path, Path]]:
        """Host files the guest's pip needs to reach the same package index: resolver, pip
        configuration (and the constraints it names), extra CA certificates."""
        pairs: list[tuple[Path, Path]] = [(Path("/etc/resolv.conf"), Path("etc/resolv.conf"))]
        for src in [Path("/etc/pip.conf"), *sorted(Path("/etc/xdg/pip").glob("*"))]:
            if src.is_file():
                pairs.append((src, Path(str(src).lstrip("/"))))
        user_conf = Path.home() / ".config/pip/pip.conf"
        if user_conf.is_file():
            pairs.append((user_conf, Path("root/.config/pip/pip.conf")))
        for crt in sorted(Path("/usr/local/share/ca-certificates").glob("**/*.crt")):
            pairs.append((crt, Path(str(crt).lstrip("/"))))
        return pairs

    def configure(self) -> None:
        pairs = self._net_files()
        key = _digest(*[str(d) for _, d in pairs], *[s.read_bytes() for s, _ in pairs])
        self.cpuinfo.write_text(cpuinfo_text())
        self.work.mkdir(parents=True, exist_ok=True)
        if self.done("configure", key):
            return
        with step("copying the host's resolver, pip configuration and CA certificates into the rootfs"):
            for src, rel in pairs:
                dst = self.rootfs / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                if dst.is_symlink():
                    dst.unlink()
                shutil.copyfile(src, dst)
            # What update-ca-certificates would add to the bundle pip/requests/ssl read, done on
            # the host: the emulated run of it takes minutes (a sed per certificate).
            bundle = self.rootfs / "etc/ssl/certs/ca-certificates.crt"
            text = bundle.read_text() if bundle.exists() else ""
            for src, rel in pairs:
                if rel.suffix == ".crt":
                    pem = src.read_text().strip() + "\n"
                    if pem.strip() not in text:
                        text += ("" if text.endswith("\n") or not text else "\n") + pem
            bundle.parent.mkdir(parents=True, exist_ok=True)
            bundle.write_text(text)
        self.mark("configure", key)

    def _venv_key(self, kind: str) -> str:
        return _digest(venv_requirements(kind), "v1")

    def venv(self, kind: str) -> None:
        key = self._venv_key(kind)
        path = GUEST_VENVS[kind]
        if self.done(f"venv-{kind}", key):
            return
        req = self.rootfs / "opt/fedkeys" / f"requirements-{kind}.txt"
        req.parent.mkdir(parents=True, exist_ok=True)
        req.write_text(venv_requirements(kind))
        pkgs = ", ".join(ln for ln in venv_requirements(kind).splitlines() if ln and not ln.startswith("#"))
        with step(f"guest venv {path}: pip install {pkgs} (under emulation; about 1-3 min)"):
            self.exec_root(["rm", "-rf", path], capture=True)
            self.exec_root(["python3", "-m", "venv", path], capture=True)
            r = self.exec_root([f"{path}/bin/pip", "install", "-q", "--disable-pip-version-check",
                                "--no-compile", "-r", f"/opt/fedkeys/requirements-{kind}.txt"],
                               capture=True, check=False)
            if r.returncode != 0:
                raise BoardError(f"cannot install the edge runtime's packages for aarch64 ({kind}); pip said:\n"
                                 + "\n".join(r.stdout.splitlines()[-15:]))
        mod = {"litert": "ai_edge_litert.interpreter", "tflite": "tflite_runtime.interpreter"}[kind]
        check = (f"import importlib.util, numpy, sentencepiece, safetensors, cryptography, requests, {mod}; "
                 "assert importlib.util.find_spec('tensorflow') is None, 'TensorFlow in the edge venv'; "
                 f"print(numpy.__version__)")
        numpy_version = self.exec_root([f"{path}/bin/python", "-c", check], capture=True).stdout.strip()
        say(f"guest venv {kind}: imports fine (numpy {numpy_version}, no TensorFlow)")
        self.mark(f"venv-{kind}", key)

    def _remove_tree(self, path: Path) -> None:
        """rm -rf, but never through a mount point (a bound /dev inside would be wiped)."""
        if not path.exists():
            return
        mounts = [ln.split()[1] for ln in Path("/proc/self/mounts").read_text().splitlines()]
        inside = sorted((m for m in mounts if m == str(path) or m.startswith(str(path) + "/")), reverse=True)
        for m in inside:
            _sh(["umount", "-l", m], quiet=True, check=False)
        mounts = [ln.split()[1] for ln in Path("/proc/self/mounts").read_text().splitlines()]
        if any(m.startswith(str(path) + "/") for m in mounts):
            raise BoardError(f"{path} still has mounts inside; unmount them and retry")
        shutil.rmtree(path)

    # --- running things inside -------------------------------------------------------------

    def require_built(self) -> None:
        self.check_host()
        if not self.built:
            raise BoardError(f"the board in {self.cache_dir} is not built (or out of date): "
                             f"run `python -m tools.arm --cache-dir {self.cache_dir} build` first")
        self.binfmt()
        self.cpuinfo.write_text(cpuinfo_text())
        self.work.mkdir(parents=True, exist_ok=True)

    def exec_root(self, cmd: Sequence[str], *, capture: bool = False, check: bool = True,
                  env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """A command in the rootfs with only proc/sys/dev mounted (build steps)."""
        return self._enter(cmd, env=env or {}, binds=(), capture=capture, check=check, repo=False)

    def run(self, cmd: Sequence[str], *, venv: str = "litert", env: dict[str, str] | None = None,
            binds: Sequence[Path] = (), capture: bool = False, check: bool = False,
            timeout: float | None = None, interactive: bool = False) -> subprocess.CompletedProcess:
        """`cmd` on the board, in the repository (mounted read-only at its host path), with the
        venv's python first on PATH, FEDKEYS_INTERPRETER set to its interpreter and
        QEMU_CPU=cortex-a72. `binds` are host directories shared read-write at the same path."""
        full_env = {"PATH": f"{GUEST_VENVS[venv]}/bin:/usr/local/bin:/usr/bin:/bin",
                    "VIRTUAL_ENV": GUEST_VENVS[venv], "FEDKEYS_INTERPRETER": INTERPRETER_OF[venv],
                    "PYTHONPATH": str(REPO), **(env or {})}
        return self._enter(cmd, env=full_env, binds=(self.work, *binds), capture=capture, check=check,
                           repo=True, timeout=timeout, interactive=interactive)

    def _enter(self, cmd: Sequence[str], *, env: dict[str, str], binds: Sequence[Path], capture: bool,
               check: bool, repo: bool, timeout: float | None = None,
               interactive: bool = False) -> subprocess.CompletedProcess:
        r = str(self.rootfs)
        q = shlex.quote
        mounts: list[str] = []           # mount points, in mount order
        lines = ["set -eu", "MOUNTED=''",
                 'cleanup() { for m in $MOUNTED; do umount -l "$m" 2>/dev/null || true; done; }',
                 "trap cleanup EXIT INT TERM"]

        def mount(args: str, target: str, ro: bool = False) -> None:
            t = q(target)
            lines.append(f"[ -e {t} ] || mkdir -p {t}")       # /proc/cpuinfo is a file: no mkdir
            lines.append(f"mount {args} {t}")
            lines.append(f"MOUNTED={t}\" $MOUNTED\"")
            if ro:
                lines.append(f"mount -o remount,bind,ro {t}")
            mounts.append(target)

        mount("-t proc proc", f"{r}/proc")
        if self.cpuinfo.exists():
            mount(f"--bind {q(str(self.cpuinfo))}", f"{r}/proc/cpuinfo")
        mount("-t sysfs sysfs", f"{r}/sys")
        mount("--bind /dev", f"{r}/dev")
        if Path("/dev/pts").is_dir():
            mount("--bind /dev/pts", f"{r}/dev/pts")
        mount("-t tmpfs -o size=2g tmpfs", f"{r}/tmp")
        if repo:
            mount(f"--bind {q(str(REPO))}", f"{r}{REPO}", ro=True)
        for b in binds:
            b = Path(b).resolve()
            b.mkdir(parents=True, exist_ok=True)
            mount(f"--bind {q(str(b))}", f"{r}{b}")
        base_env = {"HOME": "/root", "LANG": "C.UTF-8", "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
                    "QEMU_CPU": QEMU_CPU, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
                    "DEBIAN_FRONTEND": "noninteractive", **env}
        env_args = " ".join(q(f"{k}={v}") for k, v in base_env.items())
        cwd = str(REPO) if repo else "/"
        inner = f"cd {q(cwd)} && exec \"$@\""
        lines += ["set +e",
                  f"chroot {q(r)} /usr/bin/env -i {env_args} /bin/sh -c {q(inner)} sh {shlex.join(cmd)}",
                  "rc=$?", "exit $rc"]
        script = "\n".join(lines)
        kw: dict = {}
        if capture:
            kw.update(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # Own process group, so a timeout or Ctrl-C ends everything started inside (the private
        # mount namespace, and with it every mount, goes away with its last process).
        p = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script],
                             start_new_session=not interactive, **kw)
        try:
            out, _ = p.communicate(timeout=timeout)
        except BaseException:
            if interactive:
                p.kill()
            else:
                _killpg(p)
            raise
        proc = subprocess.CompletedProcess(p.args, p.returncode, out, None)
        if check and proc.returncode != 0:
            out = "\n".join((proc.stdout or "").splitlines()[-20:])
            raise BoardError(f"on the board: `{shlex.join(cmd)}` failed (exit {proc.returncode})"
                             + (f":\n{out}" if out else ""))
        return proc


def _killpg(p: subprocess.Popen) -> None:
    import signal
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(10)
            return
        except subprocess.TimeoutExpired:
            continue


def host_python() -> str:
    """The full dev environment's python (TensorFlow, Flask) for host-side work."""
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable
