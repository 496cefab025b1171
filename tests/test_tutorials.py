"""Every tutorial in docs/ runs as written: its bash blocks, in order, with tiny settings."""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
TUTORIALS = sorted(DOCS.glob("0*.md"))


def bash_blocks(markdown: str) -> str:
    return "\n".join(re.findall(r"^```bash\n(.*?)^```", markdown, flags=re.S | re.M))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("doc", TUTORIALS, ids=[d.stem for d in TUTORIALS])
def test_tutorial_runs_as_written(doc, tmp_path):
    script = bash_blocks(doc.read_text(encoding="utf-8"))
    assert script.strip(), f"{doc.name} has no bash blocks"
    env = {**os.environ, "STEPS": "4", "MINUTES": "0.03", "PORT": str(free_port()), "HANGPT_DEBUG": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{doc.name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
