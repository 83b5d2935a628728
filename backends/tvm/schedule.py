"""The Relax pipeline the backend compiles with.

`cpu_pipeline(target)` is TVM's CPU default (dispatch, legalize, lower dataflow, plan
memory, lower to the VM) without `FuseOps`/`FuseTIR`: each graph node stays one PrimFunc
named after it (or the blocked kernel that computes it and its fused epilogue), so profiles
name nodes. The blocked kernels arrive already scheduled (`schedules.py`, applied in
`lower.py`) and the pipeline leaves their loops alone; the generic computes of `kernels.py`
(`build(..., schedules=False)`, and ops without a blocked kernel) run as TE writes them, and
LLVM vectorizes what it can.

Measured before the blocked kernels (MobileNetV2 at 224, batch 1, on the shared 2-core Xeon):
running the generic kernels' leading loops on TVM's thread pool was not a gain to keep. With
one thread it cost 25% (33 -> 40 ms: the depthwise kernels lost their vectorized inner loops
inside the parallel closure); with two threads it was faster only when the machine was quiet.
"""

from __future__ import annotations

import tvm
from tvm import relax


def cpu_pipeline(target) -> tvm.transform.Pass:
    @tvm.transform.module_pass(opt_level=0, name="qcompiler_cpu_pipeline")
    def pipeline(mod: tvm.IRModule, _context) -> tvm.IRModule:
        with target:
            passes = [
                relax.backend.DispatchSampling(), relax.backend.DispatchSortScan(),
                relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(),
                relax.transform.RewriteDataflowReshape(), relax.transform.ToNonDataflow(),
                relax.transform.RemovePurityChecking(), relax.transform.CallTIRRewrite(),
                relax.transform.StaticPlanBlockMemory(), relax.transform.LowerAllocTensor(),
                relax.transform.KillAfterLastUse(), relax.transform.LowerRuntimeBuiltin(),
                relax.transform.ComputePrimValue(), relax.transform.VMShapeLower(),
                relax.transform.AttachGlobalSymbol(),
            ]
            return tvm.transform.Sequential(passes)(mod)

    return pipeline
