"""The Relax pipeline the backend compiles with, and the one schedule it applies.

`cpu_pipeline(target)` is TVM's CPU default (dispatch, legalize, lower dataflow, plan
memory, lower to the VM) without `FuseOps`/`FuseTIR`: each graph node stays one PrimFunc
named after it, so profiles name nodes, and the kernel that runs is the compute of
`kernels.py` as written.

`parallelize_outer_loops` is the whole schedule: in every PrimFunc, each block's leading
data-parallel loops are fused and run on the thread pool when the block does enough work to
pay for a parallel launch. Tiling, vectorizing and tensorizing the int8 kernels (VNNI,
`vpmaddubsw`, `sdot`) with packed layouts is the next issue.
"""

from __future__ import annotations

import tvm
from tvm import relax

# A block with fewer iterations (its loops' extents multiplied, reductions included) runs
# serially: a parallel launch costs a few microseconds.
MIN_PARALLEL_WORK = 1 << 14


def cpu_pipeline(target) -> tvm.transform.Pass:
    @tvm.transform.module_pass(opt_level=0, name="qcompiler_cpu_pipeline")
    def pipeline(mod: tvm.IRModule, _context) -> tvm.IRModule:
        with target:
            passes = [
                relax.backend.DispatchSampling(), relax.backend.DispatchSortScan(),
                relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(),
                parallelize_outer_loops(),
                relax.transform.RewriteDataflowReshape(), relax.transform.ToNonDataflow(),
                relax.transform.RemovePurityChecking(), relax.transform.CallTIRRewrite(),
                relax.transform.StaticPlanBlockMemory(), relax.transform.LowerAllocTensor(),
                relax.transform.KillAfterLastUse(), relax.transform.LowerRuntimeBuiltin(),
                relax.transform.ComputePrimValue(), relax.transform.VMShapeLower(),
                relax.transform.AttachGlobalSymbol(),
            ]
            return tvm.transform.Sequential(passes)(mod)

    return pipeline


def parallelize_outer_loops() -> tvm.transform.Pass:
    @tvm.transform.module_pass(opt_level=0, name="qcompiler_parallelize_outer_loops")
    def transform(mod: tvm.IRModule, _context) -> tvm.IRModule:
        updated = {}
        for global_var, function in mod.functions_items():
            if isinstance(function, tvm.tirx.PrimFunc):
                scheduled = _parallelize(function)
                if scheduled is not None:
                    updated[global_var] = scheduled
        for global_var, function in updated.items():
            mod[global_var] = function
        return mod

    return transform


def _parallelize(function):
    from tvm import s_tir

    schedule = s_tir.Schedule(function)
    changed = False
    try:
        root = schedule.get_sblock("root")
    except Exception:  # a PrimFunc without blocks (hand-written TIR): leave it
        return None
    for block in schedule.get_child_blocks(root):
        loops = schedule.get_loops(block)
        iters = schedule.get(block).iter_vars
        if len(loops) != len(iters) or not loops:
            continue
        extents = [int(schedule.get(loop).extent) for loop in loops]
        spatial = 0
        while spatial < len(iters) and iters[spatial].iter_type == 0:  # data parallel
            spatial += 1
        work = 1
        for extent in extents:
            work *= extent
        if spatial == 0 or work < MIN_PARALLEL_WORK:
            continue
        fused = schedule.fuse(*loops[:spatial]) if spatial > 1 else loops[0]
        schedule.parallel(fused)
        changed = True
    return schedule.mod["main"] if changed else None
