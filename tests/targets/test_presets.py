"""Target presets: the table of presets, the detected host CPU, and what this machine can do."""
import os
import shutil
from pathlib import Path

import pytest

from edgecnn.runtime.host import host_arch
from edgecnn.targets import TargetError, get_preset, host_cpu_features, list_presets, preset_names

EXPECTED = {
    # name: (device, arch, llvm triple of the code that runs on the CPU)
    "host": ("cpu", None, None),
    "x86-64-avx2": ("cpu", "x86_64", "x86_64-linux-gnu"),
    "x86-64-avx512": ("cpu", "x86_64", "x86_64-linux-gnu"),
    "aarch64": ("cpu", "aarch64", "aarch64-linux-gnu"),
    "rpi4": ("cpu", "aarch64", "aarch64-linux-gnu"),
    "rpi5": ("cpu", "aarch64", "aarch64-linux-gnu"),
    "jetson-orin-nano": ("cuda", "aarch64", "aarch64-linux-gnu"),
    "cuda": ("cuda", "x86_64", "x86_64-linux-gnu"),
}


def test_all_issue_presets_exist():
    assert set(preset_names()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_target_builds_and_matches_its_kind(name):
    preset = get_preset(name)
    device, arch, triple = EXPECTED[name]
    assert preset.device == device
    assert preset.arch == (arch or host_arch())
    spec = preset.target_json()
    assert spec["kind"] == ("cuda" if device == "cuda" else "llvm")
    cpu_part = spec["host"] if device == "cuda" else spec
    assert cpu_part["kind"] == "llvm"
    if triple:
        assert cpu_part["mtriple"] == triple
    assert "native" not in str(spec)  # TVM 0.27 rejects -mcpu=native


@pytest.mark.parametrize("name,arch", [("jetson-orin-nano", "sm_87"), ("cuda", "sm_90a")])
def test_gpu_presets_name_their_architecture(name, arch):
    preset = get_preset(name)
    assert preset.target_json()["arch"] == arch
    assert preset.cuda_arch == arch


def test_aarch64_presets_use_the_cross_compiler():
    for name in ("aarch64", "rpi4", "rpi5", "jetson-orin-nano"):
        assert get_preset(name).cross_compiler == "aarch64-linux-gnu-g++"


def _cpuinfo_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


@pytest.mark.skipif(host_arch() != "x86_64" or not Path("/proc/cpuinfo").exists(),
                    reason="host CPU detection is checked against /proc/cpuinfo on x86-64")
def test_host_target_uses_only_features_the_cpu_has():
    import tvm.target.codegen as codegen

    flags = _cpuinfo_flags()
    # Independent spelling of the check: LLVM names of AVX-family features vs the kernel's flags.
    llvm_to_cpuinfo = {"avx": "avx", "avx2": "avx2", "fma": "fma", "avx512f": "avx512f", "avx512bw": "avx512bw",
                       "avx512vl": "avx512vl", "avx512dq": "avx512dq", "avx512cd": "avx512cd",
                       "avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16", "avx512fp16": "avx512_fp16"}
    target = get_preset("host").target()
    enabled = set(codegen.llvm_get_cpu_features(target))
    for llvm, cpuinfo in llvm_to_cpuinfo.items():
        if llvm in enabled:
            assert cpuinfo in flags, f"host target enables {llvm} but /proc/cpuinfo lacks {cpuinfo}"
    assert ("avx2" in flags) == ("avx2" in host_cpu_features())


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(TargetError) as err:
        get_preset("tpu-v9")
    message = str(err.value)
    assert "tpu-v9" in message and "rpi4" in message and "host" in message


def test_x86_presets_run_here_only_with_their_features():
    if host_arch() != "x86_64":
        pytest.skip("x86-64 presets run only on x86-64")
    flags = _cpuinfo_flags()
    assert get_preset("x86-64-avx2").capabilities().run == ({"avx2", "fma"} <= flags)
    assert get_preset("x86-64-avx512").capabilities().run == (
        {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= flags)


def test_missing_cross_compiler_is_reported_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no compiler, no emulator
    caps = get_preset("rpi4").capabilities()
    assert not caps.build
    assert any("aarch64-linux-gnu-g++ not found: apt-get install g++-aarch64-linux-gnu" in m for m in caps.missing)
    with pytest.raises(TargetError, match=r"cross compiler aarch64-linux-gnu-g\+\+ not found"):
        get_preset("rpi4").require_buildable()


def test_aarch64_capabilities_follow_the_tools_on_path():
    caps = get_preset("aarch64").capabilities()
    assert caps.build == (shutil.which("aarch64-linux-gnu-g++") is not None)
    if host_arch() == "x86_64":
        assert not caps.run
        has_qemu = bool(shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64"))
        assert caps.emulate == (has_qemu and os.path.isdir("/usr/aarch64-linux-gnu"))


def test_every_preset_reports_json_ready_data():
    import json

    for p in list_presets():
        json.dumps(p.to_dict())


@pytest.mark.parametrize("target, expected", [
    ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "icelake-server"}, True),
    ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver4"}, True),
    ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"}, False),
    ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver3"}, False),
    ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512", "mattr": ["+avx512vnni"]}, True),
    ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "icelake-server", "mattr": ["-avx512vnni"]}, False),
    ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]}, False),
])
def test_has_vnni_reads_llvm_features_and_mattr(target, expected):
    """LLVM's view of the CPU name, then the target's own +/- features (what the code may use)."""
    from edgecnn.targets.isa import has_vnni

    assert has_vnni(target) is expected
