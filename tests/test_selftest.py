"""`lmk-studio --self-test` passes on this installation, and a failing step is named."""

from __future__ import annotations

import io

from lmk_studio import cli, selftest


def test_self_test_passes_through_the_cli(capsys) -> None:
    assert cli.main(["--self-test"]) == 0
    out = capsys.readouterr().out
    assert "self-test passed" in out
    for _name, _ in selftest.STEPS:
        assert f"{_name}: ok" in out


def test_a_failing_step_is_named_and_the_exit_code_is_1(monkeypatch) -> None:
    def broken(_c) -> str:
        raise RuntimeError("no JPEG 2000 decoder")

    steps = [s if s[0] != "DICOM" else ("DICOM", broken) for s in selftest.STEPS]
    monkeypatch.setattr(selftest, "STEPS", steps)
    buf = io.StringIO()
    assert selftest.run_self_test(buf) == 1
    k = [n for n, _ in steps].index("DICOM") + 1
    assert f"self-test failed at step {k} (DICOM): RuntimeError: no JPEG 2000 decoder" in \
        buf.getvalue()
