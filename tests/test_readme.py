"""The README's examples run as written (in a scratch directory)."""

import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("block", range(len(BLOCKS)))
def test_readme_example_runs(block, tmp_path, monkeypatch, rsa_private):
    monkeypatch.chdir(tmp_path)
    pem = rsa_private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "signing.pem").write_bytes(pem)
    exec(compile(BLOCKS[block], f"README.md block {block}", "exec"), {})
    assert (tmp_path / "audit-data" / "logs").is_dir()
