"""What verified slots cost: checking a 50 MiB, 2,000-file release against its signed file list.

    .venv/bin/python bench/slot_verify_bench.py [--mib 50] [--files 2000] [--runs 5]

Builds a real bundle (random, incompressible bytes spread over ``--files`` files in 40
directories, plus a symlink), stages it the way the agent does (``safe_extract``), then times:
- ``verify_slot`` (agent/slotcheck.py): list + lstat every entry, compare with the signed list,
  sha256 every file — what the agent runs before activate, rollback and start-up (median and best
  of ``--runs``, page cache warm: the slot was just written or read);
- the same through ``asyncio.to_thread`` while the event loop keeps ticking every 10 ms, and the
  longest tick gap seen (the agent keeps answering while it hashes);
- the signed manifest's size (the file list is inside it) and the signature check of it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fleetgate.agent.slotcheck import verify_slot
from fleetgate.artifacts.bundle import build_bundle
from fleetgate.artifacts.container import read_bundle
from fleetgate.artifacts.extract import safe_extract
from fleetgate.artifacts.keys import generate_keypair, load_private_key, load_public_key
from fleetgate.artifacts.signing import verify_bundle, verify_manifest

MIB = 1024 * 1024


def make_source(root: Path, mib: int, files: int) -> Path:
    src = root / "src"
    src.mkdir()
    per_file = mib * MIB // files
    for i in range(files):
        d = src / f"d{i % 40:02d}"
        d.mkdir(exist_ok=True)
        (d / f"f{i:05d}.bin").write_bytes(os.urandom(per_file))
    (src / "latest").symlink_to("d00/f00000.bin")
    (src / "fleetgate.toml").write_text(
        '[artifact]\nname = "bench"\nversion = "1.0.0"\nkind = "bundle"\n'
        f'[requires]\ndisk_mb = {mib + 1}\n[run]\ncommand = ["python3", "app.py"]\n'
    )
    return src


async def threaded(slot: Path, files: tuple) -> tuple[float, float]:  # type: ignore[type-arg]
    gaps: list[float] = []
    done = False

    async def ticker() -> None:
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last - 0.01)
            last = now

    task = asyncio.create_task(ticker())
    t0 = time.perf_counter()
    await asyncio.to_thread(verify_slot, slot, files)
    elapsed = time.perf_counter() - t0
    done = True
    await task
    return elapsed, max(gaps, default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=50)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fg-slot-bench-") as tmp:
        root = Path(tmp)
        key_path, pub_path = generate_keypair(root / "keys")
        src = make_source(root, args.mib, args.files)
        built = build_bundle(src, load_private_key(key_path), root / "out")
        manifest = verify_bundle(built.path, load_public_key(pub_path))
        assert manifest.files is not None
        contents = read_bundle(built.path)
        slot = root / "slot"
        payload = root / "payload.tar.gz"
        with built.path.open("rb") as fh:
            fh.seek(contents.payload_offset)
            payload.write_bytes(fh.read(contents.payload_size))
        safe_extract(payload, slot, max_members=args.files + 100)

        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            hashed = verify_slot(slot, manifest.files)
            times.append(time.perf_counter() - t0)
        in_thread, worst_gap = asyncio.run(threaded(slot, manifest.files))
        t0 = time.perf_counter()
        for _ in range(10):
            verify_manifest(contents.manifest_json, contents.signature, load_public_key(pub_path))
        sig_ms = (time.perf_counter() - t0) * 100

    print(f"python {sys.version.split()[0]} on {os.uname().machine}, {os.cpu_count()} CPUs")
    print(
        f"slot: {len(manifest.files)} entries ({args.files} files), {hashed / MIB:.1f} MiB hashed"
    )
    print(
        f"verify_slot:                  {statistics.median(times) * 1000:6.0f} ms "
        f"(best {min(times) * 1000:.0f}; {hashed / MIB / statistics.median(times):.0f} MiB/s)"
    )
    print(
        f"  via asyncio.to_thread:      {in_thread * 1000:6.0f} ms, "
        f"longest event-loop stall {worst_gap * 1000:.1f} ms"
    )
    print(
        f"signed manifest:              {len(contents.manifest_json) / 1024:6.0f} KiB "
        f"(file list inside); parse + signature check {sig_ms:.1f} ms"
    )


if __name__ == "__main__":
    main()
