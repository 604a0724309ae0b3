#!/usr/bin/env python3
"""Run the shell blocks of the READMEs the way a new user would, and fail if one stops working.

Every ```sh block in README.md and proxy/README.md must carry a marker on the line right before
its opening fence (an HTML comment, invisible on the rendered page):

    <!-- readme-test: run -->                       run it; it must exit 0
    <!-- readme-test: background NAME until=TEXT --> start it in the background (a server) and
                                                    wait until its output contains TEXT
    <!-- readme-test: stop NAME -->                  (no block) stop that background process
    <!-- readme-test: skip REASON -->               not runnable here (listed with the reason)

A ```sh block without a marker fails the test, so a new command gets a decision. Blocks of one
file run in order in ONE bash session (`set -euo pipefail`; variables and `cd` carry over, as in
a user's terminal) with a fresh temporary HOME and XDG directories, from the repository root.
`/tmp/xki-demo` in the blocks is replaced by a fresh directory, so a user's own demo directory
is never touched. Background processes are stopped at the end.

Usage: tests/readme/run_readme.py [FILE...]   (default: README.md proxy/README.md)
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!--\s*readme-test:\s*(\w+)\s*(.*?)\s*-->\s*$")
FENCE_OPEN = re.compile(r"^(\s*)```(\w*)\s*$")
# A block's total time limit (the first one may build the release binaries).
BLOCK_TIMEOUT_S = 1500


class Block:
    def __init__(self, file, line, kind, arg, body):
        self.file, self.line, self.kind, self.arg, self.body = file, line, kind, arg, body

    def where(self):
        return f"{self.file}:{self.line}"


def parse(path):
    """The marked steps of one README, in order; errors for unmarked sh blocks."""
    lines = Path(path).read_text().splitlines()
    steps, errors = [], []
    pending = None  # (kind, arg, line) of a marker waiting for its block
    i = 0
    while i < len(lines):
        m = MARKER.match(lines[i].strip())
        if m:
            kind, arg = m.group(1), m.group(2)
            if kind == "stop":
                steps.append(Block(path, i + 1, "stop", arg, ""))
            elif kind in ("run", "background", "skip"):
                pending = (kind, arg, i + 1)
            else:
                errors.append(f"{path}:{i + 1}: unknown marker {kind!r}")
            i += 1
            continue
        f = FENCE_OPEN.match(lines[i])
        if f:
            indent, lang = f.group(1), f.group(2)
            start = i + 1
            j = start
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            body = "\n".join(
                l[len(indent):] if l.startswith(indent) else l for l in lines[start:j]
            )
            if lang in ("sh", "bash", "shell"):
                if pending is None:
                    errors.append(f"{path}:{i + 1}: ```{lang} block without a readme-test marker")
                else:
                    kind, arg, _ = pending
                    steps.append(Block(path, i + 1, kind, arg, body))
            elif pending is not None:
                errors.append(f"{path}:{pending[2]}: marker before a ```{lang} block (only sh runs)")
            pending = None
            i = j + 1
            continue
        if lines[i].strip() and pending is not None:
            errors.append(f"{path}:{pending[2]}: marker not directly before a code block")
            pending = None
        i += 1
    return steps, errors


def run_file(path, steps, scratch):
    """Run one README's steps in one bash session. Returns (ran, skipped, failure or None)."""
    home = scratch / "home"
    demo = scratch / "xki-demo"
    home.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / ".local/share"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "CARGO_HOME": os.environ.get("CARGO_HOME", str(Path.home() / ".cargo")),
        "RUSTUP_HOME": os.environ.get("RUSTUP_HOME", str(Path.home() / ".rustup")),
        "CARGO_TARGET_DIR": os.environ.get("CARGO_TARGET_DIR", str(REPO / "target")),
        # The READMEs' `cargo build --release` as written, but without whole-program (fat) LTO
        # and debug info: the test checks the commands, not speed, and the fat-LTO build costs
        # CI ~5-10 minutes. XKI_README_FULL_RELEASE=1 builds the real release profile.
        **({} if os.environ.get("XKI_README_FULL_RELEASE") else {
            "CARGO_PROFILE_RELEASE_LTO": "off",
            "CARGO_PROFILE_RELEASE_CODEGEN_UNITS": "16",
            "CARGO_PROFILE_RELEASE_DEBUG": "0",
        }),
        # A package installed on this machine (/etc/xki) must not stand in for the READMEs'
        # "no config at all" first run.
        "XKI_SYSCONF_DIR": str(scratch / "etc"),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
    }
    ran, skipped = [], []
    bg = {}  # name -> (Popen, log path)
    # Variables and the working directory carry from block to block through this state file.
    state = scratch / "state.sh"
    state.write_text(f"cd {shlex.quote(str(REPO))}\n")
    failure = None
    try:
        for b in steps:
            if b.kind == "skip":
                skipped.append((b.where(), b.arg))
                continue
            if b.kind == "stop":
                proc, _ = bg.pop(b.arg, (None, None))
                if proc is None:
                    failure = f"{b.where()}: stop {b.arg!r}: no such background block"
                    break
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                continue
            body = b.body.replace("/tmp/xki-demo", str(demo))
            script = (
                # allexport: a variable a block sets is there in the next block, as in a terminal.
                "set -euo pipefail -a\n"
                f"source {shlex.quote(str(state))}\n"
                f"{body}\n"
                # Keep variables, functions and the directory for the next block.
                f"{{ export -p; declare -f; echo cd \"$(printf '%q' \"$PWD\")\"; }} > {shlex.quote(str(state))}.new\n"
                f"mv {shlex.quote(str(state))}.new {shlex.quote(str(state))}\n"
            )
            print(f"--- {b.where()} ({b.kind}{' ' + b.arg if b.arg else ''})", flush=True)
            print(body, flush=True)
            if b.kind == "background":
                name, _, until = b.arg.partition(" ")
                until = until.removeprefix("until=").strip()
                log = scratch / f"bg-{name}.log"
                # The state file is written by the foreground part only; a server keeps running.
                bg_script = f"set -euo pipefail\nsource {shlex.quote(str(state))}\nexec bash -c {shlex.quote(body)}\n"
                proc = subprocess.Popen(
                    ["bash", "-c", bg_script],
                    env=env,
                    stdout=open(log, "w"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                bg[name] = (proc, log)
                if not wait_for(proc, log, until):
                    failure = f"{b.where()}: background {name!r} never printed {until!r}:\n" + tail(log)
                    break
                ran.append(f"{b.where()} (background {name})")
                continue
            r = subprocess.run(
                ["bash", "-c", script],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=BLOCK_TIMEOUT_S,
                text=True,
            )
            print(r.stdout[-4000:], flush=True)
            if r.returncode != 0:
                failure = f"{b.where()}: exit {r.returncode}"
                break
            ran.append(b.where())
    finally:
        for name, (proc, log) in bg.items():
            try:
                os.killpg(proc.pid, 15)
                proc.wait(timeout=30)
            except Exception:
                proc.kill()
        if failure:
            for name, (_, log) in bg.items():
                print(f"--- background {name} log:\n{tail(log)}")
    return ran, skipped, failure


def wait_for(proc, log, text, limit_s=BLOCK_TIMEOUT_S):
    import time

    deadline = time.time() + limit_s
    while time.time() < deadline:
        if text in Path(log).read_text(errors="replace"):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


def tail(log, n=60):
    try:
        return "\n".join(Path(log).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def main():
    files = sys.argv[1:] or ["README.md", "proxy/README.md"]
    os.chdir(REPO)
    all_errors, results = [], []
    parsed = []
    for f in files:
        steps, errors = parse(f)
        all_errors += errors
        parsed.append((f, steps))
    if all_errors:
        print("\n".join(all_errors))
        print("readme: 0 passed, 1 failed")
        return 1
    failed = 0
    for f, steps in parsed:
        scratch = Path(tempfile.mkdtemp(prefix="xki-readme-"))
        try:
            ran, skipped, failure = run_file(f, steps, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        results.append((f, ran, skipped, failure))
        failed += failure is not None
    print("\n=== README blocks")
    for f, ran, skipped, failure in results:
        for w in ran:
            print(f"ran      {w}")
        for w, why in skipped:
            print(f"skipped  {w}: {why}")
        if failure:
            print(f"FAILED   {failure}")
    total_ran = sum(len(r[1]) for r in results)
    print(f"readme: {total_ran} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
