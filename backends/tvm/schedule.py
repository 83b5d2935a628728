"""The Relax pipeline the backend compiles with.

`cpu_pipeline(target)` is TVM's CPU default (dispatch, legalize, lower dataflow, plan
memory, lower to the VM) without `FuseOps`/`FuseTIR`: each graph node stays one PrimFunc
named after it, so profiles name nodes, and the kernel that runs is the compute of
`kernels.py` as written. No schedule is applied: the loops run as TE writes them, and LLVM
vectorizes what it can (the channels-last int8 reductions of the weighted kernels).

Measured while writing this (MobileNetV2 at 224, batch 1, on the shared 2-core Xeon): running
each kernel's leading loops on TVM's thread pool was not a gain to keep. With one thread it
cost 25% (33 -> 40 ms: the depthwise kernels lost their vectorized inner loops inside the
parallel closure, 1.4 -> 7.3 ms for one of them); with two threads it was faster only when
the machine was quiet (24 vs 34 ms at best) and slower in the median under load. Tiled,
vectorized and parallel schedules are the next issue's, per kernel.
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
