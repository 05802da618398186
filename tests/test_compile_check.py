"""kernels/compile_check.py's rules and kernels/cubin_usage.py's reading of cuobjdump, on canned cuobjdump output
(no compilation, no GPU). The real compile is test_fusion_kernels.py::test_every_kernel_variant_compiles_for_sm90.
"""
from pathlib import Path

from dpir_fast.kernels import compile_check, cubin_usage

GEMM = ("_ZN9dpir_fast4cuda56_GLOBAL__N__9a1af691_18_dau_tail_kernel_cu_0225e25c_163513output_kernelIfLi16ELi1ELb0EEEv"
        "PKT_S5_PKfS7_S7_ilPS3_")
REDUCE = "_ZN9dpir_fast4cuda18reduce_nchw_kernelIfLi4ELi1ELb1EEEvNS0_6InputsIT_XT1_EEEiliPfS5_"
CUOBJDUMP = {
    "-lelf": "ELF file    1: dau_tail_kernel.sm_90.cubin\n",
    "-res-usage": f"""
Resource usage:
 Common:
  GLOBAL:28 CONSTANT[4]:224
 Function {GEMM}:
  REG:101 STACK:0 SHARED:13312 LOCAL:0 CONSTANT[0]:592 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function {REDUCE}:
  REG:32 STACK:16 SHARED:1024 LOCAL:0 CONSTANT[0]:592 TEXTURE:0 SURFACE:0 SAMPLER:0
""",
    "-sass": f"""
\tcode for sm_90
\t\tFunction : {GEMM}
        /*0100*/                   FFMA R1, R2, R3, R1 ;
\t\tFunction : {REDUCE}
        /*19d0*/                   HGMMA.64x64x16.F32.BF16 R56, gdesc[UR8].tnspB, R56 ;
        /*1a00*/                   HMMA.1684.F32.TF32 R4, R8, R12, R4 ;
""",
}


def test_the_rules_fail_spills_shared_memory_over_the_limit_and_gemms_on_cuda_cores():
    ok = dict(spills=0, stack=32, local=0, shared=1024, gemm=True, mma=["HGMMA.F32.TF32"])
    assert compile_check.problems(ok, 90) == []  # a Triton stack frame without spill stores is a local array
    assert compile_check.problems(dict(ok, spills=8), 90) == ["spills"]
    assert compile_check.problems(dict(ok, spills=None), 90) == ["stack (spills?)"]  # a built binary: no spill count
    assert compile_check.problems(dict(ok, shared=228 * 1024), 90) == ["shared>limit"]
    assert compile_check.problems(dict(ok, mma=[]), 90) == ["GEMM on CUDA cores"]
    assert compile_check.problems(dict(ok, gemm=False, mma=[]), 90) == []


def test_ext_functions_are_read_from_cuobjdump_and_declared_gemms_need_tensor_cores(monkeypatch):
    monkeypatch.setattr(cubin_usage, "cuobjdump", lambda *args: CUOBJDUMP[args[0]])
    rows, note = compile_check.ext_rows(90, Path("_C.so"))
    assert "sm_90 ELF" in note
    gemm, reduce = rows
    assert "output_kernel" in gemm["kernel"] and gemm["gemm"] and gemm["mma"] == [] and gemm["regs"] == 101
    assert compile_check.problems(gemm, 90) == ["GEMM on CUDA cores"]
    assert not reduce["gemm"] and reduce["mma"] == ["HGMMA.F32.BF16", "HMMA.F32.TF32"]
    assert compile_check.problems(reduce, 90) == ["stack (spills?)"]
    assert compile_check.ext_rows(80, Path("_C.so"))[0] == []  # no sm_80 ELF: nothing read, nothing fails
