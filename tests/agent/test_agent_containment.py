"""The release cannot escape (issue 10, deliverable 6), on real agent processes: a release
whose app starts a child that calls ``setsid()`` (leaving the process group and the session
the agent used to kill) is still killed whole on rollback, and by the orphan reaper of an
agent restarted after a crash. Plus ``run_as``: parsed, refused for root, handed to the child."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from agent_harness import Release, make_app_dir

from fleetgate.agent.cgroup import Cgroups, cgroup2_mount, own_cgroup
from fleetgate.artifacts.bundle import build_bundle

# Started by the release's app: a grandchild in a new session (its own process group too),
# which writes its pid to $FG_ESCAPE_DIR (from the agent's environment; not into its slot, which
# must stay as signed) and sleeps: what a daemonising release does.
ESCAPE = """
import os, runpy, subprocess, sys
here = os.path.dirname(os.path.abspath(__file__))
code = (
    "import os, sys, time\\n"
    "os.setsid()\\n"
    "open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid()))\\n"
    "os.replace(sys.argv[1] + '.tmp', sys.argv[1])\\n"
    "time.sleep(600)\\n"
)
subprocess.Popen(
    [sys.executable, "-c", code, os.path.join(os.environ["FG_ESCAPE_DIR"], "escaped.pid")],
    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
sys.argv = ["app.py"] + sys.argv[1:]
runpy.run_path(os.path.join(here, "app.py"), run_name="__main__")
"""


def _cgroups_here(tmp_path: Path) -> None:
    if Cgroups.detect(tmp_path) is None:
        pytest.skip(
            f"no writable cgroup v2 here (mount {cgroup2_mount()}, own {own_cgroup()}): "
            "the agent falls back to the process group, which a setsid child escapes"
        )


def _escaping_release(kit, version: str) -> Release:
    src = make_app_dir(kit.root, "escaper", version)
    (src / "escape.py").write_text(ESCAPE)
    toml = src / "fleetgate.toml"
    toml.write_text(toml.read_text().replace('"app.py"', '"escape.py"'))
    bundle = build_bundle(src, kit.key, kit.root / "bundles")
    return Release(bundle, kit.server.publish(bundle))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its reaper is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_dead(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _escape_agent(make_agent):
    a = make_agent(start=False)
    return a.start(env={"FG_ESCAPE_DIR": str(a.workdir)})


@contextlib.contextmanager
def _escaped(a):
    """The escaped grandchild's pid once it runs; SIGKILLed at the end whatever happened."""
    pid_file = a.workdir / "escaped.pid"
    a.wait_for(pid_file.exists, timeout=15, what="the setsid child")
    pid = int(pid_file.read_text())
    try:
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_rollback_kills_a_setsid_child_of_the_release_left(make_agent, kit, tmp_path):
    _cgroups_here(tmp_path)
    esc = _escaping_release(kit, "1.0.0")
    a = _escape_agent(make_agent)
    assert a.post("stage", deployment_id="d", seq=1, **kit.v1.stage)[1]["status"] == "staged"
    assert a.post("activate", deployment_id="d", seq=2, release=kit.v1.id)[1]["status"] == "active"
    assert a.post("stage", deployment_id="d", seq=3, **esc.stage)[1]["status"] == "staged"
    assert a.post("activate", deployment_id="d", seq=4, release=esc.id)[1]["status"] == "active"
    with _escaped(a) as pid:
        app = a.app_pid()
        assert app is not None and _alive(pid)
        # It really left: a process-group or session kill of the app would not reach it.
        assert os.getsid(pid) == pid != os.getsid(app) and os.getpgid(pid) != os.getpgid(app)
        status, body = a.post("rollback", deployment_id="d", seq=5)
        assert (status, body["status"], body["release"]) == (200, "rolled-back", kit.v1.id)
        assert _wait_dead(pid), f"setsid child {pid} survived the rollback"
    assert "releases run in: cgroup v2" in a.log_text()


def test_an_agent_restarted_after_a_crash_kills_the_escaped_child(make_agent, kit, tmp_path):
    _cgroups_here(tmp_path)
    esc = _escaping_release(kit, "2.0.0")
    a = _escape_agent(make_agent)
    assert a.post("stage", deployment_id="d", seq=1, **esc.stage)[1]["status"] == "staged"
    assert a.post("activate", deployment_id="d", seq=2, release=esc.id)[1]["status"] == "active"
    with _escaped(a) as pid:
        old_app = a.app_pid()
        assert old_app is not None
        (a.workdir / "escaped.pid").unlink()
        a.kill()  # the agent dies; its release (and the escaped child) keep running
        assert _alive(pid)
        a.start(env={"FG_ESCAPE_DIR": str(a.workdir)})
        assert _wait_dead(pid), f"setsid child {pid} survived the agent's restart"
        with _escaped(a) as again:  # the restarted release starts a new one, contained
            assert again != pid and _alive(again)
            a.stop()
            assert _wait_dead(again), "stopping the agent left the release's child running"


def test_run_as_is_parsed_refuses_root_and_reaches_the_child(tmp_path, kit, monkeypatch):
    import asyncio
    import pwd

    from fleetgate.agent import supervisor
    from fleetgate.agent.config import parse_config
    from fleetgate.agent.supervisor import Launch, ProcessSupervisor
    from fleetgate.errors import ValidationError

    monkeypatch.setenv("FG_T", "x")
    nobody = pwd.getpwnam("nobody")

    def cfg(app: dict) -> dict:
        agent = {"data_dir": "d", "public_key": str(kit.pub_path), "token_env": "FG_T"}
        return {"device": {"id": "x", "hardware": "h"}, "agent": agent, "app": app}

    c = parse_config(cfg({"run_as": "nobody"}), tmp_path / "agent.toml")
    assert (c.run_as, c.run_as_uid, c.run_as_gid) == ("nobody", nobody.pw_uid, nobody.pw_gid)
    assert parse_config(cfg({"run_as": nobody.pw_uid}), tmp_path / "a.toml").run_as == "nobody"
    for bad, why in (("root", "must not be root"), ("no-such-user-x", "no such user"), ("", "")):
        with pytest.raises(ValidationError) as err:
            parse_config(cfg({"run_as": bad}), tmp_path / "agent.toml")
        assert "app.run_as" in str(err.value) and why in str(err.value)

    # The child is created with that uid/gid and no supplementary groups (a fake spawner:
    # running a real one as nobody needs an interpreter nobody may read).
    seen: dict = {}

    class Stop(Exception):
        pass

    async def fake_exec(*argv, **kw):
        seen.update(kw, argv=argv)
        raise Stop

    monkeypatch.setattr(supervisor.asyncio, "create_subprocess_exec", fake_exec)
    sup = ProcessSupervisor(tmp_path, cgroups=None)
    launch = Launch(
        "r-1-00000000", tmp_path, ("/bin/true",), {}, uid=c.run_as_uid, gid=c.run_as_gid
    )
    sup.launch = launch
    with pytest.raises(Stop):
        asyncio.run(sup._spawn())
    assert (seen["user"], seen["group"], seen["extra_groups"]) == (nobody.pw_uid, nobody.pw_gid, [])
    assert seen["start_new_session"] is True


def _status_ids(pid: int) -> dict[str, list[str]]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {
        k: v.split()
        for k, _, v in (ln.partition(":") for ln in lines)
        if k in ("Uid", "Gid", "Groups")
    }


def test_run_as_runs_the_release_as_that_user_who_cannot_read_the_agents_files(
    make_agent, kit, request
):
    import pwd
    import shutil
    import subprocess
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("run_as needs an agent running as root")
    nobody = pwd.getpwnam("nobody")
    src = kit.root / "src-sleeper"
    src.mkdir()
    (src / "fleetgate.toml").write_text(
        '[artifact]\nname = "sleeper"\nversion = "1.0.0"\nkind = "bundle"\n'
        '[requires]\ndisk_mb = 1\n[run]\ncommand = ["/bin/sleep", "600"]\n'
    )
    (src / "README").write_text("sleeps\n")
    bundle = build_bundle(src, kit.key, kit.root / "bundles")
    rel = Release(bundle, kit.server.publish(bundle))
    # A data dir whose parents others may traverse (pytest's tmp dirs are 0700, which would
    # hide the files below whatever their modes).
    outer = Path(tempfile.mkdtemp(prefix="fg-runas-", dir="/tmp"))
    outer.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(outer, ignore_errors=True))
    a = make_agent(start=False, data_dir=outer / "data")
    a.config.write_text(a.config.read_text().replace("[app]", '[app]\nrun_as = "nobody"'))
    a.start()
    assert a.post("stage", deployment_id="d", seq=1, **rel.stage)[1]["status"] == "staged"
    status, body = a.post("activate", deployment_id="d", seq=2, release=rel.id)
    assert (status, body["status"]) == (200, "active"), body
    pid = a.app_pid()
    assert pid is not None
    ids = _status_ids(pid)
    assert ids["Uid"] == [str(nobody.pw_uid)] * 4 and ids["Gid"] == [str(nobody.pw_gid)] * 4
    assert ids.get("Groups", []) == []
    # What the release's user may do with the agent's files: nothing (cat is world-executable).
    for name in ("state.json", "state.json.prev", "app.json"):
        path = a.data_dir / name
        assert oct(path.stat().st_mode & 0o777) == "0o600", name
        out = subprocess.run(
            ["/bin/cat", str(path)], user=nobody.pw_uid, group=nobody.pw_gid, capture_output=True
        )
        assert out.returncode != 0 and b"Permission denied" in out.stderr, name
    # … while the path is traversable: it is the file's mode that stops it.
    stat_ok = subprocess.run(["/bin/ls", "-l", str(a.data_dir / "state.json")], user=nobody.pw_uid)
    assert stat_ok.returncode == 0
    assert a.data_dir.stat().st_mode & 0o777 == 0o711
    listing = subprocess.run(
        ["/bin/ls", str(a.data_dir / "releases")], user=nobody.pw_uid, capture_output=True
    )
    assert listing.returncode != 0


def test_the_start_handshake_puts_the_release_in_its_cgroup_before_it_runs(tmp_path):
    """The release is exec'd only once it is in its cgroup, whatever descriptor numbers the
    agent's pipe gets (dash cannot redirect descriptors above 9: a busy agent has many)."""
    import asyncio

    from fleetgate.agent.supervisor import Launch, ProcessSupervisor

    cgroups = Cgroups.detect(tmp_path)
    if cgroups is None:
        pytest.skip("no writable cgroup v2 here")
    hog = [os.open(os.devnull, os.O_RDONLY) for _ in range(30)]  # push new fds past 9

    async def run() -> tuple[str, str, list[int]]:
        sup = ProcessSupervisor(tmp_path, grace_s=1, cgroups=cgroups)
        # The release reports its own cgroup: it is already inside when its first line runs.
        script = "cat /proc/self/cgroup; exec sleep 30"
        await sup.start(Launch("r-1-00000000", tmp_path, ("/bin/sh", "-c", script), {}))
        assert sup.cgroup is not None and sup.pid is not None
        for _ in range(100):
            if any("::" in line for line in sup.logs):
                break
            await asyncio.sleep(0.05)
        inside = [line for line in sup.logs if line.startswith("0::")]
        cmdline = Path(f"/proc/{sup.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        group = sup.cgroup
        await sup.stop()
        return inside[0] if inside else "", cmdline, [int(group.exists())]

    try:
        inside, cmdline, exists = asyncio.run(run())
    finally:
        for fd in hog:
            os.close(fd)
    assert inside.endswith("/fg-" + cgroups.tag + "-r-1-00000000"), inside
    assert cmdline.startswith("sleep 30"), cmdline
    assert exists == [0]  # stop removed the cgroup


# A stand-in for `systemd-run --scope` (systemd is not PID 1 here): records its arguments, makes
# the unit's cgroup, moves itself in and execs the command, which is what systemd-run has
# systemd do before it execs.
FAKE_SYSTEMD_RUN = """#!/bin/sh
printf '%s\\n' "$*" >> "$FG_FAKE_SCOPE_LOG"
unit=
while [ $# -gt 0 ]; do
  case "$1" in
    --unit=*) unit=${1#--unit=} ;;
    --) shift; break ;;
  esac
  shift
done
dir="$FG_FAKE_SCOPE_PARENT/$unit.scope"
mkdir "$dir" || exit 1
echo $$ > "$dir/cgroup.procs" || exit 1
exec "$@"
"""


def test_systemd_scopes_contain_the_release_too(make_agent, kit, tmp_path):
    _cgroups_here(tmp_path)
    mount, own = cgroup2_mount(), own_cgroup()
    assert mount is not None and own is not None
    parent = mount / own.lstrip("/")
    fake = tmp_path / "systemd-run"
    fake.write_text(FAKE_SYSTEMD_RUN)
    fake.chmod(0o755)
    calls = tmp_path / "systemd-run.log"
    esc = _escaping_release(kit, "3.0.0")
    a = make_agent(start=False)
    a.config.write_text(
        a.config.read_text().replace(
            "[app]", f'[app]\ncontainment = "systemd-scope"\nsystemd_run = "{fake}"'
        )
    )
    a.start(
        env={
            "FG_FAKE_SCOPE_LOG": str(calls),
            "FG_FAKE_SCOPE_PARENT": str(parent),
            "FG_ESCAPE_DIR": str(a.workdir),
        }
    )
    try:
        assert a.post("stage", deployment_id="d", seq=1, **kit.v1.stage)[1]["status"] == "staged"
        assert a.post("activate", deployment_id="d", seq=2, release=kit.v1.id)[0] == 200
        assert a.post("stage", deployment_id="d", seq=3, **esc.stage)[1]["status"] == "staged"
        status, body = a.post("activate", deployment_id="d", seq=4, release=esc.id)
        assert (status, body["status"]) == (200, "active"), body
        with _escaped(a) as pid:
            scope = own_cgroup(Path(f"/proc/{pid}/cgroup").read_text()) or ""
            assert scope.rsplit("/", 1)[-1].startswith("fg-") and scope.endswith(".scope")
            tag = hashlib.sha256(str(a.data_dir.resolve()).encode()).hexdigest()[:8]
            assert f"/fg-{tag}-{esc.id}-" in scope  # the agent's tag: never another agent's
            assert a.post("rollback", deployment_id="d", seq=5)[1]["status"] == "rolled-back"
            assert _wait_dead(pid), f"setsid child {pid} survived the rollback"
        assert "releases run in: systemd scopes" in a.log_text()
        first = calls.read_text().splitlines()[0].split()
        assert first[:4] == ["--scope", "--quiet", "--collect", first[3]]
        assert first[3].startswith("--unit=fg-") and "--" in first
    finally:
        a.cleanup()
        for leftover in parent.glob("fg-*.scope"):  # systemd would collect them
            with contextlib.suppress(OSError):
                leftover.rmdir()


def test_containment_is_chosen_by_what_the_machine_offers(tmp_path, kit, monkeypatch):
    from fleetgate.agent.cgroup import SystemdScopes, choose
    from fleetgate.agent.config import parse_config
    from fleetgate.errors import ValidationError

    here = Cgroups.detect(tmp_path)
    auto = choose("auto", tmp_path, "systemd-run")
    if Path("/run/systemd/system").is_dir():  # pragma: no cover - not this machine
        assert isinstance(auto, SystemdScopes)
    else:  # no systemd as PID 1: a cgroup directory if there is one, else the process group
        assert type(auto) is type(here)
    assert choose("process-group", tmp_path, "systemd-run") is None
    assert choose("systemd-scope", tmp_path, str(tmp_path / "no-such-systemd-run")) is None
    assert type(choose("cgroup", tmp_path, "systemd-run")) is type(here)
    monkeypatch.setenv("FG_T", "x")
    doc = {
        "device": {"id": "x", "hardware": "h"},
        "agent": {"data_dir": "d", "public_key": str(kit.pub_path), "token_env": "FG_T"},
        "app": {"containment": "jail"},
    }
    with pytest.raises(ValidationError, match=r"app\.containment"):
        parse_config(doc, tmp_path / "agent.toml")


def test_without_cgroup_kill_the_cgroup_is_frozen_and_each_pid_killed(tmp_path, monkeypatch):
    """Kernels before 5.14 have no cgroup.kill: freeze, SIGKILL every pid, thaw."""
    import subprocess

    from fleetgate.agent import cgroup

    cgroups = Cgroups.detect(tmp_path)
    if cgroups is None:
        pytest.skip("no writable cgroup v2 here")
    group = cgroups.create("old-kernel-1-00000000")
    # A leader and a setsid grandchild, both moved in before they run anything.
    code = "import os, subprocess, sys, time\n" + (
        "subprocess.Popen([sys.executable, '-c', 'import os, time; os.setsid(); time.sleep(60)'])\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        ["/bin/sh", "-c", f'echo $$ > {group}/cgroup.procs && exec {sys.executable} -c "$0"', code]
    )
    try:
        deadline = time.monotonic() + 10
        while len(cgroup.pids(group)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        members = cgroup.pids(group)
        assert len(members) == 2, members
        real_write = Path.write_text

        def no_kill_file(self: Path, data: str, *a: object, **kw: object) -> int:
            if self.name == "cgroup.kill":
                raise FileNotFoundError(2, "No such file or directory", str(self))
            return real_write(self, data, *a, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(Path, "write_text", no_kill_file)
        assert cgroup.kill(group) is True
        monkeypatch.undo()
        assert not group.exists()
        proc.wait(10)
        assert all(not _alive(pid) for pid in members)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)
        if group.exists():
            cgroup.kill(group)
