"""The bench's pure logic (scripts/benchlib.py): the rotation that makes runs alternate, and
what root's runner (scripts/bench-root.py) accepts from the unprivileged account's bench."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from benchlib import CASES, parse_root_request, root_request, rotated  # noqa: E402

TOOLS = ("pipeline", "warm", "cold", "single-uid", "chrootless", "root")


def test_each_round_runs_every_tool_once_and_each_tool_leads_one_round() -> None:
    rounds = [rotated(TOOLS, n) for n in range(len(TOOLS))]
    assert all(sorted(r) == sorted(TOOLS) for r in rounds)
    assert sorted(r[0] for r in rounds) == sorted(TOOLS)
    assert rotated(TOOLS, len(TOOLS)) == rotated(TOOLS, 0) == TOOLS


def test_without_root_the_rotation_still_covers_the_others() -> None:
    tools = TOOLS[:-1]
    assert [rotated(tools, n)[0] for n in range(len(tools))] == list(tools)


def test_the_runner_reads_back_what_the_bench_asks() -> None:
    asked = parse_root_request(root_request("large", "127.0.0.1:40123/bench/ocistrap-root:large"))
    assert asked.case == CASES["large"]
    assert asked.target == "127.0.0.1:40123/bench/ocistrap-root:large"


@pytest.mark.parametrize("line", [
    root_request("arm64", "127.0.0.1:40123/bench/ocistrap-root:arm64"),
    root_request("nosuch", "127.0.0.1:40123/bench/ocistrap-root:x"),
    root_request("minbase", "registry.example:5000/bench/ocistrap-root:minbase"),
    root_request("minbase", "127.0.0.1:40123/bench/x:minbase --output /etc/x"),
    root_request("minbase", "127.0.0.1:40123/elsewhere/x:minbase"),
    b'{"case": ["minbase"], "target": "127.0.0.1:1/bench/x:y"}\n',
    b'{"case": "minbase", "target": 5}\n',
    b'{"case": "minbase"}\n',
    b"not json\n",
    b"[]\n",
])
def test_the_runner_refuses_anything_but_a_native_case_pushed_to_the_loopback(line: bytes) -> None:
    with pytest.raises(ValueError):
        parse_root_request(line)
