"""The README's Python example runs as written, on the README's sample photos."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs(tmp_path: Path, monkeypatch) -> None:
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"## Python API.*?```python\n(.*?)```", readme, re.S).group(1)
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sample_photos.py"), str(tmp_path / "demo/photos")],
        check=True,
        capture_output=True,
    )
    monkeypatch.chdir(tmp_path)
    printed: list[str] = []
    real_print = print

    def record(*args, **kwargs) -> None:
        # Notes to stderr (the first query making the model's ONNX export, say) are the
        # library's, not the example's output: they go on to stderr.
        if kwargs.get("file") not in (None, sys.stdout):
            real_print(*args, **kwargs)
            return
        printed.append(" ".join(map(str, args)))

    monkeypatch.setattr("builtins.print", record)
    exec(compile(example, "README.md", "exec"), {})
    assert printed[0].split() == ["16", "0"]  # added, unchanged
    assert "chelsea.jpg" in printed[1]  # the cat crop finds the cat first
    assert printed[-2].endswith("coffee.jpg")
    assert printed[-1] == "16"
