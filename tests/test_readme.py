"""The README's quick start and the examples that build on it run as written, in order, in an empty
folder (as a newcomer in a fresh clone would), with the demo made small. Lines that cannot run
offline (installing packages, hub ids) are skipped; the test says which ones it skipped."""

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
# the sections whose examples work on what the quick start produces (runs/demo, data/)
SECTIONS = ("Quick start", "Demo", "Tokenizer", "Generate")
OFFLINE_ONLY = re.compile(r"^pip |--(model|base) [\w.-]+/[\w.-]+ ")  # package installs, hub ids
# the demo, small: a few steps per stage, no playground left running
SMALL_DEMO = 'hangpt() { if [ "$1" = demo ]; then command hangpt "$@" --minutes 0.05 --eval-prompts 3 --no-serve; ' \
             'else command hangpt "$@"; fi; }'


def section(markdown: str, title: str) -> str:
    match = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#+ )", markdown, flags=re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def commands(markdown: str) -> tuple[list[str], list[str]]:
    """(commands to run, lines skipped) of the bash blocks of SECTIONS, continuation lines joined,
    comments dropped, each command once."""
    run, skipped = [], []
    for title in SECTIONS:
        for block in re.findall(r"^```bash\n(.*?)^```", section(markdown, title), flags=re.S | re.M):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                for command in line.split("  #")[0].split(" && "):  # `pip install ... && hangpt demo`
                    command = command.strip()
                    if OFFLINE_ONLY.search(command + " ") or command == "pytest":  # not the suite inside itself
                        skipped.append(command)
                    elif command not in run:  # the quick start's `hangpt demo` is shown again under Demo
                        run.append(command)
    return run, skipped


def test_readme_quick_start_and_examples_run(tmp_path):
    run, skipped = commands(README.read_text(encoding="utf-8"))
    assert "hangpt demo" in run and any(line.startswith("hangpt tokenizer decode") for line in run)
    assert all(line.startswith("pip ") or "/" in line or line == "pytest" for line in skipped), skipped
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    script = "\n".join([SMALL_DEMO, *run])
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=1500)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    out = result.stdout
    assert (tmp_path / "runs/demo/report.md").exists() and (tmp_path / "runs/mine/report.md").exists()
    assert "오늘 날씨가 정말" in out  # the decode example's ids exist and mean what the comment says
    assert "1267  '오늘'" in out and "1260  ' 날씨'" in out
