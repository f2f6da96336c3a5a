from pathlib import Path

from sparring.config import EngineConfig
from sparring.serving.engine import serve_command
from sparring.serving.hardware import cpu_flags, fast_bf16, resolve_dtype


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert {"avx2", "avx512_bf16"} <= cpu_flags(info)
    assert cpu_flags(tmp_path / "missing") == set()


def test_explicit_dtypes_pass_through_and_auto_follows_the_cpu() -> None:
    assert resolve_dtype("bfloat16") == "bfloat16"
    assert resolve_dtype("float32") == "float32"
    native = any(f in cpu_flags() for f in ("avx512_bf16", "amx_bf16"))
    assert fast_bf16("cpu") is native
    assert resolve_dtype("auto", "cpu") == ("bfloat16" if native else "float32")


def test_engine_command_bounds_the_kv_cache_and_idle_versions() -> None:
    cmd = serve_command(EngineConfig(cb_num_blocks=64, cb_block_size=16, model_timeout_s=30))
    joined = " ".join(cmd)
    assert "--continuous-batching --cb-block-size 16 --cb-num-blocks 64" in joined
    assert "--model-timeout 30" in joined
    assert cmd[cmd.index("--dtype") + 1] in ("bfloat16", "float32")
    assert "--cb-num-blocks" not in serve_command(EngineConfig(continuous_batching=False))
