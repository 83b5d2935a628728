"""Errors of the TVM backend. Each names what is at fault (the node, the target, the file) and
says what to do; all are `QCompilerError`s, so the CLI prints them as one line."""

from qcompiler.errors import OptionError, QCompilerError


class TVMBackendError(QCompilerError):
    """Base class of the TVM backend's errors."""


class LoweringError(TVMBackendError):
    """A node of the graph has no Relax lowering (the message names the node and its op)."""


class TargetError(TVMBackendError):
    """An unknown target name, a target this host cannot run, or a missing cross toolchain."""


class WeightRangeError(TargetError):
    """The graph's int8 weights exceed what the target's int8 kernels compute exactly
    (docs/integer-spec.md, section 8); the message names the quantization preset to use."""


class ArtifactError(TVMBackendError):
    """A compiled-model directory is missing, incomplete or corrupted."""


class RemoteError(TVMBackendError):
    """Running on remote devices through a TVM RPC tracker failed (`remote.py`); the message
    names the tracker, the device key or the device and what to do."""


class TrackerUnreachableError(RemoteError):
    """No RPC tracker answers at the address given (refused, unresolvable, or silent)."""


class NoDeviceError(RemoteError):
    """The tracker has no device registered under the key, or none became free in time."""


class DeviceLostError(RemoteError):
    """Every device died or stopped answering before the work was done."""


class TuningDatabaseError(TVMBackendError, OptionError):
    """A tuning database directory (`--db`, `database=`) that is missing, corrupt, or tuned
    for another target."""
